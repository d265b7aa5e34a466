"""Sparse orthogonal annotations: a few whole slices labeled per plane.

A :class:`SparseAnnotation` holds a label map that is non-zero only on annotated slices, and
the slice indices of each plane (axis 0 sagittal, 1 coronal, 2 axial). Every voxel of an
annotated slice is known, background included: those voxels get weight 1 (eq. 6).

Two ways to get one:
- :func:`simulate_sparse_annotation` from a dense label (benchmarks, simulations): per plane,
  the slice that carries the most structures (classes), then the most not yet covered by the
  planes chosen before, then the largest foreground (the paper "prioritizes large foreground"),
  or given indices. Dense truth is used here and nowhere after.
- :func:`detect_sparse_annotation` from a user's sparse label map: the annotated planes are
  found, not assumed, as the fewest whole slices that hold every labeled voxel (a greedy
  cover: a painted slice holds a 2D region, while its crossing with another plane is a line).

With several structures, :func:`missing_structures` says which structure is absent from which
plane's slices (allowed: that view's propagation then carries only the others), and
:func:`check_structures` refuses, in one line naming the file and the structure, a structure
that no annotated slice carries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

PLANES: tuple[str, str, str] = ("sagittal", "coronal", "axial")
"""Plane names by array axis."""


class SpreadSlicesError(InputError):
    """Labels painted on neighbouring slices of one plane (``axis``, slices ``first``..``last``)."""

    def __init__(self, source: str, problem: str, axis: int, first: int, last: int) -> None:
        super().__init__(source, problem)
        self.axis, self.first, self.last = axis, first, last


@dataclass(frozen=True)
class SparseAnnotation:
    """A sparse label map and the annotated slice indices of each plane (axis -> indices)."""

    label: np.ndarray
    slices: Mapping[int, tuple[int, ...]]

    def annotated_mask(self) -> np.ndarray:
        """True on every voxel of every annotated slice, whatever its class."""
        mask = np.zeros(self.label.shape, dtype=bool)
        for axis, indices in self.slices.items():
            for index in indices:
                mask[_slab(axis, index)] = True
        return mask

    def planes(self) -> dict[str, tuple[int, ...]]:
        """Annotated slice indices keyed by plane name."""
        return {PLANES[axis]: tuple(indices) for axis, indices in sorted(self.slices.items())}

    def source_slice(self, axis: int) -> int:
        """The annotated slice a view's propagation starts from (the first one of that plane)."""
        indices = self.slices.get(axis, ())
        if not indices:
            raise ValueError(f"no annotated {PLANES[axis]} slice")
        return int(indices[0])


def _slab(axis: int, index: int) -> tuple[slice | int, ...]:
    key: list[slice | int] = [slice(None)] * 3
    key[axis] = index
    return tuple(key)


def foreground_area(label: np.ndarray, axis: int) -> np.ndarray:
    """Number of foreground (non-zero) voxels on each slice along ``axis``."""
    other = tuple(a for a in range(3) if a != axis)
    return np.count_nonzero(label, axis=other)


def _classes_per_slice(label: np.ndarray, axis: int) -> dict[int, np.ndarray]:
    """Per non-zero class, whether each slice along ``axis`` holds it (class -> bool per slice)."""
    other = tuple(a for a in range(3) if a != axis)
    return {
        int(value): np.any(label == value, axis=other) for value in np.unique(label) if value != 0
    }


def simulate_sparse_annotation(
    dense: np.ndarray,
    slices: Mapping[int, Sequence[int]] | None = None,
    source: str = "<label>",
) -> SparseAnnotation:
    """Keep one slice per plane of a dense label, chosen to carry every structure where possible.

    Per plane (sagittal, coronal, axial, in that order) the slice with the most classes on it,
    then the most classes that the planes chosen before do not carry yet, then the largest
    foreground; with one structure this is the largest-foreground slice. So each view's
    propagation starts from every structure its plane can show, and a structure that no slice
    of one plane shows together with the others is still carried by another plane's slice.
    ``slices`` maps axis -> indices and overrides the choice for the axes it names.
    """
    dense = np.asarray(dense)
    if dense.ndim != 3:
        raise InputError(source, f"expected a 3D label map, got shape {dense.shape}")
    if not np.any(dense):
        raise InputError(source, "the label map is empty: nothing to annotate")
    chosen: dict[int, tuple[int, ...]] = {}
    covered: set[int] = set()
    for axis in range(3):
        present = _classes_per_slice(dense, axis)
        if slices is not None and axis in slices:
            indices = tuple(int(i) for i in slices[axis])
            for index in indices:
                if not 0 <= index < dense.shape[axis]:
                    raise InputError(
                        source,
                        f"{PLANES[axis]} slice {index} is outside 0..{dense.shape[axis] - 1}",
                    )
        else:
            area = foreground_area(dense, axis)
            count = np.zeros(area.size, np.int64)
            new = np.zeros(area.size, np.int64)
            for value, held in present.items():
                count += held
                new += held if value not in covered else 0
            # lexsort: the last key is the primary one; the first slice wins a tie
            order = np.lexsort((np.arange(area.size), -area, -new, -count))
            indices = (int(order[0]),)
        covered.update(c for c, held in present.items() if any(held[i] for i in indices))
        chosen[axis] = indices
    sparse = np.zeros_like(dense)
    annotation = SparseAnnotation(sparse, chosen)
    mask = annotation.annotated_mask()
    sparse[mask] = dense[mask]
    return annotation


def annotated_slice_cover(label: np.ndarray) -> dict[int, list[int]]:
    """The fewest whole slices that hold every labeled voxel: axis -> sorted slice indices.

    A greedy cover: the slice (of any axis) holding the most not-yet-covered labeled voxels is
    taken first, until every labeled voxel lies on a chosen slice. Never raises for incomplete
    or odd annotations (an empty map gives empty lists); :func:`detect_sparse_annotation`
    judges the result.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {label.shape}")
    remaining = label != 0
    chosen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    while remaining.any():
        best_axis, best_index, best_count = 0, 0, -1
        for axis in range(3):
            counts = foreground_area(remaining, axis)
            index = int(np.argmax(counts))
            if counts[index] > best_count:
                best_axis, best_index, best_count = axis, index, int(counts[index])
        chosen[best_axis].append(best_index)
        remaining[_slab(best_axis, best_index)] = False
    return {axis: sorted(indices) for axis, indices in chosen.items()}


def detect_sparse_annotation(
    label: np.ndarray,
    source: str = "<label>",
    required_planes: Sequence[int] = (0, 1, 2),
    allow_multiple: bool = False,
) -> SparseAnnotation:
    """Find the annotated slices of a user's sparse label map.

    Raises :class:`InputError` naming ``source`` when the map is empty, a required plane has
    no annotated slice, a plane has several slices and ``allow_multiple`` is false, or the
    labels are not confined to whole slices (a 3D brush stroke, or a dense label).
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise InputError(source, f"expected a 3D label map, got shape {label.shape}")
    if not np.any(label):
        raise InputError(
            source,
            "the label map is empty: paint the target on one sagittal, one coronal and one axial slice",
        )

    chosen = annotated_slice_cover(label)
    for axis in range(3):
        indices = chosen[axis]
        adjacent = [i for i in indices if i + 1 in indices or i - 1 in indices]
        if adjacent:
            raise SpreadSlicesError(
                source,
                f"labels are not confined to single slices: {PLANES[axis]} slices {adjacent[0]}-{adjacent[-1]} are "
                "painted side by side (a 3D brush or a dense label?); paint one whole slice per plane with a 2D brush",
                axis,
                adjacent[0],
                adjacent[-1],
            )
    for axis in required_planes:
        if not chosen[axis]:
            found = ", ".join(
                f"{PLANES[a]} {','.join(map(str, sorted(chosen[a])))}"
                for a in range(3)
                if chosen[a]
            )
            raise InputError(
                source,
                f"no annotated {PLANES[axis]} slice (found {found}); "
                f"paint the target on one {PLANES[axis]} slice as well",
            )
    if not allow_multiple:
        for axis in range(3):
            if len(chosen[axis]) > 1:
                indices = ", ".join(map(str, sorted(chosen[axis])))
                raise InputError(
                    source,
                    f"{len(chosen[axis])} annotated {PLANES[axis]} slices ({indices}); one per plane is expected "
                    "(allow several with allow_multiple=True / --allow-multiple-slices)",
                )
    slices = {axis: tuple(sorted(indices)) for axis, indices in chosen.items() if indices}
    return SparseAnnotation(label.copy(), slices)


def slice_structures(annotation: SparseAnnotation) -> dict[int, set[int]]:
    """Per annotated plane (axis), the classes its annotated slices carry."""
    return {
        axis: {
            int(v)
            for index in indices
            for v in np.unique(annotation.label[_slab(axis, index)])
            if v != 0
        }
        for axis, indices in annotation.slices.items()
    }


def missing_structures(
    annotation: SparseAnnotation, classes: Iterable[int] | None = None
) -> dict[str, list[int]]:
    """Per annotated plane, the classes missing from its slices (planes missing none are left out).

    ``classes`` defaults to every class the annotation carries on any slice. A structure missing
    from one plane is allowed: that view propagates the others, and the structure is learned from
    the views whose slices carry it.
    """
    carried = slice_structures(annotation)
    wanted = (
        sorted({c for values in carried.values() for c in values})
        if classes is None
        else sorted(int(c) for c in classes if int(c) != 0)
    )
    return {
        PLANES[axis]: missing
        for axis, values in sorted(carried.items())
        if (missing := [c for c in wanted if c not in values])
    }


def check_structures(
    annotation: SparseAnnotation,
    classes: Mapping[int, str],
    source: str = "<label>",
) -> dict[str, list[int]]:
    """Raise :class:`InputError` naming ``source`` and the structure when a class of ``classes``
    (number -> name) is on no annotated slice; else return :func:`missing_structures`."""
    carried = set().union(*slice_structures(annotation).values())
    for value, name in sorted(classes.items()):
        if int(value) != 0 and int(value) not in carried:
            raise InputError(
                source,
                f"structure {int(value)} ({name}) is on none of the annotated slices; paint it on "
                "at least one of the sagittal, coronal and axial slices",
            )
    return missing_structures(annotation, [c for c in classes if int(c) != 0])
