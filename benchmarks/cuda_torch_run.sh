#!/usr/bin/env bash
# cuda_torch_run.sh - on a machine with a GPU and a CUDA build of torch: build samba_ext with
# CUDA, run samba_ext.torch's CUDA tests (tests/test_torch_cuda.py, test_torch_cuda_layout.py,
# test_torch_cuda_decode.py)
# and, as a regression check on the same machine, its CPU tests; print a short table.
#
# Usage (from the repository root):  bash benchmarks/cuda_torch_run.sh [steps]
#   steps: comma-separated subset of build,cuda,cpu (default: all three)
# Environment: OUT (log folder, default ./out), SAMBA_EXT_CUDA_ARCHS (default 90), PYTHON
#   (default python3; needs torch with CUDA), GIT_COMMIT (recorded in the logs).
# Files written to $OUT: build.log, torch_cuda.log, torch_cpu.log, summary.md
STEPS=${1:-build,cuda,cpu}
source "$(dirname "$0")/cuda_run_common.sh"
header $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
build_step "import samba_ext, torch; assert samba_ext.cuda_available() and torch.cuda.is_available()"

has cuda && pytest_step cuda torch_cuda.log tests/test_torch_cuda.py tests/test_torch_cuda_layout.py \
    tests/test_torch_cuda_decode.py
has cpu && pytest_step cpu torch_cpu.log tests/test_grad_torch.py tests/test_torch_inference.py \
    tests/test_torch_kvcache.py tests/test_torch_mamba_inner.py tests/test_torch_parity.py
exit 0
