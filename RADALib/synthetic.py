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
  organ's, placed against the organ; mid-grey blobs (muscle) and dark blobs (lung). A thin gap
  of background always separates them from the organ, so the organ is segmentable locally but
  not by one global threshold.
- **Intensities.** Piecewise-constant tissue intensities with smooth texture (smoothed noise),
  a point-spread blur (partial volume at every boundary), a smooth multiplicative bias field,
  Rician noise, then z-scoring.

Everything is drawn from one :class:`numpy.random.Generator`; there is no global state, and the
same seed always gives the same arrays. One 96x80x64 case takes a few tenths of a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = ["SyntheticConfig", "case_seed", "synthetic_case", "synthetic_cohort", "FRACTION_BOUNDS"]

FRACTION_BOUNDS: tuple[float, float] = (0.05, 0.20)
"""The organ always fills between 5 % and 20 % of the volume with the default settings."""

_SMOOTH_UNION = 0.12  # width of the smooth union between the organ's body, tubes and lobe (shape units)


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
    organ_intensity: float = 1.0
    background_intensity: float = 0.35
    noise_std: float = 0.06
    """Standard deviation of the (Rician) noise, relative to the organ intensity."""
    bias_strength: float = 0.3
    """Standard deviation of the log bias field (0.3: about ±30 % brightness across the volume)."""
    bias_scale_mm: float = 45.0
    """Correlation length of the bias field."""
    texture_strength: float = 0.08
    """Standard deviation of the smooth tissue texture, relative to the organ intensity."""
    texture_scale_mm: float = 3.0
    """Correlation length of the texture."""
    blur_mm: float = 0.8
    """Standard deviation of the point-spread blur (partial volume)."""

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or any(int(n) != n or n < 16 for n in self.shape):
            raise InputError("SyntheticConfig.shape", f"needs three integers of at least 16, got {self.shape}")
        if len(self.spacing) != 3 or any(not s > 0 for s in self.spacing):
            raise InputError("SyntheticConfig.spacing", f"needs three positive sizes, got {self.spacing}")
        low, high = self.organ_fraction
        if not 0 < low <= high <= 0.4:
            raise InputError("SyntheticConfig.organ_fraction", f"needs 0 < low <= high <= 0.4, got {self.organ_fraction}")
        for name in ("n_tubes", "n_bright", "n_mid", "n_dark"):
            low_n, high_n = getattr(self, name)
            if not 0 <= low_n <= high_n:
                raise InputError(f"SyntheticConfig.{name}", f"needs 0 <= low <= high, got {(low_n, high_n)}")
        for name in ("margin_mm", "irregularity", "elongation", "max_rotation_deg", "noise_std", "bias_strength",
                     "texture_strength", "blur_mm"):
            if not getattr(self, name) >= 0:
                raise InputError(f"SyntheticConfig.{name}", f"must be non-negative, got {getattr(self, name)}")
        if not self.bias_scale_mm > 0 or not self.texture_scale_mm > 0:
            raise InputError("SyntheticConfig", "bias_scale_mm and texture_scale_mm must be positive")
        if not 0 <= self.appendage_probability <= 1:
            raise InputError("SyntheticConfig.appendage_probability", f"must lie in [0, 1], got {self.appendage_probability}")


# ----------------------------------------------------------------------------- geometry helpers


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation matrix about a random axis by a random angle of at most ``max_deg``."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis) + 1e-12
    angle = math.radians(max_deg) * rng.uniform(-1.0, 1.0)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _sphere_directions(n: int = 400) -> np.ndarray:
    """``n`` nearly uniform unit vectors (Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a union of two implicit shapes with a fillet of width ``k``."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def _segment_field(q: tuple[np.ndarray, ...], a: np.ndarray, b: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Signed distance-like field of a capsule from ``a`` to ``b`` whose radius tapers from r0 to r1."""
    d = b - a
    length2 = float(d @ d)
    t = ((q[0] - a[0]) * d[0] + (q[1] - a[1]) * d[1] + (q[2] - a[2]) * d[2]) / length2
    np.clip(t, 0.0, 1.0, out=t)
    dist2 = (q[0] - a[0] - t * d[0]) ** 2 + (q[1] - a[1] - t * d[1]) ** 2 + (q[2] - a[2] - t * d[2]) ** 2
    return np.sqrt(dist2) - (r0 + (r1 - r0) * t)


@dataclass
class _Blob:
    """An implicit blob in shape units: a perturbed ellipsoid, optionally with tubes and lobes.

    ``field(q) < 0`` inside, where ``q`` are coordinates in the blob's own frame (shape units).
    """

    axes: np.ndarray
    wave_vectors: np.ndarray  # (k, 3)
    wave_phases: np.ndarray  # (k,)
    wave_amplitudes: np.ndarray  # (k,), already scaled to the wanted irregularity
    tubes: list[tuple[np.ndarray, np.ndarray, float, float]] = field(default_factory=list)
    lobes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # centre, rotation, semi-axes

    def radius(self, u: tuple[np.ndarray, ...]) -> np.ndarray:
        """Relative radius of the body along unit directions ``u`` (in ellipsoid-normalized space)."""
        r = np.ones_like(u[0])
        for w, phase, amp in zip(self.wave_vectors, self.wave_phases, self.wave_amplitudes):
            r += amp * np.cos(w[0] * u[0] + w[1] * u[1] + w[2] * u[2] + phase)
        return np.clip(r, 0.55, 1.7, out=r)

    def body_field(self, q: tuple[np.ndarray, ...]) -> np.ndarray:
        e = [q[i] / self.axes[i] for i in range(3)]
        rho = np.sqrt(e[0] ** 2 + e[1] ** 2 + e[2] ** 2) + 1e-9
        u = tuple(c / rho for c in e)
        # Scale back to roughly metric units (distance along the ray, in shape units).
        return (rho - self.radius(u)) * float(self.axes.min())

    def field(self, q: tuple[np.ndarray, ...]) -> np.ndarray:
        f = self.body_field(q)
        for a, b, r0, r1 in self.tubes:
            f = _smooth_min(f, _segment_field(q, a, b, r0, r1), _SMOOTH_UNION)
        for centre, rot, semi in self.lobes:
            local = [sum(rot[j, i] * (q[j] - centre[j]) for j in range(3)) / semi[i] for i in range(3)]
            rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
            f = _smooth_min(f, (rho - 1.0) * float(semi.min()), _SMOOTH_UNION)
        return f

    def surface_distance(self, direction: np.ndarray) -> float:
        """Distance from the centre to the body's surface along ``direction`` (shape units)."""
        d = _unit(direction)
        e = d / self.axes
        norm = float(np.linalg.norm(e))
        u = tuple(np.array([c / norm]) for c in e)
        return float(self.radius(u)[0]) / norm


def _random_body(rng: np.random.Generator, irregularity: float, elongation: float, n_waves: int = 10) -> _Blob:
    """A perturbed ellipsoid of equivalent radius about 1 (shape units)."""
    log_axes = rng.normal(0.0, elongation, size=3)
    log_axes = np.clip(log_axes - log_axes.mean(), -0.45, 0.45)
    axes = np.exp(log_axes - log_axes.mean())
    vectors = rng.normal(0.0, 1.3, size=(n_waves, 3))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=n_waves)
    amplitudes = rng.normal(0.0, 1.0, size=n_waves)
    dirs = _sphere_directions()
    g = np.cos(dirs @ vectors.T + phases) @ amplitudes
    spread = float(g.std()) + 1e-9
    amplitudes *= irregularity * rng.uniform(0.7, 1.3) / spread
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
        surface = blob.surface_distance(d)
        centre = (surface + 0.12) * d
        # Frame whose first axis points along d: the lobe is elongated outwards.
        helper = _unit(np.cross(d, rng.normal(size=3)))
        rot = np.stack([d, helper, np.cross(d, helper)], axis=1)
        semi = np.array([rng.uniform(0.38, 0.5), rng.uniform(0.22, 0.3), rng.uniform(0.2, 0.28)])
        blob.lobes.append((centre, rot, semi))
    return blob


def _grid_points(shape: tuple[int, ...], spacing: tuple[float, ...], lo: np.ndarray, hi: np.ndarray):
    """Index slices of the box [lo, hi] (mm, clipped to the volume) and its broadcastable mm coordinates."""
    slices, coords = [], []
    for axis in range(3):
        start = max(0, int(math.floor(lo[axis] / spacing[axis])))
        stop = min(shape[axis], int(math.ceil(hi[axis] / spacing[axis])) + 1)
        stop = max(stop, start)
        slices.append(slice(start, stop))
        c = np.arange(start, stop, dtype=np.float32) * np.float32(spacing[axis])
        coords.append(c.reshape([-1 if a == axis else 1 for a in range(3)]))
    return tuple(slices), coords


def _render(
    blob: _Blob,
    rotation: np.ndarray,
    centre_mm: np.ndarray,
    scale_mm: float,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    reach: float,
) -> np.ndarray:
    """Boolean mask of ``blob`` placed at ``centre_mm`` (rotated, scaled), on the voxel grid."""
    mask = np.zeros(shape, dtype=bool)
    slices, coords = _grid_points(shape, spacing, centre_mm - reach * scale_mm, centre_mm + reach * scale_mm)
    if any(s.stop <= s.start for s in slices):
        return mask
    rel = [(coords[j] - np.float32(centre_mm[j])) / np.float32(scale_mm) for j in range(3)]
    # Blob frame coordinates: q = R^T (p - c) / s.
    q = tuple(rel[0] * np.float32(rotation[0, i]) + rel[1] * np.float32(rotation[1, i]) + rel[2] * np.float32(rotation[2, i])
              for i in range(3))
    mask[slices] = blob.field(q) < 0
    return mask


def _unit_extent(blob: _Blob, rotation: np.ndarray, step: float = 0.08, half: float = 3.4) -> tuple[float, np.ndarray, np.ndarray]:
    """Volume and bounding box (world axes, shape units) of the rotated blob, from a coarse grid."""
    axis = np.arange(-half, half + step / 2, step, dtype=np.float32)
    n = axis.size
    grid = [axis.reshape([-1 if a == i else 1 for a in range(3)]) for i in range(3)]
    q = tuple(grid[0] * np.float32(rotation[0, i]) + grid[1] * np.float32(rotation[1, i]) + grid[2] * np.float32(rotation[2, i])
              for i in range(3))
    inside = blob.field(q) < 0
    volume = float(inside.sum()) * step**3
    lo, hi = np.empty(3), np.empty(3)
    for i in range(3):
        present = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != i)))
        if present.size == 0 or present[0] == 0 or present[-1] == n - 1:
            return volume, np.full(3, -np.inf), np.full(3, np.inf)  # empty or cut off: reject
        lo[i] = axis[present[0]] - step
        hi[i] = axis[present[-1]] + step
    return volume, lo, hi


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(mask)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                  scale_mm: float, coarse_step_mm: float | None = None) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation (float32), correlation length ``scale_mm``.

    The noise is drawn on a grid of ``coarse_step_mm`` (a third of ``scale_mm`` by default, never finer
    than the voxels), smoothed there and interpolated back, which keeps large scales cheap.
    """
    step = coarse_step_mm if coarse_step_mm is not None else scale_mm / 3.0
    factors = [max(1.0, step / s) for s in spacing]
    coarse_shape = tuple(max(2, int(math.ceil(n / f))) for n, f in zip(shape, factors))
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    sigma = [scale_mm / (s * f) for s, f in zip(spacing, factors)]
    noise = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    if coarse_shape != tuple(shape):
        zoom = [n / c for n, c in zip(shape, coarse_shape)]
        noise = ndimage.zoom(noise, zoom, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1], : shape[2]]
    noise -= noise.mean()
    noise /= noise.std() + 1e-12
    return noise


# ----------------------------------------------------------------------------- public API


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of the cohort drawn with ``seed`` (a pure function of both)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0])


def _place_organ(rng: np.random.Generator, config: SyntheticConfig):
    """Draw the organ until it fits the volume; returns (blob, rotation, centre_mm, scale_mm, reach)."""
    extent = np.array([(n - 1) * s for n, s in zip(config.shape, config.spacing)])
    room = extent - 2.0 * config.margin_mm
    total = float(np.prod(np.array(config.shape) * np.array(config.spacing)))
    best = None
    for _ in range(30):
        blob = _organ_shape(rng, config)
        rotation = _rotation(rng, config.max_rotation_deg)
        volume, lo, hi = _unit_extent(blob, rotation)
        if not np.isfinite(lo).all() or volume <= 0:
            continue
        fraction = rng.uniform(*config.organ_fraction)
        scale = (fraction * total / volume) ** (1.0 / 3.0)
        fit = float(np.min(room / (hi - lo)))
        if scale <= fit:
            best = (blob, rotation, scale, lo, hi)
            break
        if best is None or fit > best[2]:
            best = (blob, rotation, fit, lo, hi)  # fallback: the largest that fits, shrunk
    if best is None:
        raise InputError("SyntheticConfig", "could not draw an organ that fits the volume; enlarge shape or reduce margin_mm")
    blob, rotation, scale, lo, hi = best
    low = config.margin_mm - scale * lo
    high = extent - config.margin_mm - scale * hi
    centre = rng.uniform(low, np.maximum(low, high))
    reach = float(np.max(np.abs(np.concatenate([lo, hi])))) + 0.1
    return blob, rotation, centre, scale, reach


def synthetic_case(seed: int | np.random.Generator, config: SyntheticConfig = SyntheticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: (image float32 z-scored, label uint8), both of ``config.shape`` in (x, y, z) order."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape, spacing = tuple(int(n) for n in config.shape), tuple(float(s) for s in config.spacing)
    extent = np.array([(n - 1) * s for n, s in zip(shape, spacing)])

    # --- the organ
    blob, rotation, centre, scale, reach = _place_organ(rng, config)
    organ = _largest_component(_render(blob, rotation, centre, scale, shape, spacing, reach))
    # Distractors keep a thin gap (about 1.5 mm) from the organ.
    gap = ndimage.binary_dilation(organ, ndimage.generate_binary_structure(3, 2),
                                  iterations=max(1, int(round(1.5 / min(spacing)))))

    # --- tissue classes: (mask, intensity, texture weight); painted in order, later wins
    classes: list[tuple[np.ndarray, float, float]] = []

    def blob_near(radius_factor: tuple[float, float], distance: tuple[float, float], anywhere: bool = False) -> np.ndarray:
        body = _random_body(rng, config.irregularity * 1.2, config.elongation * 1.5, n_waves=6)
        s = scale * rng.uniform(*radius_factor)
        if anywhere:
            where = rng.uniform(0.0, 1.0, size=3) * extent
            # Push towards the faces: dark regions (lungs) sit at the periphery.
            axis = int(rng.integers(0, 2))
            where[axis] = extent[axis] * (0.0 if rng.uniform() < 0.5 else 1.0) + rng.normal(0.0, 0.08) * extent[axis]
        else:
            where = centre + _unit(rng.normal(size=3)) * (scale + s) * rng.uniform(*distance)
        return _render(body, _rotation(rng, 180.0), where, s, shape, spacing, 2.6)

    n_dark = int(rng.integers(config.n_dark[0], config.n_dark[1] + 1))
    for _ in range(n_dark):
        classes.append((blob_near((0.9, 1.4), (1.0, 1.3), anywhere=True), rng.uniform(0.05, 0.15), 0.3))
    n_mid = int(rng.integers(config.n_mid[0], config.n_mid[1] + 1))
    for _ in range(n_mid):
        classes.append((blob_near((0.5, 0.8), (0.8, 1.1)), rng.uniform(0.5, 0.65), 0.8))
    if config.vessel:
        classes.append((_vessel(rng, centre, scale, shape, spacing), rng.uniform(0.9, 1.05), 0.6))
    n_bright = int(rng.integers(config.n_bright[0], config.n_bright[1] + 1))
    for _ in range(n_bright):
        classes.append((blob_near((0.6, 0.95), (0.8, 1.05)), rng.uniform(0.85, 1.05), 0.8))

    texture = _smooth_noise(rng, shape, spacing, config.texture_scale_mm)
    broad = _smooth_noise(rng, shape, spacing, 12.0)  # slow tissue variation
    image = np.full(shape, config.background_intensity, dtype=np.float32)
    image += np.float32(config.texture_strength * 1.2) * texture + np.float32(config.texture_strength * 0.8) * broad
    for mask, intensity, texture_weight in classes:
        mask &= ~gap
        image[mask] = np.float32(intensity) + np.float32(config.texture_strength * texture_weight) * texture[mask]
    image[organ] = np.float32(config.organ_intensity) + np.float32(config.texture_strength * 0.5) * texture[organ]
    np.maximum(image, 0.0, out=image)

    # --- acquisition: partial-volume blur, bias field, Rician noise, z-scoring
    if config.blur_mm > 0:
        image = ndimage.gaussian_filter(image, [config.blur_mm / s for s in spacing], mode="nearest", truncate=3.0)
    if config.bias_strength > 0:
        bias = _smooth_noise(rng, shape, spacing, config.bias_scale_mm, coarse_step_mm=config.bias_scale_mm / 2)
        image *= np.exp(np.float32(config.bias_strength) * bias)
    if config.noise_std > 0:
        sigma = np.float32(config.noise_std * config.organ_intensity)
        real = image + sigma * rng.standard_normal(shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(shape, dtype=np.float32)
        image = np.sqrt(real * real + imag * imag)
    image = image.astype(np.float32, copy=False)
    image -= image.mean(dtype=np.float64)
    image /= np.float32(image.std(dtype=np.float64) + 1e-12)
    return image, organ.astype(np.uint8)


def _vessel(rng: np.random.Generator, organ_centre: np.ndarray, organ_scale: float,
            shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """A tube along z that passes beside the organ, gently curving (an aorta-like vessel)."""
    radius = organ_scale * rng.uniform(0.3, 0.42)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    offset = (organ_scale * 1.1 + radius) * rng.uniform(0.95, 1.15)
    x0 = organ_centre[0] + offset * math.cos(angle)
    y0 = organ_centre[1] + offset * math.sin(angle)
    z = np.arange(shape[2]) * spacing[2]
    zc = organ_centre[2]
    tilt = rng.normal(0.0, 0.15, size=2)
    wiggle = rng.uniform(0.03, 0.08, size=2) * organ_scale
    freq = rng.uniform(0.02, 0.05, size=2)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=2)
    xc = x0 + tilt[0] * (z - zc) + wiggle[0] * np.sin(freq[0] * z + phase[0])
    yc = y0 + tilt[1] * (z - zc) + wiggle[1] * np.sin(freq[1] * z + phase[1])
    r = radius * (1.0 + 0.08 * np.sin(rng.uniform(0.02, 0.06) * z + rng.uniform(0, 2 * math.pi)))
    x = (np.arange(shape[0], dtype=np.float32) * spacing[0]).reshape(-1, 1, 1)
    y = (np.arange(shape[1], dtype=np.float32) * spacing[1]).reshape(1, -1, 1)
    d2 = (x - xc.astype(np.float32)) ** 2 + (y - yc.astype(np.float32)) ** 2
    return d2 < (r.astype(np.float32) ** 2)


def synthetic_cohort(n_cases: int, seed: int = 0, config: SyntheticConfig = SyntheticConfig()) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(case_id, image, label)`` for ``n_cases`` cases named ``case_000``, ``case_001``, ...

    Case ``i`` is ``synthetic_case(case_seed(seed, i), config)``, so any case can be regenerated on its own.
    """
    if n_cases < 0:
        raise InputError("synthetic_cohort", f"n_cases must be non-negative, got {n_cases}")
    width = max(3, len(str(max(n_cases - 1, 0))))
    for index in range(n_cases):
        image, label = synthetic_case(case_seed(seed, index), config)
        yield f"case_{index:0{width}d}", image, label
