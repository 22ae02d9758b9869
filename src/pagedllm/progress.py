"""Progress bars (tqdm, on stderr) for the slow parts a user waits on: loading weights and
benchmarks. Shown only on a terminal unless asked, so logs and pipes stay clean."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


def progress_bar(
    total: int | None,
    desc: str,
    unit: str,
    file: IO[str] | None = None,
    enabled: bool | None = None,
) -> Any:
    """A tqdm bar; ``enabled=None`` shows it only when ``file`` (stderr) is a terminal."""
    from tqdm.auto import tqdm

    out = sys.stderr if file is None else file
    show = out.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, file=out, disable=not show, dynamic_ncols=True)


def with_load_progress(
    items: Iterator[T],
    total: int | None,
    name: str,
    file: IO[str] | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged while a bar counts them (``Loading NAME: 12/272 tensors``)."""
    bar = progress_bar(total, f"Loading {name}", "tensor", file, enabled)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()
