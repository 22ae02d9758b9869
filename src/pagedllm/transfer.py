"""Host-to-device copies that never wait for the device.

``torch.tensor(data, device="cuda")`` copies from pageable host memory, and CUDA performs a
stream synchronization before such a copy: the host then waits for every kernel already queued.
With async scheduling the next round's inputs are built while the current round runs, so that
wait would undo the overlap. Going through pinned memory with a non-blocking copy keeps the
copy in stream order without blocking the host (PyTorch's pinned-memory cache keeps the
staging buffer alive until the copy has run).
"""

from __future__ import annotations

from typing import Any

import torch


def to_device(values: Any, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A new tensor on ``device`` holding ``values`` (a list or numpy array) as ``dtype``."""
    device = torch.device(device)
    cpu = torch.as_tensor(values, dtype=dtype)
    if device.type != "cuda":
        return cpu.to(device)
    return cpu.pin_memory().to(device, non_blocking=True)
