"""Slicer segmentation files (``.seg.nrrd``) read as label maps.

Slicer stores a segmentation as an NRRD whose header describes each segment with
``Segment<i>_ID``, ``Segment<i>_Name``, ``Segment<i>_LabelValue`` (its voxel value),
``Segment<i>_Layer`` (which labelmap holds it) and ``Segment<i>_Extent``. When no segments
overlap there is one layer: a 3D label map whose values are the segments' label values. That is
the case read here; a file with several layers (overlapping segments, a 4D NRRD) is refused.
The file's origin already accounts for Slicer's ``ReferenceImageExtentOffset``, so the geometry
is the NRRD's own.

Label values become class numbers: when class names are known (a cohort's, a model's), each
segment takes the number of the class with its name (case-insensitive); when no segment name is
a class name (Slicer's default ``Segment_1``...), the label values are kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT_LABEL_VALUE = 1
"""A segment without ``LabelValue`` (files older than Slicer 4.11) is stored as ones."""


@dataclass(frozen=True)
class Segment:
    """One segment of a segmentation file: its name, voxel value and layer."""

    index: int
    name: str
    label_value: int
    layer: int


def read_segments(path: str | os.PathLike[str]) -> list[Segment]:
    """The segments a NRRD header declares (empty for a plain NRRD); refuses several layers.

    Only the header is read. Raises :class:`InputError` naming the file for a multi-layer
    segmentation or a header value that is not a number.
    """
    import SimpleITK as sitk

    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return []  # the volume reader says what is wrong with the file
    header = {k: reader.GetMetaData(k).strip() for k in reader.GetMetaDataKeys()}
    segments = []
    index = 0
    while f"Segment{index}_ID" in header or f"Segment{index}_Name" in header:
        fields = {
            k[len(f"Segment{index}_") :]: v
            for k, v in header.items()
            if k.startswith(f"Segment{index}_")
        }
        name = fields.get("Name") or fields.get("ID") or f"Segment_{index + 1}"
        label_value = _integer(
            path, index, "LabelValue", fields.get("LabelValue"), DEFAULT_LABEL_VALUE
        )
        layer = _integer(path, index, "Layer", fields.get("Layer"), index)  # legacy: one each
        segments.append(Segment(index, name, label_value, layer))
        index += 1
    layers = sorted({s.layer for s in segments})
    channels = reader.GetNumberOfComponents() * (
        reader.GetSize()[3] if reader.GetDimension() == 4 else 1
    )
    if len(layers) > 1 or (segments and channels > 1):
        raise InputError(
            path,
            f"a segmentation with {max(len(layers), channels)} layers (overlapping segments) is "
            "not supported; in Slicer, make the segments not overlap (one layer) or export them "
            "as a labelmap volume",
        )
    return segments


def _integer(path: Path, index: int, name: str, text: str | None, default: int) -> int:
    """A whole-number header value of segment ``index``; ``default`` when absent."""
    if text is None or text == "":
        return default
    try:
        return int(float(text))
    except ValueError:
        raise InputError(
            path, f"header Segment{index}_{name} is {text!r}, expected a whole number"
        ) from None


def class_numbers(
    path: str | os.PathLike[str], segments: list[Segment], classes: Mapping[int, str] | None
) -> dict[int, int]:
    """Label value -> class number for ``segments``, by name when ``classes`` names them.

    Without ``classes``, or when no segment name is a class name, each label value stands for
    itself. When some segment names are class names and others are not, the file cannot be
    read unambiguously: an :class:`InputError` names the segments that match no class.
    """
    identity = {s.label_value: s.label_value for s in segments}
    if not classes:
        return identity
    by_name = {str(name).strip().lower(): int(number) for number, name in classes.items()}
    matched = {s.label_value: by_name.get(s.name.strip().lower()) for s in segments}
    if not any(number is not None for number in matched.values()):
        return identity
    unmatched = [s.name for s in segments if matched[s.label_value] is None]
    if unmatched:
        known = ", ".join(str(n) for n in classes.values())
        raise InputError(
            path,
            f"segment(s) {', '.join(repr(n) for n in unmatched)} match no class name ({known}); "
            "rename them in Slicer's Segment Editor",
        )
    return {value: int(number) for value, number in matched.items()}  # type: ignore[arg-type]


def remap_labels(array: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """``array`` with each label value replaced by its class number; undeclared values -> 0.

    Voxels whose value no segment declares belong to no segment (as Slicer shows them).
    """
    top = max([int(array.max()) if array.size else 0, *mapping.keys(), 0])
    table = np.zeros(top + 1, dtype=np.int64)
    for value, number in mapping.items():
        if value > 0:
            table[value] = number
    out = table[array.astype(np.int64, copy=False)]
    biggest = int(out.max()) if out.size else 0
    return out.astype(np.uint8 if biggest <= 255 else np.uint16)
