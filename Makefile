# Two commands: `make demo` (train a small model on built-in data, print its test accuracy) and `make test`.
# Both create .venv on first use and are safe to run again.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test install install-dev clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(PY) tools/train.py configs/pointnet/synthetic_shapes.yaml --output runs/demo

test: install-dev
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
