"""Fingerprints that tie a result to its input file and its analysis parameters."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["file_fingerprint", "params_fingerprint"]

_BLOCK = 8 * 2**20


def _hash_file(path: Path, h) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def file_fingerprint(path: str | os.PathLike) -> str:
    """BLAKE2b digest of a file's content, or of a directory's (a ``.zarr`` store).

    For a directory: every file's relative path and content, in sorted order.
    Independent of names, dates and location: a copy has the same fingerprint.
    """
    path = Path(path)
    h = hashlib.blake2b(digest_size=20)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(file.relative_to(path).as_posix()).encode() + b"\0")
            _hash_file(file, h)
            h.update(b"\0")
    else:
        _hash_file(path, h)
    return f"blake2b:{h.hexdigest()}"


def params_fingerprint(params: Mapping) -> str:
    """BLAKE2b digest of analysis parameters (canonical JSON)."""
    text = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return f"blake2b:{hashlib.blake2b(text.encode(), digest_size=20).hexdigest()}"
