"""Post-processing of a label map: keep the largest connected component of each structure.

A single organ such as the left atrium is one connected region. A model that has learnt its
intensity better than its shape also marks look-alikes elsewhere in the volume (other bright
chambers and vessels in LA MRI; the distractor blobs of the synthetic cohort), as islands apart
from the organ. Keeping each class's largest component removes them; voxels removed become
background. It is the same rule as nnU-Net's "remove all but the largest component" and MONAI's
``KeepLargestConnectedComponent``; it is wrong for structures with several parts (both kidneys
as one class, lesions), so it is an inference option, off unless asked for.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["keep_largest_component"]


def keep_largest_component(label: np.ndarray, classes: Iterable[int] | None = None, connectivity: int = 1) -> np.ndarray:
    """``label`` with only the largest connected component of each class in ``classes``.

    ``classes`` defaults to every non-zero value present. ``connectivity`` is scipy's: 1 joins
    voxels sharing a face (6-neighbourhood, the default, as scipy's and nnU-Net's), 2 also an
    edge (18), 3 also a corner (26, MONAI's default). A look-alike that touches the organ only at
    an edge or a corner stays apart with 1: on the demo cohort's predictions 1 was as good as or
    better than 3 on every volume (unlabeled mean 0.855 against 0.789; README). Of components of
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
