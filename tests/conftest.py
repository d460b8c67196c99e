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


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: tiny models run much faster than with two threads contending for
    a small shared CPU. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
