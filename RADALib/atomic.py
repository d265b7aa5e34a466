"""Write-then-rename, so a crash or Ctrl-C never leaves a half-written file under the real name."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a hidden temporary sibling of ``path``, then rename it into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.part")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_npz_atomic(path: str | os.PathLike[str], arrays: dict, compress: bool = True) -> Path:
    """Save named arrays as ``.npz`` under a temporary name, then rename it into place."""
    import numpy as np

    path = Path(path)
    temporary = path.with_name(f".{path.name}.part.npz")
    try:
        (np.savez_compressed if compress else np.savez)(temporary, **arrays)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def ensure_writable_folder(folder: str | os.PathLike[str], purpose: str = "") -> Path:
    """Create ``folder`` if needed; an ``InputError`` naming it when it cannot be written."""
    from .errors import InputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(folder, f"cannot create the output folder: {exc.strerror}") from None
    if not os.access(folder, os.W_OK):
        raise InputError(
            folder,
            "output folder is not writable" + (f" (needed for {purpose})" if purpose else ""),
        )
    return folder
