"""Block tables of one KV cache group: full attention, or a sliding window that frees pages.

Pure Python (no torch). ``KVCacheManager`` (the coordinator) owns one manager per group of
``core/kv_cache_spec.py`` and drives them together; every group draws from the same
``BlockPool``. A request's table in a group is a list of blocks in which a **prefix** of slots
may hold the pool's null block: pages a window layer can no longer see (freed back to the pool)
or never needed (a prefix-cache hit that covers only the window). The null block is never
reference counted and never written; kernels never read it (they start at the window).

Invariants (per group, per request):

* ``blocks[:num_null]`` are the null block, ``blocks[num_null:]`` are live and hold one
  reference each; only live blocks are ever touched, freed, copied or swapped.
* A sliding-window group with window ``w`` frees, before a step that computes tokens from
  position ``c`` on, every block wholly before position ``c - w + 1`` (the first key the step's
  first query sees). So after allocating a step of ``n`` new tokens and ``k`` lookahead slots it
  holds at most ``ceil((w - 1 + n + k) / block_size) + 1`` live blocks.
* ``num_cached`` leading slots are registered in the prefix cache (or null); it only grows,
  even when a failed step's registrations are undone (``KVCacheManager.uncache``: those
  blocks just stop being findable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.core.block_pool import BlockHash, BlockPool, KVBlock


@dataclass(slots=True)
class GroupTable:
    """One request's blocks in one group (see the module docstring)."""

    blocks: list[KVBlock] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    num_null: int = 0  # leading null slots
    num_cached: int = 0  # leading slots registered in the prefix cache (null ones included)
    cpu_block_ids: list[int] = field(default_factory=list)  # live blocks while swapped out
    # ``block_ids`` as a tuple, kept until the table changes: a decode step hands the runner
    # every group's table, and copying 7 groups x 256 tables of ~500 ids each step cost more
    # host time than the step's device work (benchmarks/hybrid_host_profile.py)
    _ids: tuple[int, ...] | None = None

    @property
    def live(self) -> list[KVBlock]:
        """The live (non-null) blocks, first to last."""
        return self.blocks[self.num_null :]

    def ids(self) -> tuple[int, ...]:
        """``block_ids`` as an immutable snapshot; the same object until ``changed()``."""
        if self._ids is None:
            self._ids = tuple(self.block_ids)
        return self._ids

    def changed(self) -> None:
        """Drop the snapshot: every change of ``block_ids`` must call this."""
        self._ids = None


class SingleTypeKVManager:
    """Tables of one group with full attention: every page stays until the request ends."""

    sliding_window: int | None = None

    def __init__(self, pool: BlockPool, block_size: int, group_id: int) -> None:
        """Manage group ``group_id``'s tables over ``pool`` (pages of ``block_size`` tokens)."""
        self.pool = pool
        self.block_size = block_size
        self.group_id = group_id
        self.tables: dict[str, GroupTable] = {}

    # ------------------------------------------------------------- window rules
    def num_skipped_blocks(self, num_computed_tokens: int) -> int:
        """Leading blocks no query from position ``num_computed_tokens`` on can see (0 here)."""
        return 0

    def max_live_blocks(self, num_tokens: int, chunk: int) -> int:
        """Most live blocks one request of ``num_tokens`` ever holds, in steps of <= ``chunk``."""
        return -(-num_tokens // self.block_size)

    def hit_window_blocks(self, num_hit_blocks: int) -> int:
        """First block a prefix hit of ``num_hit_blocks`` blocks must include (0: all)."""
        return 0

    # ------------------------------------------------------------------- tables
    def table(self, request_id: str) -> GroupTable:
        """The request's table, created empty on first use."""
        table = self.tables.get(request_id)
        if table is None:
            table = self.tables[request_id] = GroupTable()
        return table

    def remove_skipped_blocks(self, table: GroupTable, num_computed_tokens: int) -> None:
        """Free the live blocks wholly outside the window and put null blocks in their slots.

        Freed last-first, so the deeper blocks of a prefix chain are evicted before parents.
        A full-attention group skips nothing (``SingleTypeKVManager`` returns at once: this
        runs for every request and group each step).
        """
        if self.sliding_window is None:
            return
        skip = min(self.num_skipped_blocks(num_computed_tokens), len(table.blocks))
        if skip <= table.num_null:
            return
        null = self.pool.null_block
        self.pool.free_blocks(reversed(table.blocks[table.num_null : skip]))
        for i in range(table.num_null, skip):
            table.blocks[i] = null
            table.block_ids[i] = null.block_id
        table.num_null = skip
        table.num_cached = max(table.num_cached, skip)
        table.changed()

    def num_new_blocks(self, table: GroupTable, end_slots: int) -> int:
        """Blocks to allocate so the table has a slot for every position < ``end_slots``.

        A table always spans the request's computed tokens, so the window's skipped slots
        are already in it (null or about to be freed): new blocks are only ever appended.
        """
        return max(0, -(-end_slots // self.block_size) - len(table.blocks))

    def shared_slots(self, table: GroupTable, start: int, end_slots: int) -> list[int]:
        """Indices of live blocks that tokens ``start .. end_slots - 1`` write into and that
        another holder shares (they need copy-on-write)."""
        bs = self.block_size
        first = max(start // bs, table.num_null)
        last = min(-(-end_slots // bs), len(table.blocks))
        return [i for i in range(first, last) if table.blocks[i].ref_cnt > 1]

    def add_hits(self, table: GroupTable, hits: list[KVBlock | None]) -> None:
        """Append prefix-cache hits (``None`` = a slot the window does not need: null)."""
        null = self.pool.null_block
        for block in hits:
            if block is None:
                assert len(table.blocks) == table.num_null, "null slots form a prefix"
                table.num_null += 1
                block = null
            table.blocks.append(block)
            table.block_ids.append(block.block_id)
        table.num_cached = len(table.blocks)
        table.changed()

    def append_new(self, table: GroupTable, n: int) -> None:
        """Append ``n`` fresh private blocks."""
        if n <= 0:
            return
        new = self.pool.get_new_blocks(n)
        table.blocks.extend(new)
        table.block_ids.extend(b.block_id for b in new)
        table.changed()

    def cache_blocks(
        self, table: GroupTable, hashes: list[BlockHash], num_full: int
    ) -> list[KVBlock]:
        """Register live blocks ``num_cached .. num_full - 1`` under ``hashes``; returns the
        blocks newly indexed (so a failed step can take them out again)."""
        registered = []
        for i in range(max(table.num_cached, table.num_null), num_full):
            block_hash = hashes[i]
            if self.pool.cache_full_block(
                table.blocks[i], block_hash, block_hash.token_ids, self.group_id
            ):
                registered.append(table.blocks[i])
        table.num_cached = max(table.num_cached, num_full)
        return registered

    def free(self, request_id: str) -> GroupTable | None:
        """Drop the request's table, freeing its live blocks last-first; returns it."""
        table = self.tables.pop(request_id, None)
        if table is not None:
            self.pool.free_blocks(reversed(table.live))
        return table


class SlidingWindowKVManager(SingleTypeKVManager):
    """Tables of a sliding-window group: pages wholly outside the window are freed.

    Prefix-cache rule: a hit of ``h`` blocks (tokens ``0 .. h * block_size - 1``) is usable by
    a window group when the blocks covering the last ``w - 1`` tokens of the hit, i.e. blocks
    ``(h * block_size - w + 1) // block_size .. h - 1``, are all cached: the first computed
    token (position ``h * block_size``) sees exactly those keys. Earlier blocks may be missing
    (evicted, or never kept): their slots get the null block.
    """

    def __init__(self, pool: BlockPool, block_size: int, group_id: int, window: int) -> None:
        """A group whose layers see the last ``window`` positions (query included)."""
        super().__init__(pool, block_size, group_id)
        self.sliding_window = window

    def num_skipped_blocks(self, num_computed_tokens: int) -> int:
        """Blocks wholly before position ``num_computed_tokens - w + 1``."""
        return max(0, num_computed_tokens - self.sliding_window + 1) // self.block_size

    def max_live_blocks(self, num_tokens: int, chunk: int) -> int:
        """Window plus one chunk of new tokens (and one block of misalignment), capped."""
        bs = self.block_size
        span = self.sliding_window - 1 + max(1, chunk)
        return min(-(-num_tokens // bs), -(-span // bs) + 1)

    def hit_window_blocks(self, num_hit_blocks: int) -> int:
        """First block of a hit of ``num_hit_blocks`` blocks that the window still sees."""
        return self.num_skipped_blocks(num_hit_blocks * self.block_size)
