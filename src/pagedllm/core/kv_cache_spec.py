"""KV cache groups: which layers share a block table, and how pages are laid out in memory.

Pure Python (no torch). Layers are grouped by attention type (full attention, or a sliding
window ``w``). Every group has its own block table per request over **one** block pool; a
sliding-window group drops the pages its layers can no longer see (``single_type_manager``).

Memory layout (how one pool serves every group with pages of one size): every group holds
the same number of layers, ``group_size``; the cache engine allocates ``group_size`` page
tensors of ``num_blocks`` pages each, and the ``j``-th layer of *every* group uses tensor
``j``. A block id therefore names one page in each of the ``group_size`` tensors, and whichever
group owns the block stores its layers' K/V there. A block costs
``group_size * 2 * block_size * num_kv_heads * head_dim * dtype_bytes`` bytes, whatever group
holds it, so a byte budget of ``B`` gives ``B // that`` blocks, shared by need: a request of
context ``L`` holds ``ceil(L / block_size)`` blocks in each full group but only about
``ceil(w / block_size) + 1`` in each window group.

``group_size`` is the smallest layer count of any attention type (so the smaller type fills
whole groups); the other types are cut into groups of that size, the last one padded with
unused slots. When padding would waste more than 10 % of the layers, the gcd of the counts is
used instead (no padding, more groups). With one attention type (Llama, or Mistral: every layer
windowed) there is one group of all layers, which is exactly the classic layout.

``disable_hybrid_kv_cache`` puts every layer in one full-attention group: every page is kept
until the request finishes (the kernels still mask the window), for comparisons and debugging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KVCacheGroup:
    """Layers that share one block table per request. ``sliding_window`` None = full."""

    sliding_window: int | None
    layer_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KVCacheLayout:
    """The groups, and ``group_size`` (page tensors in memory; see the module docstring)."""

    groups: tuple[KVCacheGroup, ...]
    group_size: int

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    @property
    def windows(self) -> list[int | None]:
        """The sliding window of each group (None = full attention)."""
        return [g.sliding_window for g in self.groups]

    def layer_slots(self, num_layers: int) -> list[tuple[int, int]]:
        """``(group, tensor slot)`` of every layer ``0 .. num_layers - 1``."""
        out: list[tuple[int, int] | None] = [None] * num_layers
        for g, group in enumerate(self.groups):
            for j, layer in enumerate(group.layer_ids):
                out[layer] = (g, j)
        assert all(x is not None for x in out), "every layer belongs to one group"
        return out  # type: ignore[return-value]


def _window_key(window: int | None) -> int:
    return 0 if window is None else window


def build_layout(windows: list[int | None], disable_hybrid: bool = False) -> KVCacheLayout:
    """Group layers with per-layer ``windows`` (None = full attention) into a layout."""
    if not windows:
        raise ValueError("a model needs at least one layer")
    for i, w in enumerate(windows):
        if w is not None and (isinstance(w, bool) or not isinstance(w, int) or w <= 0):
            raise ValueError(f"sliding_window of layer {i} must be a positive integer, got {w!r}")
    num_layers = len(windows)
    by_type: dict[int | None, list[int]] = {}
    for i, w in enumerate(windows):
        by_type.setdefault(None if disable_hybrid else w, []).append(i)
    if len(by_type) == 1:
        ((window, layers),) = by_type.items()
        return KVCacheLayout((KVCacheGroup(window, tuple(layers)),), num_layers)
    counts = [len(v) for v in by_type.values()]
    size = min(counts)
    padding = sum(-(-c // size) * size - c for c in counts)
    if padding > 0.1 * num_layers:
        size = math.gcd(*counts)
    groups = []
    # full attention first, then windows in increasing size: a stable, readable order
    for window in sorted(by_type, key=_window_key):
        layers = by_type[window]
        for start in range(0, len(layers), size):
            groups.append(KVCacheGroup(window, tuple(layers[start : start + size])))
    return KVCacheLayout(tuple(groups), size)
