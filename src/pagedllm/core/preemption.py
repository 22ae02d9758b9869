"""The cost model behind ``preemption_mode="auto"``: swap a victim out, or recompute it later?

Pure Python (no torch). The inputs are plain numbers that the engine hands over:

* ``bytes_per_block`` and ``swap_bytes_per_s``: the KV bytes of one block (all layers, K and V)
  and the copy bandwidth between the device pool and the CPU swap space, measured once at
  start-up by ``CacheEngine.measure_swap_bandwidth`` at the real block size (so per-block
  overheads of small blocks show up as a lower bandwidth, as in the PagedAttention paper).
* ``prefill_tokens_per_s``: an exponential moving average over recent prefill-heavy steps,
  fed by the scheduler itself (``observe_step``: tokens of the step / time between
  ``schedule`` and ``update_from_output``).

The model (deliberately simple, per victim):

* swap cost = 2 * blocks * bytes_per_block / swap_bytes_per_s  (out now, back in later)
* recompute cost = computed tokens / prefill_tokens_per_s

AUTO swaps when swapping is cheaper and the swap space has room; with either input unknown
(nothing measured yet) it recomputes, the mode that needs no swap space. The model ignores
that recomputed tokens may hit the prefix cache and that a recompute shares its step with
other requests; both make recompute cheaper than estimated, so AUTO leans towards swapping.
"""

from __future__ import annotations

from dataclasses import dataclass

# a step counts as prefill-heavy when at least this many tokens and this share are prefill
_MIN_PREFILL_TOKENS = 32
_MIN_PREFILL_SHARE = 0.5
_EMA = 0.3  # weight of the newest observation


@dataclass(slots=True)
class PreemptionCosts:
    """Measured inputs of AUTO's decision; all zero means unknown."""

    bytes_per_block: int = 0
    swap_bytes_per_s: float = 0.0  # one direction, device <-> CPU swap space
    prefill_tokens_per_s: float = 0.0

    def swap_seconds(self, num_blocks: int) -> float | None:
        """Estimated time to swap ``num_blocks`` out and back in; None when unmeasured."""
        if self.bytes_per_block <= 0 or self.swap_bytes_per_s <= 0:
            return None
        return 2 * num_blocks * self.bytes_per_block / self.swap_bytes_per_s

    def recompute_seconds(self, num_tokens: int) -> float | None:
        """Estimated time to prefill ``num_tokens`` again; None when unmeasured."""
        if self.prefill_tokens_per_s <= 0:
            return None
        return num_tokens / self.prefill_tokens_per_s

    def prefer_swap(self, num_blocks: int, num_tokens: int) -> bool:
        """True when swapping ``num_blocks`` is estimated cheaper than recomputing the tokens."""
        swap = self.swap_seconds(num_blocks)
        recompute = self.recompute_seconds(num_tokens)
        if swap is None or recompute is None:
            return False
        return swap < recompute

    def observe_step(self, num_prefill_tokens: int, num_tokens: int, seconds: float) -> None:
        """Fold one executed step into the prefill throughput (prefill-heavy steps only)."""
        if seconds <= 0 or num_prefill_tokens < _MIN_PREFILL_TOKENS:
            return
        if num_prefill_tokens < _MIN_PREFILL_SHARE * num_tokens:
            return
        rate = num_tokens / seconds
        if self.prefill_tokens_per_s <= 0:
            self.prefill_tokens_per_s = rate
        else:
            self.prefill_tokens_per_s += _EMA * (rate - self.prefill_tokens_per_s)
