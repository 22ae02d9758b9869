"""Model loading: GGUF, Hugging Face safetensors directories, dummy weights, tokenizers.

``load_model_source(model, load_format, tokenizer)`` is the one entry point; see ``source.py``.
"""

from __future__ import annotations

from .model_source import ModelSource
from .source import LOAD_FORMATS, load_model_source, load_tokenizer
from .tokenizer import Tokenizer

__all__ = ["LOAD_FORMATS", "ModelSource", "Tokenizer", "load_model_source", "load_tokenizer"]
