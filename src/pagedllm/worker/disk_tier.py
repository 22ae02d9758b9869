"""The disk tier: host pages written behind to files, read back into host pages on a hit.

One file per block, ``<name>.kv`` in ``kv_disk_path`` (the name is ``g<group>-<digest>``, the
digest a SHA-256 chained over the block's whole token prefix: ``core/kv_tiers.py``). A file is

    MAGIC | u32 header length | JSON header | payload (the host page's bytes)

The header carries the *key*, everything that decides whether the bytes mean the same KV for
this engine: model identity, dtype, block size, page layout (tensors, KV heads, head dim, the
KV cache groups' windows), plus the entry's group and digest; and the payload's SHA-256.

At start-up ``scan`` reads every file: one with another key, a bad checksum, a wrong size or a
name that does not match its header is skipped with a warning (and never served); the valid
ones rebuild the core's index, so the tier survives an engine restart. ``read`` verifies again;
a mismatch then raises (the step fails and its requests get an error, never wrong KV).
Writes go to a temporary file renamed into place, so a crash never leaves a half entry under
a valid name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MAGIC = b"PAGEDLLM-KV1\n"
SUFFIX = ".kv"


class DiskEntryError(RuntimeError):
    """A disk entry failed verification at read time."""


class DiskTier:
    """Files under ``path``; ``key`` identifies the model and page layout (module docstring)."""

    def __init__(self, path: str | os.PathLike, key: dict) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.bytes_written = 0
        self.bytes_read = 0

    def _file(self, name: str) -> Path:
        return self.path / f"{name}{SUFFIX}"

    def write(self, name: str, page: torch.Tensor) -> None:
        """Write one host page under ``name`` (replacing an older file of that name)."""
        payload = page.contiguous().view(torch.uint8).numpy().tobytes()
        group, digest = _parse_name(name)
        header = {
            "key": self.key,
            "group": group,
            "digest": digest,
            "nbytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        raw = json.dumps(header, sort_keys=True).encode()
        tmp = self.path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(raw)) + raw + payload)
        os.replace(tmp, self._file(name))
        self.bytes_written += len(payload)

    def read(self, name: str, page: torch.Tensor) -> None:
        """Fill host ``page`` from entry ``name``; DiskEntryError if it does not verify."""
        payload = self._verified_payload(self._file(name), page.numel() * page.element_size())
        if payload is None:
            self.delete(name)
            raise DiskEntryError(f"disk KV entry {name} failed verification")
        src = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        page.view(-1).view(torch.uint8).copy_(src)
        self.bytes_read += len(payload)

    def delete(self, name: str) -> None:
        """Remove entry ``name`` (no error when it is gone already)."""
        self._file(name).unlink(missing_ok=True)

    def scan(self, page_bytes: int) -> list[tuple[int, str]]:
        """``(group, digest)`` of every valid entry (oldest first); bad ones are skipped."""
        out = []
        files = sorted(self.path.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for file in files:
            if self._verified_payload(file, page_bytes) is not None:
                out.append(_parse_name(file.name[: -len(SUFFIX)]))
        return out

    def _verified_payload(self, file: Path, page_bytes: int) -> bytes | None:
        """The payload of ``file`` if its key, name, size and checksum all match, else None."""
        try:
            data = file.read_bytes()
            if not data.startswith(MAGIC):
                raise ValueError("bad magic")
            (n,) = struct.unpack_from("<I", data, len(MAGIC))
            start = len(MAGIC) + 4
            header = json.loads(data[start : start + n])
            payload = data[start + n :]
            name = file.name[: -len(SUFFIX)]
            if header.get("key") != self.key:
                raise ValueError("written for another model, dtype, block size or layout")
            if (header.get("group"), header.get("digest")) != _parse_name(name):
                raise ValueError("the header does not match the file name")
            if header.get("nbytes") != len(payload) or len(payload) != page_bytes:
                raise ValueError("wrong size")
            if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
                raise ValueError("checksum mismatch")
        except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
            logger.warning("skipping disk KV entry %s: %s", file.name, exc)
            return None
        return payload


def _parse_name(name: str) -> tuple[int, str]:
    """``g<group>-<digest>`` -> (group, digest); ValueError otherwise."""
    group, sep, digest = name.partition("-")
    if not sep or not group.startswith("g") or not group[1:].isdigit():
        raise ValueError(f"not a disk KV entry name: {name!r}")
    return int(group[1:]), digest


def open_disk_tier(config, runner, model_name: str, windows: list) -> tuple[DiskTier | None, int]:  # noqa: ANN001
    """The disk tier of an engine (or None) and its bound in entries; attaches it to the
    ``runner``'s cache engine (tensor_parallel_size 1 only).

    The key names everything that must match for a file's bytes to be this engine's KV.
    """
    path = config.cache.kv_disk_path
    if path is None:
        return None, 0
    if config.parallel.tensor_parallel_size > 1:
        raise ValueError("kv_disk_path is not supported with tensor_parallel_size > 1")
    cache = runner.cache
    spec = cache.spec
    model = config.model
    key = {
        "format": 1,
        "model": model_name,
        "source": str(model.model),
        "load_format": model.load_format,
        "seed": model.seed if model.load_format == "dummy" else None,
        "dtype": str(spec.dtype),
        "block_size": spec.block_size,
        "num_tensors": spec.num_tensors,
        "num_kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "windows": list(windows),
    }
    disk = DiskTier(path, key)
    cache.disk = disk
    return disk, config.cache.kv_disk_bytes // spec.bytes_per_block
