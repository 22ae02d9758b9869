"""Load Hugging Face model directories: ``config.json`` + ``*.safetensors`` (never pickle)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .attention_layout import layer_windows
from .hf_tokenizer import has_hf_tokenizer, load_hf_tokenizer, read_json
from .model_source import ModelSource, WeightIterator
from .tokenizer import Tokenizer

_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
# The architectures pagedllm has model code for (models/registry.py).
SUPPORTED_ARCHITECTURES = (
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_MODEL_TYPES = {a.removesuffix("ForCausalLM").lower(): a for a in SUPPORTED_ARCHITECTURES}
_MODEL_TYPES["gemma3_text"] = "Gemma3ForCausalLM"

logger = logging.getLogger(__name__)


def read_hf_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of ``directory``, checked to name an architecture."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"{directory} has no config.json; pass a Hugging Face model directory or a .gguf file"
        )
    config = read_json(config_path)
    archs = check_architectures(config, config_path)
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"architecture {archs[0]!r} ({config_path}) is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    # Some configs only carry the older key, or the newer nested rope_parameters.
    rope = config.get("rope_parameters")
    if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if "torch_dtype" not in config and "dtype" in config:
        config["torch_dtype"] = config["dtype"]
    fill_config_defaults(config)
    if "num_hidden_layers" in config:
        layer_windows(config)  # an inconsistent window / layer pattern fails here, naming it
    return config


def check_architectures(config: dict[str, Any], config_path: Path) -> list[str]:
    """``config["architectures"]``, inferred from ``model_type`` when a bare config lacks it."""
    archs = config.get("architectures")
    if not archs and config.get("model_type") in _MODEL_TYPES:
        archs = config["architectures"] = [_MODEL_TYPES[config["model_type"]]]
    if not isinstance(archs, list) or not archs:
        raise ValueError(
            f"{config_path} has neither an 'architectures' list nor a known 'model_type'; "
            'add e.g. "architectures": ["LlamaForCausalLM"]'
        )
    return archs


def fill_config_defaults(config: dict[str, Any]) -> None:
    """Write out the keys HF leaves to class defaults, so model code can index them directly."""
    heads = config.get("num_attention_heads")
    config.setdefault("num_key_value_heads", heads)
    if config.get("head_dim") is None and heads and config.get("hidden_size"):
        config["head_dim"] = config["hidden_size"] // heads
    config.setdefault("rope_theta", 10000.0)
    config.setdefault("rope_scaling", None)
    config.setdefault("rms_norm_eps", 1e-6)
    config.setdefault("hidden_act", "silu")
    # Qwen2's config has no attention_bias key: its q/k/v projections always carry biases.
    config.setdefault("attention_bias", config["architectures"][0] == "Qwen2ForCausalLM")
    config.setdefault("torch_dtype", "float32")


def _has_tensor(files: list[Path], name: str) -> bool:
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            if name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                return True
    return False


def _count_tensors(files: list[Path], skip: frozenset[str]) -> int:
    """Tensors ``iter_safetensors`` will yield (reads only the headers)."""
    from safetensors import safe_open

    count = 0
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            count += sum(name not in skip for name in handle.keys())  # noqa: SIM118
    return count


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files, in index order when sharded."""
    index_path = directory / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = read_json(index_path).get("weight_map", {})
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise ValueError(f"{index_path} lists missing shard files: {missing[:3]}")
        return [directory / n for n in names]
    files = sorted(directory.glob("*.safetensors"))
    if files:
        return files
    if any(f for pattern in _PICKLE_PATTERNS for f in directory.glob(pattern)):
        raise ValueError(
            f"{directory} only has pickle checkpoints (.bin/.pt), which pagedllm never loads "
            "(they can run arbitrary code); convert them to safetensors, e.g. "
            "model.save_pretrained(dir, safe_serialization=True)"
        )
    raise ValueError(f"no *.safetensors files in {directory}; pass a directory with weights")


def iter_safetensors(files: list[Path], skip: frozenset[str] = frozenset()) -> WeightIterator:
    """Yield every tensor of ``files`` (except names in ``skip``), memory-mapped."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                if name not in skip:
                    yield name, handle.get_tensor(name)


def read_generation_config(directory: Path) -> dict[str, Any]:
    """``generation_config.json`` if present, else ``{}``."""
    path = directory / "generation_config.json"
    return read_json(path) if path.is_file() else {}


def load_directory_tokenizer(
    directory: Path, config: dict[str, Any], generation_config: dict[str, Any]
) -> Tokenizer | None:
    """The directory's tokenizer, or ``None`` when it has no ``tokenizer.json``."""
    if not has_hf_tokenizer(directory):
        return None
    return load_hf_tokenizer(directory, config, generation_config)


def load_hf_directory(directory: Path) -> ModelSource:
    """A ``ModelSource`` for a Hugging Face directory with safetensors weights."""
    config = read_hf_config(directory)
    files = safetensors_files(directory)
    generation_config = read_generation_config(directory)
    tokenizer = load_directory_tokenizer(directory, config, generation_config)
    if tokenizer is None:
        # weights without a tokenizer still serve token-id prompts (tests, benchmarks)
        from .dummy import placeholder_tokenizer

        logger.warning("no tokenizer.json in %s: token-id prompts only", directory)
        eos = config.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        tokenizer = placeholder_tokenizer(int(config["vocab_size"]), eos_ids)
    if "tie_word_embeddings" not in config:  # HF's base default: tied unless a head is stored
        config["tie_word_embeddings"] = not _has_tensor(files, "lm_head.weight")
    # Tied checkpoints sometimes still store lm_head.weight; the model ties it from the
    # embedding, so it is not yielded (the same contract as GGUF).
    skip = frozenset({"lm_head.weight"}) if config.get("tie_word_embeddings") else frozenset()
    return ModelSource(
        hf_config=config,
        tokenizer=tokenizer,
        generation_config=generation_config,
        name=directory.name,
        path=str(directory),
        load_format="safetensors",
        _weights_fn=lambda: iter_safetensors(files, skip),
        num_tensors=_count_tensors(files, skip),
    )
