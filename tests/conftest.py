"""Test-wide setup: Triton interpreter on GPU-less machines, sample-data lookup, repo paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

# The Triton interpreter must be switched on before any kernel module is imported (it is read when @triton.jit
# decorates); without a GPU it is the only way to run our Triton kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # test helper modules (toys.py)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The sample-data folder (``$ZOO_DATA`` or ``../shared/data``); skips the test when absent."""
    from zoo.data.paths import data_dir

    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"sample data not found at {path} (set $ZOO_DATA)")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
