"""A deterministic synthetic cohort that looks like an organ segmentation task (``rada demo``, tests).

Each case is an MRI-like volume with one labelled organ, in (x, y, z) = (sagittal, coronal,
axial) index order; images are float32 and z-scored (mean 0, std 1, like the LA h5 files),
labels uint8 (0 background, 1 organ).

How a case is made (all sizes in mm, so anisotropic spacing keeps shapes round):

- **Organ.** An ellipsoid (random semi-axes, volume-preserving) whose radius is modulated
  along each direction by a smooth random function of the direction (a sum of low-frequency
  plane waves on the unit sphere, the equivalent of low-order spherical harmonics). To it are
  smoothly joined two to four tapered, slightly bent tubes leaving one side of the body (like
  the left atrium's pulmonary veins) and, usually, a small appendage lobe. The shape is
  randomly rotated (up to ``max_rotation_deg`` about a random axis), scaled so that it fills a
  random fraction of the volume within ``organ_fraction``, and placed at random where it stays
  at least ``margin_mm`` from every face. The label is the single largest connected component
  of the inside, holes filled.
- **Distractors (not labelled).** A bright tube running through the volume along z (a vessel
  such as the aorta) and bright blobs (a neighbouring chamber) with intensities close to the
  organ's (at least ``min_lookalike`` of the organ's volume, one of them a little brighter than
  the organ), placed against the organ; mid-grey blobs (muscle) and dark blobs (lung). A thin
  gap of background (``gap_mm``) always separates them from the organ, so the organ is
  segmentable from local context and shape but not by one global threshold.
- **Intensities.** Piecewise-constant tissue intensities with smooth texture (smoothed noise),
  a point-spread blur (partial volume at every boundary), a smooth multiplicative bias field,
  Rician noise, then z-scoring.

Everything is drawn from one :class:`numpy.random.Generator`; there is no global state, and the
same seed always gives the same arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = ["SyntheticConfig", "case_seed", "synthetic_case", "synthetic_cohort", "FRACTION_BOUNDS"]

FRACTION_BOUNDS: tuple[float, float] = (0.05, 0.20)
"""The organ always fills between 5 % and 20 % of the volume with the default settings."""

_SMOOTH_UNION = (
    0.12  # width of the smooth union between the organ's body, tubes and lobe (shape units)
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of the synthetic cohort; sizes in mm, intensities before z-scoring."""

    shape: tuple[int, int, int] = (96, 80, 64)
    """Voxels along (x, y, z)."""
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.5)
    """Voxel size in mm along (x, y, z)."""
    organ_fraction: tuple[float, float] = (0.07, 0.15)
    """Range of the organ's share of the volume (drawn uniformly)."""
    margin_mm: float = 6.0
    """Smallest distance between the organ and any face of the volume."""
    irregularity: float = 0.13
    """Typical relative radius perturbation of the organ's body (0 gives an ellipsoid)."""
    elongation: float = 0.18
    """Standard deviation of the log semi-axis ratios of the body."""
    max_rotation_deg: float = 45.0
    """Largest rotation of the organ away from its canonical orientation."""
    n_tubes: tuple[int, int] = (2, 4)
    """Range of the number of vein-like tubes on the organ."""
    appendage_probability: float = 0.7
    """Chance that the organ has a small appendage lobe."""
    n_bright: tuple[int, int] = (1, 2)
    """Range of the number of bright (organ-like) distractor blobs, besides the vessel."""
    n_mid: tuple[int, int] = (1, 2)
    """Range of the number of mid-grey distractor blobs."""
    n_dark: tuple[int, int] = (1, 2)
    """Range of the number of dark distractor blobs."""
    vessel: bool = True
    """Add a bright vessel running through the volume along z."""
    gap_mm: float = 2.0
    """Width of the background gap that always separates distractors from the organ."""
    min_lookalike: float = 0.8
    """Bright blobs are added (up to 4 more) until organ-like distractors show at least this share of
    the organ's volume, so that one global threshold cannot segment the organ (when ``n_bright`` > 0)."""
    organ_intensity: float = 1.0
    background_intensity: float = 0.35
    noise_std: float = 0.06
    """Standard deviation of the (Rician) noise, relative to the organ intensity."""
    bias_strength: float = 0.2
    """Standard deviation of the log bias field (0.2: brightness varies by about ±20 % across the volume)."""
    bias_scale_mm: float = 60.0
    """Correlation length of the bias field."""
    texture_strength: float = 0.08
    """Standard deviation of the smooth tissue texture, relative to the organ intensity."""
    texture_scale_mm: float = 3.0
    """Correlation length of the texture."""
    blur_mm: float = 0.8
    """Standard deviation of the point-spread blur (partial volume)."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) != n or n < 16 for n in self.shape):
            raise InputError(
                "SyntheticConfig.shape", f"needs three integers of at least 16, got {self.shape}"
            )
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise InputError(
                "SyntheticConfig.spacing", f"needs three positive sizes, got {self.spacing}"
            )
        low, high = self.organ_fraction
        if not 0 < low <= high <= 0.4:
            raise InputError(
                "SyntheticConfig.organ_fraction",
                f"needs 0 < low <= high <= 0.4, got {self.organ_fraction}",
            )
        for name in ("n_tubes", "n_bright", "n_mid", "n_dark"):
            low_n, high_n = getattr(self, name)
            if not 0 <= low_n <= high_n:
                raise InputError(
                    f"SyntheticConfig.{name}", f"needs 0 <= low <= high, got {(low_n, high_n)}"
                )
        for name in (
            "margin_mm",
            "gap_mm",
            "irregularity",
            "elongation",
            "max_rotation_deg",
            "noise_std",
            "bias_strength",
            "texture_strength",
            "blur_mm",
        ):
            if not getattr(self, name) >= 0:
                raise InputError(
                    f"SyntheticConfig.{name}", f"must be non-negative, got {getattr(self, name)}"
                )
        if not self.bias_scale_mm > 0 or not self.texture_scale_mm > 0:
            raise InputError(
                "SyntheticConfig", "bias_scale_mm and texture_scale_mm must be positive"
            )
        if not 0 <= self.appendage_probability <= 1:
            raise InputError(
                "SyntheticConfig.appendage_probability",
                f"must lie in [0, 1], got {self.appendage_probability}",
            )


# ----------------------------------------------------------------------------- geometry helpers

_FIELD_STEP_MM = 1.5
"""Grid step on which shape fields are evaluated before cubic interpolation onto the voxels."""

_MEASURE_STEP = 0.08
"""Grid step (shape units) used to measure a shape's volume and bounding box."""


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation matrix about a random axis by a random angle of at most ``max_deg``."""
    axis = _unit(rng.normal(size=3))
    angle = math.radians(max_deg) * rng.uniform(-1.0, 1.0)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _sphere_directions(n: int = 600) -> np.ndarray:
    """``n`` nearly uniform unit vectors (Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: the union of two implicit shapes with a fillet of width ``k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


def _segment_field(
    q: tuple[np.ndarray, ...], a: np.ndarray, b: np.ndarray, r0: float, r1: float
) -> np.ndarray:
    """Distance-like field of a capsule from ``a`` to ``b`` whose radius tapers from r0 to r1."""
    a0, a1, a2 = (float(v) for v in a)
    d0, d1, d2 = (float(v) for v in b - a)
    length2 = d0 * d0 + d1 * d1 + d2 * d2
    x, y, z = q[0] - a0, q[1] - a1, q[2] - a2
    t = (x * d0 + y * d1 + z * d2) * (1.0 / length2)
    np.clip(t, 0.0, 1.0, out=t)
    dist = np.sqrt((x - t * d0) ** 2 + (y - t * d1) ** 2 + (z - t * d2) ** 2)
    return dist - (r0 + (r1 - r0) * t)


@dataclass
class _Blob:
    """An implicit blob in shape units: a perturbed ellipsoid, optionally with tubes and lobes.

    The field is negative inside and roughly the distance to the surface (shape units) nearby.
    """

    axes: np.ndarray
    wave_vectors: np.ndarray  # (k, 3), frequencies of the radius perturbation on the unit sphere
    wave_phases: np.ndarray  # (k,)
    wave_amplitudes: np.ndarray  # (k,), already scaled to the wanted irregularity
    tubes: list[tuple[np.ndarray, np.ndarray, float, float]] = field(
        default_factory=list
    )  # a, b, r0, r1
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )  # centre, rotation, semi-axes

    def radius(self, u: tuple[np.ndarray, ...]) -> np.ndarray:
        """Relative radius of the body along unit directions ``u`` (ellipsoid-normalized space)."""
        r = np.ones_like(u[0])
        for w, phase, amp in zip(self.wave_vectors, self.wave_phases, self.wave_amplitudes):
            r += float(amp) * np.cos(
                float(w[0]) * u[0] + float(w[1]) * u[1] + float(w[2]) * u[2] + float(phase)
            )
        return np.clip(r, 0.55, 1.7, out=r)

    def body_field(self, q: tuple[np.ndarray, ...]) -> np.ndarray:
        e = [q[i] * (1.0 / float(self.axes[i])) for i in range(3)]
        rho = np.sqrt(e[0] ** 2 + e[1] ** 2 + e[2] ** 2) + 1e-9
        u = tuple(c / rho for c in e)
        return (rho - self.radius(u)) * float(self.axes.min())

    def surface_points(self, directions: np.ndarray) -> np.ndarray:
        """Points of the body's surface along unit ``directions`` (n, 3), blob frame."""
        e = directions / self.axes
        norm = np.linalg.norm(e, axis=1)
        u = tuple((e[:, i] / norm) for i in range(3))
        return directions * (self.radius(u) / norm)[:, None]

    def surface_distance(self, direction: np.ndarray) -> float:
        """Distance from the centre to the body's surface along ``direction`` (shape units)."""
        return float(np.linalg.norm(self.surface_points(_unit(direction)[None])[0]))

    def bounds(self, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A box (world axes, shape units, around the centre) that holds the rotated blob."""
        points = [self.surface_points(_sphere_directions()) @ rotation.T]
        for a, b, r0, r1 in self.tubes:
            ends = np.stack([a, b]) @ rotation.T
            points += [ends - max(r0, r1), ends + max(r0, r1)]
        for centre, _, semi in self.lobes:
            c = rotation @ centre
            points += [c - semi.max(), c + semi.max()]
        allp = np.concatenate([np.atleast_2d(p) for p in points])
        return allp.min(axis=0) - 0.15, allp.max(axis=0) + 0.15

    def evaluate(self, grid: list[np.ndarray], rotation: np.ndarray) -> np.ndarray:
        """The field on the world-aligned grid ``grid`` (three 1D coordinate arrays, shape units)."""
        g = [
            np.asarray(grid[i], dtype=np.float32).reshape([-1 if a == i else 1 for a in range(3)])
            for i in range(3)
        ]
        # Blob-frame coordinates q = R^T g.
        q = tuple(
            g[0] * float(rotation[0, i])
            + g[1] * float(rotation[1, i])
            + g[2] * float(rotation[2, i])
            for i in range(3)
        )
        f = self.body_field(q)
        k = _SMOOTH_UNION
        for a, b, r0, r1 in self.tubes:
            ends = np.stack([a, b]) @ rotation.T
            sl = _box_slices(
                grid, ends.min(axis=0) - max(r0, r1) - 2 * k, ends.max(axis=0) + max(r0, r1) + 2 * k
            )
            if sl is not None:
                f[sl] = _smooth_min(f[sl], _segment_field(tuple(c[sl] for c in q), a, b, r0, r1), k)
        for centre, rot, semi in self.lobes:
            c = rotation @ centre
            sl = _box_slices(grid, c - semi.max() - 2 * k, c + semi.max() + 2 * k)
            if sl is None:
                continue
            sub = [q[j][sl] - float(centre[j]) for j in range(3)]
            local = [
                (sub[0] * float(rot[0, i]) + sub[1] * float(rot[1, i]) + sub[2] * float(rot[2, i]))
                * (1.0 / float(semi[i]))
                for i in range(3)
            ]
            rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
            f[sl] = _smooth_min(f[sl], (rho - 1.0) * float(semi.min()), k)
        return f


def _box_slices(grid: list[np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
    """Index slices of the grid points inside [lo, hi] (per axis), or None when empty."""
    slices = []
    for axis, coords in enumerate(grid):
        start, stop = np.searchsorted(coords, [lo[axis], hi[axis]])
        if stop <= start:
            return None
        slices.append(slice(int(start), int(stop)))
    return tuple(slices)


def _random_body(
    rng: np.random.Generator, irregularity: float, elongation: float, n_waves: int = 10
) -> _Blob:
    """A perturbed ellipsoid of equivalent radius about 1 (shape units)."""
    log_axes = np.clip(rng.normal(0.0, elongation, size=3), -0.45, 0.45)
    axes = np.exp(log_axes - log_axes.mean())
    vectors = rng.normal(0.0, 1.3, size=(n_waves, 3))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=n_waves)
    amplitudes = rng.normal(0.0, 1.0, size=n_waves)
    g = np.cos(_sphere_directions() @ vectors.T + phases) @ amplitudes
    amplitudes *= irregularity * rng.uniform(0.7, 1.3) / (float(g.std()) + 1e-9)
    return _Blob(axes, vectors, phases, amplitudes)


def _organ_shape(rng: np.random.Generator, config: SyntheticConfig) -> _Blob:
    """The organ in its own frame (shape units): body, vein-like tubes, maybe an appendage."""
    blob = _random_body(rng, config.irregularity, config.elongation)
    side = _unit(rng.normal(size=3))  # the tubes leave this side of the body
    n_tubes = int(rng.integers(config.n_tubes[0], config.n_tubes[1] + 1))
    for _ in range(n_tubes):
        d = _unit(side + 0.75 * rng.normal(size=3))
        surface = blob.surface_distance(d)
        length = rng.uniform(0.35, 0.6)
        bend = rng.normal(size=3)
        bend = _unit(bend - (bend @ d) * d) * rng.uniform(0.05, 0.15)
        start = 0.35 * surface * d
        middle = (surface + 0.5 * length) * d + bend
        end = (surface + length) * d + 2.5 * bend
        r_start = rng.uniform(0.15, 0.22)
        r_end = r_start * rng.uniform(0.7, 0.95)
        r_mid = 0.5 * (r_start + r_end)
        blob.tubes.append((start, middle, r_start, r_mid))
        blob.tubes.append((middle, end, r_mid, r_end))
    if rng.uniform() < config.appendage_probability:
        d = _unit(-side + 0.8 * rng.normal(size=3))
        centre = (blob.surface_distance(d) + 0.12) * d
        # Frame whose first axis points along d: the lobe is elongated outwards.
        helper = _unit(np.cross(d, rng.normal(size=3)))
        rot = np.stack([d, helper, np.cross(d, helper)], axis=1)
        semi = np.array([rng.uniform(0.38, 0.5), rng.uniform(0.22, 0.3), rng.uniform(0.2, 0.28)])
        blob.lobes.append((centre, rot, semi))
    return blob


def _measure(blob: _Blob, rotation: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Volume and tight bounding box (world axes, shape units) of the rotated blob."""
    lo, hi = blob.bounds(rotation)
    step = _MEASURE_STEP
    grid = [np.arange(lo[i], hi[i] + step, step) for i in range(3)]
    inside = blob.evaluate(grid, rotation) < 0
    tight_lo, tight_hi = np.empty(3), np.empty(3)
    for i in range(3):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != i)))
        if present.size == 0:
            return 0.0, lo, hi
        tight_lo[i] = grid[i][present[0]] - step
        tight_hi[i] = grid[i][present[-1]] + step
    return float(inside.sum()) * step**3, tight_lo, tight_hi


def _interpolation_matrix(t: np.ndarray, n: int) -> np.ndarray:
    """(len(t), n) matrix of Catmull-Rom cubic weights at fractional indices ``t`` of an ``n``-point grid."""
    base = np.floor(t).astype(int)
    f = t - base
    weights = (
        ((-f + 2.0) * f - 1.0) * f * 0.5,
        ((3.0 * f - 5.0) * f * f + 2.0) * 0.5,
        ((-3.0 * f + 4.0) * f + 1.0) * f * 0.5,
        (f - 1.0) * f * f * 0.5,
    )
    matrix = np.zeros((t.size, n), dtype=np.float32)
    rows = np.arange(t.size)
    for offset, w in zip((-1, 0, 1, 2), weights):
        np.add.at(matrix, (rows, np.clip(base + offset, 0, n - 1)), w)
    return matrix


def _upsample(coarse: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Separable interpolation: ``coarse`` (a, b, c) with matrices (x, a), (y, b), (z, c) -> (x, y, z)."""
    out = np.tensordot(matrices[0], coarse, axes=(1, 0))  # (x, b, c)
    out = np.tensordot(out, matrices[1], axes=(1, 1))  # (x, c, y)
    out = np.tensordot(out, matrices[2], axes=(1, 1))  # (x, y, z)
    return np.ascontiguousarray(out, dtype=np.float32)


def _render(
    blob: _Blob,
    rotation: np.ndarray,
    centre_mm: np.ndarray,
    scale_mm: float,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The blob placed at ``centre_mm`` (rotated, scaled) on the voxels it may cover.

    Returns (slices of the volume, field in mm on those voxels; negative inside), or None when the
    blob misses the volume. ``box`` is the blob's box in shape units (default: ``blob.bounds``).
    """
    lo, hi = box if box is not None else blob.bounds(rotation)
    lo_mm = np.maximum(centre_mm + scale_mm * lo, 0.0)
    hi_mm = np.minimum(
        centre_mm + scale_mm * hi, np.array([(n - 1) * s for n, s in zip(shape, spacing)])
    )
    slices, matrices, grid = [], [], []
    for axis in range(3):
        start = max(0, int(math.ceil(lo_mm[axis] / spacing[axis])))
        stop = min(shape[axis], int(math.floor(hi_mm[axis] / spacing[axis])) + 1)
        if stop <= start:
            return None
        voxels_mm = np.arange(start, stop) * spacing[axis]
        # Coarse grid (mm) covering the voxels with one extra point each side for the cubic kernel.
        origin = voxels_mm[0] - _FIELD_STEP_MM
        n = int(math.ceil((voxels_mm[-1] - origin) / _FIELD_STEP_MM)) + 2
        grid.append((origin + _FIELD_STEP_MM * np.arange(n) - centre_mm[axis]) / scale_mm)
        matrices.append(_interpolation_matrix((voxels_mm - origin) / _FIELD_STEP_MM, n))
        slices.append(slice(start, stop))
    coarse = blob.evaluate(grid, rotation) * np.float32(scale_mm)
    return tuple(slices), _upsample(coarse, matrices)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _smooth_noise(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    scale_mm: float,
) -> np.ndarray:
    """Smooth Gaussian random field (float32, mean 0, std 1) with correlation length ``scale_mm``.

    Drawn on a grid of half ``scale_mm`` (unless that is much finer than the voxels), smoothed there
    and interpolated onto the voxels, which keeps large scales cheap.
    """
    step = scale_mm / 2.0
    if step < 0.75 * min(spacing):
        noise = rng.standard_normal(shape, dtype=np.float32)
        noise = ndimage.gaussian_filter(
            noise, [scale_mm / s for s in spacing], mode="wrap", truncate=3.0
        )
    else:
        matrices, coarse_shape = [], []
        for n, s in zip(shape, spacing):
            voxels_mm = np.arange(n) * s
            m = int(math.ceil(voxels_mm[-1] / step)) + 3
            matrices.append(_interpolation_matrix((voxels_mm + step) / step, m))
            coarse_shape.append(m)
        noise = rng.standard_normal(tuple(coarse_shape), dtype=np.float32)
        noise = ndimage.gaussian_filter(noise, scale_mm / step, mode="wrap", truncate=3.0)
        noise = _upsample(noise, matrices)
    noise -= noise.mean()
    noise /= noise.std() + 1e-12
    return noise


# ----------------------------------------------------------------------------- public API


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of the cohort drawn with ``seed`` (a pure function of both)."""
    return int(
        np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    )


def _place_organ(rng: np.random.Generator, config: SyntheticConfig):
    """Draw the organ until it fits the volume; returns (blob, rotation, centre_mm, scale_mm, box)."""
    extent = np.array([(n - 1) * s for n, s in zip(config.shape, config.spacing)])
    room = extent - 2.0 * config.margin_mm
    total = float(np.prod(np.array(config.shape) * np.array(config.spacing)))
    best = None
    for _ in range(30):
        blob = _organ_shape(rng, config)
        rotation = _rotation(rng, config.max_rotation_deg)
        volume, lo, hi = _measure(blob, rotation)
        if volume <= 0:
            continue
        scale = (rng.uniform(*config.organ_fraction) * total / volume) ** (1.0 / 3.0)
        fit = float(np.min(room / (hi - lo)))
        if scale <= fit:
            best = (blob, rotation, scale, lo, hi)
            break
        if best is None or fit > best[2]:
            best = (blob, rotation, fit, lo, hi)  # fallback: the largest that fits, shrunk
    if best is None or not room.min() > 0:
        raise InputError(
            "SyntheticConfig",
            "could not draw an organ that fits the volume; enlarge shape or reduce margin_mm",
        )
    blob, rotation, scale, lo, hi = best
    low = config.margin_mm - scale * lo
    high = extent - config.margin_mm - scale * hi
    centre = rng.uniform(low, np.maximum(low, high))
    return blob, rotation, centre, scale, (lo, hi)


@dataclass
class _Scene:
    """The volume's grid and the placed organ, around which the distractors are drawn."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    centre: np.ndarray
    """The organ's centre (mm)."""
    scale: float
    """The organ's size: mm per shape unit."""
    organ: np.ndarray
    """The label (bool)."""
    gap: np.ndarray
    """The organ and the band of ``gap_mm`` around it, which distractors never enter (bool)."""

    @property
    def extent(self) -> np.ndarray:
        """The volume's size in mm along (x, y, z), voxel centre to voxel centre."""
        return np.array([(n - 1) * s for n, s in zip(self.shape, self.spacing)])


_Structure = tuple[np.ndarray, float, float]
"""An unlabelled structure: (mask, intensity, texture weight)."""


def _organ_scene(
    rng: np.random.Generator,
    config: SyntheticConfig,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> _Scene:
    """Draw and render the organ; its label is the largest connected component, holes filled."""
    blob, rotation, centre, scale, box = _place_organ(rng, config)
    placed = _render(blob, rotation, centre, scale, shape, spacing, box)
    if placed is None:  # cannot happen: the organ is placed inside the volume
        raise AssertionError("synthetic organ outside the volume")
    slices, organ_field = placed
    organ = np.zeros(shape, dtype=bool)
    gap = np.zeros(shape, dtype=bool)
    organ[slices] = _largest_component(organ_field < 0)
    gap[slices] = organ_field < config.gap_mm
    gap |= organ
    return _Scene(shape, spacing, centre, scale, organ, gap)


def _blob_mask(
    rng: np.random.Generator,
    config: SyntheticConfig,
    scene: _Scene,
    size: tuple[float, float],
    distance: tuple[float, float],
    periphery: bool = False,
) -> np.ndarray | None:
    """A distractor blob near the organ (or against a face), outside the gap; None if it misses."""
    body = _random_body(rng, config.irregularity * 1.2, config.elongation * 1.5, n_waves=6)
    s = scene.scale * rng.uniform(*size)
    extent = scene.extent
    if periphery:  # dark regions (lungs) sit against a face of the volume
        where = rng.uniform(0.0, 1.0, size=3) * extent
        axis = int(rng.integers(0, 2))
        where[axis] = (
            extent[axis] * float(rng.integers(0, 2)) + rng.normal(0.0, 0.08) * extent[axis]
        )
    else:  # against the organ, in a random direction
        where = scene.centre + _unit(rng.normal(size=3)) * (scene.scale + s) * rng.uniform(
            *distance
        )
    placed = _render(body, _rotation(rng, 180.0), where, s, scene.shape, scene.spacing)
    if placed is None:
        return None
    mask = np.zeros(scene.shape, dtype=bool)
    mask[placed[0]] = (placed[1] < 0) & ~scene.gap[placed[0]]
    return mask


def _add_blob(
    structures: list[_Structure],
    mask: np.ndarray | None,
    intensity: float,
    texture_weight: float,
) -> int:
    """Append a drawn blob (if any) to ``structures``; returns how many voxels it shows."""
    if mask is None:
        return 0
    structures.append((mask, intensity, texture_weight))
    return int(np.count_nonzero(mask))


def _distractors(
    rng: np.random.Generator, config: SyntheticConfig, scene: _Scene
) -> list[_Structure]:
    """Unlabelled structures in painting order (later wins): dark, mid-grey, vessel, look-alikes."""
    structures: list[_Structure] = []
    for _ in range(int(rng.integers(config.n_dark[0], config.n_dark[1] + 1))):
        intensity = rng.uniform(0.05, 0.15)
        mask = _blob_mask(rng, config, scene, (0.9, 1.4), (1.0, 1.3), periphery=True)
        _add_blob(structures, mask, intensity, 0.3)
    for _ in range(int(rng.integers(config.n_mid[0], config.n_mid[1] + 1))):
        intensity = rng.uniform(0.5, 0.65)
        _add_blob(
            structures, _blob_mask(rng, config, scene, (0.5, 0.8), (0.8, 1.1)), intensity, 0.8
        )
    bright = 0  # voxels of organ-like intensity that are not organ
    if config.vessel:
        vessel = _vessel(rng, scene.centre, scene.scale, scene.shape, scene.spacing) & ~scene.gap
        structures.append((vessel, rng.uniform(0.9, 1.1) * config.organ_intensity, 0.6))
        bright += int(np.count_nonzero(vessel))
    _add_lookalikes(rng, config, scene, structures, bright)
    return structures


def _add_lookalikes(
    rng: np.random.Generator,
    config: SyntheticConfig,
    scene: _Scene,
    structures: list[_Structure],
    bright: int,
) -> None:
    """Bright organ-like blobs: the drawn number, then more (up to 4) until they are sizeable.

    ``bright`` counts the organ-like voxels already there (the vessel's).
    """
    n_bright = int(rng.integers(config.n_bright[0], config.n_bright[1] + 1))
    organ_voxels = int(np.count_nonzero(scene.organ))
    for index in range(n_bright + 4):
        # Beyond the drawn number, add blobs until the look-alikes are sizeable (or give up).
        if index >= n_bright and (n_bright == 0 or bright >= config.min_lookalike * organ_voxels):
            break
        # The first look-alike is a little brighter than the organ, so no threshold keeps the organ without it.
        level = rng.uniform(1.0, 1.12) if index == 0 else rng.uniform(0.9, 1.1)
        mask = _blob_mask(rng, config, scene, (0.6, 0.95), (0.8, 1.05))
        bright += _add_blob(structures, mask, level * config.organ_intensity, 0.8)


def _tissue_image(
    rng: np.random.Generator,
    config: SyntheticConfig,
    scene: _Scene,
    structures: list[_Structure],
) -> np.ndarray:
    """Piecewise-constant tissue intensities with smooth texture, the organ painted last."""
    shape, spacing = scene.shape, scene.spacing
    texture = _smooth_noise(rng, shape, spacing, config.texture_scale_mm)
    broad = _smooth_noise(rng, shape, spacing, 12.0)  # slow variation of the background tissue
    strength = np.float32(config.texture_strength)
    image = np.float32(config.background_intensity) + strength * (1.2 * texture + 0.8 * broad)
    for mask, intensity, texture_weight in structures:
        image[mask] = (
            np.float32(intensity) + (strength * np.float32(texture_weight)) * texture[mask]
        )
    organ = scene.organ
    image[organ] = (
        np.float32(config.organ_intensity) + (strength * np.float32(0.5)) * texture[organ]
    )
    np.maximum(image, 0.0, out=image)
    return image


def _acquire(
    rng: np.random.Generator,
    config: SyntheticConfig,
    image: np.ndarray,
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """The scanner's part: partial-volume blur, bias field, Rician noise, then z-scoring."""
    shape = image.shape
    if config.blur_mm > 0:
        image = ndimage.gaussian_filter(
            image, [config.blur_mm / s for s in spacing], mode="nearest", truncate=3.0
        )
    if config.bias_strength > 0:
        bias = _smooth_noise(rng, shape, spacing, config.bias_scale_mm)
        image *= np.exp(np.float32(config.bias_strength) * bias)
    if config.noise_std > 0:
        sigma = np.float32(config.noise_std * config.organ_intensity)
        real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        image = np.sqrt(real * real + imag * imag)
    image = image.astype(np.float32, copy=False)
    image -= np.float32(image.mean(dtype=np.float64))
    image /= np.float32(image.std(dtype=np.float64) + 1e-12)
    return image


def synthetic_case(
    seed: int | np.random.Generator, config: SyntheticConfig = SyntheticConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: (image float32 z-scored, label uint8), both of ``config.shape`` in (x, y, z) order.

    ``seed`` is an integer or a :class:`numpy.random.Generator` (which is advanced). The steps
    draw from it in a fixed order (organ, distractors, tissue, acquisition), so a seed always
    gives the same arrays.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape, spacing = tuple(int(n) for n in config.shape), tuple(float(s) for s in config.spacing)
    scene = _organ_scene(rng, config, shape, spacing)
    structures = _distractors(rng, config, scene)
    image = _tissue_image(rng, config, scene, structures)
    return _acquire(rng, config, image, spacing), scene.organ.astype(np.uint8)


def _vessel(
    rng: np.random.Generator,
    organ_centre: np.ndarray,
    organ_scale: float,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> np.ndarray:
    """A gently curving tube along z that passes beside the organ (an aorta-like vessel)."""
    radius = organ_scale * rng.uniform(0.3, 0.42)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    offset = (organ_scale * 1.1 + radius) * rng.uniform(0.95, 1.15)
    z = np.arange(shape[2]) * spacing[2]
    tilt = rng.normal(0.0, 0.15, size=2)
    wiggle = rng.uniform(0.03, 0.08, size=2) * organ_scale
    freq = rng.uniform(0.02, 0.05, size=2)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=2)
    xc = (
        organ_centre[0]
        + offset * math.cos(angle)
        + tilt[0] * (z - organ_centre[2])
        + wiggle[0] * np.sin(freq[0] * z + phase[0])
    )
    yc = (
        organ_centre[1]
        + offset * math.sin(angle)
        + tilt[1] * (z - organ_centre[2])
        + wiggle[1] * np.sin(freq[1] * z + phase[1])
    )
    r = radius * (
        1.0 + 0.08 * np.sin(rng.uniform(0.02, 0.06) * z + rng.uniform(0.0, 2.0 * math.pi))
    )
    x = (np.arange(shape[0], dtype=np.float32) * np.float32(spacing[0])).reshape(-1, 1, 1)
    y = (np.arange(shape[1], dtype=np.float32) * np.float32(spacing[1])).reshape(1, -1, 1)
    d2 = (x - xc.astype(np.float32)) ** 2 + (y - yc.astype(np.float32)) ** 2
    return d2 < (r.astype(np.float32) ** 2)


def synthetic_cohort(
    n_cases: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig()
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(case_id, image, label)`` for ``n_cases`` cases named ``case_000``, ``case_001``, ...

    Case ``i`` is ``synthetic_case(case_seed(seed, i), config)``, so any case can be regenerated on its own.
    """
    if n_cases < 0:
        raise InputError("synthetic_cohort", f"n_cases must be non-negative, got {n_cases}")
    width = max(3, len(str(max(n_cases - 1, 0))))
    for index in range(n_cases):
        image, label = synthetic_case(case_seed(seed, index), config)
        yield f"case_{index:0{width}d}", image, label
