"""Per-request block tables on top of the block pool: allocate, append, fork, free, swap.

Pure Python (no torch). A request's logical token ``t`` lives at physical slot
``block_table[t // block_size] * block_size + t % block_size``.

Invariants:

* Only this class changes block ownership; a request holds one reference per table entry.
* A block that new tokens will write into is never shared: ``allocate_slots`` copies a shared
  partly filled block first (copy-on-write) and reports ``(src, dst)`` via
  ``take_blocks_to_copy``. Full blocks are never written again, so they are shared freely.
* Full blocks are registered in the prefix cache at allocation time, when their KV is computed
  in the step being scheduled (vLLM v1 style): a request admitted later in the same step may
  hit them, which is safe because every layer writes the batch's K/V before attending.
* Registration is provisional until the step succeeds: every registration is recorded, the
  scheduler hands the records of a step out with its plan (``take_newly_cached``), and when
  that step fails ``uncache`` makes those blocks unfindable again, so no request can ever hit
  KV that was never written. (Every request that could have hit them was in the failed step.)
* Prefix-cache counters count tokens: ``prefix_cache_queries`` adds a request's token count and
  ``prefix_cache_hits`` its hit tokens, once per successful admission (re-admissions after a
  preemption included).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedllm.core.block_pool import BlockHash, BlockPool, KVBlock, make_block_hash
from pagedllm.core.request import Request


@dataclass(slots=True)
class _Table:
    """The blocks of one request and the identities of its leading full blocks."""

    blocks: list[KVBlock] = field(default_factory=list)
    block_ids: list[int] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)
    cpu_block_ids: list[int] = field(default_factory=list)  # while swapped out


def _check_positive_int(name: str, value: object, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


class KVCacheManager:
    """Block tables per request, prefix-cache lookups, copy-on-write forks and swap maps."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        watermark: float = 0.01,
        num_cpu_blocks: int = 0,
    ) -> None:
        """Build the device pool (and a CPU pool of ``num_cpu_blocks`` for swapping)."""
        _check_positive_int("num_blocks", num_blocks)
        _check_positive_int("block_size", block_size)
        _check_positive_int("num_cpu_blocks", num_cpu_blocks, allow_zero=True)
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {watermark}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self.num_cpu_blocks = num_cpu_blocks
        # CPU pages are plain storage: no prefix caching there
        self.cpu_pool = BlockPool(num_cpu_blocks, False) if num_cpu_blocks > 0 else None
        self._tables: dict[str, _Table] = {}
        self._blocks_to_copy: list[tuple[int, int]] = []
        # prefix-cache registrations since the last take_newly_cached(): (block, its hash)
        self._newly_cached: list[tuple[KVBlock, BlockHash]] = []
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    # ----------------------------------------------------------------- queries
    @property
    def num_free_blocks(self) -> int:
        """Device blocks with ref_cnt 0 (cached-but-unreferenced included)."""
        return self.pool.num_free_blocks

    @property
    def num_cpu_free_blocks(self) -> int:
        """Free CPU swap blocks (0 without swap space)."""
        return 0 if self.cpu_pool is None else self.cpu_pool.num_free_blocks

    def usage(self) -> float:
        """Fraction of device blocks referenced by requests (0.0 when idle)."""
        return self.pool.usage()

    def get_block_table(self, request_id: str) -> list[int]:
        """A copy of the request's block ids (empty when it holds no blocks)."""
        table = self._tables.get(request_id)
        return [] if table is None else list(table.block_ids)

    def num_blocks_of(self, request_id: str) -> int:
        """How many device blocks the request's table holds."""
        table = self._tables.get(request_id)
        return 0 if table is None else len(table.blocks)

    def _uses_cache(self, request: Request) -> bool:
        # prompt logprobs need logits for every prompt token, so those requests skip lookups
        return self.enable_prefix_caching and request.sampling_params.prompt_logprobs is None

    # --------------------------------------------------------------- allocation
    def get_computed_blocks(self, request: Request) -> tuple[list[KVBlock], int]:
        """Prefix-cache hits for a request that holds no blocks: (blocks, hit tokens).

        The hit never covers all tokens: at most ``num_tokens - 1`` rounded down to whole
        blocks, so the last token is computed and produces logits. Takes no references.
        """
        if not self._uses_cache(request) or request.request_id in self._tables:
            return [], 0
        bs = self.block_size
        tokens = request.all_token_ids
        hits: list[KVBlock] = []
        parent: BlockHash | None = None
        for i in range((len(tokens) - 1) // bs):
            chunk = tokens[i * bs : (i + 1) * bs]
            block = self.pool.get_cached_block(make_block_hash(parent, chunk), chunk)
            if block is None:
                break
            hits.append(block)
            # chain from the cached object so later equality checks stop at identity
            parent = block.block_hash
        return hits, len(hits) * bs

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: list[KVBlock] | None = None,
        reserve_watermark: bool = False,
        num_lookahead_tokens: int = 0,
    ) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``request``; False (no change) if full.

        ``new_computed_blocks`` are prefix hits from ``get_computed_blocks`` (only for a request
        holding no blocks); they count as computed before the new tokens. With
        ``reserve_watermark`` (admissions), ``watermark_blocks`` must stay free afterwards.
        ``num_lookahead_tokens`` more slots are made writable for tokens not sampled yet
        (multi-step decoding); they are hashed into the prefix cache only once known, by a
        later call. Copies shared blocks the new tokens write into (copy-on-write) and
        registers blocks that become full in the prefix cache.
        """
        table = self._tables.get(request.request_id)
        bs = self.block_size
        if table is not None and not new_computed_blocks:
            if self._fits_in_place(request, table, num_new_tokens, num_lookahead_tokens):
                return True
        hits = new_computed_blocks or []
        is_new = table is None
        if is_new:
            table = _Table()
        elif hits:
            raise ValueError("new_computed_blocks is only for a request that holds no blocks")
        start = request.num_computed_tokens + len(hits) * bs
        end = start + num_new_tokens
        if end > request.num_tokens:
            raise ValueError(
                f"request {request.request_id!r}: {end} tokens would be computed but it only "
                f"has {request.num_tokens}"
            )
        num_have = len(table.blocks) + len(hits)
        end_slots = end + num_lookahead_tokens
        num_new_blocks = max(0, -(-end_slots // bs) - num_have)
        # existing blocks the new tokens write into that someone else also holds
        shared = [
            i
            for i in range(start // bs, min(-(-end_slots // bs), len(table.blocks)))
            if table.blocks[i].ref_cnt > 1
        ]
        revived = sum(1 for b in hits if b.ref_cnt == 0)
        needed = num_new_blocks + len(shared) + revived
        reserve = self.watermark_blocks if reserve_watermark else 0
        if needed and self.pool.num_free_blocks - needed < reserve:
            return False
        if is_new:
            self._tables[request.request_id] = table
        if hits:
            # touch first, so the allocations below can never evict a hit
            self.pool.touch(hits)
            table.blocks.extend(hits)
            table.block_ids.extend(b.block_id for b in hits)
            table.hashes.extend(b.block_hash for b in hits)
        if new_computed_blocks is not None and self._uses_cache(request):
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += len(hits) * bs
        for i in shared:
            self._copy_on_write(table, i)
        if num_new_blocks:
            new = self.pool.get_new_blocks(num_new_blocks)
            table.blocks.extend(new)
            table.block_ids.extend(b.block_id for b in new)
        if end // bs > len(table.hashes) and self._uses_cache(request):
            self._cache_full_blocks(table, request.all_token_ids, end // bs)
        return True

    def _fits_in_place(
        self, request: Request, table: _Table, num_new_tokens: int, num_lookahead_tokens: int
    ) -> bool:
        """Fast path: every slot the new (and lookahead) tokens need is in a private block the
        request already holds (most decode steps, every continuation round that stays inside
        its blocks). Returns False (nothing done) when the general path is needed.
        """
        bs = self.block_size
        start = request.num_computed_tokens
        end = start + num_new_tokens
        last = -(-(end + num_lookahead_tokens) // bs)
        blocks = table.blocks
        if last > len(blocks):
            return False
        for i in range(start // bs, last):
            if blocks[i].ref_cnt != 1:
                return False
        if end > request.num_tokens:
            raise ValueError(
                f"request {request.request_id!r}: {end} tokens would be computed but it only "
                f"has {request.num_tokens}"
            )
        if end // bs > len(table.hashes) and self._uses_cache(request):
            self._cache_full_blocks(table, request.all_token_ids, end // bs)
        return True

    def _copy_on_write(self, table: _Table, index: int) -> None:
        """Replace the shared block at ``index`` by a private copy and record (src, dst)."""
        src = table.blocks[index]
        (dst,) = self.pool.get_new_blocks(1)
        self.pool.free_blocks([src])
        table.blocks[index] = dst
        table.block_ids[index] = dst.block_id
        self._blocks_to_copy.append((src.block_id, dst.block_id))

    def _cache_full_blocks(self, table: _Table, tokens: list[int], num_full: int) -> None:
        """Hash and register blocks ``len(table.hashes) .. num_full - 1`` (full after this step)."""
        bs = self.block_size
        parent = table.hashes[-1] if table.hashes else None
        for i in range(len(table.hashes), num_full):
            chunk = tokens[i * bs : (i + 1) * bs]
            block_hash = make_block_hash(parent, chunk)
            self._register(table.blocks[i], block_hash)
            table.hashes.append(block_hash)
            parent = block_hash

    def _register(self, block: KVBlock, block_hash: BlockHash) -> None:
        """Make a full block findable, recording it until its step is known to succeed."""
        if self.pool.cache_full_block(block, block_hash, block_hash.token_ids):
            self._newly_cached.append((block, block_hash))

    def take_newly_cached(self) -> list[tuple[KVBlock, BlockHash]]:
        """Blocks registered in the prefix cache since the last call (clears the record).

        The scheduler attaches them to the step whose KV writes they wait for.
        """
        out, self._newly_cached = self._newly_cached, []
        return out

    def uncache(self, entries: list[tuple[KVBlock, BlockHash]]) -> None:
        """Undo registrations from ``take_newly_cached`` whose step failed (KV never written).

        Each block stops being findable unless it was evicted and reused meanwhile; free ones
        go to the head of the free queue. Ownership and reference counts do not change.
        """
        for block, block_hash in entries:
            self.pool.uncache_block(block, block_hash)

    def take_blocks_to_copy(self) -> list[tuple[int, int]]:
        """Copy-on-write pairs (src, dst) recorded since the last call; clears the list."""
        out, self._blocks_to_copy = self._blocks_to_copy, []
        return out

    # ------------------------------------------------------------ fork / free
    def fork(self, parent: Request, child: Request) -> None:
        """Let ``child`` share every block of ``parent`` (one more reference each)."""
        if child.request_id in self._tables:
            raise ValueError(f"request {child.request_id!r} already holds blocks")
        src = self._tables.get(parent.request_id)
        if src is None:
            raise ValueError(f"parent request {parent.request_id!r} holds no blocks to share")
        self.pool.touch(src.blocks)
        self._tables[child.request_id] = _Table(
            list(src.blocks), list(src.block_ids), list(src.hashes)
        )

    def free(self, request: Request) -> None:
        """Give back every device and CPU block of ``request`` (no-op if it holds none)."""
        table = self._tables.pop(request.request_id, None)
        if table is None:
            return
        # last block first: deeper prefix blocks are evicted before their parents
        self.pool.free_blocks(reversed(table.blocks))
        if table.cpu_block_ids and self.cpu_pool is not None:
            self.cpu_pool.free_blocks(self.cpu_pool.blocks[i] for i in table.cpu_block_ids)

    # ------------------------------------------------------------------- swap
    def can_swap_out(self, request: Request) -> bool:
        """True when the CPU pool has a page for every device block of ``request``."""
        n = self.num_blocks_of(request.request_id)
        return n > 0 and self.num_cpu_free_blocks >= n

    def can_swap_in(self, request: Request, reserve_watermark: bool = True) -> bool:
        """True when the device pool can take back every swapped block (plus the watermark)."""
        table = self._tables.get(request.request_id)
        if table is None or not table.cpu_block_ids:
            return False
        reserve = self.watermark_blocks if reserve_watermark else 0
        return self.pool.num_free_blocks - len(table.cpu_block_ids) >= reserve

    def swap_out(self, request: Request) -> list[tuple[int, int]]:
        """Move the request's blocks to CPU pages: returns (device block, cpu block) pairs.

        The device blocks lose this request's reference (shared ones stay with their other
        holders); the copy must happen before any of them is written again.
        """
        if not self.can_swap_out(request):
            raise ValueError(f"no room to swap out request {request.request_id!r}")
        table = self._tables[request.request_id]
        cpu = self.cpu_pool.get_new_blocks(len(table.blocks))
        pairs = [(b.block_id, c.block_id) for b, c in zip(table.blocks, cpu, strict=True)]
        self.pool.free_blocks(reversed(table.blocks))
        table.blocks, table.block_ids = [], []
        table.cpu_block_ids = [c.block_id for c in cpu]
        return pairs

    def swap_in(self, request: Request) -> list[tuple[int, int]]:
        """Bring a swapped request's pages back: returns (cpu block, device block) pairs.

        The new device blocks are private; full ones are registered in the prefix cache again.
        """
        if not self.can_swap_in(request, reserve_watermark=False):
            raise ValueError(f"cannot swap in request {request.request_id!r}")
        table = self._tables[request.request_id]
        new = self.pool.get_new_blocks(len(table.cpu_block_ids))
        pairs = [(c, b.block_id) for c, b in zip(table.cpu_block_ids, new, strict=True)]
        self.cpu_pool.free_blocks(self.cpu_pool.blocks[i] for i in table.cpu_block_ids)
        table.cpu_block_ids = []
        table.blocks, table.block_ids = new, [b.block_id for b in new]
        if self._uses_cache(request):
            for block, block_hash in zip(new, table.hashes, strict=False):
                self._register(block, block_hash)
        return pairs
