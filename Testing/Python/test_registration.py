"""ANTs pair registration: coordinate maps, their fast read, and no files left behind."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from RADALib.registration import (
    RegistrationConfig,
    coordinate_map,
    displacement_coordinates,
    register_pair,
    resampled_coordinates,
    scratch_prefix,
)

ants = pytest.importorskip("ants")


def shifted_pair(shift=(3.0, -2.0), shape=(48, 40)):
    """A textured slice and the same slice shifted by ``shift`` pixels (moving = fixed moved)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.normal(size=shape), 2.0).astype(np.float32)
    x, y = np.mgrid[: shape[0], : shape[1]]
    fixed += ((x - 24) ** 2 + (y - 20) ** 2 < 100).astype(np.float32)
    moving = ndimage.shift(fixed, shift, order=1, mode="nearest").astype(np.float32)
    return fixed, moving


def test_the_direct_read_of_a_syn_field_equals_ants_resampling_of_the_coordinates():
    fixed, moving = shifted_pair(shift=(4.0, -3.0))
    spacing = (0.7, 1.1)  # anisotropic: displacements are in mm, positions in pixels
    fixed_image = ants.from_numpy(fixed, spacing=spacing)
    moving_image = ants.from_numpy(moving, spacing=spacing)
    result = ants.registration(
        fixed_image,
        moving_image,
        outprefix=scratch_prefix(),
        **RegistrationConfig(reg_iterations=(40, 20, 0)).ants_arguments("SyNOnly"),
    )
    try:
        warp = [name for name in result["fwdtransforms"] if name.endswith(".nii.gz")][0]
        direct = displacement_coordinates(warp, fixed.shape, spacing)
        resampled = resampled_coordinates(fixed_image, result["fwdtransforms"], spacing)
        chosen = coordinate_map(fixed_image, result["fwdtransforms"], spacing)
    finally:
        for name in set(result["fwdtransforms"]) | set(result["invtransforms"]):
            os.remove(name)
    assert direct.shape == resampled.shape == (2, *fixed.shape)
    assert np.abs(direct - np.mgrid[:48, :40]).max() > 1.0  # the field did move pixels
    np.testing.assert_allclose(direct, resampled, atol=1e-3)
    np.testing.assert_array_equal(chosen, direct)


def test_positions_pushed_out_of_the_slice_are_marked_as_ants_marks_them(tmp_path):
    shape, spacing = (30, 26), (0.8, 1.3)
    x, y = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    displacement = np.stack(
        [np.sin(y / 4.0) * 6.0 * spacing[0], (x - 15) * 0.4 * spacing[1]], axis=-1
    )
    field = str(tmp_path / "field.nii.gz")
    ants.image_write(
        ants.from_numpy(displacement.astype(np.float32), spacing=spacing, has_components=True),
        field,
    )
    direct = displacement_coordinates(field, shape, spacing)
    resampled = resampled_coordinates(
        ants.from_numpy(np.zeros(shape, np.float32), spacing=spacing), [field], spacing
    )
    outside = (direct < 0).any(axis=0)
    assert outside.any() and not outside.all()
    np.testing.assert_array_equal(outside, (resampled < 0).any(axis=0))
    np.testing.assert_allclose(direct, resampled, atol=1e-3)


def test_a_known_shift_comes_back_from_ants_and_no_transform_file_is_left():
    fixed, moving = shifted_pair(shift=(3.0, -2.0))
    before = set(
        glob.glob(os.path.join(os.path.dirname(scratch_prefix()), f"rada_{os.getpid()}_*"))
    )
    result = register_pair(
        fixed, moving, (1.0, 1.0), RegistrationConfig(reg_iterations=(40, 20, 0))
    )
    after = set(glob.glob(os.path.join(os.path.dirname(scratch_prefix()), f"rada_{os.getpid()}_*")))
    assert result.method == "SyNOnly" and after == before
    centre = result.coordinates[:, 14:34, 10:30]
    grid = np.mgrid[14:34, 10:30]
    # moving = fixed shifted by (3, -2): fixed pixel p is found at p + (3, -2) in moving
    assert np.abs((centre[0] - grid[0]).mean() - 3.0) < 0.5
    assert np.abs((centre[1] - grid[1]).mean() + 2.0) < 0.5
