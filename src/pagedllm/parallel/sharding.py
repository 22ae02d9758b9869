"""Which slice of each weight a rank owns (Megatron-style), and which splits are possible.

- q heads: rank r owns heads ``[r*H/tp, (r+1)*H/tp)``; H must divide by tp.
- kv heads: with ``KVH >= tp`` rank r owns ``[r*KVH/tp, (r+1)*KVH/tp)`` (KVH must divide by
  tp); with ``KVH < tp`` each rank holds ONE kv head, replicated over ``tp/KVH`` ranks: rank r
  holds head ``r*KVH//tp`` (tp must divide by KVH). Either way the q heads of a rank attend
  only to the kv heads that rank holds, so attention needs no communication.
- MLP: the intermediate dimension splits evenly (column-parallel gate/up, row-parallel down).
- vocabulary: ``ceil(V/tp)`` rows per rank; the last rank's slice may be padded with zero rows,
  whose logits are dropped after the gather.
"""

from __future__ import annotations

from typing import Any


def _divisors_hint(*counts: int) -> str:
    limit = min(counts)
    sizes = [n for n in range(1, limit + 1) if all(c % n == 0 for c in counts)]
    return ", ".join(str(n) for n in sizes)


def check_tensor_parallel(hf_config: dict[str, Any], tp: int) -> None:
    """Raise ValueError when the model cannot be split over ``tp`` ranks, naming the counts."""
    if tp == 1:
        return
    heads = int(hf_config["num_attention_heads"])
    kv_heads = int(hf_config.get("num_key_value_heads") or heads)
    check_heads(heads, kv_heads, tp)
    inter = hf_config.get("intermediate_size")
    if inter is not None and int(inter) % tp != 0:
        raise ValueError(
            f"tensor_parallel_size={tp} does not divide intermediate_size={inter}; "
            "pick a tensor_parallel_size that divides it"
        )


def check_heads(num_heads: int, num_kv_heads: int, tp: int) -> None:
    """The head-count rules of the module docstring, as ValueErrors a user can act on."""
    if num_heads % tp != 0:
        raise ValueError(
            f"tensor_parallel_size={tp} cannot split num_attention_heads={num_heads} "
            f"(num_key_value_heads={num_kv_heads}) evenly: the attention heads must divide by "
            f"tensor_parallel_size; sizes that work for this model: "
            f"{_divisors_hint(num_heads)}"
        )
    if num_kv_heads >= tp and num_kv_heads % tp != 0:
        raise ValueError(
            f"tensor_parallel_size={tp} cannot split num_key_value_heads={num_kv_heads} "
            f"(num_attention_heads={num_heads}) evenly; use a size that divides "
            f"{num_kv_heads}, or a multiple of it that divides {num_heads}"
        )
    if num_kv_heads < tp and tp % num_kv_heads != 0:
        raise ValueError(
            f"tensor_parallel_size={tp} is larger than num_key_value_heads={num_kv_heads} "
            f"(num_attention_heads={num_heads}) but not a multiple of it, so the KV heads "
            "cannot be replicated evenly; use a multiple of the KV head count"
        )


def local_num_kv_heads(num_kv_heads: int, tp: int) -> int:
    """KV heads held by each rank (1 when they are replicated)."""
    return max(num_kv_heads // tp, 1)


def kv_head_range(num_kv_heads: int, rank: int, tp: int) -> tuple[int, int]:
    """``[start, stop)`` of the global kv heads rank ``rank`` holds."""
    if num_kv_heads >= tp:
        per = num_kv_heads // tp
        return rank * per, (rank + 1) * per
    head = rank * num_kv_heads // tp
    return head, head + 1


def vocab_range(vocab_size: int, rank: int, tp: int) -> tuple[int, int, int]:
    """``(start, stop, rows)``: rank's token ids ``[start, stop)`` in a shard of ``rows`` rows.

    Every rank has the same ``rows = ceil(V/tp)`` (all-gather needs equal shapes); the rows past
    ``stop - start`` are padding.
    """
    rows = -(-vocab_size // tp)
    start = min(rank * rows, vocab_size)
    stop = min(start + rows, vocab_size)
    return start, stop, rows
