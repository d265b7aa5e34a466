"""2D registration of neighbouring slices with ANTs, run in a pool of worker processes.

A registration of ``moving`` (the slice nearer the annotated one) onto ``fixed`` returns a
coordinate map: for every pixel of ``fixed``, the (row, column) position in ``moving`` that the
transform sends it to. Coordinate maps compose by interpolation, so a chain of registrations
becomes one map from any slice back to the annotated slice, and the label is resampled once
(nearest neighbour) instead of once per step.

On failure (ANTs raises, e.g. "All samples map outside moving image buffer" on near-empty edge
slices) the next transform of ``fallbacks`` is tried, then the identity; which one was used is
reported per pair so callers can count fallbacks.
"""

from __future__ import annotations

import glob
import os
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from typing import Protocol

import numpy as np

from .lifeline import exit_with_parent

IDENTITY = "identity"


@dataclass(frozen=True)
class RegistrationConfig:
    """ANTs settings for one slice pair.

    ``transform`` defaults to SyNOnly, not the paper's SyNRA: on LA slices 3 apart SyNRA took
    longer for a lower fused Dice (``Testing/Benchmarks/RESULTS.md``); neighbouring slices need
    no rigid/affine stage. The iteration counts are lighter than ANTs' defaults for the same
    reason. On failure, ``fallbacks`` are tried in order, then the identity. ``shrink`` > 1
    registers block-averaged slices (``shrink`` x ``shrink`` pixels per block) and upsamples
    the coordinate map: the per-pair cost falls with the pixel count.
    """

    transform: str = "SyNOnly"
    fallbacks: tuple[str, ...] = ("SyNOnly",)
    reg_iterations: tuple[int, ...] | None = (20, 10, 0)
    aff_iterations: tuple[int, ...] | None = (100, 50, 25)
    aff_shrink_factors: tuple[int, ...] | None = (4, 2, 1)
    aff_smoothing_sigmas: tuple[int, ...] | None = (2, 1, 0)
    metric: str = "mattes"
    shrink: int = 1
    seed: int = 1337

    def ants_arguments(self, transform: str) -> dict:
        """Keyword arguments of ``ants.registration`` for ``transform`` (None: ANTs' default)."""
        arguments: dict = {
            "type_of_transform": transform,
            "syn_metric": self.metric,
            "aff_metric": self.metric,
        }
        stages = {"reg_iterations": self.reg_iterations}
        if transform != "SyNOnly":
            stages.update(
                aff_iterations=self.aff_iterations,
                aff_shrink_factors=self.aff_shrink_factors,
                aff_smoothing_sigmas=self.aff_smoothing_sigmas,
            )
        arguments.update({k: tuple(v) for k, v in stages.items() if v is not None})
        return arguments

    @classmethod
    def ants_defaults(cls, transform: str = "SyNRA") -> RegistrationConfig:
        """ANTs' own default iterations for ``transform`` (the plain, paper-style setting)."""
        return cls(
            transform=transform,
            reg_iterations=None,
            aff_iterations=None,
            aff_shrink_factors=None,
            aff_smoothing_sigmas=None,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairResult:
    """Where each pixel of the fixed slice lands in the moving slice, and how it was found."""

    coordinates: np.ndarray  # (2, H, W) float32: row, column in the moving slice
    method: str


def identity_coordinates(shape: tuple[int, int]) -> np.ndarray:
    """The coordinate map of the identity transform on a slice of ``shape``."""
    return np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)


def register_pair(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing: tuple[float, float],
    config: RegistrationConfig,
) -> PairResult:
    """Register ``moving`` onto ``fixed`` (2D) with ANTs and return the coordinate map.

    Tries ``config.transform``, then each of ``config.fallbacks``, then the identity.
    """
    factor = max(1, int(config.shrink))
    if factor > 1 and min(fixed.shape) >= 8 * factor:
        small = register_pair(
            block_average(fixed, factor),
            block_average(moving, factor),
            (spacing[0] * factor, spacing[1] * factor),
            replace(config, shrink=1),
        )
        return PairResult(
            upsample_coordinates(small.coordinates, factor, fixed.shape), small.method
        )
    return _register_ants(fixed, moving, spacing, config)


def block_average(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block (the last partial row/column is dropped)."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return (
        image[:h, :w]
        .reshape(h // factor, factor, w // factor, factor)
        .mean(axis=(1, 3))
        .astype(np.float32)
    )


def upsample_coordinates(
    coordinates: np.ndarray, factor: int, shape: tuple[int, int]
) -> np.ndarray:
    """A coarse coordinate map (block-averaged grid) resampled to the full-resolution grid."""
    from scipy import ndimage

    offset = (factor - 1) / 2.0
    grid = (identity_coordinates(shape) - offset) / factor
    full = np.stack(
        [ndimage.map_coordinates(coordinates[c], grid, order=1, mode="nearest") for c in range(2)]
    )
    outside = full < -0.5
    full = full * factor + offset
    full[outside] = -1.0
    return full.astype(np.float32)


def _register_ants(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing: tuple[float, float],
    config: RegistrationConfig,
) -> PairResult:
    import ants

    grid = identity_coordinates(fixed.shape)
    if not np.any(fixed != fixed.flat[0]) or not np.any(moving != moving.flat[0]):
        return PairResult(grid, IDENTITY)  # a constant slice carries nothing to register
    fixed_image = ants.from_numpy(
        np.ascontiguousarray(fixed, dtype=np.float32), spacing=tuple(spacing)
    )
    moving_image = ants.from_numpy(
        np.ascontiguousarray(moving, dtype=np.float32), spacing=tuple(spacing)
    )
    attempts = [config.transform] + [t for t in config.fallbacks if t != config.transform]
    for transform in attempts:
        if transform == IDENTITY:
            break
        try:
            result = ants.registration(
                fixed_image,
                moving_image,
                outprefix=scratch_prefix(),
                **config.ants_arguments(transform),
            )
        except (RuntimeError, ValueError):
            continue
        files = set(result["fwdtransforms"]) | set(result["invtransforms"])
        try:
            coordinates = coordinate_map(fixed_image, result["fwdtransforms"], spacing)
        except (RuntimeError, ValueError):
            continue
        finally:
            for name in files:
                try:
                    os.remove(name)
                except OSError:
                    pass
        return PairResult(coordinates, transform)
    return PairResult(grid, IDENTITY)


def scratch_prefix() -> str:
    """A unique file prefix for ANTs' transform files, in memory (``/dev/shm``) where there is
    one: writing them to a disk-backed temporary folder adds a disk round trip to every pair."""
    return os.path.join(_scratch_folder(), f"rada_{os.getpid()}_{uuid.uuid4().hex[:12]}_")


def _scratch_folder() -> str:
    folder = "/dev/shm"
    if not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
        folder = tempfile.gettempdir()
    return folder


def remove_scratch_files() -> None:
    """Remove this process's ANTs transform files (a worker ended in the middle of a pair)."""
    for name in glob.glob(os.path.join(_scratch_folder(), f"rada_{os.getpid()}_*")):
        try:
            os.remove(name)
        except OSError:
            pass


def coordinate_map(
    fixed_image, transforms: Sequence[str], spacing: tuple[float, float]
) -> np.ndarray:
    """(2, H, W) positions in the moving slice of every fixed pixel under ANTs' ``transforms``.

    A SyN result without a linear part (one displacement field and identity affines) is read
    directly (:func:`displacement_coordinates`); anything else is resampled by ANTs
    (:func:`resampled_coordinates`). Both give the same map.
    """
    import ants

    fields = [name for name in transforms if name.endswith((".nii.gz", ".nii"))]
    linear = [name for name in transforms if name.endswith(".mat")]
    if (
        len(fields) == 1
        and len(transforms) == 1 + len(linear)
        and all(_is_identity(ants.read_transform(n)) for n in linear)
    ):
        return displacement_coordinates(fields[0], tuple(fixed_image.shape), spacing)
    return resampled_coordinates(fixed_image, transforms, spacing)


def displacement_coordinates(
    field: str, shape: tuple[int, int], spacing: tuple[float, float]
) -> np.ndarray:
    """Positions from an ANTs displacement field file: pixel + displacement / spacing, clamped
    to the slice as ITK's linear interpolator does, -1 where they fall outside it."""
    import ants

    displacement = ants.image_read(field).numpy()
    grid = identity_coordinates(shape)
    position = np.stack([grid[axis] + displacement[..., axis] / spacing[axis] for axis in range(2)])
    size = np.array(shape, np.float32).reshape(2, 1, 1)
    outside = np.any((position < -0.5) | (position > size - 0.5), axis=0)
    position = np.clip(position, 0.0, size - 1.0)
    position[:, outside] = -1.0
    return position.astype(np.float32)


def resampled_coordinates(
    fixed_image, transforms: Sequence[str], spacing: tuple[float, float]
) -> np.ndarray:
    """Positions found by resampling the identity coordinates with ANTs (-1 outside)."""
    import ants

    grid = identity_coordinates(tuple(fixed_image.shape))
    maps = []
    for axis in range(2):
        coordinate = ants.from_numpy(grid[axis], spacing=tuple(spacing))
        warped = ants.apply_transforms(
            fixed_image, coordinate, list(transforms), interpolator="linear", defaultvalue=-1.0
        )
        maps.append(warped.numpy())
    return np.stack(maps).astype(np.float32)


def _is_identity(transform) -> bool:
    parameters = np.asarray(transform.parameters, dtype=np.float64)
    dimension = int(round(np.sqrt(parameters.size + 0.25) - 0.5))  # d*d matrix + d translation
    expected = np.concatenate([np.eye(dimension).ravel(), np.zeros(dimension)])
    return parameters.shape == expected.shape and np.allclose(parameters, expected, atol=1e-6)


class PairRegistrar(Protocol):
    """Registers many independent slice pairs; injectable so tests need no ANTs.

    A registrar may also have ``submit(fixed, moving, spacing) -> Future[PairResult]`` to start
    one pair without waiting, and ``workers`` (how many pairs it runs at once):
    :func:`submit_pair` uses them when they are there.
    """

    def register(
        self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], spacing: tuple[float, float]
    ) -> list[PairResult]: ...


def submit_pair(
    registrar: PairRegistrar, fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float]
) -> Future[PairResult]:
    """Start registering one pair: in the registrar's pool if it has one, else here and now."""
    submit = getattr(registrar, "submit", None)
    if submit is not None:
        return submit(fixed, moving, spacing)
    future: Future[PairResult] = Future()
    future.set_result(registrar.register([(fixed, moving)], spacing)[0])
    return future


def _seed_ants(seed: int) -> None:
    """Make ANTs pass ``--random-seed`` (its registration reads ``ants.config._random_seed``)."""
    from ants import config

    config._random_seed = seed


def _init_worker(seed: int) -> None:
    # a worker ends with the process that started it, even one killed outright (kill -9)
    exit_with_parent(cleanup=remove_scratch_files)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    _seed_ants(seed)


def _worker_ready(_: int) -> int:
    return os.getpid()


def _register_job(
    job: tuple[np.ndarray, np.ndarray, tuple[float, float], RegistrationConfig],
) -> PairResult:
    return register_pair(*job)


@dataclass
class AntsRegistrar:
    """Registers slice pairs with ANTs in ``workers`` processes (one ITK thread each).

    Processes, not threads: a second ITK thread does not help at slice size, a second process
    nearly doubles throughput. ``workers=1`` is one worker process too, never this process:
    ITK fixes its thread count once per process, so registering here after this process had
    used ITK with more threads gave slightly different labels than the pool. Use as a context
    manager, or call :meth:`close`, to stop the workers; a worker also ends by itself when this
    process dies without stopping them (:func:`lifeline.exit_with_parent`).
    """

    config: RegistrationConfig = field(default_factory=RegistrationConfig)
    workers: int = 0
    _pool: ProcessPoolExecutor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers <= 0:
            self.workers = max(1, os.cpu_count() or 1)

    def register(
        self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], spacing: tuple[float, float]
    ) -> list[PairResult]:
        jobs = [(fixed, moving, tuple(spacing), self.config) for fixed, moving in pairs]
        if not jobs:
            return []
        # one pair per task: registering a pair costs far more than sending it, and larger chunks
        # leave a worker idle at the end of each wave while the other finishes its chunk
        return list(self._executor().map(_register_job, jobs, chunksize=1))

    def submit(
        self, fixed: np.ndarray, moving: np.ndarray, spacing: tuple[float, float]
    ) -> Future[PairResult]:
        """Start one pair in the pool and return its future."""
        return self._executor().submit(_register_job, (fixed, moving, tuple(spacing), self.config))

    def start(self) -> None:
        """Start the worker processes now (ANTs loads in each) rather than on the first pairs."""
        list(self._executor().map(_worker_ready, range(self.workers)))

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: safe on macOS/Windows and with threads already running in the parent
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.config.seed,),
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> AntsRegistrar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
