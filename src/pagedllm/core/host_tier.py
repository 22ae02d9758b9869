"""The host pool: CPU KV pages shared by swap space and the host tier of the prefix cache.

Pure Python (no torch). One pool of ``num_pages`` host pages (the CPU pages the cache engine
allocates, pinned on CUDA) holds two kinds of pages:

* **swap pages**, owned by a preempted request until it is swapped back in;
* **cached pages**, copies of evicted device blocks keyed by ``(KV cache group, BlockHash)``,
  findable by a prefix lookup, with an LRU of their own.

Invariants:

* A page is in exactly one of: free, swap-owned, cached. ``num_free + num_swap + num_cached ==
  num_pages`` at all times, so the tier can never exceed its bound.
* Swap takes precedence: ``allocate_swap`` takes free pages first, then evicts the least
  recently used cached pages (never one pinned this step).
* A page handed out or read this step is *pinned* until ``end_step``: it is never evicted or
  reused within the step, so the runner's fixed copy order (spill to disk, device -> host,
  disk -> host, host -> device) can never read a page that the same step overwrote. Pages a
  swap-in reads are freed only at ``end_step`` for the same reason.
* An entry is created only by ``store`` (a write-back the runner performs this step) or
  ``store_from_disk`` (a disk read this step). The KV manager drops the entries of a step that
  fails (``drop``), so no entry survives that was not written from real KV.
* Evictions of cached pages are reported by ``take_evicted`` (``(key, page)``; the disk tier
  writes them behind before the page is reused; the runner's order guarantees that).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from pagedllm.core.block_pool import BlockHash

HostKey = tuple[int, BlockHash]  # (KV cache group, block identity)


@dataclass(slots=True)
class HostEntry:
    """A cached host page: where it lives and which device block it was written from."""

    page: int
    src_block: int  # device block id of the write-back (-1: read from disk)


class HostPool:
    """Host pages for swap and for the host tier (see the module docstring)."""

    def __init__(self, num_pages: int, enable_cache: bool = True) -> None:
        """``num_pages`` pages; with ``enable_cache`` False only swap uses them."""
        if isinstance(num_pages, bool) or not isinstance(num_pages, int) or num_pages < 0:
            raise ValueError(f"num_pages must be a non-negative integer, got {num_pages!r}")
        self.num_pages = num_pages
        self.enable_cache = enable_cache
        self._free: list[int] = list(range(num_pages - 1, -1, -1))  # a stack: page 0 first
        self._swap: set[int] = set()
        self._cached: OrderedDict[HostKey, HostEntry] = OrderedDict()  # first = LRU
        self._cached_pages: set[int] = set()
        self._pinned: set[int] = set()
        self._free_at_end: list[int] = []
        self._evicted: list[tuple[HostKey, int]] = []

    # ----------------------------------------------------------------- queries
    @property
    def num_free(self) -> int:
        """Pages holding nothing (pages a swap-in reads this step not included yet)."""
        return len(self._free)

    @property
    def num_swap(self) -> int:
        """Pages owned by swapped-out requests (pages given back this step not included)."""
        return len(self._swap)

    @property
    def num_cached(self) -> int:
        """Pages of the host tier (findable copies of evicted device blocks)."""
        return len(self._cached)

    def num_evictable(self) -> int:
        """Cached pages that may be evicted now (not pinned this step)."""
        pinned_cached = sum(1 for p in self._pinned if p in self._cached_pages)
        return len(self._cached) - pinned_cached

    def lookup(self, key: HostKey, token_ids: Sequence[int]) -> int | None:
        """The page cached under ``key`` (tokens compared once more), or None. No side effect."""
        entry = self._cached.get(key)
        if entry is None or key[1].token_ids != tuple(token_ids):
            return None
        return entry.page

    def entry(self, key: HostKey) -> HostEntry | None:
        """The entry under ``key`` (for tests and the KV manager's rollback)."""
        return self._cached.get(key)

    def keys(self) -> list[HostKey]:
        """Cached keys, least recently used first."""
        return list(self._cached)

    # ------------------------------------------------------------------- swap
    def can_allocate_swap(self, n: int) -> bool:
        """True when ``n`` pages can be given to swap (free ones plus evictable cached ones)."""
        return n <= len(self._free) + self.num_evictable()

    def allocate_swap(self, n: int) -> list[int]:
        """Take ``n`` pages for a swap-out, evicting LRU cached pages if needed."""
        if not self.can_allocate_swap(n):
            raise ValueError(f"the host pool cannot give {n} swap pages")
        pages = [self._take_page() for _ in range(n)]
        self._swap.update(pages)
        return pages

    def free_swap(self, pages: Sequence[int]) -> None:
        """Give back swap pages; a swap-in reads them this step, so they are free at end_step."""
        for page in pages:
            self._swap.remove(page)
            self._free_at_end.append(page)

    def release_swap_now(self, pages: Sequence[int]) -> None:
        """Give back swap pages nobody reads (a finished or aborted swapped request)."""
        for page in pages:
            self._swap.remove(page)
            if page in self._pinned:
                self._free_at_end.append(page)  # its swap-out copy may still be in flight
            else:
                self._free.append(page)

    # ------------------------------------------------------------------ cache
    def store(self, key: HostKey, src_block: int) -> int | None:
        """A page for a write-back of device block ``src_block`` under ``key``, or None.

        None when caching is off, the key is already cached (refreshed in the LRU instead), or
        no page can be freed. The page is pinned for this step.
        """
        if not self.enable_cache:
            return None
        if key in self._cached:
            self._cached.move_to_end(key)
            return None
        if not self._free and self.num_evictable() == 0:
            return None
        page = self._take_page()
        self._cached[key] = HostEntry(page, src_block)
        self._cached_pages.add(page)
        return page

    def pin_for_load(self, key: HostKey) -> int:
        """Mark the page under ``key`` as read this step (most recently used); returns it."""
        entry = self._cached[key]
        self._cached.move_to_end(key)
        self._pinned.add(entry.page)
        return entry.page

    def drop(self, key: HostKey, src_block: int | None = None) -> bool:
        """Remove the entry under ``key`` (only if written from ``src_block`` when given)."""
        entry = self._cached.get(key)
        if entry is None or (src_block is not None and entry.src_block != src_block):
            return False
        del self._cached[key]
        self._cached_pages.discard(entry.page)
        if entry.page in self._pinned:
            self._free_at_end.append(entry.page)
        else:
            self._free.append(entry.page)
        return True

    def take_evicted(self) -> list[tuple[HostKey, int]]:
        """Cached entries evicted since the last call: ``(key, page)``; clears the record."""
        out, self._evicted = self._evicted, []
        return out

    def end_step(self) -> None:
        """The step's plan is complete: unpin pages, free the pages swap-ins read."""
        self._pinned.clear()
        self._free.extend(self._free_at_end)
        self._free_at_end.clear()

    # --------------------------------------------------------------- internal
    def _take_page(self) -> int:
        """A free page, else the LRU unpinned cached page (reported as evicted); pinned."""
        if self._free:
            page = self._free.pop()
        else:
            key = next(k for k, e in self._cached.items() if e.page not in self._pinned)
            page = self._cached.pop(key).page
            self._cached_pages.discard(page)
            self._evicted.append((key, page))
        self._pinned.add(page)
        return page

    def check(self) -> None:
        """Assert the accounting invariant (tests)."""
        cached = {e.page for e in self._cached.values()}
        parts = [set(self._free), self._swap, cached, set(self._free_at_end)]
        assert sum(len(p) for p in parts) == self.num_pages, "a page is lost or counted twice"
        assert set().union(*parts) == set(range(self.num_pages)), "unknown page"
