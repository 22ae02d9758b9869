"""Model registry: HF ``architectures[0]`` -> model class."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedllm.models.gemma2 import Gemma2ForCausalLM
from pagedllm.models.gemma3 import Gemma3ForCausalLM
from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def supported_architectures() -> list[str]:
    """Names accepted in a config's ``architectures`` list."""
    return sorted(MODEL_REGISTRY)


def build_model(
    hf_config: dict[str, Any], dtype: torch.dtype, device: torch.device | str
) -> nn.Module:
    """Build the (unloaded) model for ``hf_config`` on ``device`` in ``dtype``.

    Weights are uninitialized until ``model.load_weights(...)``. Raises ValueError for an
    architecture that is not supported.
    """
    architectures = hf_config.get("architectures") or []
    arch = architectures[0] if architectures else None
    model_cls = MODEL_REGISTRY.get(arch) if isinstance(arch, str) else None
    if model_cls is None:
        raise ValueError(
            f"unsupported model architecture {arch!r}; supported: "
            f"{', '.join(supported_architectures())}"
        )
    with torch.no_grad():
        model = model_cls(hf_config, dtype=dtype, device=device)
    return model.eval()
