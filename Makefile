# Named entry points for the usual jobs. Each target is one command that can also be run by hand.
#   make build       compile the C extension in place (CPU; CUDA too when SAMBA_EXT_CUDA=1)
#   make install     editable install with the test and plot extras (the README's setup)
#   make test        the test suite (needs `make build` or `make install` first)
#   make lint        ruff lint of the whole tree, format check of the ruff-formatted folders, clang-format
#                    check of the C files that follow .clang-format
#   make bench       the CPU benchmarks (write benchmarks/results/cpu_*.md)
#   make sanitize    ASan/UBSan/LSan build of the C kernels and the kernel + model tests under it
#   make fuzz        the checkpoint-parser fuzzers, CI's budget
#   make cuda-check  ptxas's report on every CUDA kernel (registers, spills, serialised wgmma), no GPU
#                    needed (benchmarks/cuda_static_check.sh)
#   make clean       remove build outputs
PYTHON ?= python3
JOBS ?= 2
# folders kept in `ruff format` style (the rest of the tree is formatted by hand)
RUFF_FORMATTED = training examples/*.py tests/test_train_smoke.py tests/test_torch_parity.py
# C files kept in .clang-format style
CLANG_FORMATTED = csrc/attention.c csrc/attention_decode.c csrc/attention_simd.c csrc/conv.c csrc/norm.c \
                  csrc/rotary.c csrc/scan.c csrc/simd.c csrc/swiglu.c csrc/threads.c csrc/simd.h \
                  csrc/attention_impl.h csrc/attention_tile.h

.PHONY: build install test lint format bench sanitize fuzz cuda-check clean

build:
	$(PYTHON) setup.py build_ext --inplace -j$(JOBS)

install:
	$(PYTHON) -m pip install -e ".[test,plot]"

test:
	$(PYTHON) -m pytest -q

cuda-check:
	bash benchmarks/cuda_static_check.sh

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check $(RUFF_FORMATTED)
	@if command -v clang-format >/dev/null; then clang-format --dry-run --Werror $(CLANG_FORMATTED); \
	 else echo "clang-format not installed: C format check skipped"; fi

format:
	$(PYTHON) -m ruff format $(RUFF_FORMATTED)
	clang-format -i $(CLANG_FORMATTED)

bench:
	$(PYTHON) benchmarks/cpu_kernels.py
	$(PYTHON) benchmarks/cpu_model.py

sanitize:
	bash tests/sanitize/run.sh

fuzz:
	$(PYTHON) tests/fuzz/run_fuzz.py --execs 2000 --seconds 55

clean:
	rm -rf build build-asan *.egg-info samba_ext/*.so .ruff_cache
