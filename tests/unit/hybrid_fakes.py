"""A fake runner for hybrid KV caches: every KV cache group has its own block table.

All groups share one simulated page store (as on the device, where a block id names the same
pages whichever group holds it), and each slot records ``(group, token)``: two groups holding
one block at once, a write into the null block, or a read of a freed block all show up as a
failed assertion. Window groups read only their window, as the kernels do.
"""

from __future__ import annotations

from pagedllm.core.scheduler import Scheduler, SchedulerOutput
from test_core_fakes import FakeRunner, next_token


def window_bound(window: int, block_size: int, num_new: int, lookahead: int) -> int:
    """Most live blocks a window group may hold after allocating ``num_new`` tokens and
    ``lookahead`` slots: ``ceil((w - 1 + num_new + lookahead) / bs) + 1``."""
    return -(-(window - 1 + num_new + lookahead) // block_size) + 1


class HybridFakeRunner(FakeRunner):
    """Executes a SchedulerOutput over per-group tables; checks windows and the null block."""

    def __init__(self, block_size: int, windows: list[int | None]) -> None:
        super().__init__(block_size)
        self.windows = windows
        self.max_live = 0  # most live blocks one window group held for one request
        self.prev_steps = 1  # steps of the last executed round (a continuation's lookahead)
        self.max_lookahead = 0

    def _tables(self, sr) -> list[list[int]]:  # noqa: ANN001
        return sr.group_block_tables or [sr.block_table]

    def execute(self, out: SchedulerOutput, sched: Scheduler) -> dict[str, list[int]]:
        self.apply_moves(out)
        kv = sched.kv_manager
        self.max_lookahead = sched.config.num_scheduler_steps - 1
        null = kv.pool.null_block
        null_id = None if null is None else null.block_id
        self._check_tables(kv, null_id)
        written: set[int] = set()
        for sr in out.scheduled:
            if sr.request_id not in sched.requests:
                continue
            for g, table in enumerate(self._tables(sr)):
                for k, tok in enumerate(sr.token_ids):
                    pos = sr.start_position + k
                    assert table[pos // self.bs] != null_id, "write into the null block"
                    slot = self.slot(table, pos)
                    assert slot not in written, "two tokens written into one slot"
                    written.add(slot)
                    self.kv[slot] = (g, tok)
        sampled = {}
        for sr in out.scheduled:
            if sr.request_id not in sched.requests:
                continue
            req = sched.get_request(sr.request_id)
            end = sr.start_position + len(sr.token_ids)
            for g, table in enumerate(self._tables(sr)):
                self._check_read(sr, g, table, end, req, kv, null_id)
            if sr.sample:
                seq = req.all_token_ids[:end]
                tokens = [next_token(seq)]
                for k in range(1, out.num_steps):
                    pos = sr.start_position + k
                    for g, table in enumerate(self._tables(sr)):
                        assert table[pos // self.bs] != null_id
                        self.kv[self.slot(table, pos)] = (g, tokens[-1])
                    seq = [*seq, tokens[-1]]
                    tokens.append(next_token(seq))
                sampled[sr.request_id] = tokens  # [k] tokens per row (the step contract)
        self.prev_steps = out.num_steps
        return sampled

    def _check_read(self, sr, g, table, end, req, kv, null_id) -> None:  # noqa: ANN001
        """Read the keys the step's queries see; check the group's live-block bound."""
        window = self.windows[g]
        lo = 0 if window is None else max(0, sr.start_position - window + 1)
        for p in range(lo, end):
            block = kv.pool.blocks[table[p // self.bs]]
            assert block.block_id != null_id, f"group {g} reads the null block at {p}"
            assert block.ref_cnt > 0, f"group {g} reads freed block {block.block_id}"
            assert self.kv.get(self.slot(table, p)) == (g, req.all_token_ids[p]), (g, p)
        if window is not None:
            live = sum(1 for b in table if b != null_id)
            # a continuation's slots were allocated before the round in flight advanced the
            # request, so that round's steps count as lookahead too
            # (a multi-step round that falls back to one step keeps the slots it allocated
            # ahead, so up to num_scheduler_steps - 1 of lookahead may be held at any time)
            lookahead = max(sr.num_lookahead, self.max_lookahead)
            ahead = lookahead + (self.prev_steps if sr.prev_row is not None else 0)
            bound = window_bound(window, self.bs, len(sr.token_ids), ahead)
            assert live <= bound, f"window group {g} holds {live} blocks > {bound}"
            self.max_live = max(self.max_live, live)

    def _check_tables(self, kv, null_id) -> None:  # noqa: ANN001
        """No table of any group holds a freed block; null slots form a prefix."""
        for group in kv.groups:
            for table in group.tables.values():
                ids = table.block_ids
                assert all(i == null_id for i in ids[: table.num_null])
                # the snapshot the scheduler hands out is never stale
                assert table.ids() == tuple(ids), "a table changed without changed()"
                for block in table.live:
                    assert block.ref_cnt > 0, f"freed block {block.block_id} still in a table"
