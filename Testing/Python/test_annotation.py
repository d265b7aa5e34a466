"""Sparse orthogonal annotations: simulation from dense labels, detection from painted slices."""

from __future__ import annotations

import numpy as np
import pytest

from RADALib.annotation import detect_sparse_annotation, simulate_sparse_annotation
from RADALib.errors import InputError


def ellipsoid(shape=(40, 36, 30), center=(18, 20, 14), radii=(10, 8, 7), value=1):
    x, y, z = np.mgrid[: shape[0], : shape[1], : shape[2]]
    inside = ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + (
        (z - center[2]) / radii[2]
    ) ** 2 <= 1
    return (inside * value).astype(np.uint8)


def test_simulation_keeps_the_largest_foreground_slice_of_each_plane():
    dense = ellipsoid()
    sparse = simulate_sparse_annotation(dense)
    assert sparse.slices == {0: (18,), 1: (20,), 2: (14,)}
    mask = sparse.annotated_mask()
    np.testing.assert_array_equal(sparse.label[mask], dense[mask])
    assert not sparse.label[~mask].any()


def test_simulation_accepts_given_slices_and_refuses_ones_outside_the_volume():
    dense = ellipsoid()
    sparse = simulate_sparse_annotation(dense, slices={2: [10]})
    assert sparse.slices[2] == (10,) and sparse.slices[0] == (18,)
    with pytest.raises(InputError, match="axial slice 99 is outside 0..29"):
        simulate_sparse_annotation(dense, slices={2: [99]})


def test_detection_finds_the_painted_planes_and_keeps_class_values():
    dense = ellipsoid() + ellipsoid(
        center=(18, 20, 20), radii=(4, 4, 3), value=1
    )  # class 2 where both overlap
    dense = np.minimum(dense, 2).astype(np.uint8)
    sparse = simulate_sparse_annotation(dense)
    found = detect_sparse_annotation(sparse.label, "user.nrrd")
    assert found.slices == sparse.slices
    assert set(np.unique(found.label)) == set(np.unique(sparse.label)) and 2 in np.unique(
        found.label
    )


def test_empty_label_map_is_an_error_that_names_the_file():
    with pytest.raises(InputError, match="user.nrrd: the label map is empty"):
        detect_sparse_annotation(np.zeros((5, 5, 5), np.uint8), "user.nrrd")


def test_a_missing_plane_is_named():
    sparse = simulate_sparse_annotation(ellipsoid()).label.copy()
    sparse[18, :, :] = 0  # erase the sagittal slice
    with pytest.raises(
        InputError, match=r"user.nrrd: no annotated sagittal slice \(found coronal 20, axial 14\)"
    ):
        detect_sparse_annotation(sparse, "user.nrrd")


def test_several_slices_in_a_plane_need_permission():
    dense = ellipsoid()
    sparse = simulate_sparse_annotation(dense, slices={2: [10, 18]}).label
    with pytest.raises(
        InputError, match=r"2 annotated axial slices \(10, 18\); one per plane is expected"
    ):
        detect_sparse_annotation(sparse, "user.nrrd")
    found = detect_sparse_annotation(sparse, "user.nrrd", allow_multiple=True)
    assert found.slices[2] == (10, 18)


def test_a_3d_brush_stroke_is_not_taken_for_slices():
    sparse = simulate_sparse_annotation(ellipsoid()).label.copy()
    sparse[5:9, 5:9, 3:7] = 1  # a small 3D blob painted off the planes
    with pytest.raises(InputError, match="labels are not confined to single slices"):
        detect_sparse_annotation(sparse, "user.nrrd")
    with pytest.raises(InputError, match="not confined to single slices"):
        detect_sparse_annotation(ellipsoid(), "dense.nrrd")
