"""Where trained models live and what their manifests say, without loading torch or the weights.

The Slicer module lists and describes models with this before torch is installed;
:mod:`RADALib.bundle` loads and saves the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .errors import InputError
from .paths import cache_root

FORMAT = "rada-bundle"
FORMAT_VERSION = 1
"""The newest bundle layout this RADA reads and the one it writes."""
WEIGHTS_FILE = "weights.safetensors"
MANIFEST_FILE = "manifest.json"


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked manifest of the bundle ``folder`` (without loading the weights).

    Raises :class:`InputError` for a missing folder or manifest, invalid JSON, a file that is
    not a RADA bundle, or a bundle written by a newer RADA.
    """
    folder = bundle_folder(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise InputError(
            path, f"missing: {folder} is not a complete RADA model bundle (no {MANIFEST_FILE})"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"cannot be read as JSON ({exc}); the bundle is corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise InputError(
            path, f"is not a RADA model bundle manifest (format {found!r}, expected {FORMAT!r})"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(path, f"has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise InputError(
            path,
            f"format_version {version} was written by a newer RADA (this RADA {__version__} reads up "
            f"to format_version {FORMAT_VERSION}); upgrade RADA to load this model",
        )
    return manifest


def bundle_folder(folder: str | os.PathLike[str]) -> Path:
    """The bundle folder ``folder`` names (itself, or the folder of its manifest or weights file);
    ``InputError`` when it is missing or a plain file."""
    folder = Path(folder)
    if folder.is_file() and folder.name in (MANIFEST_FILE, WEIGHTS_FILE):
        folder = folder.parent
    if not folder.exists():
        raise InputError(folder, "model bundle not found")
    if not folder.is_dir():
        raise InputError(
            folder,
            "is a file; a model bundle is a folder holding manifest.json and weights.safetensors",
        )
    return folder


def is_bundle(folder: Path) -> bool:
    """Whether ``folder`` holds a readable RADA bundle manifest (nothing else is checked)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def default_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``models`` in the cache root (:func:`~RADALib.paths.cache_root`): ``$RADA_CACHE_DIR/models``,
    else ``~/.cache/rada/models`` (never the extension's folder)."""
    return cache_root(environ) / "models"


def list_bundles(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """The bundles directly inside ``folder`` (default :func:`default_models_dir`), by name.

    A bundle is a sub-folder whose ``manifest.json`` says ``format: rada-bundle``; temporary
    folders of an interrupted save (names starting with ``.``) are skipped.
    """
    folder = Path(folder) if folder is not None else default_models_dir()
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and is_bundle(p)
    )
