"""Where each view's propagation may go: the structure's extent that the other planes show.

A chain of registrations cannot shrink a label to nothing, so left alone it carries a blob to
the edge of the volume. The sparse annotation already says where the structure ends along each
view's axis: the other planes' annotated slices cross that axis, and their labels span the
structure's extent there (docs/method.md, Propagation).

The bound of the view along axis a is the range along a of the annotated foreground (the other
planes' slices, and the view's own source slices), grown by a margin in slices and clipped to
the volume; a view that no other plane's label crosses has no bound. The view's chains stop at
the bound (no registration beyond) and its pseudo-label is background outside it.

One bound holds for all classes of a view: the whole structure's extent, not each class's own.
Per-class bounds cut true foreground of a class that the other planes' slices barely cross (on
the Hippocampus cohort, its posterior part; figures in ``Testing/Benchmarks/RESULTS.md``).

What the bound cannot see: a part of the structure that no other annotated slice crosses, such
as a thin tail along the axis beside the other planes' slices, is cut beyond the margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .annotation import SparseAnnotation

Span = tuple[int, int]
"""An inclusive range of slice indices [low, high]."""


@dataclass(frozen=True)
class ViewBound:
    """The slices along one view's axis that its pseudo-label may occupy (``span`` None: all)."""

    axis: int
    size: int
    span: Span | None

    def cut_slices(self) -> int:
        """Slices of the view outside :attr:`span`: where its chains do not go."""
        return 0 if self.span is None else self.size - (self.span[1] - self.span[0] + 1)

    def clamp(self, limit: int, direction: int) -> int:
        """A chain's last slice ``limit`` (going ``direction``) kept inside :attr:`span`."""
        if self.span is None:
            return limit
        return min(limit, self.span[1]) if direction > 0 else max(limit, self.span[0])

    def apply(self, labels: np.ndarray) -> None:
        """Set ``labels`` (view axis first) to background outside :attr:`span`, in place."""
        if self.span is not None:
            labels[: self.span[0]] = 0
            labels[self.span[1] + 1 :] = 0

    def record(self) -> dict:
        """What the case record says: the bound [low, high] (null: none) and the slices cut."""
        return {
            "bound": None if self.span is None else list(self.span),
            "cut_slices": self.cut_slices(),
        }


def foreground_positions(annotation: SparseAnnotation, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions along ``axis`` of the annotated foreground: on the other planes' slices,
    and on the slices of plane ``axis`` itself (the view's sources)."""
    other: list[np.ndarray] = [np.zeros(0, np.int64)]
    own: list[np.ndarray] = [np.zeros(0, np.int64)]
    for plane, indices in annotation.slices.items():
        along = axis if axis < plane else axis - 1  # the view's axis in the 2D section
        for index in indices:
            section = np.take(annotation.label, index, axis=plane)
            if not section.any():
                continue
            if plane == axis:
                own.append(np.array([index]))
            else:
                other.append(np.nonzero(section)[along])
    return np.concatenate(other), np.concatenate(own)


def view_bound(annotation: SparseAnnotation, axis: int, margin: int) -> ViewBound:
    """The bound of the view along ``axis``: the extent along the axis of the annotated
    foreground grown by ``margin`` slices, when another plane's label crosses the axis."""
    size = annotation.label.shape[axis]
    other, own = foreground_positions(annotation, axis)
    if other.size == 0:
        return ViewBound(axis, size, None)  # no other plane shows the structure: no bound
    known = np.concatenate([other, own])
    return ViewBound(
        axis, size, (max(0, int(known.min()) - margin), min(size - 1, int(known.max()) + margin))
    )


def view_bounds(annotation: SparseAnnotation, margin: int | None) -> dict[int, ViewBound]:
    """The bound of every annotated view (empty when ``margin`` is None: the bound is off)."""
    if margin is None:
        return {}
    if margin < 0:
        raise ValueError(f"the bound's margin must be >= 0, got {margin}")
    return {axis: view_bound(annotation, axis, margin) for axis in sorted(annotation.slices)}
