"""Load a ``Tokenizer`` from a Hugging Face directory (``tokenizer.json`` + its config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer

from .tokenizer import Tokenizer


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a ValueError naming the file when it is malformed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes special tokens as "<s>" or {"content": "<s>", ...}.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list):
        return [int(v) for v in value]
    return [int(value)]


def _chat_template(directory: Path, tok_config: dict[str, Any]) -> str | None:
    """``chat_template.jinja`` wins over ``chat_template.json`` over tokenizer_config's."""
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    json_file = directory / "chat_template.json"
    template: Any = tok_config.get("chat_template")
    if json_file.is_file():
        template = read_json(json_file).get("chat_template", template)
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def has_hf_tokenizer(directory: Path) -> bool:
    """Whether ``directory`` holds a ``tokenizer.json``."""
    return (directory / "tokenizer.json").is_file()


def load_hf_tokenizer(
    directory: Path,
    model_config: dict[str, Any] | None = None,
    generation_config: dict[str, Any] | None = None,
) -> Tokenizer:
    """A ``Tokenizer`` from ``tokenizer.json`` and ``tokenizer_config.json``.

    EOS ids: the tokenizer's ``eos_token`` first, then every ``eos_token_id`` of
    ``generation_config.json`` and ``config.json`` (either may be a list).
    """
    if not has_hf_tokenizer(directory):
        hint = ""
        if (directory / "tokenizer.model").is_file() or (directory / "vocab.json").is_file():
            hint = " (slow sentencepiece/vocab.json tokenizers are not supported: convert with "
            hint += "transformers' AutoTokenizer(...).save_pretrained to get tokenizer.json)"
        raise ValueError(f"no tokenizer.json in {directory}{hint}; pass tokenizer=<dir>")
    backend = BackendTokenizer.from_file(str(directory / "tokenizer.json"))
    config_path = directory / "tokenizer_config.json"
    tok_config = read_json(config_path) if config_path.is_file() else {}
    model_config = model_config or {}
    generation_config = generation_config or {}

    def token_id(key: str) -> int | None:
        content = _token_content(tok_config.get(key))
        return backend.token_to_id(content) if content is not None else None

    eos_ids = _as_id_list(token_id("eos_token"))
    eos_ids += _as_id_list(generation_config.get("eos_token_id"))
    eos_ids += _as_id_list(model_config.get("eos_token_id"))
    bos_id = token_id("bos_token")
    if bos_id is None:
        bos_id = model_config.get("bos_token_id")
    return Tokenizer(
        backend,
        bos_token_id=bos_id,
        eos_token_ids=eos_ids,
        pad_token_id=token_id("pad_token"),
        unk_token_id=token_id("unk_token"),
        chat_template=_chat_template(directory, tok_config),
    )
