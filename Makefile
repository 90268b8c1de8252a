# graft — the entry points: make demo, make test, make bench, make gpu-check.
SHELL := /bin/bash
TRAINER := trainer-cuda/build/graft-trainer
APT_PACKAGES := libopenblas-dev nlohmann-json3-dev libstb-dev libssl-dev python3-torch python3-numpy python3-sentencepiece python3-jinja2 tmux
# Debian's python3-torch lives in the system Python, not in a pyenv python3 that may be first on PATH.
SYSPY := /usr/bin/python3

.PHONY: all deps apt npm ts trainer install test test-trainer test-ts tui demo demo-model bench bench-prepare bench-demo-variants bench-quant gpu-check clean

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
	$(SYSPY) trainer-cuda/tests/test_optim_torch.py
	$(SYSPY) trainer-cuda/tests/test_quant_torch.py
	$(SYSPY) trainer-cuda/tests/test_vae_torch.py
	$(SYSPY) trainer-cuda/tests/test_text_encoders_torch.py
	$(SYSPY) trainer-cuda/tests/test_zimage_torch.py

# The TypeScript is compiled first: tsc type-checks everything, and the tmux end-to-end test runs the built dist/.
test-ts: ts trainer
	npx vitest run

# Open the TUI (graft with no arguments). GRAFT_HOME picks the home folder (default ~/.graft).
tui: ts
	node dist/src/cli.js

test: test-trainer test-ts

# The demo: a LoRA that teaches the built-in demo model a shape it has never seen (a bar, trigger
# "zxq"): demo-job draws its dataset and writes config.yaml; the queue prepares and trains it, and
# the TUI's Job monitor shows it. Detach with q; `graft watch demo_zxq` comes back to it (make install
# puts graft on PATH; without it, node dist/src/cli.js is the same command).
DEMO_MODEL := presets/graft-tiny
DEMO_JOB := output/demo_zxq
demo: trainer ts
	@test -f $(DEMO_MODEL)/model.json || { echo "the demo model is missing from $(DEMO_MODEL): make demo-model trains it (about 6 hours on 2 cores)"; exit 1; }
	@# A demo job still in the queue is not deleted under its trainer: make demo opens its monitor instead.
	@if node dist/src/cli.js queue rm $(DEMO_JOB) --outputs --yes 2>&1 | grep -q 'stop it first'; then \
	  echo "the demo job is still training: opening its monitor (to start it over: graft queue stop demo_zxq, then make demo)"; \
	  node dist/src/cli.js watch $(DEMO_JOB); \
	else \
	  rm -rf $(DEMO_JOB) && \
	  $(TRAINER) demo-job $(DEMO_MODEL) $(DEMO_JOB) && \
	  node dist/src/cli.js queue add $(DEMO_JOB)/config.yaml && \
	  node dist/src/cli.js watch $(DEMO_JOB) && \
	  echo "outputs: $$(pwd)/$(DEMO_JOB) (samples/, demo_zxq.safetensors); graft watch demo_zxq comes back to it; measure the LoRA with: graft-trainer demo-eval $(DEMO_MODEL) $(DEMO_JOB)/demo_zxq.safetensors"; \
	fi

# Reproduces the shipped demo model weights (settings recorded in $(DEMO_MODEL)/model.json). First a model
# on a factor-4 autoencoder (8x8 latents, 16 image tokens: fast to train, but small shapes come out as
# blobs) in $(DEMO_MODEL_F4); then the shipped factor-2 autoencoder (16x16 latents, 64 tokens), whose
# text encoder and transformer start from that model's. Two of the factor-2 runs were stopped at a save
# (--stop-at names where); the last also names 10% of shapes by made-up words (--novel-words).
DEMO_MODEL_F4 := output/demo-model-f4
CONTRAST_RUN := --batch 8 --lr 3e-4 --ema-decay 0.999 --shape-contrast 1 --contrast-margin 0.05 --count-contrast 0.5
demo-model: trainer
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --latent-factor 4 --ae-steps 800 --dit-steps 3000 --batch 8 --ema-decay 0
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 3500 --batch 8 --lr 3e-4 --ema-decay 0
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 8000 --batch 8 --lr 3e-4 --ema-decay 0.999
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --decoder-steps 3000 --dit-steps 0
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 10000 --batch 8 --lr 3e-4 --ema-decay 0.999
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 2000 --batch 8 --lr 3e-4 --ema-decay 0.999
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 1000 --batch 8 --lr 3e-4 --ema-decay 0.999 --shape-contrast 1 --contrast-margin 0.05
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 7000 --batch 8 --lr 3e-4 --ema-decay 0.999 --shape-contrast 1 --contrast-margin 0.05
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 5000 --batch 8 --lr 3e-4 --ema-decay 0.999 --shape-contrast 1 --contrast-margin 0.05
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --decoder-steps 1500 --dit-steps 0
	$(TRAINER) demo-model $(DEMO_MODEL_F4) --resume --dit-steps 7000 $(CONTRAST_RUN)
	$(TRAINER) demo-model $(DEMO_MODEL) --ae-steps 1500 --batch 8 --dit-steps 0
	$(TRAINER) demo-model $(DEMO_MODEL) --resume --transformer-from $(DEMO_MODEL_F4) --dit-steps 7000 --stop-at 2000 $(CONTRAST_RUN)
	$(TRAINER) demo-model $(DEMO_MODEL) --resume --dit-steps 11000 $(CONTRAST_RUN)
	$(TRAINER) demo-model $(DEMO_MODEL) --resume --dit-steps 10000 $(CONTRAST_RUN)
	$(TRAINER) demo-model $(DEMO_MODEL) --resume --dit-steps 20000 --stop-at 2500 $(CONTRAST_RUN)
	$(TRAINER) demo-model $(DEMO_MODEL) --resume --dit-steps 22000 $(CONTRAST_RUN) --novel-words 0.1
	$(TRAINER) demo-model-eval $(DEMO_MODEL)

ts: npm
	npx tsc -p tsconfig.json
	@chmod +x dist/src/cli.js

# graft and graft-trainer on PATH: symlinks in $(PREFIX)/bin (default ~/.local/bin, no root needed) to this
# checkout's builds, so a rebuild is picked up without installing again. PREFIX=/usr/local for every user.
PREFIX ?= $(HOME)/.local
install: trainer ts
	@mkdir -p $(PREFIX)/bin
	ln -sfn $(CURDIR)/dist/src/cli.js $(PREFIX)/bin/graft
	ln -sfn $(CURDIR)/$(TRAINER) $(PREFIX)/bin/graft-trainer
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) echo "graft and graft-trainer are on PATH ($(PREFIX)/bin)";; \
	  *) echo "installed in $(PREFIX)/bin, which is not on PATH: add it (echo 'export PATH=\"$(PREFIX)/bin:\$$PATH\"' >> ~/.bashrc)";; esac

bench: trainer
	$(TRAINER) bench
	@if [ -x trainer-cuda/build/graft-gpu-bench ] && nvidia-smi -L >/dev/null 2>&1; then \
	  trainer-cuda/build/graft-gpu-bench; \
	else echo "no usable GPU or no CUDA build here: the GPU benchmark is skipped (make gpu-check runs it on a GPU)"; fi
	$(MAKE) bench-prepare

# The demo LoRA job once per adapter and optimizer (LoRA with AdamW, AdamW8bit, Adafactor, Lion, Prodigy;
# LoKr with AdamW), each measured by demo-eval: concept gain, leak, optimizer state bytes per parameter.
# About 5 minutes a variant on 2 cores; ONLY=lora+lion,lokr+adamw picks some, STEPS=600 the full job.
bench-demo-variants: trainer ts
	python3 trainer-cuda/bench/demo_variants.py

# The quantized formats on a FLUX.1-dev-width checkpoint: memory, plan, step time, forward error.
bench-quant: trainer
	$(SYSPY) trainer-cuda/bench/quant_bench.py

# Preparation (graft prepare) of 1,000 pictures of 1024x1024 at resolutions [1024, 512]: a first run and a
# second, cached one. The pictures are generated once into /tmp/graft-bench-prepare (600 MB of JPEGs, kept;
# the 4 GB of prepared PNGs are removed after); BENCH_PREPARE_ARGS=--images N changes the count.
BENCH_PREPARE_ARGS ?=
bench-prepare: ts
	node dist/test/bench/prepare.bench.js $(BENCH_PREPARE_ARGS)

# Builds the CUDA backend and runs, on the GPU of this machine: every parity test (each CUDA kernel
# against the CPU reference; the engine's ops through the tape, the FLUX transformer with its LoRA
# gradients, the autoencoder, the text encoder and the optimizer on cuda:0 against the same code on
# the CPU), the end-to-end training of the tiny job on cuda:0 against the CPU run, and the benchmark
# (the engine's FLUX.1-dev step at full depth, with PyTorch ratios when python3 has a CUDA torch).
# Needs nvcc, g++ and make only: no apt, no cuBLAS headers, no OpenBLAS (BLAS=fallback); where
# Debian's header-only packages are not installed (nlohmann/json.hpp, stb/stb_image.h) it adds
# .gpu-deps/include when present (copies carried there by hand: see trainer-cuda/bench/NOTES.md).
# Logs: trainer-cuda/build/gpu-tests.log, gpu-e2e.log, gpu-bench.log (and gpu-flux.log).
# Kernels are built for this machine's GPU only (nvidia-smi's compute capability), a third of the
# build time of the sm_80 + sm_90 + PTX build. GPU_BENCH_ARGS=--step-only skips the GEMM, attention
# and block sections of the benchmark (the whole-step section and its PyTorch ratio remain).
# GPU_FLUX=1 adds a whole FLUX.1-dev job at real size with random weights (cuda/test/flux_e2e.py: 34 GB
# of disk, 20 pictures and captions encoded at 1024, 30 steps, one 20-step sample; each phase timed).
GPU_DEPS_INC := $(wildcard $(CURDIR)/.gpu-deps/include)
GPU_BENCH_ARGS ?=
GPU_FLUX ?= 0
gpu-check:
	@start=$$(date +%s); \
	cc=$$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .'); \
	arch=$${cc:+CU_ARCH=-gencode=arch=compute_$$cc,code=sm_$$cc}; \
	if ! $(MAKE) -C trainer-cuda -j$$(nproc) cuda BLAS=fallback DEPS_INCLUDE=$(GPU_DEPS_INC) $$arch || \
	   [ ! -x trainer-cuda/build/graft-gpu-tests ]; then \
	  echo "gpu-check: the CUDA build failed (is nvcc installed?)"; exit 1; fi; \
	built=$$(date +%s); \
	tests=0; e2e=0; bench=0; \
	trainer-cuda/build/graft-gpu-tests 2>&1 | tee trainer-cuda/build/gpu-tests.log; tests=$${PIPESTATUS[0]}; \
	tested=$$(date +%s); \
	trainer-cuda/cuda/test/train_e2e.sh trainer-cuda/build/graft-trainer 2>&1 | tee trainer-cuda/build/gpu-e2e.log; \
	e2e=$${PIPESTATUS[0]}; \
	trained=$$(date +%s); \
	trainer-cuda/build/graft-gpu-bench $(GPU_BENCH_ARGS) 2>&1 | tee trainer-cuda/build/gpu-bench.log; bench=$${PIPESTATUS[0]}; \
	flux=0; if [ "$(GPU_FLUX)" = 1 ]; then \
	  python3 trainer-cuda/cuda/test/flux_e2e.py trainer-cuda/build/graft-trainer 2>&1 | tee trainer-cuda/build/gpu-flux.log; flux=$${PIPESTATUS[0]}; fi; \
	end=$$(date +%s); \
	echo; echo "== gpu-check summary ($$(( end - start )) s: build $$(( built - start )), tests $$(( tested - built )), e2e $$(( trained - tested )), bench $$(( end - trained ))) =="; \
	grep -E "^(device|cuBLASLt):" trainer-cuda/build/gpu-tests.log; \
	grep -E "^  (ok|FAIL) +(FLUX|autoencoder|text encoder|AdamW)" trainer-cuda/build/gpu-tests.log; \
	grep -E "^gpu: " trainer-cuda/build/gpu-tests.log || echo "parity tests: no summary (crashed?)"; \
	grep -E "^e2e: " trainer-cuda/build/gpu-e2e.log || echo "e2e: no summary (crashed?)"; \
	grep -E "^=> " trainer-cuda/build/gpu-bench.log; \
	[ "$(GPU_FLUX)" = 1 ] && { grep -E "^flux-e2e: " trainer-cuda/build/gpu-flux.log || echo "flux-e2e: no summary (crashed?)"; }; \
	echo "parity tests: $$( [ $$tests = 0 ] && echo PASS || echo FAIL ) | e2e training: $$( [ $$e2e = 0 ] && echo PASS || echo FAIL ) | benchmark: $$( [ $$bench = 0 ] && echo OK || echo FAILED ) | FLUX.1-dev job: $$( [ "$(GPU_FLUX)" = 1 ] && { [ $$flux = 0 ] && echo PASS || echo FAIL; } || echo skipped )"; \
	[ $$tests = 0 ] && [ $$e2e = 0 ] && [ $$bench = 0 ] && [ $$flux = 0 ]

clean:
	$(MAKE) -C trainer-cuda clean
