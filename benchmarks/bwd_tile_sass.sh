#!/usr/bin/env bash
# bwd_tile_sass.sh - instructions one query tile of the Hopper attention backward issues per thread
# on its common path (no softcap, no mask), without a GPU. The kernel's loop holds four versions
# of the softmax gradient (softcap or not, masked tile or not), so its static count is not what a
# tile executes; this builds a copy of csrc/cuda/attention_bwd_wgmma.cu whose loop calls only the
# unmasked, uncapped version, compiles it for sm_90a (benchmarks/cuda_static_check.sh) and prints
# the loops of each bfloat16 kernel (benchmarks/sass_loops.py): the outermost loop of a kernel is
# one tile, its count static (the loops inside it, such as the lse / Delta copy of at most one trip
# per thread, counted once). The repository's sources are not changed.
#
# Usage (repository root, nvcc as for cuda_static_check.sh; cuobjdump on PATH or in CUOBJDUMP):
#   bash benchmarks/bwd_tile_sass.sh
set -eu
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/csrc" "$work/csrc"
python3 - "$work/csrc/cuda/attention_bwd_wgmma.cu" <<'EOF'
import re
import sys

path = sys.argv[1]
src = open(path).read()
# the four-way choice of the softmax gradient, replaced by its common version
pat = re.compile(r"if \(capped\) \{\s*if \(full\).*?softmax_grad\(std::false_type\{\}, "
                 r"std::true_type\{\}\);\s*\}", re.S)
new, n = pat.subn("(void)full; (void)capped; "
                  "softmax_grad(std::false_type{}, std::false_type{});", src)
if n != 1:
    sys.exit("bwd_tile_sass: the softmax-gradient choice was not found in the kernel source")
open(path, "w").write(new)
EOF
cd "$work"
OUT="$work/out" bash "$root/benchmarks/cuda_static_check.sh" csrc/cuda/attention_bwd_wgmma.cu > /dev/null
dump=${CUOBJDUMP:-cuobjdump}
for cfg in 64ELi1ELi2E 64ELi2ELi1E 128ELi1ELi2E 128ELi2ELi1E; do
    python3 "$root/benchmarks/sass_loops.py" "$work/out/attention_bwd_wgmma.cubin" \
        "bfloat16NS_5WBCfgILi$cfg" --cuobjdump "$dump" --top 12
done
