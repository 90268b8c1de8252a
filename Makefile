# graft — the entry points: make demo, make test, make bench, make gpu-check.
SHELL := /bin/bash
TRAINER := trainer-cuda/build/graft-trainer
APT_PACKAGES := libopenblas-dev nlohmann-json3-dev python3-torch python3-numpy tmux
# Debian's python3-torch lives in the system Python, not in a pyenv python3 that may be first on PATH.
SYSPY := /usr/bin/python3

.PHONY: all deps apt npm trainer test test-trainer test-ts tui demo bench gpu-check clean

all: trainer

deps: apt npm

# Install the Debian packages only when one is missing (CI runs as root on a fresh machine).
apt:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(APT_PACKAGES)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

node_modules/.package-lock.json: package-lock.json package.json
	npm ci --no-audit --no-fund
	@touch $@

npm: node_modules/.package-lock.json

trainer: apt
	$(MAKE) -C trainer-cuda -j2 all

test-trainer: trainer
	trainer-cuda/build/graft-tests
	$(SYSPY) trainer-cuda/tests/test_flux_torch.py

# The TypeScript is compiled first: tsc type-checks everything, and the tmux end-to-end test runs the built dist/.
test-ts: npm trainer
	npx tsc -p tsconfig.json
	npx vitest run

# Open the TUI (graft with no arguments). GRAFT_HOME picks the home folder (default ~/.graft).
tui: npm
	npx tsc -p tsconfig.json
	node dist/src/cli.js

test: test-trainer test-ts

demo: trainer
	@rm -rf output/demo-tiny
	$(TRAINER) make-tiny output/demo-tiny --seed 1
	$(TRAINER) train output/demo-tiny
	@echo "outputs: $$(pwd)/output/demo-tiny (metrics.jsonl, checkpoints, state/)"

bench: trainer
	$(TRAINER) bench

# Builds the CUDA backend and runs, on the GPU of this machine, every parity test (each CUDA op
# against the CPU reference, and a LoRA step's gradients) and then the benchmark (with PyTorch
# ratios when python3 has a CUDA torch). Needs nvcc, g++ and make only: no apt, no cuBLAS headers,
# no OpenBLAS. Logs: trainer-cuda/build/gpu-tests.log and gpu-bench.log.
gpu-check:
	@start=$$(date +%s); \
	if ! $(MAKE) -C trainer-cuda -j$$(nproc) cuda || [ ! -x trainer-cuda/build/graft-gpu-tests ]; then \
	  echo "gpu-check: the CUDA build failed (is nvcc installed?)"; exit 1; fi; \
	tests=0; bench=0; \
	trainer-cuda/build/graft-gpu-tests 2>&1 | tee trainer-cuda/build/gpu-tests.log; tests=$${PIPESTATUS[0]}; \
	trainer-cuda/build/graft-gpu-bench 2>&1 | tee trainer-cuda/build/gpu-bench.log; bench=$${PIPESTATUS[0]}; \
	echo; echo "== gpu-check summary ($$(( $$(date +%s) - start )) s) =="; \
	grep -E "^(device|cuBLASLt):" trainer-cuda/build/gpu-tests.log; \
	grep -E "^gpu: " trainer-cuda/build/gpu-tests.log || echo "parity tests: no summary (crashed?)"; \
	grep -E "^=> full" trainer-cuda/build/gpu-bench.log; \
	echo "parity tests: $$( [ $$tests = 0 ] && echo PASS || echo FAIL ) | benchmark: $$( [ $$bench = 0 ] && echo OK || echo FAILED )"; \
	[ $$tests = 0 ] && [ $$bench = 0 ]

clean:
	$(MAKE) -C trainer-cuda clean
