"""``ModelSource``: everything the engine needs from a model on disk, format-independent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pagedllm.progress import with_load_progress

from .tokenizer import Tokenizer

WeightIterator = Iterator[tuple[str, torch.Tensor]]


@dataclass(slots=True)
class ModelSource:
    """A loaded model description; weights are read lazily by ``weights()``.

    Attributes:
        hf_config: Hugging Face ``config.json`` keys (``architectures``, ``hidden_size``, ...).
        tokenizer: the model's tokenizer (a placeholder one for dummy models without a tokenizer;
            see ``loader/dummy.py``).
        generation_config: ``generation_config.json`` defaults (``eos_token_id`` may be a list).
        name: short model name, used as the served model name.
        path: where it was loaded from (a file or a directory; ``""`` for none).
        load_format: the resolved format: ``gguf``, ``safetensors`` or ``dummy``.
    """

    hf_config: dict[str, Any]
    tokenizer: Tokenizer
    generation_config: dict[str, Any]
    name: str
    path: str
    load_format: str
    _weights_fn: Callable[[], WeightIterator] = field(repr=False)
    num_tensors: int | None = None  # how many ``weights()`` yields (for the progress bar)

    def weights(self) -> WeightIterator:
        """Yield ``(hf_parameter_name, tensor)`` pairs on CPU, one tensor at a time.

        Names follow Hugging Face (``model.layers.0.self_attn.q_proj.weight``). With tied
        embeddings no ``lm_head.weight`` is yielded (like HF checkpoints): the model ties it.
        Each call re-reads the source, so it can be iterated more than once.
        """
        return with_load_progress(self._weights_fn(), self.num_tensors, self.name)
