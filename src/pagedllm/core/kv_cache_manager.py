"""Per-request block tables over one block pool, coordinated across KV cache groups.

Pure Python (no torch). Layers are grouped by attention type (``core/kv_cache_spec.py``); each
group has its own table per request and its own manager (``core/single_type_manager.py``):
full-attention groups keep every page, sliding-window groups free the pages outside the
window and leave the pool's null block in their slots. This class drives them together and is
what the scheduler talks to. A request's logical token ``t`` of a group's layers lives at slot
``table[t // block_size] * block_size + t % block_size`` of that group's table.

Invariants:

* Only this class (through the group managers) changes block ownership; a request holds one
  reference per live table entry; the null block is never counted.
* A block that new tokens will write into is never shared: ``allocate_slots`` copies a shared
  partly filled block first (copy-on-write) and reports ``(src, dst)`` via
  ``take_blocks_to_copy``. Full blocks are never written again, so they are shared freely.
* Full blocks are registered in the prefix cache at allocation time, when their KV is computed
  in the step being scheduled (vLLM v1 style): a request admitted later in the same step may
  hit them, which is safe because every layer writes the batch's K/V before attending.
* Prefix-cache hits: the longest prefix (whole blocks, never the last token) that every group
  can use: a full group needs every block of it, a window group only the blocks covering its
  last ``w - 1`` tokens (``SlidingWindowKVManager``'s rule).
* Registration is provisional until the step succeeds: every registration is recorded, the
  scheduler hands the records of a step out with its plan (``take_newly_cached``), and when
  that step fails ``uncache`` makes those blocks unfindable again, so no request can ever hit
  KV that was never written. (Every request that could have hit them was in the failed step.)
* Lower tiers (``core/kv_tiers.py``, on when ``host_tier``): one host pool
  (``core/host_tier.py``) serves swap and the host tier. A cached device block about to be
  reused is written back to a host page; a prefix lookup that misses on the device may hit the
  host (or disk) tier, and such a hit becomes a fresh device block that the runner loads before
  the forward; it is then registered like any other block (provisionally).
* Prefix-cache counters count tokens: ``prefix_cache_queries`` adds a request's token count and
  ``prefix_cache_hits`` its hit tokens, once per successful admission (re-admissions after a
  preemption included).
"""

from __future__ import annotations

from pagedllm.core.block_pool import BlockHash, BlockPool, KVBlock, make_block_hash
from pagedllm.core.host_tier import HostPool
from pagedllm.core.kv_swap import KVSwapMixin
from pagedllm.core.kv_tiers import KVTiers, TierHit, TierMoves
from pagedllm.core.prefix_lookup import GroupHits, find_prefix_hits
from pagedllm.core.request import Request
from pagedllm.core.single_type_manager import (
    GroupTable,
    SingleTypeKVManager,
    SlidingWindowKVManager,
)


def _check_positive_int(name: str, value: object, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")


class KVCacheManager(KVSwapMixin):
    """Block tables per request and KV cache group, prefix hits, forks, swap maps."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        watermark: float = 0.01,
        num_cpu_blocks: int = 0,
        group_windows: list[int | None] | None = None,
        host_tier: bool = False,
        disk_capacity: int = 0,
    ) -> None:
        """Build the device pool (and a CPU pool of ``num_cpu_blocks`` for swapping).

        With ``host_tier`` (and prefix caching) the CPU pages also keep evicted cached device
        blocks (the host tier); ``disk_capacity`` > 0 adds a disk tier of that many entries.

        ``group_windows`` has one entry per KV cache group (``KVCacheLayout.windows``): None
        for full attention, else the group's sliding window. Default: one full group. With a
        window group, block 0 becomes the null block, so ``num_blocks - 1`` are usable.
        """
        _check_positive_int("num_blocks", num_blocks)
        _check_positive_int("block_size", block_size)
        _check_positive_int("num_cpu_blocks", num_cpu_blocks, allow_zero=True)
        if not 0.0 <= watermark < 1.0:
            raise ValueError(f"watermark must be in [0, 1), got {watermark}")
        windows = list(group_windows) if group_windows else [None]
        has_window = any(w is not None for w in windows)
        if has_window and num_blocks < 2:
            raise ValueError("num_blocks must be at least 2 with a sliding-window group")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching, reserve_null_block=has_window)
        self.num_blocks = self.pool.num_usable_blocks
        self.watermark_blocks = int(watermark * self.num_blocks)
        self.groups: list[SingleTypeKVManager] = [
            SingleTypeKVManager(self.pool, block_size, g)
            if w is None
            else SlidingWindowKVManager(self.pool, block_size, g, w)
            for g, w in enumerate(windows)
        ]
        self.num_cpu_blocks = num_cpu_blocks
        # one host pool: swap pages of preempted requests and the host tier's cached pages
        self.host = HostPool(num_cpu_blocks, enable_cache=host_tier and enable_prefix_caching)
        self.tiers = KVTiers(self.host, disk_capacity if self.host.enable_cache else 0)
        if self.tiers.caching:
            self.pool.on_evict = self.tiers.write_back
        self._hashes: dict[str, list[BlockHash]] = {}  # per request: its full blocks' ids
        self._blocks_to_copy: list[tuple[int, int]] = []
        # prefix-cache registrations since the last take_newly_cached(): (block, its hash)
        self._newly_cached: list[tuple[KVBlock, BlockHash]] = []
        self.prefix_cache_queries = 0  # tokens looked up
        self.prefix_cache_hits = 0  # tokens found

    # ----------------------------------------------------------------- queries
    @property
    def num_groups(self) -> int:
        """KV cache groups (1 unless the model mixes attention types)."""
        return len(self.groups)

    @property
    def num_free_blocks(self) -> int:
        """Device blocks with ref_cnt 0 (cached-but-unreferenced included)."""
        return self.pool.num_free_blocks

    @property
    def num_cpu_free_blocks(self) -> int:
        """Host pages not owned by swapped requests (host-tier pages can be evicted for swap)."""
        return self.num_cpu_blocks - self.host.num_swap

    def usage(self) -> float:
        """Fraction of usable device blocks referenced by requests (0.0 when idle)."""
        return self.pool.usage()

    def request_ids(self) -> list[str]:
        """The requests that hold a table (blocks, or swapped pages)."""
        return list(self._hashes)

    def get_block_table(self, request_id: str) -> list[int]:
        """A copy of the request's block ids in group 0 (empty when it holds no blocks)."""
        table = self.groups[0].tables.get(request_id)
        return [] if table is None else list(table.block_ids)

    def get_block_tables(self, request_id: str) -> list[list[int]]:
        """Copies of the request's block ids in every group (null block in freed slots)."""
        out = []
        for mgr in self.groups:
            table = mgr.tables.get(request_id)
            out.append([] if table is None else list(table.block_ids))
        return out

    def group_block_tables(self, request_id: str) -> list[tuple[int, ...]] | None:
        """Every group's block ids as a snapshot tuple (the same object while the table does
        not change, so the runner can reuse its conversion), or None with one group."""
        if len(self.groups) == 1:
            return None
        return [mgr.tables[request_id].ids() for mgr in self.groups]

    def num_blocks_of(self, request_id: str) -> int:
        """How many live device blocks the request holds, over all groups."""
        total = 0
        for mgr in self.groups:
            table = mgr.tables.get(request_id)
            if table is not None:
                total += len(table.blocks) - table.num_null
        return total

    def max_blocks_needed(self, num_tokens: int, chunk: int) -> int:
        """Most blocks a request of ``num_tokens`` tokens ever holds at once, computed in
        steps of at most ``chunk`` tokens (window groups hold only their window)."""
        return sum(mgr.max_live_blocks(num_tokens, chunk) for mgr in self.groups)

    def num_blocks_to_extend(self, request: Request, end_slots: int) -> int:
        """New blocks the request needs for slots up to ``end_slots`` (copy-on-write not
        counted; pages the window frees first are counted as given back)."""
        total = 0
        for mgr in self.groups:
            table = mgr.tables.get(request.request_id)
            have = 0 if table is None else len(table.blocks)
            total += max(0, -(-end_slots // self.block_size) - have)
            if table is not None:
                skip = mgr.num_skipped_blocks(request.num_computed_tokens)
                total -= max(0, min(skip, have) - table.num_null)
        return total

    def _uses_cache(self, request: Request) -> bool:
        # prompt logprobs need logits for every prompt token, so those requests skip lookups
        return self.enable_prefix_caching and request.sampling_params.prompt_logprobs is None

    # --------------------------------------------------------------- allocation
    def get_computed_blocks(self, request: Request) -> tuple[GroupHits, int]:
        """Prefix-cache hits for a request that holds no blocks: (hits per group, tokens).

        The hit is the longest run of ``h`` whole blocks, never covering the last token (it
        must produce logits), that every group can use: full groups need blocks ``0 .. h-1``
        cached, window groups only those their window sees from position ``h * block_size``.
        Returns ``([], 0)`` without a hit. Takes no references.
        """
        if not self._uses_cache(request) or request.request_id in self._hashes:
            return [], 0
        return find_prefix_hits(
            self.pool, self.groups, self.tiers, self.block_size, request.all_token_ids
        )

    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        new_computed_blocks: GroupHits | None = None,
        reserve_watermark: bool = False,
        num_lookahead_tokens: int = 0,
    ) -> bool:
        """Make room for ``num_new_tokens`` more tokens of ``request``; False if the pool is
        too small (nothing allocated then; pages outside a window may have been freed).

        ``new_computed_blocks`` are prefix hits from ``get_computed_blocks`` (only for a request
        holding no blocks); they count as computed before the new tokens. With
        ``reserve_watermark`` (admissions), ``watermark_blocks`` must stay free afterwards.
        ``num_lookahead_tokens`` more slots are made writable for tokens not sampled yet
        (multi-step decoding); they are hashed into the prefix cache only once known, by a
        later call. Window groups first free the pages no new query can see; then shared
        blocks the new tokens write into are copied (copy-on-write), new blocks appended, and
        blocks that become full registered in the prefix cache.
        """
        rid = request.request_id
        is_new = rid not in self._hashes
        hits = new_computed_blocks or []
        if hits and not is_new:
            raise ValueError("new_computed_blocks is only for a request that holds no blocks")
        if not is_new and self._fits_in_place(request, num_new_tokens, num_lookahead_tokens):
            return True
        bs = self.block_size
        num_hit = len(hits[0]) if hits else 0
        start = request.num_computed_tokens + num_hit * bs
        end = start + num_new_tokens
        if end > request.num_tokens:
            raise ValueError(
                f"request {rid!r}: {end} tokens would be computed but it only "
                f"has {request.num_tokens}"
            )
        end_slots = end + num_lookahead_tokens
        tables = [mgr.tables.get(rid) for mgr in self.groups]
        needed = 0
        shared: list[list[int]] = []
        for mgr, table in zip(self.groups, tables, strict=True):
            if table is None:
                needed += max(0, -(-end_slots // bs) - num_hit)
                shared.append([])
                continue
            mgr.remove_skipped_blocks(table, start)
            shared.append(mgr.shared_slots(table, start, end_slots))
            needed += mgr.num_new_blocks(table, end_slots) + len(shared[-1])
        tier_hits = [b for row in hits for b in row if isinstance(b, TierHit)]
        device_hits = [b for row in hits for b in row if isinstance(b, KVBlock)]
        # a lower-tier hit needs a fresh device block to load into
        needed += sum(1 for b in device_hits if b.ref_cnt == 0) + len(tier_hits)
        reserve = self.watermark_blocks if reserve_watermark else 0
        if needed and self.pool.num_free_blocks - needed < reserve:
            return False
        if tier_hits and not self.tiers.reserve(tier_hits):
            return False
        if is_new:
            # a hit's identities are the cached blocks' own objects: the identities built
            # after them chain from those, so equality checks stop at the first shared parent
            self._hashes[rid] = self._hit_identities(request, hits, num_hit)
        # touch first, so the allocations below can never evict a hit
        self.pool.touch(device_hits)
        if new_computed_blocks is not None and self._uses_cache(request):
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += num_hit * bs
        for g, mgr in enumerate(self.groups):
            table = mgr.table(rid)
            if hits:
                mgr.add_hits(table, [self._load_hit(b) for b in hits[g]])
            for i in shared[g]:
                self._copy_on_write(table, i)
            mgr.append_new(table, mgr.num_new_blocks(table, end_slots))
        self._cache_full_blocks(request, end // bs)
        return True

    def _load_hit(self, hit: KVBlock | TierHit | None) -> KVBlock | None:
        """A device block for one prefix hit: itself, or a fresh block a lower tier's copy is
        loaded into before the forward (registered provisionally, like a computed block)."""
        if not isinstance(hit, TierHit):
            return hit
        (block,) = self.pool.get_new_blocks(1)
        self.tiers.load(hit, block.block_id)
        if self.pool.cache_full_block(block, hit.block_hash, hit.block_hash.token_ids, hit.group):
            self._note_registered([block])
        return block

    def _fits_in_place(
        self, request: Request, num_new_tokens: int, num_lookahead_tokens: int
    ) -> bool:
        """Fast path: every slot the new (and lookahead) tokens need is in a private block the
        request already holds (most decode steps, every continuation round that stays inside
        its blocks). Returns False (nothing allocated) when the general path is needed.
        """
        bs = self.block_size
        rid = request.request_id
        start = request.num_computed_tokens
        end = start + num_new_tokens
        last = -(-(end + num_lookahead_tokens) // bs)
        for mgr in self.groups:
            table = mgr.tables[rid]
            blocks = table.blocks
            if last > len(blocks):
                return False
            mgr.remove_skipped_blocks(table, start)
            for i in range(start // bs, last):
                if blocks[i].ref_cnt != 1:
                    return False
        if end > request.num_tokens:
            raise ValueError(
                f"request {rid!r}: {end} tokens would be computed but it only "
                f"has {request.num_tokens}"
            )
        self._cache_full_blocks(request, end // bs)
        return True

    def _copy_on_write(self, table: GroupTable, index: int) -> None:
        """Replace the shared block at ``index`` by a private copy and record (src, dst)."""
        src = table.blocks[index]
        (dst,) = self.pool.get_new_blocks(1)
        self.pool.free_blocks([src])
        table.blocks[index] = dst
        table.block_ids[index] = dst.block_id
        table.changed()
        self._blocks_to_copy.append((src.block_id, dst.block_id))

    def _cache_full_blocks(self, request: Request, num_full: int) -> None:
        """Extend the request's block identities to ``num_full`` blocks and register every
        group's live blocks among them in the prefix cache."""
        if not self._uses_cache(request):
            return
        hashes = self._hashes[request.request_id]
        if num_full > len(hashes):
            bs = self.block_size
            tokens = request.all_token_ids
            parent = hashes[-1] if hashes else None
            for i in range(len(hashes), num_full):
                parent = make_block_hash(parent, tokens[i * bs : (i + 1) * bs])
                hashes.append(parent)
        for mgr in self.groups:
            table = mgr.tables[request.request_id]
            if table.num_cached < num_full:
                self._note_registered(mgr.cache_blocks(table, hashes, num_full))

    def _hit_identities(self, request: Request, hits: GroupHits, num_hit: int) -> list[BlockHash]:
        """Identities of the ``num_hit`` hit blocks: a cached block's own where some group holds
        one (window groups hold only the last few), else built from the tokens."""
        if not self._uses_cache(request):
            return []
        bs = self.block_size
        tokens = request.all_token_ids
        identities: list[BlockHash] = []
        parent: BlockHash | None = None
        for i in range(num_hit):
            cached = next((row[i].block_hash for row in hits if row[i] is not None), None)
            parent = cached or make_block_hash(parent, tokens[i * bs : (i + 1) * bs])
            identities.append(parent)
        return identities

    def _note_registered(self, blocks: list[KVBlock]) -> None:
        """Record registrations until their step is known to succeed (``take_newly_cached``)."""
        self._newly_cached.extend((b, b.block_hash) for b in blocks)

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
            if block.block_hash is block_hash:
                self.pool.uncache_block(block, block_hash)
            elif self.tiers.caching:
                # evicted meanwhile: its write-back copied KV that was never written
                self.tiers.forget_block(block, block_hash, len(self.groups))

    def take_tier_moves(self) -> TierMoves:
        """The copies between tiers recorded since the last call (ends the host pool's step)."""
        return self.tiers.take_moves()

    def take_tier_written(self) -> list[tuple]:
        """Lower-tier entries created since the last call (``discard_tier_written`` undoes)."""
        return self.tiers.take_written()

    def discard_tier_written(self, written: list[tuple]) -> None:
        """The plan that created ``written`` failed: those entries may hold garbage."""
        self.tiers.rollback(written)

    def take_blocks_to_copy(self) -> list[tuple[int, int]]:
        """Copy-on-write pairs (src, dst) recorded since the last call; clears the list."""
        out, self._blocks_to_copy = self._blocks_to_copy, []
        return out

    # ------------------------------------------------------------ fork / free
    def fork(self, parent: Request, child: Request) -> None:
        """Let ``child`` share every live block of ``parent`` (one more reference each)."""
        if child.request_id in self._hashes:
            raise ValueError(f"request {child.request_id!r} already holds blocks")
        if parent.request_id not in self._hashes:
            raise ValueError(f"parent request {parent.request_id!r} holds no blocks to share")
        for mgr in self.groups:
            src = mgr.tables[parent.request_id]
            self.pool.touch(src.live)
            mgr.tables[child.request_id] = GroupTable(
                list(src.blocks), list(src.block_ids), src.num_null, src.num_cached
            )
        self._hashes[child.request_id] = list(self._hashes[parent.request_id])

    def free(self, request: Request) -> None:
        """Give back every device and CPU block of ``request`` (no-op if it holds none)."""
        if self._hashes.pop(request.request_id, None) is None:
            return
        for mgr in self.groups:
            table = mgr.free(request.request_id)
            if table is not None and table.cpu_block_ids:
                self.host.release_swap_now(table.cpu_block_ids)
