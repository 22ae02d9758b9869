"""Fixtures for end-to-end tests live in e2e_utils (importable by test modules too)."""

from e2e_utils import chat_prompts, hf_model, hf_tokenizer, system_prompts  # noqa: F401
