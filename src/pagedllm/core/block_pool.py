"""The pool of KV blocks: reference counts, an O(1) LRU free queue and the prefix-cache index.

Pure Python (no torch). A block is a page of ``block_size`` token slots in every layer's KV
tensor; this module only tracks who owns which page id, never the data.

Eviction order (the invariant the free queue keeps):

* A block is in the free queue exactly when its ``ref_cnt`` is 0.
* The queue is ``[never-cached free blocks ..., cached free blocks, least recently freed first]``:
  a freed block without a hash holds nothing worth keeping, so it goes to the head and is reused
  first; a freed cached block goes to the tail and stays findable by its hash until it is reused.
* ``get_new_blocks`` always takes from the head, so among cached blocks the least recently used
  one is evicted first (its hash is dropped at that moment).
* Callers free a request's blocks last-block-first, so at equal age the deeper blocks of a
  prefix chain are evicted before their parents (a child without its parent is unreachable).
* ``touch`` revives a cached free block by unlinking it from the middle of the queue in O(1).
* ``on_evict`` (the host tier's write-back hook) sees every cached block that
  ``get_new_blocks`` is about to reuse, while it still holds its hash; blocks unregistered by
  ``uncache_block`` (KV never written) never reach it.

The null block (``reserve_null_block``, for sliding-window KV cache groups): block 0 is taken
out of circulation. It fills the table slots of pages a window no longer sees; it is never in
the free queue, never reference counted by requests, never written and never read by a kernel.

The prefix-cache index is keyed by ``(group, BlockHash)``: with several KV cache groups the same
tokens are stored once per group, in different blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


class NoFreeBlocksError(RuntimeError):
    """Raised by ``BlockPool.get_new_blocks`` when fewer blocks are free than requested."""


def hash_block_tokens(
    parent_hash: int | None, token_ids: tuple[int, ...], extra_keys: tuple = ()
) -> int:
    """The chained hash value of one full block (the prefix-cache index key).

    Only an index key: a hit is always verified against the full ``BlockHash`` (tokens, extra
    keys and the parent chain), so a collision can never return a wrong block. Tests replace
    this function to force collisions.
    """
    return hash((parent_hash, token_ids, extra_keys))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class BlockHash:
    """Identity of a full block: its tokens, extra keys and its parent block's identity.

    ``value`` is the chained hash used as the dict hash; equality compares everything (the
    parent chain included), so two blocks are equal exactly when their whole prefixes are
    equal. The walk up the chain is a loop that stops at the first shared object: O(1) when
    the parents are the same object (the KV manager chains a request's identities from the
    cached ones it hit), and never a recursion as deep as the prompt (a 32k-token prompt is a
    chain of 2,000 blocks).
    """

    value: int
    parent: BlockHash | None
    token_ids: tuple[int, ...]
    extra_keys: tuple = ()

    def __hash__(self) -> int:
        # A generated hash would walk the whole parent chain: the chained value suffices.
        return self.value

    def __repr__(self) -> str:
        # shallow: a generated repr would print the whole chain, recursively
        parent = None if self.parent is None else self.parent.value
        return f"BlockHash(value={self.value}, parent={parent}, tokens={len(self.token_ids)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockHash):
            return NotImplemented
        a: BlockHash | None = self
        b: BlockHash | None = other
        while a is not b:
            if (
                a is None
                or b is None
                or a.value != b.value
                or a.token_ids != b.token_ids
                or a.extra_keys != b.extra_keys
            ):
                return False
            a, b = a.parent, b.parent
        return True


def make_block_hash(
    parent: BlockHash | None, token_ids: Sequence[int], extra_keys: tuple = ()
) -> BlockHash:
    """Build the identity of a full block whose parent block has identity ``parent``."""
    tokens = tuple(token_ids)
    parent_value = None if parent is None else parent.value
    return BlockHash(
        hash_block_tokens(parent_value, tokens, extra_keys), parent, tokens, extra_keys
    )


@dataclass(slots=True, eq=False)
class KVBlock:
    """One physical page. ``block_hash`` is set while the block is in the prefix-cache index."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None
    cache_group: int = 0  # the KV cache group whose index holds block_hash
    # doubly linked free-queue pointers (None when not queued or at an end)
    prev_free: KVBlock | None = None
    next_free: KVBlock | None = None
    in_free_queue: bool = False


class _FreeQueue:
    """Doubly linked list of free blocks with O(1) push at both ends and removal anywhere."""

    __slots__ = ("head", "tail", "size")

    def __init__(self) -> None:
        self.head: KVBlock | None = None
        self.tail: KVBlock | None = None
        self.size = 0

    def append(self, block: KVBlock) -> None:
        """Push at the tail (the most recently used end)."""
        block.prev_free, block.next_free = self.tail, None
        if self.tail is None:
            self.head = block
        else:
            self.tail.next_free = block
        self.tail = block
        block.in_free_queue = True
        self.size += 1

    def appendleft(self, block: KVBlock) -> None:
        """Push at the head (reused first)."""
        block.prev_free, block.next_free = None, self.head
        if self.head is None:
            self.tail = block
        else:
            self.head.prev_free = block
        self.head = block
        block.in_free_queue = True
        self.size += 1

    def remove(self, block: KVBlock) -> None:
        """Unlink ``block`` from wherever it is in the queue."""
        prev, nxt = block.prev_free, block.next_free
        if prev is None:
            self.head = nxt
        else:
            prev.next_free = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.prev_free = prev
        block.prev_free = block.next_free = None
        block.in_free_queue = False
        self.size -= 1

    def popleft(self) -> KVBlock:
        """Take the head (the least recently used free block)."""
        block = self.head
        if block is None:
            raise NoFreeBlocksError("the free queue is empty")
        self.remove(block)
        return block

    def __iter__(self):
        block = self.head
        while block is not None:
            yield block
            block = block.next_free


class BlockPool:
    """``num_blocks`` pages with reference counts, an LRU free queue and a prefix-cache index."""

    def __init__(
        self, num_blocks: int, enable_caching: bool = True, reserve_null_block: bool = False
    ) -> None:
        """Create the pool with every block free; ``num_blocks`` must be a positive integer.

        With ``reserve_null_block``, block 0 is the null block and never handed out.
        """
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks <= 0:
            raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        if reserve_null_block and num_blocks < 2:
            raise ValueError("num_blocks must be at least 2 to reserve a null block")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        self.null_block: KVBlock | None = self.blocks[0] if reserve_null_block else None
        self._free = _FreeQueue()
        for block in self.blocks:
            if block is not self.null_block:
                self._free.append(block)
        # one block per (group, identity); a duplicate computed later is simply not indexed
        self._cached: dict[tuple[int, BlockHash], KVBlock] = {}
        # called with a cached block that get_new_blocks evicts (the lower tiers' write-back)
        self.on_evict: Callable[[KVBlock], None] | None = None

    @property
    def num_usable_blocks(self) -> int:
        """Blocks requests can hold (the null block excluded)."""
        return self.num_blocks - (self.null_block is not None)

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ref_cnt == 0 (cached-but-unreferenced blocks count as free)."""
        return self._free.size

    @property
    def num_cached_blocks(self) -> int:
        """Blocks currently findable in the prefix-cache index (free or in use)."""
        return len(self._cached)

    def usage(self) -> float:
        """Fraction of blocks referenced by some request: 0.0 when idle."""
        return 1.0 - self._free.size / self.num_usable_blocks

    def get_new_blocks(self, n: int) -> list[KVBlock]:
        """Take ``n`` free blocks (ref_cnt becomes 1), evicting LRU cached blocks as needed.

        Raises ``NoFreeBlocksError`` (and takes nothing) when fewer than ``n`` are free.
        """
        free = self._free
        if n > free.size:
            raise NoFreeBlocksError(f"asked for {n} blocks, {free.size} free")
        # _FreeQueue.popleft inlined: a hybrid model's prefill chunk takes thousands of blocks
        # per step (every window group allocates the whole chunk), and the per-call overhead
        # of the method was most of the scheduler's time there
        out = []
        append = out.append
        for _ in range(n):
            block = free.head
            nxt = block.next_free
            free.head = nxt
            if nxt is None:
                free.tail = None
            else:
                nxt.prev_free = None
            block.next_free = None
            block.in_free_queue = False
            free.size -= 1
            if block.block_hash is not None:
                if self.on_evict is not None and self._cached.get(self._key(block)) is block:
                    self.on_evict(block)
                self._evict(block)
            block.ref_cnt = 1
            append(block)
        return out

    def _evict(self, block: KVBlock) -> None:
        """Drop ``block`` from the prefix-cache index (it is about to hold new data)."""
        key = self._key(block)
        if self._cached.get(key) is block:
            del self._cached[key]
        block.block_hash = None

    @staticmethod
    def _key(block: KVBlock) -> tuple[int, BlockHash]:
        return (block.cache_group, block.block_hash)

    def free_blocks(self, blocks: Iterable[KVBlock]) -> None:
        """Drop one reference from each block; blocks reaching 0 join the free queue.

        Pass a request's blocks last-first (see the module's eviction-order invariant).
        Raises ``RuntimeError`` on a double free (a block already at ref_cnt 0).
        """
        free = self._free
        for block in blocks:
            if block.ref_cnt <= 0:
                raise RuntimeError(f"double free of block {block.block_id}")
            block.ref_cnt -= 1
            if block.ref_cnt:
                continue
            block.in_free_queue = True
            free.size += 1
            if block.block_hash is None:  # nothing to keep: reused first (appendleft, inlined)
                head = free.head
                block.prev_free, block.next_free = None, head
                if head is None:
                    free.tail = block
                else:
                    head.prev_free = block
                free.head = block
            else:  # cached: reused last (append, inlined)
                tail = free.tail
                block.prev_free, block.next_free = tail, None
                if tail is None:
                    free.head = block
                else:
                    tail.next_free = block
                free.tail = block

    def touch(self, blocks: Iterable[KVBlock]) -> None:
        """Add one reference to each block, reviving cached free blocks from the queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                self._free.remove(block)
            block.ref_cnt += 1

    def get_cached_block(
        self, block_hash: BlockHash, token_ids: Sequence[int], group: int = 0
    ) -> KVBlock | None:
        """Group ``group``'s cached block with exactly this identity and tokens, or None.

        The index compares the whole ``BlockHash`` (parent chain, tokens, extra keys), and the
        tokens are checked once more, so a hash collision yields a miss, never a wrong block.
        """
        if not self.enable_caching:
            return None
        block = self._cached.get((group, block_hash))
        if block is None or block.block_hash is None:
            return None
        if block.block_hash.token_ids != tuple(token_ids):
            return None
        return block

    def cache_full_block(
        self, block: KVBlock, block_hash: BlockHash, token_ids: Sequence[int], group: int = 0
    ) -> bool:
        """Register a full, referenced block under ``(group, block_hash)`` in the index.

        Returns True when the block became findable. If an equal block is already indexed,
        this one stays unindexed (its content is a duplicate; it is reused first once freed).
        """
        if not self.enable_caching or block.block_hash is not None:
            return False
        if block_hash.token_ids != tuple(token_ids):
            raise ValueError("block_hash was built from different token ids")
        key = (group, block_hash)
        if key in self._cached:
            return False
        block.block_hash = block_hash
        block.cache_group = group
        self._cached[key] = block
        return True

    def uncache_block(self, block: KVBlock, block_hash: BlockHash) -> None:
        """Make ``block`` unfindable if it is still indexed under ``block_hash``.

        For blocks whose KV was never written (their step failed): a free one moves to the head
        of the free queue, so it is reused before any block holding real KV. A block that was
        evicted and reused since it was registered (another hash, or none) is left alone.
        """
        key = (block.cache_group, block_hash)
        if block.block_hash is not block_hash or self._cached.get(key) is not block:
            return
        self._evict(block)
        if block.ref_cnt == 0:
            self._free.remove(block)
            self._free.appendleft(block)

    def free_queue_ids(self) -> list[int]:
        """Block ids in eviction order (head first): for tests and debugging."""
        return [b.block_id for b in self._free]
