"""pagedllm: LLM inference and serving on a paged KV cache.

``from pagedllm import LLM, SamplingParams``. ``LLM`` and ``RequestOutput`` are imported lazily
so that ``pagedllm.core`` (pure Python) stays importable without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pagedllm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagedllm.engine.outputs import CompletionOutput, RequestOutput
    from pagedllm.entrypoints.llm import LLM

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from pagedllm.entrypoints.llm import LLM

        return LLM
    if name in ("RequestOutput", "CompletionOutput"):
        from pagedllm.engine import outputs

        return getattr(outputs, name)
    raise AttributeError(f"module 'pagedllm' has no attribute {name!r}")
