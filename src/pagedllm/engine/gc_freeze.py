"""Keep Python's garbage collector off the objects a long-lived GPU engine holds."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagedllm.engine.llm_engine import LLMEngine


def freeze_startup_objects(engine: LLMEngine) -> None:
    """Move every object alive now into Python's permanent GC generation (on a GPU engine).

    For processes that hold one engine for their whole life (the engine-core process, the
    in-process server). The KV pool alone is ~650k block objects at 40 GiB; a full collection
    walks them all (0.11-0.13 s per collection on this project's CPU) and can land in the
    middle of a step. vLLM freezes after start-up for the same reason. Not done for ``LLM``
    objects: a program may build several engines, and frozen cycles of a closed one would keep
    its device memory until ``gc.unfreeze()``.
    """
    if engine.runner.device.type != "cuda":
        return
    gc.collect()
    gc.freeze()
