"""Fixtures for the Slicer module's tests: the real slicer-core scene, and fakes of the app.

Tests that use the scene are skipped, with a message, where ``slicer-core`` is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE_DIR = HERE.parents[2] / "RADASegment"
for path in (str(HERE), str(MODULE_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

try:
    import slicer  # noqa: F401  (slicer-core)
except ImportError:  # pragma: no cover - depends on the environment
    slicer = None


def pytest_collection_modifyitems(config, items):
    if slicer is not None:
        return
    skip = pytest.mark.skip(
        reason="slicer-core is not installed (pip install 'slicer-core==5.12.4.0'): module tests skipped"
    )
    for item in items:
        if str(HERE) in str(item.fspath) and {"scene", "slicer_session"} & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slicer_session():
    """slicer-core with the module logics registered (once per session; see slicer_scene.py)."""
    import fakeslicer
    import slicer_scene

    fakeslicer.install()
    return slicer_scene.setup_session()


@pytest.fixture
def scene(slicer_session):
    """A cleared MRML scene (``slicer.mrmlScene``) for one test."""
    import slicer

    slicer.mrmlScene.Clear(0)
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(0)
