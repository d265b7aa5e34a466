"""Shared fixtures: small synthetic volumes with known geometry, and a fake registrar."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from RADALib.registration import PairResult, identity_coordinates


def shared_data(name: str, environment: str, marker: str) -> Path | None:
    """A real data set for the tests that read one: ``$<environment>`` if set, else the first
    ``shared/data/<name>`` above this checkout; None unless it holds ``marker``."""
    if os.environ.get(environment):
        candidates = [Path(os.environ[environment])]
    else:
        candidates = [p / "shared" / "data" / name for p in Path(__file__).resolve().parents]
    return next((folder for folder in candidates if (folder / marker).exists()), None)


def la_folder() -> Path | None:
    """LA2018 ($RADA_LA_DIR, or shared/data/LA2018 above the checkout), if present."""
    return shared_data("LA2018", "RADA_LA_DIR", "train.list")


def hippocampus_folder() -> Path | None:
    """The Hippocampus Decathlon task ($RADA_HIPPOCAMPUS_DIR, or shared/data/Hippocampus above
    the checkout), if present."""
    return shared_data("Hippocampus", "RADA_HIPPOCAMPUS_DIR", "dataset.json")


class TranslationRegistrar:
    """A registrar that finds the integer translation between two slices by cross-correlation.

    Exact for slices that are shifted copies of each other; used to test the chain logic
    without ANTs. Records every pair it was asked to register.
    """

    def __init__(self) -> None:
        self.calls = 0

    def register(self, pairs, spacing):
        results = []
        for fixed, moving in pairs:
            self.calls += 1
            f = np.fft.fft2(fixed - fixed.mean())
            m = np.fft.fft2(moving - moving.mean())
            correlation = np.real(np.fft.ifft2(f * np.conj(m)))
            peak = np.unravel_index(np.argmax(correlation), correlation.shape)
            shift = [p if p <= n // 2 else p - n for p, n in zip(peak, fixed.shape)]
            coordinates = identity_coordinates(fixed.shape)
            coordinates[0] -= shift[0]
            coordinates[1] -= shift[1]
            results.append(PairResult(coordinates, "translation"))
        return results


def disk_stack(shape=(48, 40, 30), radius=8.0, shift_per_slice=(0.7, 0.0), seed=0):
    """An image and label whose axial slices hold a disk moving by ``shift_per_slice`` per slice."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    image = np.zeros(shape, np.float32)
    label = np.zeros(shape, np.uint8)
    center = np.array(
        [
            shape[0] / 2 - shift_per_slice[0] * shape[2] / 2,
            shape[1] / 2 - shift_per_slice[1] * shape[2] / 2,
        ]
    )
    texture = rng.normal(0, 0.05, shape[:2]).astype(np.float32)
    for z in range(shape[2]):
        c = center + np.array(shift_per_slice) * z
        inside = (x - c[0]) ** 2 + (y - c[1]) ** 2 <= radius**2
        label[:, :, z] = inside
        image[:, :, z] = (
            inside * 1.0 + 0.3 * np.exp(-((x - c[0] - 6) ** 2 + (y - c[1] + 4) ** 2) / 30) + texture
        )
    return image, label


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP barrier overhead on a busy machine (20x here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def translation_registrar():
    return TranslationRegistrar()


class FakeAntsRegistrar(TranslationRegistrar):
    """``AntsRegistrar`` without ANTs (same constructor and context manager): exact for the
    shifted disks of :func:`disk_stack`."""

    def __init__(self, config=None, workers=0):
        super().__init__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def fake_ants(monkeypatch):
    """``RADALib.registration.AntsRegistrar`` replaced by :class:`FakeAntsRegistrar`."""
    import RADALib.registration as registration

    monkeypatch.setattr(registration, "AntsRegistrar", FakeAntsRegistrar)
    return FakeAntsRegistrar
