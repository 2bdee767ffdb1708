# The two commands of the README: `make demo` and `make test`. Both set up what is
# missing (Debian packages when running as root, a .venv with the pinned packages) and
# are quick when it is already there.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.birq-installed
DEB_PACKAGES := libsndfile1 espeak-ng flite sox
QUICK ?=
OUT ?= demo-out

.PHONY: setup deb venv test test-fast lint demo bench clean

setup: deb venv

# fairseq2n needs libsndfile1 to import; espeak-ng/flite/sox synthesise the demo corpus.
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

# The main job. Until the pretraining recipe lands, the quickest real thing that exists:
# the quantizer kernels at BEST-RQ sizes against their references, with a report.
demo: setup
	$(PY) benchmarks/quantizer.py $(if $(QUICK),--quick,) --out $(OUT)/quantizer

bench: setup
	$(PY) benchmarks/quantizer.py --out benchmarks/results/quantizer

clean:
	rm -rf $(OUT) .pytest_cache
