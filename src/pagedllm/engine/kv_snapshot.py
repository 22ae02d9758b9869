"""A read-only picture of the KV page pool, for the server's ``/dashboard``.

Pure Python (no torch). It only reads the scheduler and its KV manager, so it must be called
where nothing mutates them: on the engine thread between steps (``AsyncLLMEngine`` stats hooks).

Every device page is in exactly one state:

* ``free``: reference count 0 and no prefix-cache identity (empty);
* ``cached``: reference count 0 but still findable in the prefix cache (reusable by a later
  prompt with the same prefix until it is evicted, least recently used first);
* ``shared``: referenced by more than one request (prefix hits, ``n > 1`` forks);
* owned by one running request (reference count 1).

Swapped-out requests hold host pages instead (``swapped_pages``).
"""

from __future__ import annotations

import time
from typing import Any

FREE, CACHED, SHARED, OWNED = 0, 1, 2, 3  # page codes; OWNED + i: owned by requests[i]
MAX_CELLS = 4096  # larger pools are drawn with several pages per cell


def _display_id(request_id: str) -> str:
    """``user-id#17.0`` (the engine's internal id) -> ``user-id`` (``user-id/1`` for sample 1)."""
    user, _, rest = request_id.rpartition("#")
    if not user:
        return request_id
    sample = rest.rpartition(".")[2]
    return user if sample in ("", "0") else f"{user}/{sample}"


def take_kv_snapshot(scheduler: Any, max_cells: int = MAX_CELLS) -> dict[str, Any]:
    """Counts per page state, pages per running request, and a downsampled page map."""
    kv = scheduler.kv_manager
    blocks = kv.pool.blocks
    codes = [FREE] * len(blocks)
    for block in blocks:
        if block.ref_cnt > 1:
            codes[block.block_id] = SHARED
        elif block.ref_cnt == 0 and block.block_hash is not None:
            codes[block.block_id] = CACHED
    requests = []
    for index, request in enumerate(list(scheduler.running)):
        table = kv.get_block_table(request.request_id)
        private = 0
        for block_id in table:
            if blocks[block_id].ref_cnt == 1:
                codes[block_id] = OWNED + index
                private += 1
        requests.append(
            {
                "id": _display_id(request.request_id),
                "pages": len(table),
                "shared_pages": len(table) - private,
                "tokens": request.num_tokens,
                "computed_tokens": request.num_computed_tokens,
            }
        )
    counts = {"free": 0, "cached": 0, "shared": 0, "owned": 0}
    for code in codes:
        key = "free" if code == FREE else "cached" if code == CACHED else "shared"
        counts["owned" if code >= OWNED else key] += 1
    per_cell = max(1, -(-len(codes) // max_cells))
    return {
        "time": time.time(),
        "num_pages": len(codes),
        "page_size": kv.block_size,
        "pages_per_cell": per_cell,
        "cells": _downsample(codes, per_cell),
        "counts": counts,
        "requests": requests,
        "waiting": scheduler.num_waiting,
        "swapped_requests": [_display_id(r.request_id) for r in list(scheduler.swapped)],
        "swapped_pages": kv.num_cpu_blocks - kv.num_cpu_free_blocks,
        "host_pages": kv.num_cpu_blocks,
    }


def _downsample(codes: list[int], per_cell: int) -> list[int]:
    """One code per cell: the most occupied state among its pages (owned > shared > cached)."""
    if per_cell == 1:
        return codes
    return [max(codes[i : i + per_cell]) for i in range(0, len(codes), per_cell)]
