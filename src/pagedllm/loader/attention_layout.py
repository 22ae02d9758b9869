"""Which layers attend over a sliding window, read from a Hugging Face config dict.

Pure Python (no torch): the engine groups layers by attention type from this before any model
is built, and the models read the same per-layer windows, so the two can never disagree.

Sources, in the order Hugging Face applies them:

* ``layer_types`` (transformers v4.5x+ configs: Gemma 2/3, Qwen2, Mistral, ...): entries
  ``"sliding_attention"`` (window ``sliding_window``) or ``"full_attention"``;
* Gemma 3's older ``sliding_window_pattern`` ``p``: layer ``i`` is global when ``(i + 1) % p == 0``;
* Gemma 2 without ``layer_types``: even layers local, odd layers global;
* Qwen2 without ``layer_types``: with ``use_sliding_window``, layers ``>= max_window_layers``;
* Mistral: ``sliding_window`` on every layer when set.

A window ``w`` means a query at position ``p`` sees keys at positions ``p - w + 1 .. p``.
Inconsistent configs raise ``ValueError`` naming the field.
"""

from __future__ import annotations

from typing import Any

LAYER_TYPES = ("full_attention", "sliding_attention")
_GEMMA3 = ("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")


def _architecture(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or [""]
    return archs[0] if isinstance(archs[0], str) else ""


def _window(cfg: dict[str, Any]) -> int | None:
    window = cfg.get("sliding_window")
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"sliding_window must be a positive integer or null, got {window!r}")
    return window


def _types_from_pattern(cfg: dict[str, Any], num_layers: int) -> list[str]:
    pattern = cfg["sliding_window_pattern"]
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern <= 0:
        raise ValueError(f"sliding_window_pattern must be a positive integer, got {pattern!r}")
    if pattern > num_layers:
        raise ValueError(
            f"sliding_window_pattern ({pattern}) is longer than num_hidden_layers ({num_layers})"
        )
    return [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
        for i in range(num_layers)
    ]


def _default_types(cfg: dict[str, Any], arch: str, num_layers: int) -> list[str] | None:
    """HF's per-architecture default when the config has no ``layer_types``."""
    if arch in _GEMMA3:
        if cfg.get("sliding_window_pattern") is None:
            return _types_from_pattern({"sliding_window_pattern": 6}, num_layers)
        return _types_from_pattern(cfg, num_layers)
    if arch == "Gemma2ForCausalLM":
        return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    if arch == "Qwen2ForCausalLM":
        if not cfg.get("use_sliding_window"):
            return None
        first = cfg.get("max_window_layers", 28)
        return ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    if arch == "MistralForCausalLM":
        return ["sliding_attention"] * num_layers
    return None


def layer_windows(cfg: dict[str, Any]) -> list[int | None]:
    """The sliding window of every layer (``None`` = full attention) of a HF config dict."""
    num_layers = cfg.get("num_hidden_layers")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise ValueError(f"num_hidden_layers must be a positive integer, got {num_layers!r}")
    arch = _architecture(cfg)
    window = _window(cfg)
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != num_layers:
            count = len(types) if isinstance(types, list) else type(types).__name__
            raise ValueError(
                f"layer_types must list one entry per layer ({num_layers}), got {count}"
            )
        unknown = sorted({str(t) for t in types if t not in LAYER_TYPES})
        if unknown:
            raise ValueError(
                f"unknown layer_types entries {unknown}; supported: {', '.join(LAYER_TYPES)}"
            )
    else:
        if cfg.get("sliding_window_pattern") is not None and arch not in _GEMMA3:
            _types_from_pattern(cfg, num_layers)  # validate it even where HF ignores it
        types = _default_types(cfg, arch, num_layers)
    if types is None or window is None:
        if window is None and types is not None and "sliding_attention" in types:
            if arch in _GEMMA3 or arch == "Gemma2ForCausalLM":
                raise ValueError("sliding_window must be set for sliding_attention layers")
        return [None] * num_layers
    return [window if t == "sliding_attention" else None for t in types]
