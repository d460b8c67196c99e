# Two commands: `make demo` (train a small model on built-in data, print its test accuracy) and `make test`.
# Both create .venv on first use and are safe to run again.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

# What the tests need: pytest + triton ([dev]), open3d ([pointcloud]) and diffusers ([diffusion]).
TEST_EXTRAS := dev,pointcloud,diffusion
# open3d's wheel imports only with these Debian libraries present.
SYSTEM_PACKAGES := libusb-1.0-0 libgl1 libegl1

.PHONY: demo test install install-dev system-deps device-wheels clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) -e ".[$(TEST_EXTRAS)]"
	touch $@

# Installs the Debian libraries open3d needs when we can (root + apt-get); otherwise says how.
system-deps:
	@if dpkg -s $(SYSTEM_PACKAGES) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && apt-get install -y -qq $(SYSTEM_PACKAGES)) >/dev/null || echo "warning: apt-get install $(SYSTEM_PACKAGES) failed; open3d tests will skip"; \
	else echo "note: open3d needs: sudo apt-get install $(SYSTEM_PACKAGES) (its tests skip without them)"; fi

install: $(VENV)/.installed
install-dev: system-deps $(VENV)/.installed-dev

# A second `make demo` continues runs/demo (or, if it finished, evaluates it again) instead of overwriting it.
demo: install
	$(PY) tools/train.py configs/pointnet/synthetic_shapes.yaml --output runs/demo $(if $(wildcard runs/demo/last.pt),--resume,)

test: install-dev
	$(PY) -m pytest

# Pure-Python wheels that the GPU machine's image lacks (it has torch, triton, timm, peft, accelerate, but no
# registry access), for scripts/device_check.sh: carry .whl with the device tool.
DEVICE_WHEELS := omegaconf diffusers importlib_metadata mambapy
device-wheels: $(VENV)/.installed
	$(PY) -m pip download --disable-pip-version-check -q -c constraints.txt --no-deps -d .whl $(DEVICE_WHEELS)

clean:
	rm -rf $(VENV) runs .pytest_cache
