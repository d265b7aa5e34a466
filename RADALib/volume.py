"""Volumes: an array in canonical (sagittal, coronal, axial) index order with its geometry.

Every reader returns a :class:`Volume` whose array axes are (x, y, z) = (sagittal, coronal,
axial): axis 0 runs along the patient's right-left direction, axis 1 along anterior-posterior,
axis 2 along inferior-superior, whatever index order the file used. The file's own header is
kept in :class:`FileGeometry`, and :func:`write_like` undoes the reorientation, so a result
written for a volume always overlays the image it came from, voxel for voxel.

Formats: NRRD, NIfTI, MHA/MHD (SimpleITK) and the LA h5 layout (datasets ``image`` and
``label`` already in (x, y, z) order, 0.625 mm isotropic unless told otherwise). A label map may
also be a Slicer segmentation (``.seg.nrrd``, see segmentation_file.py).

Oblique volumes (index axes not parallel to the patient axes) are refused with a clear message,
or, with ``oblique="resample"``, resampled onto the nearest axis-aligned grid (linear for
images, nearest neighbour for labels); results are resampled back onto the file's grid when
written. With ``oblique="keep"`` an oblique volume keeps its own grid: its index axes, in the
order closest to sagittal/coronal/axial, are the array's axes (no resampling), and results are
written on that grid as they are. :func:`read_image_for_label` keeps the grid a label was made
on: slices painted on an oblique image's own grid stay whole slices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from .atomic import (
    ensure_writable_folder,
    incomplete_error,
    new_temporary,
    replacing,
    write_error,
)
from .errors import InputError
from .file_integrity import check_complete
from .segmentation_file import class_numbers, read_segments, remap_labels

LA_SPACING_MM = 0.625
"""Voxel size of the LA2018 h5 files, which store none."""

OBLIQUE_TOLERANCE = 1e-3
"""Largest off-axis direction cosine treated as axis-aligned (about 0.06 degrees)."""

_SITK_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
_H5_SUFFIXES = (".h5", ".hdf5")

Oblique = Literal["refuse", "resample", "keep"]


def file_suffix(path: str | os.PathLike[str]) -> str:
    """The format suffix of ``path``, lower case, with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


@dataclass(frozen=True)
class FileGeometry:
    """How the file stored the volume, and how to go back to it from canonical order.

    ``permutation[c]`` is the file axis that became canonical axis ``c``; ``flips[c]`` says
    whether that axis was reversed. ``resampled`` is true when an oblique grid was resampled.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3, row-major, columns are the file axes' directions
    permutation: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)
    resampled: bool = False


@dataclass(frozen=True)
class Volume:
    """A 3D array in (sagittal, coronal, axial) order, with its world geometry (LPS, mm).

    ``direction`` is 3x3; its column ``c`` is the world direction of array axis ``c``.
    ``source`` names the file it came from (for error messages), ``file`` its stored header.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = "<memory>"
    file: FileGeometry | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, source: str | None = None) -> Volume:
        """A volume on the same grid holding ``array`` (same shape required)."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the grid {self.shape}")
        return replace(self, array=array, source=source or self.source)

    def same_grid(self, other: Volume, tolerance: float = 1e-4) -> str | None:
        """None when ``other`` lies on this grid, else a short description of the difference."""
        if other.shape != self.shape:
            return f"shape {other.shape} does not match the image's {self.shape}"
        if not np.allclose(other.spacing, self.spacing, rtol=tolerance, atol=tolerance):
            return f"spacing {_fmt(other.spacing)} does not match the image's {_fmt(self.spacing)}"
        scale = max(1.0, float(np.max(np.abs(self.spacing))))
        if not np.allclose(other.origin, self.origin, atol=tolerance * 10 * scale):
            return f"origin {_fmt(other.origin)} does not match the image's {_fmt(self.origin)}"
        if not np.allclose(other.direction, self.direction, atol=tolerance * 10):
            return "direction (orientation) does not match the image's"
        return None


def _fmt(values: tuple[float, ...] | np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# ----------------------------------------------------------------------------- reorientation


def canonical_order(
    direction: np.ndarray,
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], float]:
    """The file axis closest to each patient axis, whether it runs backwards, and the obliquity.

    Returns (permutation, flips, obliquity) where obliquity is the largest off-axis component
    of the direction columns after the permutation (0 for an axis-aligned volume).
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    permutation: list[int] = []
    for world_axis in range(3):
        ranked = np.argsort(-np.abs(d[world_axis]))
        choice = next(int(i) for i in ranked if int(i) not in permutation)
        permutation.append(choice)
    flips = tuple(bool(d[c, permutation[c]] < 0) for c in range(3))
    permuted = d[:, permutation]
    obliquity = float(np.max(np.abs(permuted - np.diag(np.diag(permuted)))))
    return tuple(permutation), flips, obliquity  # type: ignore[return-value]


def _to_canonical(array: np.ndarray, geometry: FileGeometry) -> np.ndarray:
    out = np.transpose(array, geometry.permutation)
    for axis, flip in enumerate(geometry.flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def _from_canonical(array: np.ndarray, geometry: FileGeometry) -> np.ndarray:
    out = array
    for axis, flip in enumerate(geometry.flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(np.transpose(out, np.argsort(geometry.permutation)))


def _canonical_geometry(
    geometry: FileGeometry,
) -> tuple[tuple[float, float, float], tuple[float, float, float], np.ndarray]:
    d = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    spacing = np.asarray(geometry.spacing, dtype=float)
    origin = np.asarray(geometry.origin, dtype=float)
    new_dir = np.zeros((3, 3))
    new_spacing = []
    for c, (axis, flip) in enumerate(zip(geometry.permutation, geometry.flips)):
        new_dir[:, c] = -d[:, axis] if flip else d[:, axis]
        new_spacing.append(float(spacing[axis]))
        if flip:
            origin = origin + d[:, axis] * spacing[axis] * (geometry.shape[axis] - 1)
    return tuple(new_spacing), tuple(float(v) for v in origin), new_dir  # type: ignore[return-value]


# ----------------------------------------------------------------------------- reading


def _sitk():
    import SimpleITK as sitk

    return sitk


def _read_sitk(path: Path) -> tuple[np.ndarray, FileGeometry]:
    sitk = _sitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        detail = _first_line(str(exc))
        raise InputError(
            path, f"cannot be read as {file_suffix(path)} (truncated or corrupt file?): {detail}"
        ) from None
    if image.GetDimension() != 3:
        raise InputError(path, f"expected a 3D volume, found {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            path,
            f"expected one value per voxel, found {image.GetNumberOfComponentsPerPixel()} (colour or vector image)",
        )
    try:
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as exc:
        raise InputError(
            path, f"cannot read the voxel data (truncated file?): {_first_line(str(exc))}"
        ) from None
    array = np.ascontiguousarray(np.transpose(array, (2, 1, 0)))
    geometry = FileGeometry(
        shape=tuple(int(n) for n in array.shape),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
    )
    return array, geometry


def _read_h5(path: Path, dataset: str, spacing: float) -> tuple[np.ndarray, FileGeometry]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if dataset not in handle:
                found = ", ".join(sorted(handle.keys())) or "none"
                raise InputError(path, f"has no '{dataset}' dataset (found: {found})")
            array = np.asarray(handle[dataset][()])
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(
            path, f"cannot be read as h5 (truncated or corrupt file?): {_first_line(str(exc))}"
        ) from None
    if array.ndim != 3:
        raise InputError(path, f"dataset '{dataset}' is {array.ndim}D, expected 3D")
    geometry = FileGeometry(
        shape=tuple(int(n) for n in array.shape),  # type: ignore[arg-type]
        spacing=(spacing, spacing, spacing),
        origin=(0.0, 0.0, 0.0),
        direction=tuple(np.eye(3).ravel().tolist()),
    )
    return array, geometry


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # ITK errors start with a location line; the description is usually the last line.
    return lines[-1] if lines else "unknown error"


def read_volume(
    path: str | os.PathLike[str],
    kind: Literal["image", "label"] = "image",
    oblique: Oblique = "refuse",
    h5_spacing: float = LA_SPACING_MM,
    classes: Mapping[int, str] | None = None,
) -> Volume:
    """Read an image or a label map from NRRD/NIfTI/MHA/h5 into canonical order.

    Images become float32 and must be finite; labels become uint8 (uint16 past 255 classes)
    and must hold non-negative whole numbers. A label map that is a Slicer segmentation
    (``.seg.nrrd``) gets its segments' class numbers: by name from ``classes`` (number ->
    name) when they name them, else its label values. A file whose voxel data is cut short or
    damaged is refused before it is read (:func:`~RADALib.file_integrity.check_complete`).
    Raises :class:`InputError` naming the file.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a volume file")
    check_complete(path)
    segments = read_segments(path) if kind == "label" and suffix in (".nrrd", ".nhdr") else []
    if suffix in _H5_SUFFIXES:
        array, geometry = _read_h5(path, kind, h5_spacing)
    elif suffix in _SITK_SUFFIXES:
        array, geometry = _read_sitk(path)
    else:
        supported = ", ".join(_SITK_SUFFIXES + _H5_SUFFIXES)
        raise InputError(
            path, f"unsupported file type '{suffix or path.name}' (supported: {supported})"
        )
    array = _check_values(path, array, kind)
    if segments:
        array = remap_labels(array, class_numbers(path, segments, classes))

    permutation, flips, obliquity = canonical_order(np.reshape(geometry.direction, (3, 3)))
    geometry = replace(geometry, permutation=permutation, flips=flips)
    if obliquity > OBLIQUE_TOLERANCE and oblique != "keep":
        if oblique != "resample":
            angle = float(np.degrees(np.arcsin(min(1.0, obliquity))))
            raise InputError(
                path,
                f"the volume is oblique (axes tilted by up to {angle:.1f} degrees from the patient axes), "
                "so its slices are not sagittal/coronal/axial; resample it to an axis-aligned grid "
                "(e.g. Slicer's Resample Scalar Volume) or pass oblique='resample' (--oblique resample)",
            )
        return _resampled_volume(path, array, geometry, kind)
    canonical = _to_canonical(array, geometry)
    spacing, origin, direction = _canonical_geometry(geometry)
    return Volume(canonical, spacing, origin, direction, source=str(path), file=geometry)


def read_spacing(
    path: str | os.PathLike[str], h5_spacing: float = LA_SPACING_MM
) -> tuple[float, float, float]:
    """The voxel size (x, y, z) in mm of an image file in canonical order, read from its header
    only (an oblique volume: that of its axis-aligned resampling, as :func:`read_volume`)."""
    path = Path(path)
    if file_suffix(path) in _H5_SUFFIXES:
        return (float(h5_spacing),) * 3  # type: ignore[return-value]
    reader = _sitk().ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # read_volume says what is wrong with the file
        return read_volume(path, "image", oblique="resample", h5_spacing=h5_spacing).spacing
    if reader.GetDimension() != 3:
        return read_volume(path, "image", h5_spacing=h5_spacing).spacing
    permutation, _, _ = canonical_order(np.reshape(reader.GetDirection(), (3, 3)))
    spacing = reader.GetSpacing()
    return tuple(float(spacing[axis]) for axis in permutation)  # type: ignore[return-value]


def _check_values(path: Path, array: np.ndarray, kind: str) -> np.ndarray:
    """``array`` checked and converted: an image to float32, a label map to uint8/uint16."""
    if array.size == 0 or min(array.shape) < 1:
        raise InputError(path, f"the volume is empty (shape {array.shape})")
    if kind == "image":
        return _image_values(path, array)
    return _label_values(path, array)


def _image_values(path: Path, array: np.ndarray) -> np.ndarray:
    """A numeric image as float32; refused if any voxel is NaN or Inf."""
    if array.dtype.kind not in "fiub":
        raise InputError(path, f"voxel type {array.dtype} is not numeric")
    array = array.astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InputError(path, f"{bad} voxels are NaN or Inf; fix or mask them before use")
    return array


def _label_values(path: Path, array: np.ndarray) -> np.ndarray:
    """A label map of class numbers 0..65535 as uint8 (up to 255) or uint16."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise InputError(path, "label map holds NaN or Inf values")
        if not np.all(np.equal(np.round(array), array)):
            raise InputError(
                path, "label map holds non-integer values; expected class numbers 0, 1, 2, ..."
            )
    elif array.dtype.kind not in "iub":
        raise InputError(path, f"label voxel type {array.dtype} is not an integer type")
    if array.size and array.min() < 0:
        raise InputError(
            path, f"label map holds negative values (min {array.min()}); expected 0, 1, 2, ..."
        )
    top = int(array.max()) if array.size else 0
    if top > 65535:
        raise InputError(
            path, f"label map holds values up to {top}; at most 65535 classes are supported"
        )
    return array.astype(np.uint8 if top <= 255 else np.uint16, copy=False)


def _axis_aligned_reference(geometry: FileGeometry):
    """A SimpleITK reference grid, axis-aligned, covering the oblique volume's extent."""
    sitk = _sitk()
    d = np.reshape(geometry.direction, (3, 3))
    spacing = np.asarray(geometry.spacing, float)
    origin = np.asarray(geometry.origin, float)
    shape = np.asarray(geometry.shape)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * (shape - 1)
    world = origin + (corners * spacing) @ d.T
    new_spacing = np.array([spacing[geometry.permutation[c]] for c in range(3)])
    low, high = world.min(axis=0), world.max(axis=0)
    size = np.maximum(1, np.round((high - low) / new_spacing).astype(int) + 1)
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing([float(s) for s in new_spacing])
    reference.SetOrigin([float(v) for v in low])
    reference.SetDirection(np.eye(3).ravel().tolist())
    return reference


def _sitk_image(array_xyz: np.ndarray, spacing, origin, direction) -> object:
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0))))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(v) for v in np.asarray(direction, float).ravel()])
    return image


def _resampled_volume(path: Path, array: np.ndarray, geometry: FileGeometry, kind: str) -> Volume:
    sitk = _sitk()
    source = _sitk_image(array, geometry.spacing, geometry.origin, geometry.direction)
    reference = _axis_aligned_reference(geometry)
    interpolator = sitk.sitkLinear if kind == "image" else sitk.sitkNearestNeighbor
    default = float(array.min()) if kind == "image" else 0.0
    out = sitk.Resample(
        source, reference, sitk.Transform(), interpolator, default, source.GetPixelID()
    )
    resampled = np.ascontiguousarray(np.transpose(sitk.GetArrayFromImage(out), (2, 1, 0)))
    return Volume(
        resampled,
        tuple(float(s) for s in out.GetSpacing()),  # type: ignore[arg-type]
        tuple(float(o) for o in out.GetOrigin()),  # type: ignore[arg-type]
        np.eye(3),
        source=str(path),
        file=replace(geometry, permutation=(0, 1, 2), flips=(False, False, False), resampled=True),
    )


def is_oblique(volume: Volume) -> bool:
    """True when ``volume``'s axes are not parallel to the patient axes (an oblique grid kept)."""
    return canonical_order(volume.direction)[2] > OBLIQUE_TOLERANCE


def read_image_for_label(
    image: str | os.PathLike[str],
    label: str | os.PathLike[str] | None,
    oblique: Oblique = "refuse",
) -> Volume:
    """Read ``image`` on the grid its ``label`` was made on.

    With ``oblique="resample"``, an oblique image whose label file lies on the image's own grid
    (the same header, in any index order) keeps that grid, as ``oblique="keep"`` reads it:
    slices painted on it are index planes of that grid, which resampling would tilt across
    several slices of the new one. Otherwise (no label, a label on another grid, another
    ``oblique``) it is :func:`read_volume` with ``oblique``.
    """
    if oblique != "resample" or label is None:
        return read_volume(image, "image", oblique)
    kept = read_volume(image, "image", "keep")
    if not is_oblique(kept):
        return kept
    if kept.same_grid(read_volume(label, "label", "keep", kept.spacing[0])) is None:
        return kept
    return read_volume(image, "image", oblique)


def read_label_for(
    image: Volume,
    path: str | os.PathLike[str],
    oblique: Oblique = "refuse",
    classes: Mapping[int, str] | None = None,
) -> Volume:
    """Read a label map and check that it lies on ``image``'s grid (else an InputError).

    An image kept on its oblique grid (:func:`read_image_for_label`) has its label read on that
    grid too. ``classes`` (number -> name) maps a Slicer segmentation's segments by name (see
    :func:`read_volume`)."""
    if is_oblique(image):
        oblique = "keep"
    label = read_volume(
        path, kind="label", oblique=oblique, h5_spacing=image.spacing[0], classes=classes
    )
    problem = image.same_grid(label)
    if problem:
        raise InputError(
            path, f"{problem} ({image.source}); resample the label onto the image first"
        )
    return label


def check_label_classes(label: Volume, classes: Mapping[int, str]) -> Volume:
    """``label`` itself when each voxel holds 0 or a class number of the cohort's ``classes``
    (number -> name); else an :class:`InputError` naming its file, the other values and the
    valid ones."""
    array = label.array
    top = int(array.max()) if array.size else 0
    valid = np.zeros(top + 1, dtype=bool)
    valid[0] = True
    for number in classes:
        if 0 <= int(number) <= top:
            valid[int(number)] = True
    if valid.all():
        return label
    others = [int(v) for v in np.unique(array[~valid[array]])]
    listed = ", ".join(str(v) for v in others[:10])
    if len(others) > 10:
        listed += f" and {len(others) - 10} more"
    known = {0: "background", **{int(n): str(name) for n, name in classes.items()}}
    names = ", ".join(f"{n} {name}" for n, name in sorted(known.items()))
    raise InputError(
        label.source, f"label values {listed} are not classes of this cohort (valid: {names})"
    )


# ----------------------------------------------------------------------------- writing


def atomic_output(path: str | os.PathLike[str]) -> Path:
    """A temporary sibling of ``path`` with the same format suffix, for write-then-rename
    (with the mode a new file gets under the umask; finish with :func:`~RADALib.atomic.commit`)."""
    path = Path(path)
    ensure_writable_folder(path.parent, path.name)
    try:
        return new_temporary(path, file_suffix(path))
    except OSError as exc:
        raise write_error(path, exc) from None


def write_like(
    reference: Volume, array: np.ndarray, path: str | os.PathLike[str], compress: bool = True
) -> Path:
    """Write a canonical-order ``array`` with ``reference``'s original file header.

    The array is put back in the file's index order (and resampled back when the reference was
    an oblique volume), written to a temporary name, then renamed, so a crash never leaves a
    half-written file under ``path``.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix not in _SITK_SUFFIXES:
        raise InputError(path, f"cannot write '{suffix}' files; use .nrrd, .nii.gz or .mha")
    if tuple(array.shape) != reference.shape:
        raise ValueError(
            f"array shape {array.shape} does not match {reference.source} {reference.shape}"
        )
    sitk = _sitk()
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    geometry = reference.file
    if geometry is None:
        image = _sitk_image(array, reference.spacing, reference.origin, reference.direction)
    elif geometry.resampled:
        grid = _sitk_image(array, reference.spacing, reference.origin, reference.direction)
        target = sitk.Image([int(n) for n in geometry.shape], sitk.sitkUInt8)
        target.SetSpacing(geometry.spacing)
        target.SetOrigin(geometry.origin)
        target.SetDirection(geometry.direction)
        interpolator = sitk.sitkNearestNeighbor if array.dtype.kind in "iub" else sitk.sitkLinear
        image = sitk.Resample(grid, target, sitk.Transform(), interpolator, 0.0, grid.GetPixelID())
    else:
        image = _sitk_image(
            _from_canonical(array, geometry), geometry.spacing, geometry.origin, geometry.direction
        )
    ensure_writable_folder(path.parent, path.name)
    with replacing(path, suffix) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), compress)
        except RuntimeError:  # ITK says which library call failed, not why: the disk, mostly
            raise incomplete_error(path) from None
        _check_written(temporary, image, path)
    return path


def _check_written(temporary: Path, image, path: Path) -> None:
    """``InputError`` unless ``temporary`` reads back as ``image`` (size, pixel type, voxels):
    ITK's writers can fail without saying so, leaving an empty or truncated file."""
    sitk = _sitk()
    try:
        back = sitk.ReadImage(str(temporary))
    except RuntimeError:
        back = None
    same = (
        back is not None
        and back.GetSize() == image.GetSize()
        and back.GetPixelID() == image.GetPixelID()
        and np.array_equal(
            sitk.GetArrayViewFromImage(back),
            sitk.GetArrayViewFromImage(image),
            equal_nan=image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64),
        )
    )
    if not same:
        raise incomplete_error(path)


def volume_from_array(
    array: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    source: str = "<memory>",
) -> Volume:
    """A volume from an array already in canonical order (tests, synthetic data)."""
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    return Volume(
        np.asarray(array),
        tuple(float(s) for s in spacing),
        tuple(float(o) for o in origin),
        direction,
        source,
    )  # type: ignore[arg-type]
