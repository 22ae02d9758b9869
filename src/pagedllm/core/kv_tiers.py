"""The lower tiers of the prefix cache (host pages, disk files) as seen by the KV manager.

Pure Python (no torch). The device pool's eviction hook calls ``write_back`` for a cached block
about to be reused: the block is copied to a host page under its ``(group, BlockHash)`` key
(write-back on eviction, not write-through: only blocks the device really drops cost a copy).
A prefix lookup that misses on the device asks ``lookup``; a hit is turned into a fresh device
block by ``load``, which records the copies the runner must make. Host evictions are spilled to
disk (when a disk tier is configured) under a stable digest of the block's whole token prefix.

Everything this class decides for a step is recorded as plain lists and handed out with the
step's plan by ``take_moves``; the runner applies them in this order (see
``SchedulerOutput``): disk writes (spills), device -> host (swap-outs, write-backs),
disk -> host reads, copy-on-write, host -> device (swap-ins, loads), then the forward.

Every entry a plan creates is recorded with it (``take_written``); if that plan fails the
scheduler passes the record back to ``rollback`` so no tier keeps an entry that was never
written from real KV.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from pagedllm.core.block_pool import BlockHash, KVBlock
from pagedllm.core.host_tier import HostKey, HostPool


@dataclass(frozen=True, slots=True)
class TierHit:
    """A prefix hit found below the device: on the host (``page``) or on disk (``name``)."""

    group: int
    block_hash: BlockHash
    page: int | None = None
    name: str | None = None  # disk entry name; set when the block is on disk only


@dataclass(slots=True)
class TierMoves:
    """One plan's copies between tiers (all plain ints and names)."""

    offload: list[tuple[int, int]] = field(default_factory=list)  # (device, host page)
    load: list[tuple[int, int]] = field(default_factory=list)  # (host page, device)
    disk_write: list[tuple[int, str]] = field(default_factory=list)  # (host page, name)
    disk_read: list[tuple[str, int]] = field(default_factory=list)  # (name, host page)
    disk_delete: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TierStats:
    """Counters (blocks) since start-up; the engine turns blocks into bytes."""

    host_hit_blocks: int = 0
    disk_hit_blocks: int = 0
    offloaded_blocks: int = 0  # device -> host write-backs
    loaded_blocks: int = 0  # host -> device loads
    disk_written_blocks: int = 0
    disk_read_blocks: int = 0


class DiskIndex:
    """Which blocks are in files: ``(group, digest) -> name``, bounded, with an LRU."""

    def __init__(self, capacity: int) -> None:
        """At most ``capacity`` entries (``kv_disk_bytes`` // bytes per entry)."""
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, str], str] = OrderedDict()
        self._pinned: set[tuple[int, str]] = set()  # read by the plan being built

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def name_of(group: int, digest: str) -> str:
        """The file stem of an entry."""
        return f"g{group}-{digest}"

    def lookup(self, group: int, digest: str) -> str | None:
        """The entry's name, or None."""
        return self._entries.get((group, digest))

    def pin(self, group: int, digest: str) -> None:
        """Mark most recently used and keep until ``end_step`` (the plan reads it)."""
        self._entries.move_to_end((group, digest))
        self._pinned.add((group, digest))

    def end_step(self) -> None:
        """The plan is complete: its entries may be evicted again."""
        self._pinned.clear()

    def add(self, group: int, digest: str) -> tuple[str | None, list[str]]:
        """Index a new entry: (its name or None if already there, names evicted for room)."""
        key = (group, digest)
        if key in self._entries or self.capacity <= 0:
            return None, []
        evicted = []
        while len(self._entries) >= self.capacity:
            victim = next((k for k in self._entries if k not in self._pinned), None)
            if victim is None:
                return None, evicted  # every entry is read by this plan: keep them
            evicted.append(self._entries.pop(victim))
        name = self._entries[key] = self.name_of(group, digest)
        return name, evicted

    def drop(self, group: int, digest: str) -> str | None:
        """Forget an entry; returns its name (the file to delete) or None."""
        return self._entries.pop((group, digest), None)

    def names(self) -> list[str]:
        """Every indexed name, least recently used first."""
        return list(self._entries.values())


class KVTiers:
    """Host tier (and optional disk tier) behind one device pool (module docstring)."""

    def __init__(self, host: HostPool, disk_capacity: int = 0) -> None:
        """``host`` is shared with swap; ``disk_capacity`` entries (0: no disk tier)."""
        self.host = host
        self.disk = DiskIndex(disk_capacity) if disk_capacity > 0 else None
        self.stats = TierStats()
        self._moves = TierMoves()
        # entries created by the plan being built: ("host", key, src) / ("disk", group, digest)
        self._written: list[tuple] = []
        self._digests: dict[BlockHash, str] = {}

    @property
    def caching(self) -> bool:
        """True when evicted device blocks are kept in a lower tier."""
        return self.host.enable_cache and self.host.num_pages > 0

    def counters(self, bytes_per_block: int) -> dict[str, int]:
        """Hits per tier, bytes moved per direction and occupancy (``EngineStats``' fields)."""
        stats, disk = self.stats, self.disk
        return {
            "host_tier_hit_blocks": stats.host_hit_blocks,
            "disk_tier_hit_blocks": stats.disk_hit_blocks,
            "tier_bytes_to_host": stats.offloaded_blocks * bytes_per_block,
            "tier_bytes_to_device": stats.loaded_blocks * bytes_per_block,
            "disk_bytes_written": stats.disk_written_blocks * bytes_per_block,
            "disk_bytes_read": stats.disk_read_blocks * bytes_per_block,
            "host_tier_blocks": self.host.num_cached,
            "host_swap_blocks": self.host.num_swap,
            "host_blocks_total": self.host.num_pages,
            "disk_tier_blocks": 0 if disk is None else len(disk),
            "disk_tier_blocks_total": 0 if disk is None else disk.capacity,
        }

    # ------------------------------------------------------------- digests
    def digest(self, block_hash: BlockHash) -> str:
        """A stable (cross-process) digest of the block's whole token prefix and extra keys.

        Python's ``hash`` is not stable across processes, so the disk tier keys on this.
        """
        out = self._digests.get(block_hash)
        if out is not None:
            return out
        chain = []
        node: BlockHash | None = block_hash
        while node is not None and node not in self._digests:
            chain.append(node)
            node = node.parent
        parent = b"" if node is None else bytes.fromhex(self._digests[node])
        if len(self._digests) > 200_000:
            self._digests.clear()  # a memo only: recomputed on demand
        for item in reversed(chain):
            h = hashlib.sha256(parent)
            h.update(struct.pack(f"<{len(item.token_ids)}q", *item.token_ids))
            h.update(repr(item.extra_keys).encode())
            parent = h.digest()
            self._digests[item] = parent.hex()
        return self._digests[block_hash]

    # ------------------------------------------------------------ device side
    def write_back(self, block: KVBlock) -> None:
        """The pool's eviction hook: copy cached ``block`` to a host page before its reuse."""
        key: HostKey = (block.cache_group, block.block_hash)
        page = self.host.store(key, block.block_id)
        self._spill_evicted()
        if page is None:
            return
        self._moves.offload.append((block.block_id, page))
        self._written.append(("host", key, block.block_id))
        self.stats.offloaded_blocks += 1

    def lookup(self, group: int, block_hash: BlockHash) -> TierHit | None:
        """A host or disk hit for a block the device misses, or None. No side effect."""
        if not self.caching:
            return None
        page = self.host.lookup((group, block_hash), block_hash.token_ids)
        if page is not None:
            return TierHit(group, block_hash, page=page)
        if self.disk is not None:
            name = self.disk.lookup(group, self.digest(block_hash))
            if name is not None:
                return TierHit(group, block_hash, name=name)
        return None

    def reserve(self, hits: list[TierHit]) -> bool:
        """Pin the host pages of ``hits`` and give each disk hit a host page to read into;
        False (nothing reserved for disk hits) if the host pool has no room for them.

        Call before allocating device blocks for them, so no eviction can take those pages.
        """
        for hit in hits:
            if hit.page is not None:
                self.host.pin_for_load((hit.group, hit.block_hash))
            else:  # before any spill below could evict it
                self.disk.pin(hit.group, self.digest(hit.block_hash))
        if sum(1 for h in hits if h.page is None) > self.host.num_free + self.host.num_evictable():
            return False  # (get_computed_blocks stops a hit before this can happen)
        for hit in hits:
            key = (hit.group, hit.block_hash)
            if hit.page is not None:
                continue
            page = self.host.store(key, -1)  # disk: read into a host page (stays cached)
            assert page is not None, "room was checked above"
            self._spill_evicted()
            self._moves.disk_read.append((hit.name, page))
            self._written.append(("host", key, -1))
            self.stats.disk_hit_blocks += 1
            self.stats.disk_read_blocks += 1
        return True

    def load(self, hit: TierHit, device_block: int) -> None:
        """Record the copy that brings ``hit`` (reserved) into ``device_block``."""
        key = (hit.group, hit.block_hash)
        page = hit.page
        if page is None:
            page = self.host.entry(key).page
        else:
            self.stats.host_hit_blocks += 1
        self._moves.load.append((page, device_block))
        self.stats.loaded_blocks += 1

    def _spill_evicted(self) -> None:
        """Host pages evicted just now go to disk (written before the page is reused)."""
        for (group, block_hash), page in self.host.take_evicted():
            if self.disk is None:
                continue
            digest = self.digest(block_hash)
            name, dropped = self.disk.add(group, digest)
            self._moves.disk_delete.extend(dropped)
            if name is not None:
                # deletes run after writes in a plan: a name evicted and written again in
                # the same plan must not be deleted
                while name in self._moves.disk_delete:
                    self._moves.disk_delete.remove(name)
                self._moves.disk_write.append((page, name))
                self._written.append(("disk", group, digest))
                self.stats.disk_written_blocks += 1

    # --------------------------------------------------------------- plans
    def take_moves(self) -> TierMoves:
        """This plan's copies (clears them) and the end of its step for the host pool."""
        self._spill_evicted()  # swap allocations may have evicted cached pages
        moves, self._moves = self._moves, TierMoves()
        self.host.end_step()
        if self.disk is not None:
            self.disk.end_step()
        return moves

    def take_written(self) -> list[tuple]:
        """Entries the plan being handed out created (for ``rollback`` if it fails)."""
        out, self._written = self._written, []
        return out

    def rollback(self, written: list[tuple]) -> None:
        """A plan failed: forget the entries it created (their copies may not have run)."""
        for record in written:
            if record[0] == "host":
                self.host.drop(record[1], record[2])
                if record[2] == -1 and self.disk is not None:
                    # a failed disk read (a file corrupted since start-up?): never again
                    group, block_hash = record[1]
                    self._drop_disk(group, self.digest(block_hash))
            elif self.disk is not None:
                self._drop_disk(record[1], record[2])

    def _drop_disk(self, group: int, digest: str) -> None:
        name = self.disk.drop(group, digest)
        if name is not None:
            self._moves.disk_delete.append(name)

    def restore_disk(self, entries: list[tuple[int, str]]) -> list[str]:
        """Index the valid entries found on disk at start-up (oldest first); returns the
        names that did not fit the bound (the caller deletes those files)."""
        if self.disk is None:
            return []  # no disk tier (prefix caching off): leave the files alone
        dropped = []
        for group, digest in entries:
            dropped.extend(self.disk.add(group, digest)[1])
        return dropped

    def forget_block(self, block: KVBlock, block_hash: BlockHash, num_groups: int) -> None:
        """A registration of ``block`` is undone but the block was evicted meanwhile: drop the
        copies written back from it (they hold KV that a failed step never wrote)."""
        for group in range(num_groups):
            key = (group, block_hash)
            if self.host.drop(key, block.block_id):
                continue
            if self.disk is not None and self.host.entry(key) is None:
                self._drop_disk(group, self.digest(block_hash))
