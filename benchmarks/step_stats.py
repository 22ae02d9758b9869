"""Per-step breakdown of an engine run: what each plan held and where the host time went.

``StepStats.attach(engine)`` wraps the scheduler's ``schedule`` / ``schedule_continuation``
and the runner's ``launch`` (host side: input layout and kernel launches, or graph replays)
of one engine; ``summary()`` gives steps, pure-decode steps, mean batch, prefill tokens per
mixed step, decode rows per step, preemptions and host milliseconds per step. Benchmarks only
(it changes nothing the engine computes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class StepStats:
    """Counters filled by the wrappers ``attach`` installs."""

    plans: list[tuple[int, int, int, int]] = field(default_factory=list)  # rows, tokens, dec, k
    schedule_s: float = 0.0
    launch_s: float = 0.0
    graph_replays: int = 0
    preemptions_before: int = 0
    _engine: object = None

    @classmethod
    def attach(cls, engine) -> StepStats:  # noqa: ANN001 - an LLMEngine
        """Start recording ``engine``'s steps."""
        stats = cls(preemptions_before=engine.scheduler.num_preemptions, _engine=engine)
        sched, runner = engine.scheduler, engine.runner

        def timed(fn, attr):  # noqa: ANN001, ANN202
            def wrapper(*args, **kwargs):  # noqa: ANN202
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                setattr(stats, attr, getattr(stats, attr) + time.perf_counter() - start)
                if attr == "schedule_s" and out is not None and out.scheduled:
                    dec = out.num_decodes
                    stats.plans.append((len(out.scheduled), out.num_batched_tokens, dec,
                                        out.num_steps))  # fmt: skip
                return out

            return wrapper

        sched.schedule = timed(sched.schedule, "schedule_s")
        sched.schedule_continuation = timed(sched.schedule_continuation, "schedule_s")
        runner.launch = timed(runner.launch, "launch_s")
        graphs = getattr(runner, "graphs", None)
        if graphs is not None:
            run = graphs.run

            def counted(*args, **kwargs):  # noqa: ANN202
                stats.graph_replays += 1
                return run(*args, **kwargs)

            graphs.run = counted
        return stats

    def summary(self) -> dict:
        """Steps and per-step means (a multi-step round counts as one plan)."""
        plans = self.plans
        n = max(len(plans), 1)
        mixed = [(rows, tok, dec) for rows, tok, dec, _ in plans if tok > dec]
        decode_only = len(plans) - len(mixed)
        return {
            "plans": len(plans),
            "pure_decode_plans": decode_only,
            "mean_rows": round(sum(p[0] for p in plans) / n, 1),
            "mean_decode_rows": round(sum(p[2] for p in plans) / n, 1),
            "prefill_tokens_per_mixed_plan": round(
                sum(tok - dec for _, tok, dec in mixed) / max(len(mixed), 1)
            ),
            "decode_rows_per_mixed_plan": round(
                sum(dec for _, _, dec in mixed) / max(len(mixed), 1), 1
            ),
            "preemptions": self._engine.scheduler.num_preemptions - self.preemptions_before,
            "host_schedule_ms_per_plan": round(1e3 * self.schedule_s / n, 2),
            "host_launch_ms_per_plan": round(1e3 * self.launch_s / n, 2),
            "graph_replays": self.graph_replays,
        }
