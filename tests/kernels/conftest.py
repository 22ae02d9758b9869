"""Kernel tests run on CUDA when present, else in the Triton interpreter on CPU.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` function is decorated, i.e. when
``pagedllm.kernels`` is first imported, so it is set here before any test module imports it.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401  (after TRITON_INTERPRET is set)
except ImportError:  # the kernel tests cannot run at all: do not collect them
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip kernel tests when neither a GPU nor the interpreter can run them."""
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return
    skip = pytest.mark.skip(reason="no CUDA device and TRITON_INTERPRET is not 1")
    for item in items:
        if "tests/kernels" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when available, else CPU (Triton interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def on_gpu(device: torch.device) -> bool:
    return device.type == "cuda"
