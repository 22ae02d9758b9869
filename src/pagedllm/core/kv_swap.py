"""Swap maps of the KV manager: a preempted request's blocks to host pages and back.

Pure Python (no torch). ``KVCacheManager`` inherits these methods; they use its group managers
(``groups``), device pool (``pool``), host pool (``host``, shared with the host tier:
``core/host_tier.py``), per-request block identities (``_hashes``), watermark, and its
``_uses_cache`` / ``_note_registered`` (prefix-cache rule and provisional registrations). The runner
copies the returned pairs in the plan's order (``core/scheduler_output.py``): swap-outs before
anything overwrites their device blocks, swap-ins before the forward.

Invariant: no device block is the destination of two host -> device copies in one plan, and a
swap-in's destination is never freed again within its plan (the runner batches each direction
into one scatter, which orders nothing among the copies): swap-out leaves the pages a window no
longer sees behind, so the first allocation after a swap-in frees none of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedllm.core.request import Request

if TYPE_CHECKING:
    from pagedllm.core.block_pool import BlockHash, BlockPool
    from pagedllm.core.host_tier import HostPool
    from pagedllm.core.single_type_manager import SingleTypeKVManager


class KVSwapMixin:
    """Swap-out / swap-in of whole requests (see the module docstring)."""

    groups: list[SingleTypeKVManager]
    pool: BlockPool
    host: HostPool
    watermark_blocks: int
    _hashes: dict[str, list[BlockHash]]

    def can_swap_out(self, request: Request) -> bool:
        """True when the CPU pool has a page for every device block ``swap_out`` would move."""
        n = self._num_blocks_to_swap(request)
        return n > 0 and self.host.can_allocate_swap(n)

    def _num_blocks_to_swap(self, request: Request) -> int:
        """Live blocks of ``request`` its windows still see (what ``swap_out`` moves)."""
        total = 0
        for mgr in self.groups:
            table = mgr.tables.get(request.request_id)
            if table is not None:
                skip = min(mgr.num_skipped_blocks(request.num_computed_tokens), len(table.blocks))
                total += len(table.blocks) - max(skip, table.num_null)
        return total

    def _num_swapped(self, request: Request) -> int:
        return sum(
            len(mgr.tables[request.request_id].cpu_block_ids)
            for mgr in self.groups
            if request.request_id in mgr.tables
        )

    def can_swap_in(self, request: Request, reserve_watermark: bool = True) -> bool:
        """True when the device pool can take back every swapped block (plus the watermark)."""
        n = self._num_swapped(request)
        if n == 0:
            return False
        reserve = self.watermark_blocks if reserve_watermark else 0
        return self.pool.num_free_blocks - n >= reserve

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's live blocks to CPU pages: returns (device, cpu) block pairs.

        Null slots stay null (nothing to move). Pages a window no longer sees are freed first,
        not moved: swapped back in, they would be freed by the very next allocation, in the
        swap-in's own step, where another swap-in could be given them as its destination (two
        host -> device copies into one block in one plan, which a batched copy applies in no
        defined order). The device blocks lose this request's reference (shared ones stay with
        their other holders); the copy must happen before any of them is written again.
        """
        if not self.can_swap_out(request):
            raise ValueError(f"no room to swap out request {request.request_id!r}")
        pairs: list[tuple[int, int]] = []
        for mgr in self.groups:
            table = mgr.tables[request.request_id]
            mgr.remove_skipped_blocks(table, request.num_computed_tokens)
            live = table.live
            cpu = self.host.allocate_swap(len(live))
            pairs.extend((b.block_id, c) for b, c in zip(live, cpu, strict=True))
            self.pool.free_blocks(reversed(live))
            del table.blocks[table.num_null :]
            del table.block_ids[table.num_null :]
            table.changed()
            table.cpu_block_ids = cpu
        return pairs

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Bring a swapped request's pages back: returns (cpu block, device block) pairs.

        The new device blocks are private; full ones are registered in the prefix cache again.
        """
        if not self.can_swap_in(request, reserve_watermark=False):
            raise ValueError(f"cannot swap in request {request.request_id!r}")
        pairs: list[tuple[int, int]] = []
        hashes = self._hashes[request.request_id]
        for mgr in self.groups:
            table = mgr.tables[request.request_id]
            new = self.pool.get_new_blocks(len(table.cpu_block_ids))
            pairs.extend((c, b.block_id) for c, b in zip(table.cpu_block_ids, new, strict=True))
            self.host.free_swap(table.cpu_block_ids)
            table.cpu_block_ids = []
            table.blocks.extend(new)
            table.block_ids.extend(b.block_id for b in new)
            table.changed()
            if self._uses_cache(request):
                table.num_cached = table.num_null
                num_full = min(len(hashes), len(table.blocks))
                self._note_registered(mgr.cache_blocks(table, hashes, num_full))
        return pairs
