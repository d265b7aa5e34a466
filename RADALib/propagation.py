"""Registration-based propagation of sparse orthogonal annotations (METHOD 1.1-1.2).

For each view v (axis 0 sagittal, 1 coronal, 2 axial), the annotated slice of that plane is
carried through the volume, both directions, by chained 2D registrations: each slice is
registered onto its neighbour further from the source, the coordinate maps are composed, and
the source label is resampled once per slice with nearest neighbour. The result per view is a
dense pseudo-label Ŷv and, per slice, the distance d (in slices) to the source slice.

Speed, all settable in :class:`PropagationConfig`:
- every registration is cropped to the box that the three annotated slices span, plus a margin;
- chains stop where the propagated label has vanished, and start out only as far as the box
  (plus a margin), growing in waves while the label is still there;
- with ``slice_step`` k > 1, slices k apart are registered and the k-1 slices between them get
  a shape-based interpolation (signed distances) of the two propagated labels;
- all the neighbour-pair registrations of a wave are independent and run in a process pool.

Dense ground truth never enters here: only the sparse annotation does.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import numpy as np
from scipy import ndimage

from .annotation import PLANES, SparseAnnotation
from .registration import PairRegistrar, RegistrationConfig

Fusion = Literal["weighted", "majority"]


@dataclass(frozen=True)
class PropagationConfig:
    """How annotations are propagated. Defaults are the measured speed/quality trade-off."""

    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    slice_step: int = 3
    crop_margin: int = 15
    extent_margin: int = 6
    stop_when_empty: bool = True
    slice_smoothing: int = 2
    fusion: Fusion = "weighted"
    fusion_alpha: float = 0.93

    def __post_init__(self) -> None:
        if self.slice_step < 1:
            raise ValueError(f"slice_step must be >= 1, got {self.slice_step}")
        if self.crop_margin < 0 or self.extent_margin < 0:
            raise ValueError("crop_margin and extent_margin must be >= 0")
        if not 0.0 < self.fusion_alpha <= 1.0:
            raise ValueError(f"fusion_alpha must lie in (0, 1], got {self.fusion_alpha}")
        if self.fusion not in ("weighted", "majority"):
            raise ValueError(f"fusion must be 'weighted' or 'majority', got {self.fusion!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> "PropagationConfig":
        values = dict(values)
        registration = values.pop("registration", {})
        if isinstance(registration, Mapping):
            registration = RegistrationConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in registration.items()}
            )
        return cls(registration=registration, **values)


@dataclass
class PropagationResult:
    """Per view: the pseudo-label Ŷv and the per-slice distance to the nearest source slice."""

    annotation: SparseAnnotation
    labels: dict[int, np.ndarray]
    distances: dict[int, np.ndarray]
    methods: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def registrations(self) -> int:
        return int(sum(self.methods.values()))

    def weights(self, axis: int, alpha: float) -> np.ndarray:
        """Eq. (6): W = 1 on every truly annotated voxel, α^d elsewhere (d from view ``axis``)."""
        return voxel_weights(self.distances[axis], axis, self.annotation, alpha)

    def mixed_label(self, axis: int) -> np.ndarray:
        """Ỹv: the true annotation where it exists, else the pseudo-label of view ``axis``."""
        return mix_labels(self.labels[axis], self.annotation)

    def fused(self, fusion: Fusion = "weighted", alpha: float = 0.93) -> np.ndarray:
        """The three views' mixed labels fused by a vote (for review and benchmarks).

        ``majority``: one vote per view. ``weighted``: each view's vote on slice k is
        α^d × (a + 0.05)², with d the slice's distance to the view's source and a the Dice,
        on that slice, between the view's pseudo-label and the true labels along the lines
        where the other planes' annotated slices cross it (0.5 where those lines are empty):
        views that drifted away from the known labels count less.
        """
        labels = [self.mixed_label(axis) for axis in range(3)]
        if fusion == "majority":
            weights = [np.ones(1, np.float32)] * 3
        else:
            weights = []
            for axis in range(3):
                agreement = line_agreement(self.labels[axis], self.annotation, axis)
                vote_weight = alpha ** self.distances[axis].astype(np.float32) * (agreement + 0.05) ** 2
                weights.append(_broadcast(vote_weight.astype(np.float32), axis))
        return vote(labels, weights)


def line_agreement(pseudo: np.ndarray, annotation: SparseAnnotation, axis: int) -> np.ndarray:
    """Per slice of view ``axis``, Dice between ``pseudo`` and the true annotation on the lines
    where the other planes' annotated slices cross the slice (0.5 where both are empty)."""
    labels = np.moveaxis(pseudo, axis, 0)
    truth = np.moveaxis(annotation.label, axis, 0)
    others = [a for a in range(3) if a != axis]
    matched = np.zeros(labels.shape[0])
    total = np.zeros(labels.shape[0])
    for position, other in enumerate(others):
        for index in annotation.slices.get(other, ()):
            p = np.take(labels, index, axis=position + 1)
            t = np.take(truth, index, axis=position + 1)
            matched += ((p == t) & (t != 0)).sum(axis=1)
            total += (p != 0).sum(axis=1) + (t != 0).sum(axis=1)
    agreement = np.full(labels.shape[0], 0.5)
    known = total > 0
    agreement[known] = 2 * matched[known] / total[known]
    return agreement


def _broadcast(vector: np.ndarray, axis: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[axis] = -1
    return vector.reshape(shape)


def voxel_weights(distance: np.ndarray, axis: int, annotation: SparseAnnotation, alpha: float) -> np.ndarray:
    """Eq. (6) as a dense float32 volume for the view along ``axis``."""
    shape = annotation.label.shape
    weights = np.broadcast_to(_broadcast(np.power(np.float32(alpha), distance.astype(np.float32)), axis), shape)
    weights = np.array(weights, dtype=np.float32)
    weights[annotation.annotated_mask()] = 1.0
    return weights


def mix_labels(pseudo: np.ndarray, annotation: SparseAnnotation) -> np.ndarray:
    """Label mixing: annotated voxels keep their true class, the rest take the pseudo-label."""
    mixed = pseudo.copy()
    mask = annotation.annotated_mask()
    mixed[mask] = annotation.label[mask]
    return mixed


def vote(labels: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """Per voxel, the class with the largest summed weight (ties go to the lower class)."""
    classes = np.unique(np.concatenate([np.unique(label) for label in labels]))
    best_score = np.full(labels[0].shape, -1.0, np.float32)
    best = np.zeros(labels[0].shape, labels[0].dtype)
    for value in classes:
        score = sum((label == value) * weight for label, weight in zip(labels, weights))
        better = score > best_score
        best[better] = value
        best_score = np.where(better, score, best_score)
    return best


def annotation_box(annotation: SparseAnnotation, margin: int) -> list[tuple[int, int]]:
    """Per axis, the [low, high) range spanned by the annotated voxels, grown by ``margin``."""
    where = np.nonzero(annotation.label)
    shape = annotation.label.shape
    return [(max(0, int(w.min()) - margin), min(shape[a], int(w.max()) + 1 + margin)) for a, w in enumerate(where)]


def interpolate_shapes(first: np.ndarray, last: np.ndarray, fraction: float) -> np.ndarray:
    """Shape-based interpolation between two 2D label maps (signed distances, per class)."""
    return interpolate_shapes_at(first, last, [fraction])[0]


def interpolate_shapes_at(first: np.ndarray, last: np.ndarray, fractions: Sequence[float]) -> list[np.ndarray]:
    """:func:`interpolate_shapes` at several fractions, with each class's distances computed once.

    Distances are computed on the box around both labels grown by one pixel (a background
    ring, except at the slice's edges), which gives the same values as on the whole slice.
    """
    outs = [np.zeros_like(first) for _ in fractions]
    labeled = (first != 0) | (last != 0)
    if not labeled.any():
        return outs
    rows, cols = np.nonzero(labeled)
    r0, r1 = max(int(rows.min()) - 1, 0), min(int(rows.max()) + 2, first.shape[0])
    c0, c1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 2, first.shape[1])
    box = (slice(r0, r1), slice(c0, c1))
    a, b = first[box], last[box]
    bests = [np.full(a.shape, np.inf, np.float32) for _ in fractions]
    for value in np.union1d(np.unique(a), np.unique(b)):
        if value == 0:
            continue
        far = float(sum(first.shape))  # the whole slice's "no label" distance
        da, db = _signed_distance(a == value, far), _signed_distance(b == value, far)
        for out, best, fraction in zip(outs, bests, fractions):
            blend = (1.0 - fraction) * da + fraction * db
            take = (blend < 0) & (blend < best)
            out[box][take] = value
            best[take] = blend[take]
    return outs


def _signed_distance(mask: np.ndarray, empty: float | None = None) -> np.ndarray:
    """Negative inside, positive outside, zero half-way between boundary pixels.

    An empty mask is ``empty`` everywhere (default: the slice's height + width)."""
    if not mask.any():
        return np.full(mask.shape, float(sum(mask.shape)) if empty is None else empty, np.float32)
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    return np.where(mask, 0.5 - inside, outside - 0.5).astype(np.float32)


def smooth_slice(label: np.ndarray, radius: int) -> np.ndarray:
    """Opening then closing of each class with a disk of ``radius`` (0: unchanged)."""
    if radius <= 0 or not label.any():
        return label
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (yy**2 + xx**2) <= radius**2
    out = np.zeros_like(label)
    for value in np.unique(label):
        if value == 0:
            continue
        mask = ndimage.binary_closing(ndimage.binary_opening(label == value, disk), disk)
        out[mask & (out == 0)] = value
    return out


def compose(previous: np.ndarray | None, step: np.ndarray) -> np.ndarray:
    """Coordinate map of (previous ∘ step): follow ``step``, then ``previous``."""
    if previous is None:
        return step
    outside = (step[0] < -0.5) | (step[1] < -0.5)
    composed = np.stack([ndimage.map_coordinates(previous[c], step, order=1, mode="nearest") for c in range(2)])
    composed[:, outside] = -10.0
    return composed.astype(np.float32)


def warp_label(label: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D label at a coordinate map (outside: background)."""
    return ndimage.map_coordinates(label, coordinates, order=0, mode="constant", cval=0).astype(label.dtype)


@dataclass
class _Chain:
    """One direction of one view's propagation: slices visited so far, the composed map."""

    axis: int
    source: int
    direction: int
    end: int  # last slice this chain may reach (inclusive)
    limit: int  # hard limit (volume edge or halfway to the next source)
    current: int
    coordinates: np.ndarray | None = None
    finished: bool = False


def _chain_targets(chain: _Chain, step: int) -> list[int]:
    targets = []
    position = chain.current
    while (position - chain.end) * chain.direction < 0:
        position = position + chain.direction * step
        if (position - chain.end) * chain.direction > 0:
            position = chain.end
        targets.append(position)
    return targets


def propagate(
    image: np.ndarray,
    annotation: SparseAnnotation,
    spacing: tuple[float, float, float],
    registrar: PairRegistrar,
    config: PropagationConfig = PropagationConfig(),
    progress: Callable[[str], None] | None = None,
) -> PropagationResult:
    """Propagate ``annotation`` through ``image`` along each annotated plane (METHOD 1.1).

    ``image`` and ``annotation.label`` are (x, y, z) arrays on one grid; ``registrar`` does the
    2D registrations (ANTs in a process pool in production, a fake in tests).
    """
    started = time.perf_counter()
    if image.shape != annotation.label.shape:
        raise ValueError(f"image shape {image.shape} and annotation shape {annotation.label.shape} differ")
    box = annotation_box(annotation, config.crop_margin)
    labels: dict[int, np.ndarray] = {}
    distances: dict[int, np.ndarray] = {}
    methods: dict[str, int] = {}
    for axis, sources in sorted(annotation.slices.items()):
        if progress:
            progress(f"{PLANES[axis]} view: propagating from slice(s) {', '.join(map(str, sources))}")
        label, distance = _propagate_view(image, annotation, axis, sorted(sources), spacing, box, registrar, config, methods)
        labels[axis] = label
        distances[axis] = distance
    return PropagationResult(annotation, labels, distances, methods, time.perf_counter() - started)


def _propagate_view(
    image: np.ndarray,
    annotation: SparseAnnotation,
    axis: int,
    sources: list[int],
    spacing: tuple[float, float, float],
    box: list[tuple[int, int]],
    registrar: PairRegistrar,
    config: PropagationConfig,
    methods: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    n = image.shape[axis]
    volume = np.moveaxis(image, axis, 0)
    sparse = np.moveaxis(annotation.label, axis, 0)
    in_plane = [a for a in range(3) if a != axis]
    crop = (slice(*box[in_plane[0]]), slice(*box[in_plane[1]]))
    spacing_2d = (float(spacing[in_plane[0]]), float(spacing[in_plane[1]]))
    output = np.zeros(sparse.shape, dtype=annotation.label.dtype)
    cropped_labels: dict[int, np.ndarray] = {}

    index = np.arange(n)
    nearest = np.array([min(sources, key=lambda s: abs(s - i)) for i in index])
    distance = np.abs(index - nearest).astype(np.int32)

    chains: list[_Chain] = []
    for k, source in enumerate(sources):
        cropped_labels[source] = sparse[source][crop]
        low_limit = 0 if k == 0 else (sources[k - 1] + source) // 2 + 1
        high_limit = n - 1 if k == len(sources) - 1 else (source + sources[k + 1]) // 2
        box_low, box_high = box[axis][0] - config.extent_margin, box[axis][1] - 1 + config.extent_margin
        for direction, limit, planned in ((1, high_limit, box_high), (-1, low_limit, box_low)):
            if not config.stop_when_empty:
                planned = limit
            end = min(limit, planned) if direction > 0 else max(limit, planned)
            if (end - source) * direction > 0:
                chains.append(_Chain(axis, source, direction, end, limit, source))

    while True:
        work: list[tuple[_Chain, list[int]]] = [(c, _chain_targets(c, config.slice_step)) for c in chains if not c.finished]
        work = [(c, t) for c, t in work if t]
        if not work:
            break
        pairs, owners = [], []
        for chain, targets in work:
            previous = chain.current
            for target in targets:
                pairs.append((volume[target][crop], volume[previous][crop]))
                owners.append((chain, previous, target))
                previous = target
        results = registrar.register(pairs, spacing_2d)
        for (chain, previous, target), result in zip(owners, results):
            if chain.finished:
                continue
            methods[result.method] = methods.get(result.method, 0) + 1
            chain.coordinates = compose(chain.coordinates, result.coordinates)
            warped = smooth_slice(warp_label(cropped_labels[chain.source], chain.coordinates), config.slice_smoothing)
            cropped_labels[target] = warped
            gap = abs(target - previous)
            if gap > 1:
                between = interpolate_shapes_at(cropped_labels[previous], warped, [j / gap for j in range(1, gap)])
                for j, label in enumerate(between, start=1):
                    cropped_labels[previous + chain.direction * j] = label
            chain.current = target
            if config.stop_when_empty and not warped.any():
                chain.finished = True
        for chain, _ in work:
            if chain.finished:
                continue
            at_limit = chain.current == chain.limit
            if at_limit:
                chain.finished = True
            else:  # still labeled at the planned end: grow the chain by another wave
                grow = max(config.extent_margin, config.slice_step)
                chain.end = min(chain.limit, chain.end + grow) if chain.direction > 0 else max(chain.limit, chain.end - grow)

    for position, cropped in cropped_labels.items():
        output[position][crop] = cropped
    # annotated slices of this plane keep their true labels (they are the sources)
    for source in sources:
        output[source] = sparse[source]
    return np.ascontiguousarray(np.moveaxis(output, 0, axis)), distance
