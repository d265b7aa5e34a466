"""Where RADA keeps its files and what it calls them: the cache root and the prediction files.

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
