"""Shared fakes for the core tests: a fake model runner over a simulated paged KV store.

The runner writes each scheduled token id into its physical slot, applies swaps and copies in
the documented order, reads every request's whole prefix back through its block table (so a
wrong table, a bad prefix hit or a missed copy-on-write shows up as a wrong read), and samples
a token that depends only on the sequence, so outputs are comparable across schedules.
"""

from __future__ import annotations

from pagedllm.config import CacheConfig, PreemptionMode, SchedulerConfig
from pagedllm.core.kv_cache_manager import KVCacheManager
from pagedllm.core.request import Request
from pagedllm.core.scheduler import Scheduler, SchedulerOutput
from pagedllm.sampling_params import SamplingParams

EOS = 0


def next_token(seq: list[int]) -> int:
    """Deterministic 'model': the next token from the sequence so far (never EOS by itself)."""
    return (sum((i + 1) * t for i, t in enumerate(seq[-8:])) * 31 + len(seq)) % 97 + 1


def make_request(rid: str, prompt: list[int], max_tokens: int = 8, **params) -> Request:
    return Request(
        rid,
        list(prompt),
        SamplingParams(max_tokens=max_tokens, **params),
        eos_token_ids=frozenset({EOS}),
        max_tokens=max_tokens,
    )


def make_scheduler(
    num_blocks: int,
    block_size: int = 4,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_model_len: int = 64,
    chunked: bool = True,
    caching: bool = True,
    mode: PreemptionMode = PreemptionMode.RECOMPUTE,
    num_cpu_blocks: int = 0,
    watermark: float = 0.01,
    num_scheduler_steps: int = 1,
    kv_cache_groups: list[int | None] | None = None,
    host_tier: bool = False,
    num_disk_blocks: int = 0,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            enable_chunked_prefill=chunked,
            preemption_mode=mode,
            num_scheduler_steps=num_scheduler_steps,
        ),
        CacheConfig(
            block_size=block_size,
            enable_prefix_caching=caching,
            watermark=watermark,
            cpu_cache_memory=1 if host_tier else 0,  # the host pool is num_cpu_blocks pages
        ),
        num_gpu_blocks=num_blocks,
        num_cpu_blocks=num_cpu_blocks,
        kv_cache_groups=kv_cache_groups,
        num_disk_blocks=num_disk_blocks,
    )


def check_pool(kv: KVCacheManager) -> None:
    """Every block's ref_cnt equals the table entries naming it; free blocks are exactly ref 0."""
    counts = [0] * len(kv.pool.blocks)
    null = kv.pool.null_block
    for group in kv.groups:
        for table in group.tables.values():
            assert all(b is null for b in table.blocks[: table.num_null])
            for block in table.live:
                assert block is not null, "a live slot holds the null block"
                counts[block.block_id] += 1
    for block in kv.pool.blocks:
        if block is null:
            continue  # never counted, never free
        assert block.ref_cnt >= 0
        assert block.ref_cnt == counts[block.block_id], block
    free = sorted(kv.pool.free_queue_ids())
    assert free == [b.block_id for b in kv.pool.blocks if b.ref_cnt == 0 and b is not null]
    assert kv.num_free_blocks == len(free)


class FakeRunner:
    """Executes a SchedulerOutput against a dict of slots; checks every write and read."""

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.kv: dict[int, int] = {}
        self.cpu: dict[int, int] = {}  # host pages: swap and the host tier
        self.disk: dict[str, dict[int, int]] = {}  # disk tier entries (slots of one block)

    def _copy(self, src: dict[int, int], s: int, dst: dict[int, int], d: int) -> None:
        for o in range(self.bs):
            value = src.get(s * self.bs + o)
            if value is not None:
                dst[d * self.bs + o] = value
            else:
                dst.pop(d * self.bs + o, None)

    def slot(self, table: list[int], pos: int) -> int:
        return table[pos // self.bs] * self.bs + pos % self.bs

    def apply_moves(self, out: SchedulerOutput) -> None:
        """The plan's copies in the documented order (core/scheduler_output.py).

        The real runner batches each phase (one gather/scatter per direction), so two copies
        into one device block in a plan land in no defined order: refuse them here.
        """
        dsts = [d for _, d in out.blocks_to_copy + out.blocks_to_swap_in + out.blocks_to_load]
        assert len(dsts) == len(set(dsts)), f"a device block is written twice by one plan: {dsts}"
        for page, name in out.disk_writes:
            self._copy(self.cpu, page, self.disk.setdefault(name, {}), 0)
        for dev, cpu in out.blocks_to_swap_out + out.blocks_to_offload:
            self._copy(self.kv, dev, self.cpu, cpu)
        for name, page in out.disk_reads:
            self._copy(self.disk[name], 0, self.cpu, page)
        for src, dst in out.blocks_to_copy:
            self._copy(self.kv, src, self.kv, dst)
        for cpu, dev in out.blocks_to_swap_in + out.blocks_to_load:
            self._copy(self.cpu, cpu, self.kv, dev)
        for name in out.disk_deletes:
            self.disk.pop(name, None)

    def execute(self, out: SchedulerOutput, sched: Scheduler) -> dict[str, list[int]]:
        self.apply_moves(out)
        pool = sched.kv_manager.pool
        written: set[int] = set()
        for sr in out.scheduled:
            if sr.request_id not in sched.requests:
                continue  # (async scheduling) a device write into freed blocks nobody reads
            for k, tok in enumerate(sr.token_ids):
                pos = sr.start_position + k
                slot = self.slot(sr.block_table, pos)
                assert slot not in written, "two tokens written into one slot"
                written.add(slot)
                block = pool.blocks[sr.block_table[pos // self.bs]]
                if block.ref_cnt != 1:
                    # only a full block registered this step (same-step prefix hit) may be
                    # shared while written, and then only with exactly its own tokens
                    assert block.block_hash is not None, "write into a shared partial block"
                    assert block.block_hash.token_ids[pos % self.bs] == tok
                self.kv[slot] = tok
        sampled = {}
        for sr in out.scheduled:
            if sr.request_id not in sched.requests:
                continue  # stopped while this continuation was in flight: result dropped
            end = sr.start_position + len(sr.token_ids)
            seq = [self.kv.get(self.slot(sr.block_table, p)) for p in range(end)]
            req = sched.get_request(sr.request_id)
            assert seq == req.all_token_ids[:end], f"wrong KV read for {sr.request_id}"
            if sr.sample and out.num_steps > 1:
                sampled[sr.request_id] = self._decode_steps(sr, seq, out.num_steps, pool)
            elif sr.sample:
                sampled[sr.request_id] = [next_token(seq)]
            for child_id in sr.fork_ids:  # forks sample from their parent's row
                sampled[child_id] = [next_token(seq)]
        return sampled

    def _decode_steps(self, sr, seq: list[int], num_steps: int, pool) -> list[int]:  # noqa: ANN001
        """A multi-step round: each sampled token is written into its lookahead slot."""
        assert sr.num_lookahead == num_steps - 1 and len(sr.token_ids) == 1
        tokens = [next_token(seq)]
        for k in range(1, num_steps):
            pos = sr.start_position + k
            assert pos // self.bs < len(sr.block_table), "no slot allocated for a lookahead token"
            block = pool.blocks[sr.block_table[pos // self.bs]]
            assert block.ref_cnt == 1, "lookahead token written into a shared block"
            self.kv[self.slot(sr.block_table, pos)] = tokens[-1]
            seq = [*seq, tokens[-1]]
            tokens.append(next_token(seq))
        return tokens


def run(sched: Scheduler, runner: FakeRunner, max_steps: int = 1000) -> dict[str, Request]:
    """Step until idle, checking budgets and pool invariants; returns finished requests."""
    finished: dict[str, Request] = {}
    for _ in range(max_steps):
        if not sched.has_unfinished_requests():
            return finished
        out = sched.schedule()
        check_step(sched, out)
        sampled = runner.execute(out, sched)
        for req in sched.update_from_output(out, sampled):
            if req.is_finished:
                finished[req.request_id] = req
        check_pool(sched.kv_manager)
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


def run_async(sched: Scheduler, runner: FakeRunner, max_steps: int = 1000) -> dict[str, Request]:
    """``run`` with async scheduling: each round's continuation is planned *before* the round's
    results are applied, then executed after them (on a device it runs meanwhile, reading the
    round's sampled tokens there; here its placeholder inputs are filled from them)."""
    finished: dict[str, Request] = {}
    in_flight: tuple[SchedulerOutput, dict] | None = None
    for _ in range(max_steps):
        if in_flight is None:
            if not sched.has_unfinished_requests():
                return finished
            out = sched.schedule()
            check_step(sched, out)
            sampled = runner.execute(out, sched)
        else:
            out, sampled = in_flight
            in_flight = None
        following = sched.schedule_continuation(out)
        if following is not None:
            check_continuation(sched, out, following)
        for req in sched.update_from_output(out, sampled):
            if req.is_finished:
                finished[req.request_id] = req
        check_pool(sched.kv_manager)
        if following is not None:
            for sr in following.scheduled:
                tokens = sampled[out.scheduled[sr.prev_row].request_id]
                sr.token_ids = [tokens[-1]]
            in_flight = (following, runner.execute(following, sched))
    raise AssertionError(f"requests still unfinished after {max_steps} steps")


def check_continuation(sched: Scheduler, prev: SchedulerOutput, out: SchedulerOutput) -> None:
    """A continuation: decodes of prev's rows, in prev's order, with slots beyond prev's."""
    assert out.num_decodes == len(out.scheduled) > 0
    rows = [s.prev_row for s in out.scheduled]
    assert rows == sorted(set(rows)) and rows[-1] < len(prev.scheduled)
    bs = sched.block_size
    for s in out.scheduled:
        before = prev.scheduled[s.prev_row]
        assert s.request_id == before.request_id
        assert s.start_position == before.start_position + prev.num_steps
        assert s.num_lookahead == out.num_steps - 1
        assert len(s.block_table) * bs >= s.start_position + 1 + s.num_lookahead
        # slots a sliding window freed meanwhile hold the null block; the rest are unchanged
        null = sched.kv_manager.pool.null_block
        kept = [
            b if a != getattr(null, "block_id", None) else a
            for a, b in zip(s.block_table, before.block_table, strict=False)
        ]
        assert list(s.block_table[: len(before.block_table)]) == kept
    assert not sched.waiting and not sched.swapped
    check_pool(sched.kv_manager)


def check_step(sched: Scheduler, out: SchedulerOutput) -> None:
    cfg = sched.config
    assert out.num_batched_tokens == sum(len(s.token_ids) for s in out.scheduled)
    assert out.num_batched_tokens <= cfg.max_num_batched_tokens
    assert len(out.scheduled) <= cfg.max_num_seqs
    assert len({s.request_id for s in out.scheduled}) == len(out.scheduled)
    decode = [len(s.token_ids) == 1 and s.start_position > 0 and s.sample for s in out.scheduled]
    assert decode == sorted(decode, reverse=True), "decodes must come first"
    assert sum(decode) == out.num_decodes
    bs = sched.block_size
    for s in out.scheduled:
        assert len(s.token_ids) >= 1
        assert len(s.block_table) * bs >= s.start_position + len(s.token_ids) + s.num_lookahead
    if out.num_steps > 1:
        assert out.num_decodes == len(out.scheduled) == len(sched.running)
    check_pool(sched.kv_manager)
