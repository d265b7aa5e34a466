"""Where RADA keeps its files and what it calls them: the cache root, the prediction files, and
which user-given names (case ids) may become a file name.

Torch-free, standard library only: the Slicer module reads it before torch is installed.

Everything RADA caches (trained models, encoder weights, registration results, embeddings, the
Slicer module's exchange folder) lives in folders under one root, :func:`cache_root`:
``$RADA_CACHE_DIR`` when set (``~`` expanded), else ``~/.cache/rada``; never the install folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CACHE_ENV = "RADA_CACHE_DIR"
"""The environment variable that moves the cache root."""

DEFAULT_CACHE_ROOT = "~/.cache/rada"
"""The cache root when :data:`CACHE_ENV` is unset or empty."""

LABEL_SUFFIX = "_rada"
"""A prediction's label map is ``<case>_rada.nrrd``."""

PROBABILITY_SUFFIX = "_rada_probabilities"
"""A prediction's probabilities are ``<case>_rada_probabilities.nrrd`` (``..._<k>.nrrd`` per
class when there are several foreground classes)."""


def cache_root(environ: Mapping[str, str] | None = None) -> Path:
    """The RADA cache root: ``$RADA_CACHE_DIR`` (``~`` expanded) if set, else ``~/.cache/rada``.

    ``environ`` defaults to ``os.environ``, read when called.
    """
    env = os.environ if environ is None else environ
    value = env.get(CACHE_ENV, "").strip()
    return Path(value or DEFAULT_CACHE_ROOT).expanduser()


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one file or folder name that RADA writes under a folder it was
    given (a case id, for ``<out>/cases/<id>/``), or None for a plain name.

    A plain name is a non-empty text without a path separator (``/`` or ``\\``), a drive colon,
    or a control character; it is not ``.`` or ``..``, does not start with ``-`` (it would read
    as an option on a command line, e.g. ``rada propagate --cases``) and does not start or end
    with a space. Any other letter (accented ones too), digit or punctuation is fine.
    """
    if not isinstance(name, str):
        return f"it must be a text, not {type(name).__name__}"
    if not name.strip():
        return "it is empty"
    if name in (".", ".."):
        return "it names a folder ('.' or '..')"
    if "/" in name or "\\" in name:
        return "it holds a path separator ('/' or '\\')"
    if ":" in name:
        return "it holds ':' (a drive on Windows)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it holds a control character"
    if name.startswith("-"):
        return "it starts with '-' (it would read as an option)"
    if name != name.strip():
        return "it starts or ends with a space"
    return None


def plain_name(name: object, what: str, source: str | os.PathLike[str]) -> str:
    """``name`` when it is a plain name (:func:`name_problem`); else an :class:`InputError`
    naming ``source``: ``<what> <name!r> is not a plain file name: <why>``."""
    from .errors import InputError

    problem = name_problem(name)
    if problem is not None:
        raise InputError(source, f"{what} {name!r} is not a plain file name: {problem}")
    return name  # type: ignore[return-value]
