# The two commands of the README: `make demo` and `make test`. Both set up what is
# missing (Debian packages when running as root, a .venv with the pinned packages) and
# are quick when it is already there.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.birq-installed
DEB_PACKAGES := libsndfile1 espeak-ng flite sox wordnet-base
QUICK ?=

.PHONY: setup deb venv test test-dist test-fast lint demo demo-steps bench clean

setup: deb venv

# fairseq2n needs libsndfile1 to import; espeak-ng/flite/sox synthesise the demo corpus;
# wordnet-base gives `birq-data synth --text wordnet` its example sentences.
deb:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "Missing Debian packages: $$missing (run: sudo apt-get install $$missing)" >&2; exit 1; \
	  fi; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q -m "not dist"

# The multi-process (torchrun, 2 CPU processes) tests: scale-out and fault injection.
test-dist: setup
	$(PY) -m pytest -q -m dist

# Everything but the Triton interpreter and AOT-compile tests.
test-fast: setup
	$(PY) -m pytest -q -m "not triton_interpret and not aot and not dist"

lint: setup
	$(PY) -m ruff check birq_fs2 kernels tests benchmarks

# The main job: synthesise the demo corpus (train ~1 h; dev and test from held-out
# speakers), check it, measure the data pipeline, pretrain BiRQ tiny on all of it (1200
# steps: the length at which pretraining pays in benchmarks/evidence.py; 400 does not;
# affordable in the demo since the fast training path, benchmarks/train_throughput.py),
# export the encoder, fine-tune it with CTC on about 10 minutes of it (the low-label regime
# of the evidence) next to a from-scratch baseline with the same budget, evaluate both on
# the test speakers, and write $(OUT)/REPORT.md. QUICK=1 runs the same path on a tiny
# corpus with a few steps (about 2 minutes) in demo-out-quick/. Re-running reuses the
# corpus and the finished runs (an interrupted run resumes from its last checkpoint).
OUT ?= $(if $(QUICK),demo-out-quick,demo-out)
# SHARE processes share the cores, each with cores / SHARE threads: pretraining runs as
# SHARE data-parallel ranks (torchrun, gloo; each 1 / SHARE of the preset's batch, so the
# global batch is the preset's), the two fine-tunings run at once. On 2 cores that beats
# one 2-thread process at a time (benchmarks/results/throughput). SHARE=1: one at a time.
CORES := $(shell nproc 2>/dev/null || echo 1)
SHARE ?= $(if $(filter 1,$(CORES)),1,2)
THREADS = $(shell echo $$(( $(CORES) / $(SHARE) > 0 ? $(CORES) / $(SHARE) : 1 )))
PRETRAIN_CFG := birq_fs2/recipes/pretrain/configs/tiny_cpu.yaml
FINETUNE_CFG := birq_fs2/recipes/finetune/configs/tiny_cpu.yaml
QUICK_PRETRAIN := regime.num_steps=20 regime.validate_every_n_steps=10 regime.checkpoint_every_n_steps=10 lr_scheduler.config.num_warmup_steps=5
QUICK_FINETUNE := regime.num_steps=20 regime.validate_every_n_steps=10 regime.checkpoint_every_n_steps=10 pretrained.freeze_encoder_for_n_steps=5
FINETUNE = $(PY) -m birq_fs2.recipes.finetune $(OUT)/finetune-$(1) --config-file $(FINETUNE_CFG) \
	  --config dataset.config_overrides.path=$(OUT)/corpus $(2) $(if $(QUICK),$(QUICK_FINETUNE),)
demo: setup
	@$(MAKE) --no-print-directory demo-steps

# The steps alone (no setup): tests run them with PY=<their interpreter>.
demo-steps:
	@test -f $(OUT)/corpus/SPEAKERS.TXT || $(PY) -m birq_fs2.cli.data synth $(OUT)/corpus --hours $(if $(QUICK),0.05,1) --seed 0
	$(PY) -m birq_fs2.cli.data check $(OUT)/corpus
	$(PY) benchmarks/data_pipeline.py --corpus $(OUT)/corpus --out $(OUT)/data_pipeline
	$(if $(filter 1,$(SHARE)),,OMP_NUM_THREADS=$(THREADS)) $(PY) -m \
	  $(if $(filter 1,$(SHARE)),,torch.distributed.run --standalone --nproc-per-node $(SHARE) -m) \
	  birq_fs2.recipes.pretrain $(OUT)/pretrain --config-file $(PRETRAIN_CFG) \
	  --config dataset.config_overrides.path=$(OUT)/corpus \
	  dataset.pipeline.max_frames_per_batch=$$(( 8000 / $(SHARE) )) $(if $(QUICK),$(QUICK_PRETRAIN),)
	$(PY) -m birq_fs2.cli.export $(OUT)/pretrain $(OUT)/encoder --name birq_demo_tiny
	@# the baseline's log goes to a file while it runs beside the BiRQ fine-tuning
	$(if $(filter 1,$(SHARE)),$(call FINETUNE,birq,pretrained.model=$(OUT)/encoder) && \
	  $(call FINETUNE,scratch,),OMP_NUM_THREADS=$(THREADS) $(call FINETUNE,scratch,) \
	  > $(OUT)/finetune-scratch.log 2>&1 & scratch=$$!; \
	  OMP_NUM_THREADS=$(THREADS) $(call FINETUNE,birq,pretrained.model=$(OUT)/encoder); birq=$$?; \
	  wait $$scratch || { echo "fine-tuning the baseline failed: $(OUT)/finetune-scratch.log" >&2; exit 1; }; \
	  exit $$birq)
	$(PY) -m birq_fs2.cli.export $(OUT)/finetune-birq $(OUT)/asr --name birq_demo_asr
	$(PY) -m birq_fs2.cli.evaluate --model $(OUT)/asr --data $(OUT)/corpus --split test --out $(OUT)/eval/birq
	$(PY) -m birq_fs2.cli.evaluate --model $(OUT)/finetune-scratch --data $(OUT)/corpus --split test --out $(OUT)/eval/scratch
	$(PY) -m birq_fs2.cli.demo_report $(OUT)
	@echo "Report: $(OUT)/REPORT.md; fine-tuned model: $(OUT)/asr (birq-transcribe --model $(OUT)/asr FILE)"

bench: setup
	$(PY) benchmarks/quantizer.py --out benchmarks/results/quantizer

clean:
	rm -rf demo-out demo-out-quick .pytest_cache
