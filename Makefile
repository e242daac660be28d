# Two commands on a fresh machine:  make scan  (a real scan on the built-in defaults)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, from the versions this machine holds; a torch already in the venv is kept, unless
# TORCH is given on the command line: `make install TORCH="torch torchvision --index-url .../cu126"`
# replaces it (what `yoloprof doctor` prints when the driver is older than torch's CUDA).
TORCH ?= torch==2.14.1 torchvision==0.29.1
SCAN_ARGS ?=
# The suite on pytest-xdist workers, a test file to a worker; tests marked `exclusive` still run alone
# (tests/machine_share.py). TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
ifeq ($(origin TORCH),command line)
REPLACE_TORCH := 1
endif

.PHONY: install scan test test-fast lint format docs gpu-prepare clean FORCE

$(VENV)/.installed: pyproject.toml setup.py $(if $(REPLACE_TORCH),FORCE)
	test -x $(PY) || python3 -m venv $(VENV)
ifdef REPLACE_TORCH
	$(PY) -m pip uninstall -q -y torch torchvision || true
	$(PY) -m pip install -q $(TORCH)
else
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
endif
	$(PY) -m pip install -q -e '.[test]'
	touch $@

FORCE:

install: $(VENV)/.installed

scan: install
	$(VENV)/bin/yoloprof scan $(SCAN_ARGS)

# CI (.ci/run) runs `make test`: the linter first, then the whole suite.
test: install lint
	$(PY) -m pytest -q $(PARALLEL) --durations=15

# For development: the tests that start no torchrun and train nothing (the `slow` marker's complement).
test-fast: install
	$(PY) -m pytest -q $(PARALLEL) -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The docs as a site in runs/site (tests/test_docs.py builds it too).
docs: install
	$(VENV)/bin/mkdocs build --strict

# Before a GPU lease: the wheels the device machine lacks into .whl/, and the size of what travels
# (README: "The GPU check").
gpu-prepare: install
	PY=$(PY) bash benchmarks/gpu_prepare.sh

clean:
	rm -rf runs .pytest_cache
