"""Only a GPU engine that lives for its process's life freezes the objects alive at start-up."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from pagedllm.engine.gc_freeze import freeze_startup_objects


def _engine(device_type: str) -> SimpleNamespace:
    return SimpleNamespace(runner=SimpleNamespace(device=SimpleNamespace(type=device_type)))


def test_cpu_engine_freezes_nothing() -> None:
    before = gc.get_freeze_count()
    freeze_startup_objects(_engine("cpu"))
    assert gc.get_freeze_count() == before


def test_gpu_engine_freezes_what_is_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    freeze_startup_objects(_engine("cuda"))
    assert calls == ["collect", "freeze"]  # garbage collected first, so none of it is frozen
