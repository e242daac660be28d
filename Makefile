# Two commands on a fresh machine:  make scan  (a real scan on the built-in defaults)  and  make test.
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first, from the versions this machine holds; a torch already in the venv is kept.
TORCH ?= torch==2.14.1 torchvision==0.29.1
SCAN_ARGS ?=

.PHONY: install scan test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

scan: install
	$(VENV)/bin/yoloprof scan $(SCAN_ARGS)

test: install
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
