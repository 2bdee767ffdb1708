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
OUT ?= demo-out

.PHONY: setup deb venv test test-fast lint demo bench clean

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
	$(PY) -m pytest -q

# Everything but the Triton interpreter and AOT-compile tests.
test-fast: setup
	$(PY) -m pytest -q -m "not triton_interpret" --deselect tests/test_triton.py::test_kernels_compile_for_gpu_targets

lint: setup
	$(PY) -m ruff check birq_fs2 kernels tests benchmarks

# The main job. Until CTC fine-tuning lands (issue 5), the real steps that exist: synthesise
# the demo corpus (reused when already there), check it, measure the data pipeline,
# pretrain BiRQ tiny on it (re-running resumes or reuses the finished run), export the
# encoder as a fairseq2 card, plot the curves, and benchmark the quantizer kernels.
CORPUS := $(OUT)/corpus$(if $(QUICK),-quick,)
PRETRAIN := $(OUT)/pretrain$(if $(QUICK),-quick,)
QUICK_STEPS := regime.num_steps=20 regime.validate_every_n_steps=10 regime.checkpoint_every_n_steps=10 lr_scheduler.config.num_warmup_steps=5
demo: setup
	@test -f $(CORPUS)/SPEAKERS.TXT || $(PY) -m birq_fs2.cli.data synth $(CORPUS) --hours $(if $(QUICK),0.05,1) --seed 0
	$(PY) -m birq_fs2.cli.data check $(CORPUS)
	$(PY) benchmarks/data_pipeline.py --corpus $(CORPUS) --out $(OUT)/data_pipeline
	$(PY) -m birq_fs2.recipes.pretrain $(PRETRAIN) --config-file birq_fs2/recipes/pretrain/configs/tiny_cpu.yaml \
	  --config dataset.config_overrides.path=$(CORPUS) $(if $(QUICK),$(QUICK_STEPS),)
	$(PY) -m birq_fs2.cli.export $(PRETRAIN) $(OUT)/encoder --name birq_demo_tiny
	$(PY) -m birq_fs2.report $(PRETRAIN)
	$(PY) benchmarks/quantizer.py --quick --out $(OUT)/quantizer
	@echo "Reports: $(PRETRAIN)/report/REPORT.md $(OUT)/data_pipeline/data_pipeline.md $(OUT)/quantizer/quantizer.md"

bench: setup
	$(PY) benchmarks/quantizer.py --out benchmarks/results/quantizer

clean:
	rm -rf $(OUT) .pytest_cache
