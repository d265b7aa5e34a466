"""Training data of RADA: cases in memory, random patches, and the two-stream batches.

What a training iteration receives (docs/method.md, paper Algorithm 1):

- ``labeled_batch`` patches of labeled volumes, each with, per view v (0 sagittal, 1 coronal,
  2 axial), the mixed label Ỹv and the weight map Wv of eq. (6);
- ``unlabeled_batch`` patches of unlabeled volumes (image only).

Decisions:

- **Intensity normalisation**: every volume is z-scored over all its voxels (mean 0, standard
  deviation 1; a constant volume becomes all zeros). LA2018's h5 images are already z-scored,
  so this changes nothing there.
- **Training spacing**: with a ``spacing``, every case of another voxel size is resampled into it
  after normalisation (image, mixed labels per class, distances in original slice units,
  annotated slices kept whole: :mod:`RADALib.resampling`), through the array cache when given.
- **Crop**: a uniform random ``patch`` window (UA-MT). Along an axis where the volume is
  smaller than the patch, the volume is centred in the patch and padded: the image with its own
  minimum (after normalisation: the darkest value, background-like, where 0 would look like
  average tissue), labels with 0, and weights with 0, so padding is never supervised.
- **Weights**: eq. (6) is computed on the crop only, per iteration, from the per-slice distances
  and α(t): Wv = α^d_v broadcast along axis v, 1 on every truly annotated voxel, 0 on padding.
  With ``use_registration=False`` (ablation) every view is supervised by the sparse annotation
  alone: label = sparse label, weight 1 on annotated voxels and 0 elsewhere.
- **Augmentation**: one of the 8 symmetries of the (x, y) plane, uniformly: rot90 by k·90°
  (k in 0..3) then, with probability ½, a flip of axis 0 (flips of axis 1 are among these:
  flip₁ = rot180 ∘ flip₀). UA-MT always flips, which only reaches the 4 reflections. With a
  non-square (x, y) patch only k in {0, 2} is drawn, so every patch keeps its shape.
- **Scale** (optional, not in the paper): with ``scale``, a patch may be cut from a larger or
  smaller window and resized to the patch (:mod:`RADALib.scale_augmentation`), after the
  rotation and flip, before the intensity augmentation.
- **Rotations and views**: a 90° rotation swaps array axes 0 and 1, so after it the sagittal
  propagation's label varies along the new axis 1. Each view's label and weight map still go to
  that view's network: the label of view v is "the label volume that propagation along v
  produced", a property of where it came from, not of the array axis it is stored along. The
  rotation applies to the volumes (image, all three labels, all three weights) identically,
  which keeps them aligned; swapping labels between networks would mix the three supervision
  sources and erase the disparity between the sub-networks that the cross-view training needs.
- **Sampling**: each iteration draws ``labeled_batch`` labeled and ``unlabeled_batch``
  unlabeled cases (without replacement inside a batch when there are enough cases) from one
  seeded ``numpy.random.Generator``. Its state right after a batch is stored in the batch, so a
  checkpoint taken after iteration t resumes with exactly the batches a straight run would draw,
  even when a background thread prepared batches ahead.
- **Transfer**: labels travel as uint8 and become int64 on the training device
  (:meth:`Batch.to`), an eighth of the bytes over PCIe.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .cache import ArrayCache
from .cohort import Cohort
from .errors import InputError
from .events import Progress
from .intensity_augmentation import IntensityAugmentation, apply_contrast_shift
from .networks import VIEWS
from .scale_augmentation import ScaleAugmentation, resize_patch, source_window

N_VIEWS = 3


# ----------------------------------------------------------------------------- cases in memory


def normalize_intensity(array: np.ndarray) -> np.ndarray:
    """Z-score over the whole volume, background included: (x − mean) / std, float32.

    Any stored type (uint8, int16, float32 up to millions) is converted to float32 before the
    statistics, which are accumulated in float64, so nothing wraps or overflows. A constant
    volume becomes zeros.
    """
    data = np.asarray(array, dtype=np.float32)
    mean = float(data.mean(dtype=np.float64))
    std = float(data.std(dtype=np.float64))
    out = data - np.float32(mean)
    if std > 1e-8:
        out /= np.float32(std)
    else:
        out[...] = 0.0
    return out.astype(np.float32, copy=False)


@dataclass
class TrainingCase:
    """One training volume in memory, in (x, y, z) = (sagittal, coronal, axial) order.

    Unlabeled cases carry the image only. Labeled cases also carry, per view v, the mixed label
    Ỹv (uint8) and the per-slice distance d_v (float32, one value per slice along axis v; ``inf``
    where the view has no propagation, so α^d = 0 there), the mask of truly annotated voxels and
    the sparse label.
    """

    id: str
    image: np.ndarray
    labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    distances: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    annotated: np.ndarray | None = None
    sparse: np.ndarray | None = None
    pad_value: float = field(default=0.0, init=False)
    annotated_slabs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(
        default=None, init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim != 3:
            raise ValueError(f"case {self.id}: image must be 3D, got shape {self.image.shape}")
        self.pad_value = float(self.image.min())
        parts = (self.labels, self.distances, self.annotated, self.sparse)
        if all(p is None for p in parts):
            return
        if any(p is None for p in parts):
            raise ValueError(
                f"case {self.id}: a labeled case needs labels, distances, annotated and sparse"
            )
        shape = self.image.shape
        self.labels = tuple(np.asarray(a, dtype=np.uint8) for a in self.labels)  # type: ignore[assignment]
        self.distances = tuple(np.asarray(d, dtype=np.float32).reshape(-1) for d in self.distances)  # type: ignore[assignment]
        self.annotated = np.asarray(self.annotated, dtype=bool)
        self.sparse = np.asarray(self.sparse, dtype=np.uint8)
        if len(self.labels) != N_VIEWS or len(self.distances) != N_VIEWS:
            raise ValueError(f"case {self.id}: expected one label and one distance vector per view")
        for v in range(N_VIEWS):
            if self.labels[v].shape != shape:
                raise ValueError(
                    f"case {self.id}: label of view {VIEWS[v]} has shape {self.labels[v].shape}, image {shape}"
                )
            if self.distances[v].shape != (shape[v],):
                raise ValueError(
                    f"case {self.id}: distances of view {VIEWS[v]} must have {shape[v]} values"
                )
        if self.annotated.shape != shape or self.sparse.shape != shape:
            raise ValueError(
                f"case {self.id}: annotated mask and sparse label must have the image's shape {shape}"
            )
        self.annotated_slabs = _slabs_of(self.annotated)

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.image.shape)  # type: ignore[return-value]

    @property
    def max_label(self) -> int:
        """Largest class value in the case's labels (0 for an unlabeled case)."""
        if not self.labeled:
            return 0
        return int(max(int(a.max()) for a in (*self.labels, self.sparse)))  # type: ignore[misc]


def _slabs_of(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per axis, the indices of the whole slices that make up ``mask``; ``None`` if it is not a
    union of whole slices (then the mask itself is used, more slowly)."""
    slabs = tuple(
        np.flatnonzero(mask.all(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)
    )
    union = np.zeros(mask.shape, bool)
    for axis, indices in enumerate(slabs):
        key: list = [slice(None)] * 3
        key[axis] = indices
        union[tuple(key)] = True
    return slabs if np.array_equal(union, mask) else None  # type: ignore[return-value]


def labeled_case_from_result(case_id: str, image: np.ndarray, result) -> TrainingCase:
    """A labeled :class:`TrainingCase` from a normalised image and a ``PropagationResult``.

    A view without a propagation (its plane has no annotated slice) is supervised by the sparse
    annotation alone: its label is the sparse label and its distances are ``inf``.
    """
    annotation = result.annotation
    mask = annotation.annotated_mask()
    sparse = np.asarray(annotation.label, dtype=np.uint8)
    labels, distances = [], []
    for axis in range(N_VIEWS):
        if axis in result.labels:
            labels.append(result.mixed_label(axis))
            distances.append(np.asarray(result.distances[axis], dtype=np.float32))
        else:
            labels.append(sparse)
            distances.append(np.full(image.shape[axis], np.inf, np.float32))
    return TrainingCase(case_id, image, tuple(labels), tuple(distances), mask, sparse)  # type: ignore[arg-type]


def fused_supervision(case: TrainingCase, fused: np.ndarray) -> TrainingCase:
    """``case`` supervised by ``fused`` in every view with weight 1 on every voxel (α^0 = 1).

    Not the paper's supervision (each view its own Ỹv, weights α^d of eq. 6): the
    ``label_source="fused"`` option, for cohorts without an unlabeled stream.
    """
    if not case.labeled:
        raise ValueError(f"case {case.id}: an unlabeled case has no supervision to replace")
    label = np.asarray(fused, np.uint8)
    if label.shape != case.shape:
        raise ValueError(f"case {case.id}: fused label of shape {label.shape}, image {case.shape}")
    distances = tuple(np.zeros(n, np.float32) for n in case.shape)
    return TrainingCase(
        case.id, case.image, (label, label, label), distances, case.annotated, case.sparse
    )  # type: ignore[arg-type]


def load_training_cases(
    cohort: Cohort,
    propagation_dir: str | os.PathLike[str] | None,
    require_propagation: bool = True,
    progress: Progress | None = None,
    label_source: str = "views",
    fusion: tuple[str, float] | None = None,
    spacing: Sequence[float] | None = None,
    cache: ArrayCache | None = None,
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """Read the cohort's training cases into memory: ``(labeled, unlabeled)``.

    Labeled cases take their mixed labels, distances and annotation from
    ``<propagation_dir>/cases/<id>/`` (written by ``rada propagate``). With
    ``require_propagation=False`` (the ``use_registration=False`` ablation) a labeled case
    without a propagation result is read from its own sparse annotation instead.
    ``label_source="fused"`` supervises every view with the case's fused pseudo-label
    (:func:`fused_supervision`; ``fusion``: the vote and its α, as ``PropagationConfig.fusion``
    and ``fusion_alpha`` (None: :meth:`PropagationResult.fused`'s defaults), so that training
    learns the ``fused.nrrd`` the user reviewed; a case annotated in fewer than three planes
    has no fused label and keeps its views' supervision).
    ``spacing``: the training spacing (x, y, z) in mm; every case of another voxel size is
    resampled into it (:func:`to_training_spacing`, through ``cache`` when given); ``None``
    keeps every case on its own grid.
    Validation cases are left out. Raises :class:`InputError` when there is no labeled case or
    a labeled case has no (or a stale) propagation result. An empty unlabeled list is returned
    as is: training then runs supervised only (and says so).
    """
    from .volume import read_volume

    if not cohort.labeled:
        raise InputError(
            cohort.path or cohort.name,
            "no labeled training case: give sparse labels, or --labeled N with dense labels",
        )
    folder = Path(propagation_dir) if propagation_dir is not None else None
    progress = progress or Progress()
    cases = cohort.labeled + cohort.unlabeled
    progress.start("load", len(cases), f"reading {len(cases)} training volume(s)")
    labeled: list[TrainingCase] = []
    unlabeled: list[TrainingCase] = []
    for number, case in enumerate(cases, start=1):
        volume = read_volume(case.image, "image")
        image = normalize_intensity(volume.array)
        if case.labeled:
            result = _propagation_result(cohort, case, volume, folder, require_propagation)
            training_case = labeled_case_from_result(case.id, image, result)
            if label_source == "fused" and len(result.labels) == N_VIEWS:
                training_case = fused_supervision(training_case, result.fused(*(fusion or ())))
        else:
            training_case = TrainingCase(case.id, image)
        if spacing is not None:
            training_case = to_training_spacing(training_case, volume.spacing, spacing, cache)
        (labeled if case.labeled else unlabeled).append(training_case)
        progress.update(number, case.id)
    return labeled, unlabeled


def _propagation_result(
    cohort: Cohort, case, volume, folder: Path | None, require_propagation: bool
):
    """The labeled ``case``'s ``PropagationResult`` from ``folder`` (or, without one and
    without ``require_propagation``, its sparse annotation alone); ``InputError`` when it is
    missing or its shape is not the image's."""
    from .propagation import PropagationResult
    from .pseudo_labels import case_annotation, load_case_result

    source = cohort.path or cohort.name
    case_folder = folder / "cases" / case.id if folder is not None else None
    if case_folder is not None and (case_folder / "propagation.npz").exists():
        result = load_case_result(case_folder)
    elif require_propagation:
        raise InputError(
            case_folder if case_folder is not None else source,
            f"case {case.id} has no propagation result: run `rada propagate` for this cohort first",
        )
    else:  # the ablation without registration needs the sparse annotation only
        result = PropagationResult(case_annotation(case, volume, classes=cohort.classes), {}, {})
    if tuple(result.annotation.label.shape) != volume.shape:
        raise InputError(
            case_folder if case_folder is not None else source,
            f"case {case.id}: the propagation result has shape {result.annotation.label.shape} but the image "
            f"{volume.shape}; run `rada propagate` again",
        )
    return result


# ----------------------------------------------------------------------------- training spacing


def labeled_window_needs_mm(
    cohort: Cohort,
    propagation_dir: str | os.PathLike[str] | None,
    require_propagation: bool = True,
) -> list[tuple[float, float, float]]:
    """Per labeled case, what a training window should hold in mm per axis
    (:func:`~RADALib.patch_size.window_need_mm`): the bounding box of its annotated slices'
    labeled voxels (the three planes bound the structure on every axis), times the context,
    no more than its volume. A case with no labeled voxel is left out."""
    from .patch_size import structure_extent, window_need_mm
    from .volume import read_volume

    folder = Path(propagation_dir) if propagation_dir is not None else None
    needs = []
    for case in cohort.labeled:
        volume = read_volume(case.image, "image")
        result = _propagation_result(cohort, case, volume, folder, require_propagation)
        extent = structure_extent([result.annotation.label])
        if extent is None:
            continue
        structure_mm = [e * s for e, s in zip(extent, volume.spacing)]
        volume_mm = [n * s for n, s in zip(volume.shape, volume.spacing)]
        needs.append(window_need_mm(structure_mm, volume_mm))
    return needs


def training_spacings(cohort: Cohort) -> list[tuple[float, float, float]]:
    """The voxel size (x, y, z) of each training volume, labeled then unlabeled (validation
    cases left out), read from the files' headers."""
    from .volume import read_spacing

    return [read_spacing(case.image) for case in cohort.labeled + cohort.unlabeled]


def _case_arrays(case: TrainingCase) -> dict[str, np.ndarray]:
    """The arrays that make up ``case`` (what the cache stores)."""
    arrays = {"image": case.image}
    if case.labeled:
        for v in range(N_VIEWS):
            arrays[f"label_{v}"] = case.labels[v]  # type: ignore[index]
            arrays[f"distance_{v}"] = case.distances[v]  # type: ignore[index]
        arrays["annotated"], arrays["sparse"] = case.annotated, case.sparse  # type: ignore[assignment]
    return arrays


def _case_from_arrays(case_id: str, arrays: dict[str, np.ndarray]) -> TrainingCase:
    if "label_0" not in arrays:
        return TrainingCase(case_id, arrays["image"])
    return TrainingCase(
        case_id,
        arrays["image"],
        tuple(arrays[f"label_{v}"] for v in range(N_VIEWS)),  # type: ignore[arg-type]
        tuple(arrays[f"distance_{v}"] for v in range(N_VIEWS)),  # type: ignore[arg-type]
        arrays["annotated"],
        arrays["sparse"],
    )


def to_training_spacing(
    case: TrainingCase,
    spacing: Sequence[float],
    target: Sequence[float],
    cache: ArrayCache | None = None,
) -> TrainingCase:
    """``case`` (on a grid of ``spacing``) resampled to the training spacing ``target``
    (:func:`~RADALib.resampling.resample_case`); the case itself when the spacings agree.
    ``cache`` keeps the result under a key of the case's content, both spacings and
    :data:`~RADALib.resampling.RESAMPLING_VERSION`."""
    from .cache import content_key
    from .resampling import RESAMPLING_VERSION, resample_case, same_spacing

    if same_spacing(spacing, target):
        return case
    if cache is None:
        return resample_case(case, spacing, target)
    arrays = _case_arrays(case)
    key = content_key(
        "training-case",
        RESAMPLING_VERSION,
        [float(s) for s in spacing],
        [float(s) for s in target],
        *(arrays[name] for name in sorted(arrays)),
    )
    hit = cache.get(key)
    if hit is not None:
        return _case_from_arrays(case.id, hit[0])
    resampled = resample_case(case, spacing, target)
    cache.put(key, _case_arrays(resampled), {"case": case.id, "spacing": list(target)})
    return resampled


# ----------------------------------------------------------------------------- crop and augment

Window = tuple[tuple[slice, slice, slice], tuple[slice, slice, slice]]


def crop_window(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator) -> Window:
    """A uniform random window: ``(source slices in the volume, destination slices in the patch)``.

    Along an axis where the volume is smaller than the patch, the whole extent is taken and
    centred in the patch (the rest is padding). One draw per axis where the volume is larger.
    """
    src, dst = [], []
    for n, p in zip(shape, patch):
        n, p = int(n), int(p)
        if n >= p:
            start = int(rng.integers(0, n - p + 1))
            src.append(slice(start, start + p))
            dst.append(slice(0, p))
        else:
            offset = (p - n) // 2
            src.append(slice(0, n))
            dst.append(slice(offset, offset + n))
    return tuple(src), tuple(dst)  # type: ignore[return-value]


def extract(
    array: np.ndarray, window: Window, patch: Sequence[int], fill: float = 0, dtype=None
) -> np.ndarray:
    """The window of ``array`` as a ``patch``-shaped array, ``fill`` where it is padding."""
    src, dst = window
    out = np.full(tuple(int(p) for p in patch), fill, dtype=dtype or array.dtype)
    out[dst] = array[src]
    return out


def draw_augmentation(rng: np.random.Generator, patch: Sequence[int]) -> tuple[int, bool]:
    """``(k, flip)``: rot90 by k quarter turns in (x, y), then a flip of axis 0 if ``flip``."""
    square = int(patch[0]) == int(patch[1])
    k = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
    flip = bool(rng.integers(0, 2))
    return k, flip


def augment(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Apply :func:`draw_augmentation`'s transform to one (x, y, z) array (a contiguous copy)."""
    out = np.rot90(array, k, axes=(0, 1)) if k % 4 else array
    if flip:
        out = out[::-1]
    return np.ascontiguousarray(out)


def _inverse_view(out: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """A view ``c`` of ``out`` such that writing a crop into ``c`` leaves ``augment(crop)`` in ``out``.

    The sampler writes every crop through this view straight into its batch slot: one strided
    copy per array instead of crop, transform and stack.
    """
    view = out[::-1] if flip else out
    return np.rot90(view, -k, axes=(0, 1)) if k % 4 else view


def _padded(window: Window, patch: Sequence[int]) -> bool:
    return any(d.stop - d.start != p for d, p in zip(window[1], patch))


def _write(dest: np.ndarray, array: np.ndarray, window: Window, fill: float, padded: bool) -> None:
    """``dest`` (patch-shaped) = the window of ``array``, ``fill`` on the padding."""
    src, dst = window
    if padded:
        dest.fill(fill)
    dest[dst] = array[src]


def _scratch(slot: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Where a crop of ``size`` is written: the batch slot itself, or a scratch array to resize."""
    return slot if tuple(slot.shape) == tuple(size) else np.empty(tuple(size), slot.dtype)


def _resize_into(slot: np.ndarray, written: np.ndarray, linear: bool) -> None:
    """Put a crop written by :func:`_scratch` into its slot (resized when it was zoomed)."""
    if written is not slot:
        slot[...] = resize_patch(written, slot.shape, linear)


def _write_weights(
    dest: np.ndarray, case: TrainingCase, axis: int, alpha: float, window: Window, padded: bool
) -> None:
    """Eq. (6) on the crop into ``dest``: α^d broadcast along ``axis``, 1 on annotated voxels, 0 on padding."""
    src, dst = window
    if padded:
        dest.fill(0.0)
    with np.errstate(over="ignore", under="ignore"):
        decay = np.power(np.float32(alpha), case.distances[axis][src[axis]]).astype(np.float32)  # type: ignore[index]
    shape = [1, 1, 1]
    shape[axis] = -1
    region = dest[dst]
    region[...] = decay.reshape(shape)
    if case.annotated_slabs is None:
        region[case.annotated[src]] = 1.0  # type: ignore[index]
        return
    for a, indices in enumerate(case.annotated_slabs):
        for index in indices:
            if src[a].start <= index < src[a].stop:
                key: list = [slice(None)] * 3
                key[a] = int(index) - src[a].start
                region[tuple(key)] = 1.0


# ----------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One iteration's data (torch tensors, CPU unless moved with :meth:`to`).

    ``x_l`` (L, 1, X, Y, Z) float32; ``y_l[view]`` (L, X, Y, Z) uint8 on the host, int64 after
    :meth:`to`; ``w_l[view]`` (L, X, Y, Z) float32; ``x_u`` (U, 1, X, Y, Z) or ``None`` when the
    cohort has no unlabeled case. ``labeled_index``/``labeled_ids`` name the labeled cases (their
    region embeddings make the batch's visual prompt). ``sampler_state`` is the generator state
    right after this batch was drawn (what a checkpoint after this iteration stores).
    """

    x_l: torch.Tensor
    y_l: dict[str, torch.Tensor]
    w_l: dict[str, torch.Tensor]
    x_u: torch.Tensor | None
    labeled_index: list[int]
    labeled_ids: list[str]
    unlabeled_ids: list[str]
    iteration: int = 0
    alpha: float = 0.0
    sampler_state: dict | None = None

    def to(
        self, device: torch.device | str, non_blocking: bool = False, channels_last: bool = False
    ) -> Batch:
        """A copy on ``device`` with int64 labels (and channels-last 5D images if asked)."""
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format

        def image(t: torch.Tensor | None) -> torch.Tensor | None:
            return (
                None
                if t is None
                else t.to(device, non_blocking=non_blocking).contiguous(memory_format=fmt)
            )

        return replace(
            self,
            x_l=image(self.x_l),
            x_u=image(self.x_u),
            y_l={v: t.to(device, non_blocking=non_blocking).long() for v, t in self.y_l.items()},
            w_l={v: t.to(device, non_blocking=non_blocking) for v, t in self.w_l.items()},
        )

    def pin_memory(self) -> Batch:
        """A copy in page-locked host memory (for asynchronous copies to a GPU)."""
        return replace(
            self,
            x_l=self.x_l.pin_memory(),
            x_u=None if self.x_u is None else self.x_u.pin_memory(),
            y_l={v: t.pin_memory() for v, t in self.y_l.items()},
            w_l={v: t.pin_memory() for v, t in self.w_l.items()},
        )


class TwoStreamSampler:
    """Draws two-stream batches (labeled + unlabeled patches) from a seeded generator.

    ``seed`` may be an int or a sequence of ints (e.g. ``(seed, rank)`` so that every
    distributed rank draws different batches). :meth:`state`/:meth:`set_state` save and restore
    the generator exactly.
    """

    def __init__(
        self,
        labeled: Sequence[TrainingCase],
        unlabeled: Sequence[TrainingCase],
        patch: Sequence[int] = (112, 112, 80),
        labeled_batch: int = 2,
        unlabeled_batch: int = 2,
        seed: int | Sequence[int] = 1337,
        use_registration: bool = True,
        augment: bool = True,
        intensity: IntensityAugmentation | None = None,
        scale: ScaleAugmentation | None = None,
    ) -> None:
        if not labeled:
            raise ValueError("TwoStreamSampler needs at least one labeled case")
        if any(not c.labeled for c in labeled) or any(c.labeled for c in unlabeled):
            raise ValueError(
                "TwoStreamSampler: labeled cases must carry labels and unlabeled ones must not"
            )
        if labeled_batch < 1 or unlabeled_batch < 0:
            raise ValueError("labeled_batch must be >= 1 and unlabeled_batch >= 0")
        self.labeled = list(labeled)
        self.unlabeled = list(unlabeled)
        self.patch = tuple(int(p) for p in patch)
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be 3 positive sizes, got {patch!r}")
        self.labeled_batch = int(labeled_batch)
        self.unlabeled_batch = int(unlabeled_batch) if self.unlabeled else 0
        self.use_registration = bool(use_registration)
        self.augment = bool(augment)
        self.intensity = intensity or IntensityAugmentation()
        self.scale = scale or ScaleAugmentation()
        self.rng = np.random.default_rng(
            np.random.SeedSequence(list(seed) if isinstance(seed, (list, tuple)) else int(seed))
        )

    # -- state
    def state(self) -> dict:
        """The generator's state (a plain dict of ints and strings)."""
        return copy.deepcopy(self.rng.bit_generator.state)

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = copy.deepcopy(state)

    # -- drawing
    def _choose(self, n: int, k: int) -> list[int]:
        if k == 0:
            return []
        return [int(i) for i in self.rng.choice(n, size=k, replace=n < k)]

    def _transform(self) -> tuple[int, bool]:
        return draw_augmentation(self.rng, self.patch) if self.augment else (0, False)

    def _window_size(self) -> tuple[int, ...]:
        """The window the next patch is cut from: ``patch``, or a zoomed one when drawn."""
        scale = self.scale.draw(self.rng)
        return self.patch if scale is None else source_window(self.patch, scale)

    def _recontrast(self, patch: np.ndarray) -> None:
        """The intensity augmentation of one image patch (in place), when drawn."""
        drawn = self.intensity.draw(self.rng)
        if drawn is not None:
            apply_contrast_shift(patch, *drawn)

    def sample(self, alpha: float, iteration: int = 0) -> Batch:
        """The next batch; weights use the decay rate ``alpha`` (α(t) of the iteration)."""
        li = self._choose(len(self.labeled), self.labeled_batch)
        ui = self._choose(len(self.unlabeled), self.unlabeled_batch)
        patch = self.patch
        x_l = np.empty((len(li), 1, *patch), np.float32)
        y_l = [np.empty((len(li), *patch), np.uint8) for _ in range(N_VIEWS)]
        w_l = [np.empty((len(li), *patch), np.float32) for _ in range(N_VIEWS)]
        for n, i in enumerate(li):
            case = self.labeled[i]
            size = self._window_size()
            window = crop_window(case.shape, size, self.rng)
            k, flip = self._transform()
            padded = _padded(window, size)
            image = _scratch(x_l[n, 0], size)
            _write(_inverse_view(image, k, flip), case.image, window, case.pad_value, padded)
            _resize_into(x_l[n, 0], image, linear=True)
            self._recontrast(x_l[n, 0])
            if self.use_registration:
                for v in range(N_VIEWS):
                    label, weight = _scratch(y_l[v][n], size), _scratch(w_l[v][n], size)
                    _write(_inverse_view(label, k, flip), case.labels[v], window, 0, padded)  # type: ignore[index]
                    _write_weights(_inverse_view(weight, k, flip), case, v, alpha, window, padded)
                    _resize_into(y_l[v][n], label, linear=False)
                    _resize_into(w_l[v][n], weight, linear=False)
            else:  # ablation: only the truly annotated voxels supervise, for every view
                label, weight = _scratch(y_l[0][n], size), _scratch(w_l[0][n], size)
                _write(_inverse_view(label, k, flip), case.sparse, window, 0, padded)  # type: ignore[arg-type]
                _write(_inverse_view(weight, k, flip), case.annotated, window, 0, padded)  # type: ignore[arg-type]
                _resize_into(y_l[0][n], label, linear=False)
                _resize_into(w_l[0][n], weight, linear=False)
                for v in range(1, N_VIEWS):
                    y_l[v][n], w_l[v][n] = y_l[0][n], w_l[0][n]
        x_u = np.empty((len(ui), 1, *patch), np.float32)
        for n, i in enumerate(ui):
            case = self.unlabeled[i]
            size = self._window_size()
            window = crop_window(case.shape, size, self.rng)
            k, flip = self._transform()
            image = _scratch(x_u[n, 0], size)
            _write(
                _inverse_view(image, k, flip),
                case.image,
                window,
                case.pad_value,
                _padded(window, size),
            )
            _resize_into(x_u[n, 0], image, linear=True)
            self._recontrast(x_u[n, 0])
        return Batch(
            x_l=torch.from_numpy(x_l),
            y_l={VIEWS[v]: torch.from_numpy(y_l[v]) for v in range(N_VIEWS)},
            w_l={VIEWS[v]: torch.from_numpy(w_l[v]) for v in range(N_VIEWS)},
            x_u=torch.from_numpy(x_u) if ui else None,
            labeled_index=li,
            labeled_ids=[self.labeled[i].id for i in li],
            unlabeled_ids=[self.unlabeled[i].id for i in ui],
            iteration=int(iteration),
            alpha=float(alpha),
            sampler_state=self.state(),
        )


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class BatchPrefetcher:
    """Yields the batches of iterations ``start .. stop-1`` in order, prepared ahead.

    One background thread draws every batch from the sampler, in iteration order, so the batches
    are exactly those of synchronous sampling (``depth=0`` draws them in the caller's thread).
    ``alpha_fn(t)`` gives the decay rate of iteration t. With ``pin_memory`` the batches are put
    in page-locked memory for asynchronous GPU copies. Use as a context manager (or call
    :meth:`close`) so the thread stops with the training loop.
    """

    def __init__(
        self,
        sampler: TwoStreamSampler,
        alpha_fn: Callable[[int], float],
        start: int,
        stop: int,
        depth: int = 2,
        pin_memory: bool = False,
    ) -> None:
        self.sampler = sampler
        self.alpha_fn = alpha_fn
        self.start, self.stop = int(start), int(stop)
        self.depth = int(depth)
        self.pin_memory = bool(pin_memory)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _make(self, t: int) -> Batch:
        batch = self.sampler.sample(self.alpha_fn(t), t)
        return batch.pin_memory() if self.pin_memory else batch

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for t in range(self.start, self.stop):
                if self._stop.is_set() or not self._put(self._make(t)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_END)

    def __iter__(self) -> Iterator[Batch]:
        if self.depth <= 0:
            for t in range(self.start, self.stop):
                yield self._make(t)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="rada-batches", daemon=True)
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item

    def close(self) -> None:
        """Stop the thread (batches not consumed are dropped)."""
        self._stop.set()
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()
            self._thread = None

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
