"""A content-addressed cache of arrays on disk, so nothing is computed twice.

Keys are SHA-256 hashes of everything that determines a result (input arrays, their geometry,
the settings, the engine version); an entry is one ``.npz`` file written under a temporary
name and renamed, so an interrupted run never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import ensure_writable_folder, write_npz_atomic

META = "__meta__"


def content_key(*parts: Any) -> str:
    """SHA-256 of ``parts``: arrays by dtype, shape and bytes; everything else as sorted JSON."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            digest.update(f"array:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()


class ArrayCache:
    """Stores named arrays plus a JSON-able ``meta`` dict under a key, in ``folder``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        """The file that holds ``key``'s entry."""
        return self.folder / f"{key}.npz"

    def get(self, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """The stored arrays and meta, or None when absent or unreadable (then it is removed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files if name != META}
                meta = json.loads(bytes(data[META]).decode()) if META in data.files else {}
            return arrays, meta
        except (OSError, ValueError, zipfile.BadZipFile, json.JSONDecodeError):
            path.unlink(missing_ok=True)
            return None

    def put(self, key: str, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None) -> Path:
        """Write an entry atomically (temporary file, then rename)."""
        ensure_writable_folder(self.folder)
        payload = dict(arrays)
        payload[META] = np.frombuffer(
            json.dumps(dict(meta or {}), default=str).encode(), dtype=np.uint8
        )
        return write_npz_atomic(self.path(key), payload)
