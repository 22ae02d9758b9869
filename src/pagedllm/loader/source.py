"""``load_model_source``: one entry point for every model format."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .model_source import ModelSource
from .tokenizer import Tokenizer

LOAD_FORMATS = ("auto", "gguf", "safetensors", "dummy")


def _is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"  # the file magic, whatever the file is named


def _single_gguf_in(directory: Path) -> Path | None:
    files = sorted(directory.glob("*.gguf"))
    if len(files) > 1:
        names = ", ".join(f.name for f in files[:4])
        raise ValueError(f"{directory} holds several GGUF files ({names}); pass one file's path")
    return files[0] if files else None


def _resolve_path(model: str | None) -> tuple[Path, str | None]:
    """(path, served name override) of the model argument; ``None`` is the bundled model."""
    if model is None:
        from .bundled import BUNDLED_NAME, bundled_model_path

        return bundled_model_path(), BUNDLED_NAME
    if not isinstance(model, str | Path):
        raise TypeError(f"model must be a path string or None, got {type(model).__name__}")
    path = Path(model).expanduser()
    if not path.exists():
        raise ValueError(
            f"model path {str(model)!r} does not exist; pass a .gguf file or a local Hugging Face "
            "directory (config.json + *.safetensors), or no model for the bundled SmolLM2-135M. "
            "Models are never downloaded."
        )
    return path, None


def _detect_format(path: Path) -> str:
    if _is_gguf_file(path):
        return "gguf"
    if path.is_dir():
        if (path / "config.json").is_file():
            return "safetensors"
        if _single_gguf_in(path) is not None:
            return "gguf"
    raise ValueError(
        f"cannot tell the format of {path}: pass a .gguf file or a Hugging Face directory with "
        "config.json and *.safetensors (or load_format='dummy' with a config.json)"
    )


def _gguf_file(path: Path) -> Path:
    if path.is_dir():
        found = _single_gguf_in(path)
        if found is not None:
            return found
    if not _is_gguf_file(path):
        raise ValueError(f"{path} is not a GGUF file; use load_format='auto' or 'safetensors'")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer alone, from a GGUF file or a directory with ``tokenizer.json``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"tokenizer path {str(path)!r} does not exist")
    if path.is_dir() and (path / "tokenizer.json").is_file():
        from .hf_loader import read_generation_config
        from .hf_tokenizer import load_hf_tokenizer, read_json

        config_path = path / "config.json"
        config = read_json(config_path) if config_path.is_file() else {}
        return load_hf_tokenizer(path, config, read_generation_config(path))
    if _is_gguf_file(path) or (path.is_dir() and _single_gguf_in(path) is not None):
        from .gguf_loader import load_gguf

        return load_gguf(_gguf_file(path)).tokenizer
    raise ValueError(
        f"no tokenizer at {path}: pass a directory with tokenizer.json or a .gguf file"
    )


def load_model_source(
    model: str | None, load_format: str = "auto", tokenizer: str | None = None
) -> ModelSource:
    """Load a model's config, tokenizer and (lazy) weights.

    Args:
        model: a ``.gguf`` file, a Hugging Face directory (``config.json`` + ``*.safetensors``),
            or ``None`` for the bundled SmolLM2-135M-Instruct GGUF. With ``load_format="dummy"``
            also a ``config.json`` file. Local paths only: nothing is downloaded.
        load_format: ``auto`` (detect), ``gguf``, ``safetensors`` or ``dummy`` (random weights
            with the model's architecture, for benchmarks).
        tokenizer: a directory with ``tokenizer.json`` or a ``.gguf`` file to take the tokenizer
            from instead of the model's own.

    Raises:
        ValueError: a missing path, an unknown format or architecture, pickle-only weights.
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(
            f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {load_format!r}"
        )
    if load_format == "dummy":
        from .dummy import load_dummy

        source = load_dummy(None) if model is None else load_dummy(_resolve_path(model)[0])
    else:
        path, name = _resolve_path(model)
        fmt = _detect_format(path) if load_format == "auto" else load_format
        if fmt == "gguf":
            from .gguf_loader import load_gguf

            source = load_gguf(_gguf_file(path), name=name)
        else:
            if not path.is_dir():
                raise ValueError(f"safetensors models are directories; {path} is a file")
            from .hf_loader import load_hf_directory

            source = load_hf_directory(path)
    if tokenizer is not None:
        source = replace(source, tokenizer=_override_tokenizer(source, load_tokenizer(tokenizer)))
    return source


def _override_tokenizer(source: ModelSource, tok: Tokenizer) -> Tokenizer:
    # The model's own stop ids still end generation with a borrowed tokenizer.
    tok.eos_token_ids = tok.eos_token_ids | source.tokenizer.eos_token_ids
    return tok
