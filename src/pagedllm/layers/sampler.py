"""Vectorized next-token sampling with per-request parameters.

One ``SamplingBatch`` is built per step from the rows' ``SamplingParams`` and histories; the
``Sampler`` then turns logits ``[N, V]`` into one token per row. Order of processing:

1. raw logprobs (only when some row asked for ``logprobs``): ``log_softmax`` of the logits as
   the model produced them, before bans, penalties, temperature and truncation. This is vLLM's
   default (``logprobs_mode="raw_logprobs"``) and what the OpenAI API reports.
2. logit bias (OpenAI ``logit_bias``), then the structured-output bitmask: tokens the row's
   grammar does not allow -> ``-inf`` (``apply_bias_and_grammar``, one self-contained step).
3. banned tokens (min_tokens: EOS / stop_token_ids of rows still too short) -> ``-inf``.
4. penalties: repetition (HF/vLLM: over prompt + output tokens, positive logits divided,
   negative multiplied), then frequency and presence (OpenAI: over output tokens only).
5. greedy rows take the argmax here; if every row is greedy nothing else runs.
6. temperature -> min_p -> top_k -> top_p -> sample by the exponential race
   (``argmax(probs / E)``, ``E ~ Exponential(1)``), which equals sampling from ``probs`` and needs
   no host sync. A row with its own ``torch.Generator`` draws its noise from it alone, so the same
   seed gives the same tokens whatever else shares the batch.

On CUDA a batch that needs nothing but temperature (and greedy rows) skips all of this for one
Triton pass over the logits (``kernels/sampling.py``: Gumbel-max, the same race in log space
with noise drawn in the kernel): same distribution, other random draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pagedllm.layers import _fused
from pagedllm.layers.logit_constraints import (
    apply_bias_and_grammar,
    grammar_mask_tensors,
    logit_bias_triples,
)
from pagedllm.sampling_params import SamplingParams
from pagedllm.transfer import to_device

# Above this many positions, prompt logprobs are computed in chunks so that a long prompt does
# not materialize a [P, V] float32 log_softmax all at once.
_PROMPT_LOGPROBS_CHUNK = 256


Logprobs = dict[int, float]  # token id -> logprob (same alias as engine/outputs.py)


@dataclass(slots=True)
class SamplerOutput:
    """What the sampler returns for one step.

    ``token_ids``: ``[N]`` int64 on the logits' device (the caller does the one ``.tolist()``).
    The rest is ``None`` unless some row asked for logprobs; then, per row:
    ``logprobs[i]``: the row's top-``k`` token ids -> logprob in descending order, plus the
    sampled token (last, if it is not among the top-``k``), like vLLM; ``None`` for rows that
    did not ask. ``sampled_logprobs[i]`` / ``sampled_ranks[i]``: logprob and 1-based rank of
    the sampled token (for ``cumulative_logprob``), filled for every row.
    """

    token_ids: torch.Tensor
    logprobs: list[Logprobs | None] | None = None
    sampled_logprobs: list[float] | None = None
    sampled_ranks: list[int] | None = None


@dataclass(slots=True)
class SamplingBatch:
    """Per-row sampling tensors for one step, with flags that let cheap batches skip work.

    Greedy rows carry temperature 1.0 (never divided by zero); their result comes from the
    argmax taken before temperature. ``top_k`` 0 means disabled; it is stored as ``vocab_size``.
    """

    num_rows: int
    vocab_size: int
    greedy: torch.Tensor  # [N] bool
    temperature: torch.Tensor  # [N] float32, 1.0 for greedy rows
    top_k: torch.Tensor  # [N] int64, vocab_size when disabled
    top_p: torch.Tensor  # [N] float32
    min_p: torch.Tensor  # [N] float32
    all_greedy: bool
    any_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    max_top_k: int  # largest enabled top_k among sampled rows (0: none), known without a sync
    generators: list[torch.Generator | None]
    seeded_rows: list[int]  # sampled (non-greedy) rows that have their own generator
    # Penalties (None when no row uses them).
    presence_penalty: torch.Tensor | None = None  # [N, 1]
    frequency_penalty: torch.Tensor | None = None  # [N, 1]
    repetition_penalty: torch.Tensor | None = None  # [N, 1]
    output_counts: torch.Tensor | None = None  # [N, V] float32 counts of each output token
    seen_mask: torch.Tensor | None = None  # [N, V] bool: token in prompt or output
    # Banned (row, token) pairs, e.g. EOS before min_tokens (None when none).
    banned_rows: torch.Tensor | None = None
    banned_cols: torch.Tensor | None = None
    # Logprobs: k per row (None: row did not ask), and the max over rows (None: nobody asked).
    num_logprobs: list[int | None] = field(default_factory=list)
    max_num_logprobs: int | None = None
    # logit_bias as (row, token, bias) triples (None when no row has one).
    bias_rows: torch.Tensor | None = None
    bias_cols: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    # Structured outputs: the rows whose grammar forbids some token, and their allowed tokens
    # (CPU: [R, V] bool unpacked on the host; GPU: [R, ceil(V / 32)] int32 words, unpacked on
    # the device). None: no row is constrained this step.
    grammar_rows: torch.Tensor | None = None
    grammar_allowed: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        params: list[SamplingParams],
        output_token_ids: list[list[int]],
        prompt_token_ids: list[list[int]],
        generators: list[torch.Generator | None],
        device: torch.device | str,
        vocab_size: int,
        banned_token_ids: list[list[int]] | None = None,
        grammar_bitmask: Any = None,
    ) -> SamplingBatch:
        """Build the batch for one step; all lists are per row, in the logits' row order.

        ``prompt_token_ids`` is read only when some row has a repetition penalty, and
        ``output_token_ids`` only when some row has any penalty. ``generators[i]`` is the row's
        own generator (seeded requests) or ``None`` (the global RNG). ``banned_token_ids[i]``
        lists token ids row ``i`` must not produce this step (ids >= vocab_size are ignored).
        ``grammar_bitmask`` is the host ``[N, ceil(V / 32)]`` int32 mask of allowed tokens from
        ``StructuredOutputManager.bitmask`` (or None); it is copied without a host sync.
        """
        n = len(params)
        if not (len(output_token_ids) == len(prompt_token_ids) == len(generators) == n):
            raise ValueError("params, output_token_ids, prompt_token_ids, generators must align")
        device = torch.device(device)
        greedy_list = [p.greedy for p in params]
        top_k_list = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        num_logprobs = [p.logprobs for p in params]
        asked = [k for k in num_logprobs if k is not None]
        # Truncation only matters for rows that actually sample.
        max_top_k = max(
            (k for k, g in zip(top_k_list, greedy_list, strict=True) if k < vocab_size and not g),
            default=0,
        )
        batch = cls(
            num_rows=n,
            vocab_size=vocab_size,
            greedy=to_device(greedy_list, torch.bool, device),
            temperature=_f32(
                [1.0 if g else p.temperature for p, g in zip(params, greedy_list, strict=True)],
                device,
            ),
            top_k=to_device(top_k_list, torch.int64, device),
            top_p=_f32([p.top_p for p in params], device),
            min_p=_f32([p.min_p for p in params], device),
            all_greedy=all(greedy_list),
            any_greedy=any(greedy_list),
            need_top_k=max_top_k > 0,
            max_top_k=max_top_k,
            need_top_p=any(p.top_p < 1.0 and not p.greedy for p in params),
            need_min_p=any(p.min_p > 0.0 and not p.greedy for p in params),
            generators=list(generators),
            seeded_rows=[
                i for i, g in enumerate(generators) if g is not None and not greedy_list[i]
            ],
            num_logprobs=num_logprobs,
            max_num_logprobs=max(asked) if asked else None,
        )
        batch._build_penalties(params, output_token_ids, prompt_token_ids, device)
        if banned_token_ids is not None:
            batch._build_bans(banned_token_ids, device)
        batch.bias_rows, batch.bias_cols, batch.bias_values = logit_bias_triples(
            params, vocab_size, device
        )
        if grammar_bitmask is not None:
            batch.grammar_rows, batch.grammar_allowed = grammar_mask_tensors(
                grammar_bitmask, vocab_size, device
            )
        return batch

    @property
    def plain_temperature(self) -> bool:
        """True when rows only need temperature (or greedy) sampling from the global RNG:
        no bans, penalties, truncation, own generators or logprobs, and some row samples."""
        return not (
            self.all_greedy
            or self.need_top_k
            or self.need_top_p
            or self.need_min_p
            or self.seeded_rows
            or self.max_num_logprobs is not None
            or self.banned_rows is not None
            or self.seen_mask is not None
            or self.output_counts is not None
            or self.bias_rows is not None
            or self.grammar_rows is not None
        )

    def _build_penalties(
        self,
        params: list[SamplingParams],
        output_token_ids: list[list[int]],
        prompt_token_ids: list[list[int]],
        device: torch.device,
    ) -> None:
        use_rep = any(p.repetition_penalty != 1.0 for p in params)
        use_out = any(p.presence_penalty != 0.0 or p.frequency_penalty != 0.0 for p in params)
        if not (use_rep or use_out):
            return
        counts = _token_counts(output_token_ids, self.vocab_size, device)
        if use_out:
            self.output_counts = counts
            self.presence_penalty = _f32([p.presence_penalty for p in params], device)[:, None]
            self.frequency_penalty = _f32([p.frequency_penalty for p in params], device)[:, None]
        if use_rep:
            prompt_counts = _token_counts(prompt_token_ids, self.vocab_size, device)
            self.seen_mask = (counts > 0) | (prompt_counts > 0)
            self.repetition_penalty = _f32([p.repetition_penalty for p in params], device)[:, None]

    def _build_bans(self, banned_token_ids: list[list[int]], device: torch.device) -> None:
        if len(banned_token_ids) != self.num_rows:
            raise ValueError("banned_token_ids must have one list per row")
        rows: list[int] = []
        cols: list[int] = []
        for row, ids in enumerate(banned_token_ids):
            for token_id in ids:
                if 0 <= token_id < self.vocab_size:
                    rows.append(row)
                    cols.append(token_id)
        if rows:
            self.banned_rows = to_device(rows, torch.int64, device)
            self.banned_cols = to_device(cols, torch.int64, device)


def _f32(values: list[float], device: torch.device) -> torch.Tensor:
    return to_device(values, torch.float32, device)


def _token_counts(
    token_ids: list[list[int]], vocab_size: int, device: torch.device
) -> torch.Tensor:
    """``[N, V]`` float32 occurrence counts, built with one padded scatter_add (no Python loop
    over the vocabulary). Padding goes to an extra column that is dropped."""
    n = len(token_ids)
    width = max((len(ids) for ids in token_ids), default=0)
    counts = torch.zeros(n, vocab_size + 1, dtype=torch.float32, device=device)
    if width == 0:
        return counts[:, :vocab_size]
    padded = torch.full((n, width), vocab_size, dtype=torch.int64)
    for row, ids in enumerate(token_ids):
        if ids:
            padded[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64).clamp_(0, vocab_size)
    padded = padded.to(device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size]


class Sampler:
    """Turns ``[N, V]`` logits into one token per row, following ``SamplingBatch``."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """Sample; ``logits`` is not modified. Only the logprobs need a host sync."""
        if logits.dim() != 2 or logits.shape[0] != batch.num_rows:
            raise ValueError(f"logits must be [{batch.num_rows}, V], got {tuple(logits.shape)}")
        if batch.plain_temperature and _fused.use_fused(logits, "sampler"):
            return SamplerOutput(token_ids=_fused_temperature_sample(logits, batch))
        logits = logits.float()
        raw_logprobs = None
        if batch.max_num_logprobs is not None:
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = apply_bias_and_grammar(logits, batch)
        logits = apply_bans_and_penalties(logits, batch)
        token_ids = logits.argmax(dim=-1)
        if not batch.all_greedy:
            sampled = _sample(logits, batch)
            token_ids = (
                torch.where(batch.greedy, token_ids, sampled) if batch.any_greedy else sampled
            )
        if raw_logprobs is None:
            return SamplerOutput(token_ids=token_ids)
        gathered = _gather_logprobs(raw_logprobs, token_ids, batch.num_logprobs)
        return SamplerOutput(
            token_ids=token_ids,
            logprobs=gathered.top,
            sampled_logprobs=gathered.chosen,
            sampled_ranks=gathered.ranks,
        )


def _fused_temperature_sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Plain temperature sampling in one Triton pass (``kernels/sampling.py``); greedy rows
    take the argmax. Same distribution as ``_sample``, other random draws."""
    from pagedllm.kernels.sampling import gumbel_sample

    logits = logits.contiguous()
    sampled = gumbel_sample(logits, 1.0 / batch.temperature)
    if batch.any_greedy:
        sampled = torch.where(batch.greedy, logits.argmax(dim=-1), sampled)
    return sampled


def apply_bans_and_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Return logits with banned tokens at ``-inf`` and penalties applied (a copy if changed)."""
    has_bans = batch.banned_rows is not None
    if not has_bans and batch.seen_mask is None and batch.output_counts is None:
        return logits
    logits = logits.clone()
    if batch.seen_mask is not None:
        # HF RepetitionPenaltyLogitsProcessor: a seen token's logit moves towards "less likely"
        # whatever its sign, so positive logits are divided and negative ones multiplied.
        rep = batch.repetition_penalty
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(batch.seen_mask, penalized, logits)
    if batch.output_counts is not None:
        counts = batch.output_counts
        logits -= batch.frequency_penalty * counts + batch.presence_penalty * (counts > 0).float()
    if has_bans:
        logits[batch.banned_rows, batch.banned_cols] = float("-inf")
    return logits


def _sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Temperature, min_p, top_k, top_p, then the exponential race. Greedy rows get garbage
    that the caller discards (their temperature is 1, so nothing here divides by zero)."""
    logits = logits / batch.temperature[:, None]
    if batch.need_min_p:
        probs = torch.softmax(logits, dim=-1)
        threshold = batch.min_p[:, None] * probs.amax(dim=-1, keepdim=True)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if batch.need_top_p:
        logits = _top_k_top_p_sorted(logits, batch.top_k, batch.top_p, batch.need_top_k)
    elif batch.need_top_k:
        logits = _top_k_only(logits, batch.top_k, batch.max_top_k)
    probs = torch.softmax(logits, dim=-1)
    noise = torch.empty_like(probs)
    noise.exponential_()
    # Seeded rows redraw their noise from their own generator: V draws per step each, so the
    # stream depends only on the seed and the step, not on the batch.
    for row in batch.seeded_rows:
        noise[row].exponential_(generator=batch.generators[row])
    # Guard against a zero draw turning 0/0 into NaN, which argmax would pick.
    noise.clamp_(min=torch.finfo(torch.float32).tiny)
    return (probs / noise).argmax(dim=-1)


def _top_k_only(logits: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """Keep logits >= each row's k-th largest (ties at the boundary are all kept).

    One ``topk(max_k)`` instead of a full sort; rows whose k exceeds ``max_k`` (disabled, or
    greedy rows whose result is discarded) keep everything.
    """
    values = logits.topk(max_k, dim=-1).values
    kth = values.gather(1, (top_k.clamp(max=max_k) - 1)[:, None])
    kth = kth.masked_fill(top_k[:, None] > max_k, float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_k_top_p_sorted(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, apply_k: bool
) -> torch.Tensor:
    """top_k then top_p on one descending sort; top_p is taken on the top_k-renormalized
    distribution and always keeps the most likely token."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    if apply_k:
        positions = torch.arange(logits.shape[-1], device=logits.device)[None, :]
        sorted_logits = sorted_logits.masked_fill(positions >= top_k[:, None], float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token when the mass strictly before it already reaches top_p.
    mass_before = probs.cumsum(dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


@dataclass(slots=True)
class _Gathered:
    top: list[Logprobs | None]
    chosen: list[float]
    ranks: list[int]


def _gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: list[int | None]
) -> _Gathered:
    """Top-k and chosen-token logprobs per row from ``[N, V]`` logprobs (one host sync)."""
    max_k = max((k for k in num_logprobs if k is not None), default=0)
    chosen = logprobs.gather(1, token_ids[:, None]).squeeze(1)
    # Rank = 1 + number of tokens strictly more likely (vLLM's definition).
    ranks = (logprobs > chosen[:, None]).sum(dim=-1) + 1
    top_vals, top_ids = logprobs.topk(max_k, dim=-1) if max_k else (None, None)
    chosen_l, ids_l = chosen.tolist(), token_ids.tolist()
    vals_l = top_vals.tolist() if top_vals is not None else None
    tops_l = top_ids.tolist() if top_ids is not None else None
    top: list[Logprobs | None] = []
    for row, k in enumerate(num_logprobs):
        if k is None:
            top.append(None)
            continue
        entry: Logprobs = {}
        if k:
            entry = dict(zip(tops_l[row][:k], vals_l[row][:k], strict=True))
        entry.setdefault(ids_l[row], chosen_l[row])
        top.append(entry)
    return _Gathered(top=top, chosen=chosen_l, ranks=ranks.tolist())


def compute_prompt_logprobs(
    logits: torch.Tensor, next_token_ids: torch.Tensor | list[int], k: int
) -> list[Logprobs]:
    """Per prompt position: the actual next token's logprob plus the top-``k`` alternatives.

    ``logits[i]`` is the model output at prompt position ``i`` and ``next_token_ids[i]`` the
    prompt token at ``i + 1``. Each entry is a dict token id -> logprob holding the top-``k``
    (descending) and the actual next token. Raw distribution (no penalties or temperature), as
    for sampled tokens. Runs in chunks of positions to bound memory on long prompts.
    """
    if not isinstance(next_token_ids, torch.Tensor):
        next_token_ids = torch.tensor(next_token_ids, dtype=torch.int64)
    next_token_ids = next_token_ids.to(device=logits.device, dtype=torch.int64)
    if logits.dim() != 2 or logits.shape[0] != next_token_ids.shape[0]:
        raise ValueError("logits must be [P, V] with one next token id per row")
    out: list[Logprobs] = []
    for start in range(0, logits.shape[0], _PROMPT_LOGPROBS_CHUNK):
        end = start + _PROMPT_LOGPROBS_CHUNK
        chunk = torch.log_softmax(logits[start:end].float(), dim=-1)
        gathered = _gather_logprobs(chunk, next_token_ids[start:end], [k] * chunk.shape[0])
        out.extend(entry for entry in gathered.top if entry is not None)
    return out


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A per-request generator on ``device``: create once per request, keep it across steps."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator
