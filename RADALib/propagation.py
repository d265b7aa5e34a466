"""Registration-based propagation of sparse orthogonal annotations (docs/method.md, Propagation).

For each view v (axis 0 sagittal, 1 coronal, 2 axial), the annotated slice of that plane is
carried through the volume, both directions, by chained 2D registrations: each slice is
registered onto its neighbour further from the source, the coordinate maps are composed, and
the source label is resampled once per slice with nearest neighbour. The result per view is a
dense pseudo-label Ŷv and, per slice, the distance d (in slices) to the source slice.

Speed, all settable in :class:`PropagationConfig`:
- each registration is cropped to the box of the label it carries (the last propagated slice's
  label) plus a margin, inside the box that the three annotated slices span plus that margin;
- chains stop where the propagated label has vanished, and at the view's bound: the extent
  along its axis that the other planes' annotated slices show, plus ``bound_margin`` slices
  (``bounds.py``); beyond it the pseudo-label is background;
- with ``slice_step`` k > 1, slices k apart are registered and the k-1 slices between them get
  a shape-based interpolation (signed distances) of the two propagated labels;
- the chains of all planes run at once, each with one slice pair in a process pool.

Several structures (classes) share one label map throughout, so no voxel is ever claimed by two
of them: the label map is warped as a whole with nearest neighbour (one class per voxel by
construction); the shape-based interpolation gives a voxel the class deepest inside (most
negative blended signed distance); where two separately smoothed classes claim a voxel the
lower class takes it (:func:`smooth_slice`); the fused vote takes the class of largest summed weight,
ties to the lower class (:func:`vote`).

Dense ground truth never enters here: only the sparse annotation does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np
from scipy import ndimage

from .annotation import PLANES, SparseAnnotation
from .bounds import ViewBound, view_bounds
from .registration import (
    PairRegistrar,
    PairResult,
    RegistrationConfig,
    identity_coordinates,
    submit_pair,
)

Fusion = Literal["weighted", "majority"]

SCHEME = 2
"""Version of the propagation scheme (part of the cache key): 2 = chains run one pair at a time,
each pair cropped to the label it carries; 1 = waves of pairs cropped to the annotation box."""

OBSOLETE_SETTINGS = ("extent_margin",)
"""Settings of scheme 1 that older manifests may carry; ignored."""


@dataclass(frozen=True)
class PropagationConfig:
    """How annotations are propagated. The defaults are a speed/quality trade-off chosen by
    measurement: ``crop_margin`` 10 registers fewer pixels than 15 in less time for the same
    fused Dice on LA; ``bound_margin`` is the margin, in slices, of each view's bound (None:
    no bound, chains go on while their label lasts), chosen for per-view Dice on the LA labeled
    cases and for cutting little true structure on LA and Hippocampus (figures:
    ``Testing/Benchmarks/RESULTS.md``)."""

    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    slice_step: int = 3
    crop_margin: int = 10
    stop_when_empty: bool = True
    slice_smoothing: int = 2
    fusion: Fusion = "weighted"
    fusion_alpha: float = 0.93
    bound_margin: int | None = 2

    def __post_init__(self) -> None:
        if self.slice_step < 1:
            raise ValueError(f"slice_step must be >= 1, got {self.slice_step}")
        if self.crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {self.crop_margin}")
        if self.bound_margin is not None and self.bound_margin < 0:
            raise ValueError(f"bound_margin must be >= 0 or None, got {self.bound_margin}")
        if not 0.0 < self.fusion_alpha <= 1.0:
            raise ValueError(f"fusion_alpha must lie in (0, 1], got {self.fusion_alpha}")
        if self.fusion not in get_args(Fusion):
            raise ValueError(f"fusion must be one of {get_args(Fusion)}, got {self.fusion!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping) -> PropagationConfig:
        values = {k: v for k, v in values.items() if k not in OBSOLETE_SETTINGS}
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
                vote_weight = (
                    alpha ** self.distances[axis].astype(np.float32) * (agreement + 0.05) ** 2
                )
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


def voxel_weights(
    distance: np.ndarray, axis: int, annotation: SparseAnnotation, alpha: float
) -> np.ndarray:
    """Eq. (6) as a dense float32 volume for the view along ``axis``."""
    shape = annotation.label.shape
    weights = np.broadcast_to(
        _broadcast(np.power(np.float32(alpha), distance.astype(np.float32)), axis), shape
    )
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
    return [
        (max(0, int(w.min()) - margin), min(shape[a], int(w.max()) + 1 + margin))
        for a, w in enumerate(where)
    ]


def interpolate_shapes(first: np.ndarray, last: np.ndarray, fraction: float) -> np.ndarray:
    """Shape-based interpolation between two 2D label maps (signed distances, per class)."""
    return interpolate_shapes_at(first, last, [fraction])[0]


def interpolate_shapes_at(
    first: np.ndarray, last: np.ndarray, fractions: Sequence[float]
) -> list[np.ndarray]:
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
    """Opening then closing of each class with a disk of ``radius`` (0: unchanged).

    Each class is smoothed on its own; where two smoothed classes claim a voxel (rare: one's
    closing reaching into what the other's opening kept) the lower class takes it. One class
    per voxel, always."""
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
    composed = np.stack(
        [ndimage.map_coordinates(previous[c], step, order=1, mode="nearest") for c in range(2)]
    )
    composed[:, outside] = -10.0
    return composed.astype(np.float32)


def warp_label(label: np.ndarray, coordinates: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D label at a coordinate map (outside: background)."""
    return ndimage.map_coordinates(label, coordinates, order=0, mode="constant", cval=0).astype(
        label.dtype
    )


def pair_crop(label: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The box around ``label``'s foreground grown by ``margin`` (within the slice); the whole
    slice when the label is empty."""
    rows, cols = np.nonzero(label)
    if rows.size == 0:
        return (slice(0, label.shape[0]), slice(0, label.shape[1]))
    return (
        slice(max(int(rows.min()) - margin, 0), min(int(rows.max()) + 1 + margin, label.shape[0])),
        slice(max(int(cols.min()) - margin, 0), min(int(cols.max()) + 1 + margin, label.shape[1])),
    )


def embed_coordinates(
    coordinates: np.ndarray, crop: tuple[slice, slice], shape: tuple[int, int]
) -> np.ndarray:
    """A coordinate map found on ``crop`` of both slices, as a map of the whole (``shape``)
    slice: shifted by the crop's corner inside it, the identity outside it."""
    full = identity_coordinates(shape)
    inner = coordinates.copy()
    outside = (inner[0] < -0.5) | (inner[1] < -0.5)
    inner[0] += crop[0].start
    inner[1] += crop[1].start
    inner[:, outside] = -1.0
    full[:, crop[0], crop[1]] = inner
    return full


@dataclass
class _View:
    """One annotated plane: the volume with that plane's axis first, cropped in-plane to the
    annotation box, its in-plane spacing, and the labels so far (slice -> 2D label, sources
    included)."""

    axis: int
    volume: np.ndarray
    spacing: tuple[float, float]
    labels: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class _Chain:
    """One direction from one source slice: where it is, and the composed map back to the source."""

    view: _View
    source: int
    direction: int
    limit: int  # last slice it may reach (the volume's edge, or half-way to the next source)
    current: int
    coordinates: np.ndarray | None = None
    busy: bool = False
    finished: bool = False

    def remaining(self) -> int:
        return abs(self.limit - self.current)

    def next_target(self, step: int) -> int:
        return self.current + self.direction * min(step, self.remaining())


def propagate(
    image: np.ndarray,
    annotation: SparseAnnotation,
    spacing: tuple[float, float, float],
    registrar: PairRegistrar,
    config: PropagationConfig = PropagationConfig(),
    progress: Callable[[str], None] | None = None,
) -> PropagationResult:
    """Propagate ``annotation`` through ``image`` along each annotated plane (docs/method.md, Propagation).

    ``image`` and ``annotation.label`` are (x, y, z) arrays on one grid; ``registrar`` does the
    2D registrations (ANTs in a process pool in production, a fake in tests).

    Every chain (one direction from one source slice, all planes at once) keeps one slice pair
    in flight: when its registration returns, the label is carried onto the new slice and the
    next pair is sent, cropped to that label's box plus ``crop_margin``. The pool is kept full,
    the chains with the longest way to go first. What a chain computes depends on its own
    labels only, so the result does not depend on the order in which registrations finish.
    Each view's chains stop at its bound (``bound_margin``, :mod:`.bounds`), and its
    pseudo-label is background outside it.
    """
    started = time.perf_counter()
    if image.shape != annotation.label.shape:
        raise ValueError(
            f"image shape {image.shape} and annotation shape {annotation.label.shape} differ"
        )
    box = annotation_box(annotation, config.crop_margin)
    bounds = view_bounds(annotation, config.bound_margin)
    views: dict[int, _View] = {}
    chains: list[_Chain] = []
    for axis, sources in sorted(annotation.slices.items()):
        sources = sorted(sources)
        if progress:
            progress(
                f"{PLANES[axis]} view: propagating from slice(s) {', '.join(map(str, sources))}"
            )
        views[axis] = _annotated_view(image, annotation, spacing, axis, sources, box)
        chains += _view_chains(views[axis], sources, image.shape[axis], bounds.get(axis))

    methods: dict[str, int] = {}
    _run_chains(chains, registrar, config, methods)

    labels: dict[int, np.ndarray] = {}
    distances: dict[int, np.ndarray] = {}
    for axis, view in views.items():
        labels[axis], distances[axis] = _view_outputs(
            view, annotation, sorted(annotation.slices[axis]), box, bounds.get(axis)
        )
    return PropagationResult(annotation, labels, distances, methods, time.perf_counter() - started)


def _annotated_view(
    image: np.ndarray,
    annotation: SparseAnnotation,
    spacing: tuple[float, float, float],
    axis: int,
    sources: Sequence[int],
    box: Sequence[tuple[int, int]],
) -> _View:
    """The view of plane ``axis``, cropped in-plane to ``box``, holding its source slices' labels."""
    in_plane = [a for a in range(3) if a != axis]
    crop = (slice(None), slice(*box[in_plane[0]]), slice(*box[in_plane[1]]))
    view = _View(
        axis,
        np.moveaxis(image, axis, 0)[crop],
        (float(spacing[in_plane[0]]), float(spacing[in_plane[1]])),
    )
    sparse = np.moveaxis(annotation.label, axis, 0)[crop]
    for source in sources:
        view.labels[source] = sparse[source]
    return view


def _view_chains(
    view: _View, sources: Sequence[int], n: int, bound: ViewBound | None = None
) -> list[_Chain]:
    """Both directions from each sorted source slice of a view of ``n`` slices, each chain
    stopping at the volume's edge or half-way to the next source, and at the view's ``bound``."""
    chains = []
    for k, source in enumerate(sources):
        low = 0 if k == 0 else (sources[k - 1] + source) // 2 + 1
        high = n - 1 if k == len(sources) - 1 else (source + sources[k + 1]) // 2
        for direction, limit in ((1, high), (-1, low)):
            if bound is not None:
                limit = bound.clamp(limit, direction)
            if (limit - source) * direction > 0:
                chains.append(_Chain(view, source, direction, limit, source))
    return chains


def _run_chains(
    chains: list[_Chain],
    registrar: PairRegistrar,
    config: PropagationConfig,
    methods: dict[str, int],
) -> None:
    """Advance every chain until its label vanishes (``stop_when_empty``) or it reaches its limit."""
    capacity = max(1, int(getattr(registrar, "workers", 1))) + 1  # one queued: no idle worker
    running: dict[Future, tuple[_Chain, int, tuple[slice, slice]]] = {}
    try:
        while True:
            idle = [c for c in chains if not c.busy and not c.finished]
            idle.sort(key=lambda c: -c.remaining())  # stable: ties keep the chains' order
            for chain in idle[: max(0, capacity - len(running))]:
                target = chain.next_target(max(1, config.slice_step))
                previous = chain.current
                crop = pair_crop(chain.view.labels[previous], config.crop_margin)
                pair = (chain.view.volume[target][crop], chain.view.volume[previous][crop])
                running[submit_pair(registrar, *pair, chain.view.spacing)] = (chain, target, crop)
                chain.busy = True
            if not running:
                return
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                chain, target, crop = running.pop(future)
                chain.busy = False
                _advance(chain, target, crop, future.result(), config, methods)
    finally:
        for future in running:
            future.cancel()


def _advance(
    chain: _Chain,
    target: int,
    crop: tuple[slice, slice],
    result: PairResult,
    config: PropagationConfig,
    methods: dict[str, int],
) -> None:
    """Carry the chain's source label onto ``target`` through the newly registered pair."""
    view = chain.view
    methods[result.method] = methods.get(result.method, 0) + 1
    source_label = view.labels[chain.source]
    step = embed_coordinates(result.coordinates, crop, source_label.shape)
    chain.coordinates = compose(chain.coordinates, step)
    warped = smooth_slice(warp_label(source_label, chain.coordinates), config.slice_smoothing)
    previous = chain.current
    view.labels[target] = warped
    gap = abs(target - previous)
    if gap > 1:
        between = interpolate_shapes_at(
            view.labels[previous], warped, [j / gap for j in range(1, gap)]
        )
        for j, label in enumerate(between, start=1):
            view.labels[previous + chain.direction * j] = label
    chain.current = target
    if target == chain.limit or (config.stop_when_empty and not warped.any()):
        chain.finished = True


def _view_outputs(
    view: _View,
    annotation: SparseAnnotation,
    sources: list[int],
    box: list[tuple[int, int]],
    bound: ViewBound | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The view's dense pseudo-label (x, y, z), background outside its ``bound``, and
    its per-slice distance to the nearest source (kept beyond the bound: there the pseudo-label
    is background with the usual weight α^d)."""
    axis = view.axis
    sparse = np.moveaxis(annotation.label, axis, 0)
    in_plane = [a for a in range(3) if a != axis]
    crop = (slice(*box[in_plane[0]]), slice(*box[in_plane[1]]))
    output = np.zeros(sparse.shape, dtype=annotation.label.dtype)
    for position, label in view.labels.items():
        output[position][crop] = label
    if bound is not None:
        bound.apply(output)
    for source in sources:  # annotated slices keep their true labels (they are the sources)
        output[source] = sparse[source]
    index = np.arange(sparse.shape[0])
    nearest = np.array([min(sources, key=lambda s: abs(s - i)) for i in index])
    distance = np.abs(index - nearest).astype(np.int32)
    return np.ascontiguousarray(np.moveaxis(output, 0, axis)), distance
