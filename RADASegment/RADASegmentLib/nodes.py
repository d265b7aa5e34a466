"""Slicer nodes <-> the engine's files, without any geometry drift.

The engine (RADALib, in its own process) reads and writes ``.nrrd`` files. This module turns a
volume node and the user's segmentation into such files, and a result label map back into a
new segmentation node, so that every exchanged array lies voxel for voxel on the volume's grid:

- :func:`export_volume` writes the volume through Slicer's own storage node (the file's index
  order is the node's IJK order; the header holds its IJK-to-RAS geometry, written as LPS).
- :func:`segment_label_array` / :func:`export_label_map` resample the chosen segments onto the
  volume's grid (whatever geometry they were painted on) and write them with that same header.
- :func:`painted_annotation` gives the painted segments (one per structure, each with its class
  number) as the engine will read them, for the engine's own slice and structure checks.
- :func:`load_label_map_as_segmentation` checks that a result file lies on the volume's grid
  before it imports it, and never resamples (it only undoes the K-axis flip Slicer's reader
  applies to files whose IJK-to-RAS is left-handed).

Orientation: the engine works in canonical (sagittal, coronal, axial) order
(:func:`RADALib.volume.canonical_order`); :func:`plane_axes` says which IJK axis each plane is
for a node, so the panel shows the slices the engine will find. Oblique volumes are refused
with a message (:func:`check_not_oblique`). The user's segmentation nodes are only read.

Arrays are in ``slicer.util.arrayFromVolume`` order: (K, J, I).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from RADALib.annotation import PLANES, SparseAnnotation, annotated_slice_cover
from RADALib.atomic import commit
from RADALib.errors import InputError, RADAError
from RADALib.volume import OBLIQUE_TOLERANCE, atomic_output, canonical_order

LOG = logging.getLogger(__name__)

SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
"""Terminology context of the category/type codes in RADALib.terminology (SNOMED CT, DICOM master list)."""
REGION_CONTEXT = "Anatomic codes - DICOM master list"
"""Terminology context of the anatomic region codes."""
GEOMETRY_TOLERANCE = 1e-4
"""Largest difference (relative to the voxel size) between two grids treated as the same grid."""
FALLBACK_COLOR = (0.5, 0.5, 0.5)


# ----------------------------------------------------------------------------- arrays in the engine's order


def canonical_to_kji(array: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """A canonical (x, y, z) array (RADALib's order: towards L, P, S) as the KJI array of a volume
    node whose IJK-to-RAS ``direction`` columns are signed unit vectors along RAS axes."""
    direction = np.asarray(direction, float)
    world_of_ijk = [int(np.argmax(np.abs(direction[:, c]))) for c in range(3)]
    lps_sign = np.array([-1.0, -1.0, 1.0])
    ijk = np.transpose(array, world_of_ijk)  # IJK axis c runs along canonical axis world_of_ijk[c]
    for c in range(3):
        if direction[world_of_ijk[c], c] * lps_sign[world_of_ijk[c]] < 0:
            ijk = np.flip(ijk, c)
    return np.ascontiguousarray(np.transpose(ijk, (2, 1, 0)))


def volume_node_from_canonical(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    name: str,
    origin: tuple[float, float, float] = (10.0, -20.0, 5.0),
) -> Any:
    """A scalar volume node showing the canonical ``image`` in the IJK layout ``direction`` sets."""
    direction = np.asarray(direction, float)
    world_of_ijk = [int(np.argmax(np.abs(direction[:, c]))) for c in range(3)]
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetSpacing(*[spacing[world_of_ijk[c]] for c in range(3)])
    node.SetOrigin(*origin)
    node.SetIJKToRASDirections([[float(direction[r, c]) for c in range(3)] for r in range(3)])
    slicer.util.updateVolumeFromArray(node, canonical_to_kji(image, direction))
    node.CreateDefaultDisplayNodes()
    return node


# ----------------------------------------------------------------------------- names, geometry


def _name(node: Any) -> str:
    return (node.GetName() if node is not None else None) or "(unnamed)"


def _volume_source(volumeNode: Any) -> str:
    return f"volume '{_name(volumeNode)}'"


def node_name_for(volumeNode: Any, suffix: str, unique: bool = True) -> str:
    """A node name like ``"<volume> RADA"``; with ``unique``, one no node in the scene has yet."""
    base = f"{_name(volumeNode)} {suffix}".strip()
    scene = volumeNode.GetScene() if volumeNode is not None else None
    if unique and scene is not None and scene.GetFirstNodeByName(base) is not None:
        return scene.GenerateUniqueName(base)
    return base


def _ijk_to_ras(volumeNode: Any) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _directions(volumeNode: Any) -> np.ndarray:
    """3x3 unit IJK-to-RAS directions; column ``a`` is IJK axis ``a``'s RAS direction."""
    linear = _ijk_to_ras(volumeNode)[:3, :3]
    norms = np.linalg.norm(linear, axis=0)
    norms[norms == 0] = 1.0
    return linear / norms


def _image_dimensions(volumeNode: Any) -> tuple[int, int, int]:
    """(I, J, K) voxel counts; an InputError when the node holds no image."""
    image = volumeNode.GetImageData() if volumeNode is not None else None
    if image is None:
        raise InputError(
            _volume_source(volumeNode), "holds no image data (load or select a volume first)"
        )
    dims = tuple(int(n) for n in image.GetDimensions())
    if min(dims) < 1:
        raise InputError(_volume_source(volumeNode), f"is empty (dimensions {dims})")
    return dims  # type: ignore[return-value]


def _canonical(volumeNode: Any) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], float]:
    """RADALib's (permutation, flips, obliquity) for the node, computed in LPS like the engine."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ _directions(volumeNode)
    return canonical_order(lps)


def volume_obliquity(volumeNode: Any) -> float:
    """Largest off-axis direction cosine of the IJK axes (0 for an axis-aligned volume)."""
    return float(_canonical(volumeNode)[2])


def check_not_oblique(volumeNode: Any, tolerance: float = OBLIQUE_TOLERANCE) -> None:
    """Raise a one-line :class:`InputError` naming the volume when its grid is oblique."""
    obliquity = volume_obliquity(volumeNode)
    if obliquity > tolerance:
        angle = float(np.degrees(np.arcsin(min(1.0, obliquity))))
        raise InputError(
            _volume_source(volumeNode),
            f"has an oblique direction (axes tilted by up to {angle:.1f} degrees from the patient axes), so its "
            "slices are not sagittal/coronal/axial: resample it to an axis-aligned grid first, e.g. with Crop Volume "
            "('Interpolated cropping' on, with an ROI that is not rotated) or Resample Image (BRAINS) onto an "
            "axis-aligned reference volume",
        )


def plane_axes(volumeNode: Any) -> dict[str, int]:
    """Which IJK axis (0=I, 1=J, 2=K) runs across each plane: ``{"sagittal": a, ...}``.

    The sagittal plane's slices are stacked along the IJK axis closest to the R-L direction,
    coronal along A-P, axial along S-I (as :func:`RADALib.volume.canonical_order` decides).
    """
    permutation = _canonical(volumeNode)[0]
    return {PLANES[c]: int(permutation[c]) for c in range(3)}


def voxel_center_ras(
    volumeNode: Any, ijk: tuple[int, int, int] | np.ndarray
) -> tuple[float, float, float]:
    """World RAS position of voxel ``ijk``'s centre (through the node's parent transform, if any)."""
    point = _ijk_to_ras(volumeNode) @ np.array([float(ijk[0]), float(ijk[1]), float(ijk[2]), 1.0])
    local = [float(v) for v in point[:3]]
    transform_node = volumeNode.GetParentTransformNode()
    if transform_node is None:
        return tuple(local)  # type: ignore[return-value]
    to_world = vtk.vtkGeneralTransform()
    transform_node.GetTransformToWorld(to_world)
    return tuple(float(v) for v in to_world.TransformPoint(local))  # type: ignore[return-value]


def _world_to_ijk(volumeNode: Any, ras: tuple[float, float, float]) -> np.ndarray:
    point = [float(v) for v in ras]
    transform_node = volumeNode.GetParentTransformNode()
    if transform_node is not None:
        from_world = vtk.vtkGeneralTransform()
        transform_node.GetTransformFromWorld(from_world)
        point = list(from_world.TransformPoint(point))
    return (np.linalg.inv(_ijk_to_ras(volumeNode)) @ np.array(point + [1.0]))[:3]


def suggested_slices(volumeNode: Any, roiNode: Any = None) -> dict[str, float]:
    """Slice-view offsets to paint on: ``{"sagittal": R, "coronal": A, "axial": S}`` in mm.

    The centre of the markups ROI when one is given and placed, else the volume's middle voxel;
    either way snapped to the nearest voxel centre inside the volume, so a 2D brush stroke
    there lands on exactly one voxel slice of each plane.
    """
    dims = np.array(_image_dimensions(volumeNode))
    ijk = (dims - 1) // 2
    if roiNode is not None and roiNode.GetNumberOfDefinedControlPoints() > 0:
        center = [0.0, 0.0, 0.0]
        roiNode.GetCenterWorld(center)
        ijk = np.clip(np.round(_world_to_ijk(volumeNode, center)).astype(int), 0, dims - 1)
    r, a, s = voxel_center_ras(volumeNode, ijk)
    return {"sagittal": r, "coronal": a, "axial": s}


# ----------------------------------------------------------------------------- writing files


def _write_with_storage_node(node: Any, path: str | os.PathLike[str], source: str) -> Path:
    """Write ``node`` through a volume archetype storage node: temporary name, then rename."""
    path = Path(path)
    temporary = atomic_output(path)
    temporary.unlink()  # keep the unique name only: the storage node would log that it replaces a file
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(temporary))
    storage.SetUseCompression(1)
    try:
        if not storage.WriteData(node):
            raise RADAError(
                f"{source}: could not be written to {path} (disk full or no permission?)"
            )
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return commit(temporary, path)  # flushed, checked not empty, then renamed


def export_volume(volumeNode: Any, path: str | os.PathLike[str]) -> Path:
    """Write the volume as ``.nrrd`` with its own geometry (IJK order, spacing, origin, directions).

    ``RADALib.volume.read_volume`` then reads the same voxels at the same physical positions.
    The geometry written is the node's own: a parent transform is not applied (the result is
    put under the same transform by :func:`load_label_map_as_segmentation`).
    """
    _image_dimensions(volumeNode)
    components = volumeNode.GetImageData().GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(
            _volume_source(volumeNode),
            f"has {components} values per voxel (colour or vector volume); "
            "choose a scalar (grey-level) volume",
        )
    return _write_with_storage_node(volumeNode, path, _volume_source(volumeNode))


def _label_node_like(volumeNode: Any, array: np.ndarray) -> Any:
    """A labelmap node outside the scene holding ``array`` (K, J, I) on ``volumeNode``'s grid."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetName(f"{_name(volumeNode)} label")
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    image = vtk.vtkImageData()
    image.SetDimensions(int(array.shape[2]), int(array.shape[1]), int(array.shape[0]))
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node.SetAndObserveImageData(image)
    return node


# ----------------------------------------------------------------------------- segments -> array


def _segmentation_source(segmentationNode: Any) -> str:
    return f"segmentation '{_name(segmentationNode)}'"


def _binary_labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _readable_copy(segmentationNode: Any, segment_ids: list[str]) -> Any | None:
    """A hidden temporary copy when a segment lacks a binary labelmap (else None).

    Converting (e.g. from closed surfaces) would add a representation to the user's node; the
    conversion runs on the copy instead, so the user's segmentation is never modified.
    """
    segmentation = segmentationNode.GetSegmentation()
    name = _binary_labelmap_name()
    if all(segmentation.GetSegment(i).GetRepresentation(name) is not None for i in segment_ids):
        return None
    scene = segmentationNode.GetScene()
    copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "__RADA_temporary__")
    copy.SetHideFromEditors(True)
    copy.GetSegmentation().DeepCopy(segmentation)
    copy.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
    if not copy.GetSegmentation().CreateRepresentation(name):
        scene.RemoveNode(copy)
        raise InputError(
            _segmentation_source(segmentationNode),
            "its segments cannot be converted to a binary labelmap (check them in the Segmentations module)",
        )
    return copy


def _same_grid(
    matrix_a: np.ndarray, dims_a: tuple[int, ...], matrix_b: np.ndarray, dims_b: tuple[int, ...]
) -> str | None:
    """None when two (IJK-to-RAS, dimensions) pairs describe the same grid, else what differs."""
    if tuple(dims_a) != tuple(dims_b):
        return f"dimensions {tuple(dims_a)} instead of {tuple(dims_b)}"
    scale = max(1.0, float(np.max(np.abs(matrix_b[:3, :3]))))
    if not np.allclose(matrix_a[:3, :3], matrix_b[:3, :3], atol=GEOMETRY_TOLERANCE * scale):
        return "different spacing or orientation"
    if not np.allclose(matrix_a[:3, 3], matrix_b[:3, 3], atol=GEOMETRY_TOLERANCE * 10 * scale):
        return "different origin"
    return None


def _label_dtype(values: list[int]) -> type:
    return np.uint8 if not values or max(values) <= 255 else np.uint16


def _class_values(mapping: Mapping[Any, Any], source: str) -> list[int]:
    values = []
    for key in mapping:
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise InputError(source, f"class value {key!r} is not a whole number") from None
        if not 1 <= value <= 65535:
            raise InputError(source, f"class value {value} is outside 1..65535")
        values.append(value)
    return values


def segment_label_array(
    segmentationNode: Any,
    segmentIds_by_class: Mapping[int, str],
    referenceVolumeNode: Any,
) -> np.ndarray:
    """The chosen segments as one class-valued array (K, J, I) on the reference volume's grid.

    Segments painted on another geometry (other spacing, extent, orientation, or under another
    transform) are resampled onto the volume's grid (nearest neighbour). Where segments overlap,
    the higher class value wins. uint8, or uint16 past class 255. The segmentation node is only
    read (a segment without a binary labelmap is converted on a temporary copy).
    """
    source = _segmentation_source(segmentationNode)
    dims = _image_dimensions(referenceVolumeNode)
    pairs = sorted(zip(_class_values(segmentIds_by_class, source), segmentIds_by_class.values()))
    dtype = _label_dtype([value for value, _ in pairs])
    if not pairs:
        return np.zeros(tuple(reversed(dims)), dtype=dtype)
    segmentation = segmentationNode.GetSegmentation()
    for _, segment_id in pairs:
        if segmentation.GetSegment(segment_id) is None:
            raise InputError(source, f"has no segment with ID '{segment_id}' (was it deleted?)")

    copy = _readable_copy(segmentationNode, [segment_id for _, segment_id in pairs])
    try:
        ids = vtk.vtkStringArray()
        values = vtk.vtkIntArray()
        for value, segment_id in pairs:  # ascending: a later (higher) class overwrites
            ids.InsertNextValue(segment_id)
            values.InsertNextValue(value)
        merged = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
            copy if copy is not None else segmentationNode,
            referenceVolumeNode,
            ids,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY,
            merged,
            values,
        )
    finally:
        if copy is not None:
            copy.GetScene().RemoveNode(copy)

    matrix = vtk.vtkMatrix4x4()
    merged.GetImageToWorldMatrix(matrix)
    merged_matrix = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = merged.GetExtent()
    problem = _same_grid(
        merged_matrix, merged.GetDimensions(), _ijk_to_ras(referenceVolumeNode), dims
    )
    if problem is None and tuple(extent[::2]) != (0, 0, 0):
        problem = f"extent {tuple(extent)}"
    if problem is not None or merged.GetPointData().GetScalars() is None:
        raise RADAError(
            f"{source}: could not be resampled onto {_volume_source(referenceVolumeNode)}'s grid "
            f"({problem or 'no voxels'})"
        )
    array = numpy_support.vtk_to_numpy(merged.GetPointData().GetScalars()).reshape(
        tuple(reversed(dims))
    )
    return array.astype(dtype, copy=True)


def export_label_map(
    segmentationNode: Any,
    segmentIds_by_class: Mapping[int, str],
    referenceVolumeNode: Any,
    path: str | os.PathLike[str],
) -> Path:
    """Write :func:`segment_label_array` as ``.nrrd`` with the volume's header (temp + rename)."""
    array = segment_label_array(segmentationNode, segmentIds_by_class, referenceVolumeNode)
    node = _label_node_like(referenceVolumeNode, array)
    return _write_with_storage_node(node, path, _segmentation_source(segmentationNode))


def painted_annotation(
    segmentationNode: Any, segmentIds_by_class: Mapping[int, str], volumeNode: Any
) -> SparseAnnotation:
    """The painted segments as the engine will read them, in its canonical order.

    The class-valued label (:func:`segment_label_array`) turned into RADALib's (sagittal,
    coronal, axial) order, with the whole slices that hold it found by the engine's own cover
    (``slices``: canonical axis -> indices; an unpainted plane has no entry). The engine's
    ``missing_structures`` / ``check_structures`` take it as it is. Never raises for incomplete
    annotation.
    """
    label = segment_label_array(segmentationNode, segmentIds_by_class, volumeNode)
    permutation, flips, _ = _canonical(volumeNode)
    canonical = np.transpose(np.transpose(label, (2, 1, 0)), permutation)
    for axis, flip in enumerate(flips):
        if flip:
            canonical = np.flip(canonical, axis)
    cover = annotated_slice_cover(canonical)
    slices = {axis: tuple(indices) for axis, indices in cover.items() if indices}
    return SparseAnnotation(canonical, slices)


def ijk_slices(annotation: SparseAnnotation, volumeNode: Any) -> dict[str, list[int]]:
    """The annotated slices of a :func:`painted_annotation` as indices along each plane's IJK axis."""
    flips = _canonical(volumeNode)[1]
    out: dict[str, list[int]] = {}
    for axis in range(3):
        size = annotation.label.shape[axis]
        indices = annotation.slices.get(axis, ())
        out[PLANES[axis]] = sorted(int(size - 1 - i if flips[axis] else i) for i in indices)
    return out


def annotated_slices(
    segmentationNode: Any, segmentIds: str | Mapping[int, str], volumeNode: Any
) -> dict[str, list[int]]:
    """The IJK slice indices that carry painted voxels of the segments, per plane (for the panel).

    ``segmentIds`` is one segment ID, or the segment of each class. ``{"sagittal": [...],
    "coronal": [...], "axial": [...]}``: indices along that plane's IJK axis
    (:func:`plane_axes`), found with the engine's own whole-slice cover, on the volume's grid
    and in the engine's canonical order, so they are the slices the engine will detect; a slice
    counts whichever structure is painted on it. Never raises for incomplete annotation: a
    missing plane is an empty list.
    """
    ids = {1: segmentIds} if isinstance(segmentIds, str) else segmentIds
    return ijk_slices(painted_annotation(segmentationNode, ids, volumeNode), volumeNode)


# ----------------------------------------------------------------------------- file -> segmentation


def terminology_entry(terminology: Mapping[str, Any] | None) -> str:
    """Slicer's serialized terminology string for a class terminology (RADALib.terminology), or "".

    ``{"category": {"scheme", "code", "meaning"}, "type": {...}, "type_modifier": {...}|None,
    "anatomic_region": {...}|None, "anatomic_region_modifier": {...}|None}``; the contexts are
    the DICOM master lists unless ``"context"`` / ``"region_context"`` say otherwise.
    """
    if not terminology or not terminology.get("category") or not terminology.get("type"):
        return ""

    def code(key: str) -> tuple[str, str, str]:
        entry = terminology.get(key) or {}
        return (
            str(entry.get("code", "")),
            str(entry.get("scheme", "")),
            str(entry.get("meaning", "")),
        )

    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        str(terminology.get("context") or SEGMENTATION_CONTEXT),
        *code("category"),
        *code("type"),
        *code("type_modifier"),
        str(terminology.get("region_context") or REGION_CONTEXT),
        *code("anatomic_region"),
        *code("anatomic_region_modifier"),
    )


def _read_label_node(path: Path) -> Any:
    """A labelmap node (outside the scene) read from ``path`` through a storage node."""
    if not path.is_file():
        raise InputError(path, "result file not found")
    node = slicer.vtkMRMLLabelMapVolumeNode()
    node.SetName(path.name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(1)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise InputError(path, "cannot be read as a label map (truncated or corrupt file?)")
    return node


def load_volume(path: str | os.PathLike[str]) -> Any:
    """Read an image file into a new scalar volume node (with display nodes) in the scene."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "not found")
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", node_name_for_file(path))
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetImageData() is None:
        slicer.mrmlScene.RemoveNode(node)
        slicer.mrmlScene.RemoveNode(storage)
        raise InputError(
            path, "cannot be read as an image (unsupported, truncated or corrupt file?)"
        )
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def node_name_for_file(path: Path) -> str:
    """A node name from a file name without its image suffixes (``case.nii.gz`` -> ``case``)."""
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def place_beside(node: Any, volumeNode: Any) -> None:
    """Put ``node`` in the volume's subject-hierarchy folder (public name of the helper below)."""
    _place_in_subject_hierarchy(node, volumeNode)


def _place_in_subject_hierarchy(node: Any, volumeNode: Any) -> None:
    """Put ``node`` under the same subject-hierarchy parent as the volume."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    if sh is None:
        return
    volume_item = sh.GetItemByDataNode(volumeNode)
    parent = sh.GetItemParent(volume_item) if volume_item else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)


def _on_volume_grid(
    array: np.ndarray, ijk_to_ras: np.ndarray, volumeNode: Any, path: Path
) -> np.ndarray:
    """``array`` (K, J, I, on grid ``ijk_to_ras``) in the volume's IJK order, when both grids coincide.

    The same voxels may come back in another index order: Slicer's reader flips K of a file
    whose IJK-to-RAS is left-handed. Axes are matched by direction (permuted or reversed), and
    the result must then have the volume's exact grid; anything else is an InputError.
    """
    volume_matrix = _ijk_to_ras(volumeNode)
    dims = _image_dimensions(volumeNode)
    ijk = np.transpose(array, (2, 1, 0))
    source_dims = ijk.shape
    order: list[int] = []
    signs: list[float] = []
    for axis in range(3):
        target = volume_matrix[:3, axis]
        scores = [
            abs(float(np.dot(target, ijk_to_ras[:3, b]))) if b not in order else -1.0
            for b in range(3)
        ]
        best = int(np.argmax(scores))
        order.append(best)
        signs.append(1.0 if np.dot(target, ijk_to_ras[:3, best]) >= 0 else -1.0)
    matrix = np.eye(4)
    matrix[:3, 3] = ijk_to_ras[:3, 3]
    for axis, (b, sign) in enumerate(zip(order, signs)):
        matrix[:3, axis] = sign * ijk_to_ras[:3, b]
        if sign < 0:
            matrix[:3, 3] += ijk_to_ras[:3, b] * (source_dims[b] - 1)
    reordered = np.transpose(ijk, order)
    for axis, sign in enumerate(signs):
        if sign < 0:
            reordered = np.flip(reordered, axis)
    problem = _same_grid(matrix, reordered.shape, volume_matrix, dims)
    if problem is not None:
        raise InputError(
            path,
            f"does not lie on {_volume_source(volumeNode)}'s grid ({problem}); "
            "results must be written with the volume's own header",
        )
    return np.ascontiguousarray(np.transpose(reordered, (2, 1, 0)))


def _read_label_array(path: Path, volumeNode: Any) -> np.ndarray:
    """The class numbers of a label map file (K, J, I) on the volume's grid, checked and typed.

    One value per voxel, whole numbers from 0 to 65535 (else an InputError naming the file).
    """
    read_node = _read_label_node(path)
    read_image = read_node.GetImageData()
    if read_image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            path,
            f"has {read_image.GetNumberOfScalarComponents()} values per voxel; expected a label map",
        )
    read_array = numpy_support.vtk_to_numpy(read_image.GetPointData().GetScalars()).reshape(
        tuple(reversed(read_image.GetDimensions()))
    )
    array = _on_volume_grid(read_array, _ijk_to_ras(read_node), volumeNode, path)
    if array.dtype.kind == "f" and (
        not np.all(np.isfinite(array)) or not np.all(np.round(array) == array)
    ):
        raise InputError(
            path, "label map holds non-integer values; expected class numbers 0, 1, 2, ..."
        )
    if array.size and array.min() < 0:
        raise InputError(path, f"label map holds negative values (min {array.min()})")
    if array.size and array.max() > 65535:
        raise InputError(
            path, f"label map holds values up to {array.max()}; at most 65535 classes are supported"
        )
    return array.astype(_label_dtype([int(array.max())] if array.size else []), copy=False)


def _segment_entries(
    classes: Mapping[Any, Mapping[str, Any]], array: np.ndarray, path: Path
) -> dict[int, Mapping[str, Any]]:
    """The class entry of each label value: ``classes``, plus ``"label <value>"`` for the rest."""
    entries = {
        value: entry for value, entry in zip(_class_values(classes, str(path)), classes.values())
    }
    present = {int(v) for v in np.unique(array) if v != 0}
    for value in sorted(present - set(entries)):
        LOG.warning(
            "%s: label value %d is not a known class; loaded as segment 'label %d'",
            path,
            value,
            value,
        )
        entries[value] = {"name": f"label {value}", "color": FALLBACK_COLOR, "terminology": None}
    return entries


def _segment_name(value: int, entry: Mapping[str, Any]) -> str:
    return str(entry.get("name") or f"label {value}")


def _segment_color(entry: Mapping[str, Any]) -> list[float]:
    return [float(c) for c in (entry.get("color") or FALLBACK_COLOR)]


def _add_empty_segments(
    segmentation: Any, entries: Mapping[int, Mapping[str, Any]]
) -> dict[int, str]:
    """One empty, named and coloured segment per label value, in value order; their ids."""
    ids_by_value: dict[int, str] = {}
    for value in sorted(entries):
        entry = entries[value]
        segment_name = _segment_name(value, entry)
        ids_by_value[value] = segmentation.AddEmptySegment(
            segmentation.GenerateUniqueSegmentID(segment_name), segment_name, _segment_color(entry)
        )
    return ids_by_value


def _describe_segments(
    segmentation: Any, ids_by_value: Mapping[int, str], entries: Mapping[int, Mapping[str, Any]]
) -> None:
    """Name, colour and terminology of each imported segment, fixed (not auto-generated)."""
    for value, segment_id in ids_by_value.items():
        segment = segmentation.GetSegment(segment_id)
        entry = entries[value]
        segment.SetName(_segment_name(value, entry))
        segment.SetColor(*_segment_color(entry))
        term = terminology_entry(entry.get("terminology"))
        if term:
            # the tag form: vtkSegment.SetTerminology exists only from Slicer 5.10 on
            # (Libs/vtkSegmentationCore/vtkSegment.h at v5.8.1 has GetTerminologyEntryTagName only)
            segment.SetTag(segment.GetTerminologyEntryTagName(), term)
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)


def load_label_map_as_segmentation(
    path: str | os.PathLike[str],
    volumeNode: Any,
    classes: Mapping[Any, Mapping[str, Any]],
    name: str,
) -> Any:
    """A NEW segmentation node holding a result label map written with the volume's header.

    One segment per entry of ``classes`` (``{value: {"name", "color": [r, g, b] 0-1,
    "terminology": {...} or None}}``, as RADALib.terminology.class_entry gives), in class order,
    named and coloured from it, with its terminology; classes absent from the file still get an
    (empty) segment. Values in the file that ``classes`` does not name get a segment
    ``"label <value>"`` (nothing is dropped). The file must lie on the volume's grid (else an
    InputError naming it); it is never resampled. The node references the volume as its
    geometry, sits under the volume's transform and subject-hierarchy parent.
    """
    path = Path(path)
    array = _read_label_array(path, volumeNode)
    # exactly the volume's geometry, not the file's header (headers round)
    label_node = _label_node_like(volumeNode, array)
    entries = _segment_entries(classes, array, path)

    scene = volumeNode.GetScene()
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentation_node.CreateDefaultDisplayNodes()
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation = segmentation_node.GetSegmentation()
        ids_by_value = _add_empty_segments(segmentation, entries)

        updated = vtk.vtkStringArray()  # entry v-1 receives the voxels of value v
        for value in range(1, max(ids_by_value) + 1):
            updated.InsertNextValue(ids_by_value.get(value, ""))
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            label_node, segmentation_node, updated
        ):
            raise RADAError(f"{path}: could not be imported into segmentation '{name}'")

        _describe_segments(segmentation, ids_by_value, entries)
        segmentation_node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        _place_in_subject_hierarchy(segmentation_node, volumeNode)
    except BaseException:
        scene.RemoveNode(segmentation_node)
        raise
    return segmentation_node
