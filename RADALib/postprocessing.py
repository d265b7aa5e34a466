"""Post-processing of a label map: keep the largest connected component of each structure.

A single organ such as the left atrium is one connected region. A model that has learnt its
intensity better than its shape also marks look-alikes elsewhere in the volume (other bright
chambers and vessels in LA MRI; the distractor blobs of the synthetic cohort), as islands apart
from the organ. Keeping each class's largest component removes them; voxels removed become
background. It is the same rule as nnU-Net's "remove all but the largest component" and MONAI's
``KeepLargestConnectedComponent``; it is wrong for structures with several parts (both kidneys
as one class, lesions). So the bundle records, per class, whether the structure was one region
in the training cohort's pseudo-labels (:func:`recommend_largest_component`), and ``rada predict``
follows that record unless told otherwise (``--largest-component`` / ``--no-largest-component``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "SINGLE_REGION_FRACTION",
    "keep_largest_component",
    "recommend_largest_component",
]

SINGLE_REGION_FRACTION = 0.95
"""A class counts as one region when its cases' largest components hold at least this share of
all its voxels: fragments a registration leaves here and there do not disqualify an organ (on
the LA2018 pseudo-labels nearly all voxels lie in the largest region, even in the worst case:
``Testing/Benchmarks/RESULTS.md``), a second part of real size (the other kidney: about half)
does."""


def keep_largest_component(
    label: np.ndarray, classes: Iterable[int] | None = None, connectivity: int = 1
) -> np.ndarray:
    """``label`` with only the largest connected component of each class in ``classes``.

    ``classes`` defaults to every non-zero value present. ``connectivity`` is scipy's: 1 joins
    voxels sharing a face (6-neighbourhood, the default, as scipy's and nnU-Net's), 2 also an
    edge (18), 3 also a corner (26, MONAI's default). A look-alike that touches the organ only at
    an edge or a corner stays apart with 1: on the demo cohort's predictions 1 was as good as or
    better than 3 on every volume (figures: ``Testing/Benchmarks/RESULTS.md``). Of components of
    equal size the first in scan order is kept. Returns a new array of ``label``'s dtype;
    ``label`` is untouched.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"keep_largest_component takes a 3D label map, got shape {label.shape}")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    wanted = [int(c) for c in (np.unique(label) if classes is None else classes) if int(c) != 0]
    out = label.copy()
    for value in wanted:
        mask = label == value
        components, count = ndimage.label(mask, structure=structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        out[mask & (components != keep)] = 0
    return out


def _component_sizes(label: np.ndarray, value: int, connectivity: int) -> tuple[int, int]:
    """(voxels of class ``value``, voxels in its largest connected component)."""
    mask = np.asarray(label) == value
    total = int(mask.sum())
    if total == 0:
        return 0, 0
    components, count = ndimage.label(
        mask, structure=ndimage.generate_binary_structure(3, connectivity)
    )
    return total, (total if count <= 1 else int(np.bincount(components.ravel())[1:].max()))


def recommend_largest_component(
    labels: Iterable[np.ndarray],
    classes: Iterable[int],
    min_fraction: float = SINGLE_REGION_FRACTION,
    connectivity: int = 1,
) -> dict[str, Any]:
    """Which classes to keep only the largest component of, judged from the labeled cases.

    ``labels``: the training cohort's pseudo-labels (one label map per labeled case). A class is
    recommended when, over all the maps, at least ``min_fraction`` of its voxels lie in the
    largest component of their map (a pooled share, so one fragmented pseudo-label does not
    decide alone). Returns the bundle's record: ``{"classes": [...], "fractions": {"k": pooled
    share}, "worst_case": {"k": smallest share of one map}, "min_fraction", "connectivity",
    "cases"}``. A class absent from every map, or no map at all, is not recommended.
    """
    wanted = [int(c) for c in classes if int(c) != 0]
    totals = {c: 0 for c in wanted}
    largest = {c: 0 for c in wanted}
    worst: dict[int, float] = {}
    cases = 0
    for label in labels:
        cases += 1
        for value in wanted:
            total, kept = _component_sizes(label, value, connectivity)
            if total:
                totals[value] += total
                largest[value] += kept
                worst[value] = min(kept / total, worst.get(value, 1.0))
    pooled = {c: largest[c] / totals[c] for c in wanted if totals[c]}
    return {
        "classes": [c for c in wanted if pooled.get(c, 0.0) >= min_fraction],
        "fractions": {str(c): round(f, 4) for c, f in pooled.items()},
        "worst_case": {str(c): round(f, 4) for c, f in worst.items()},
        "min_fraction": float(min_fraction),
        "connectivity": int(connectivity),
        "cases": cases,
    }
