"""Shared fixtures: small synthetic volumes with known geometry, and a fake registrar."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from RADALib.registration import PairResult, identity_coordinates

SHARED_LA = Path(__file__).resolve().parents[3] / "shared" / "data" / "LA2018"


def la_folder() -> Path | None:
    """The LA2018 folder beside the checkout (or $RADA_LA_DIR), if present."""
    folder = Path(os.environ.get("RADA_LA_DIR", SHARED_LA))
    return folder if (folder / "train.list").exists() else None


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
