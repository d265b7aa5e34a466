"""Volumes: canonical orientation, header round trips, and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RADALib.errors import InputError
from RADALib.volume import read_label_for, read_volume, volume_from_array, write_like


def write_sitk(path, array_file_order, spacing, origin, direction):
    """Write an (i, j, k) file-order array with the given header."""
    image = sitk.GetImageFromArray(np.transpose(array_file_order, (2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


# A file stored axial-first and flipped: index i runs inferior->superior... (world z, reversed),
# j runs along world x, k along world y (reversed).
PERMUTED = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)


def test_permuted_flipped_volume_is_read_in_sagittal_coronal_axial_order(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    path = write_sitk(tmp_path / "a.nrrd", data, (2.0, 0.5, 1.0), (10.0, -3.0, 7.0), PERMUTED)
    volume = read_volume(path)
    # canonical axis 0 = file axis 1 (world x), axis 1 = file axis 2 (world y, flipped),
    # axis 2 = file axis 0 (world z, flipped)
    expected = np.flip(np.flip(np.transpose(data, (1, 2, 0)), 1), 2)
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.spacing == (0.5, 1.0, 2.0)
    np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-12)
    # the world position of every voxel is unchanged by the reorientation
    image = sitk.ReadImage(str(path))
    for canonical_index in [(0, 0, 0), (4, 5, 3), (2, 1, 2)]:
        x, y, z = canonical_index
        file_index = (3 - z, x, 5 - y)
        world_file = np.array(
            image.TransformIndexToPhysicalPoint(tuple(int(v) for v in file_index))
        )
        world_canonical = np.asarray(volume.origin) + volume.direction @ (
            np.asarray(canonical_index) * volume.spacing
        )
        np.testing.assert_allclose(world_canonical, world_file, atol=1e-9)


def test_result_written_for_a_permuted_volume_overlays_it_voxel_for_voxel(tmp_path):
    data = np.random.default_rng(0).normal(size=(7, 5, 6)).astype(np.float32)
    source = write_sitk(tmp_path / "img.nii.gz", data, (2.0, 0.7, 1.3), (1.0, 2.0, 3.0), PERMUTED)
    volume = read_volume(source)
    label = (volume.array > 0.5).astype(np.uint8)
    out = write_like(volume, label, tmp_path / "out" / "label.nrrd")
    written = sitk.ReadImage(str(out))
    original = sitk.ReadImage(str(source))
    assert written.GetSize() == original.GetSize()
    np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing())
    np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin())
    np.testing.assert_allclose(written.GetDirection(), original.GetDirection())
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(written), (sitk.GetArrayFromImage(original) > 0.5).astype(np.uint8)
    )
    assert sorted(p.name for p in out.parent.iterdir()) == ["label.nrrd"]  # no temporary left


def test_oblique_volume_is_refused_with_a_message_naming_the_file(tmp_path):
    angle = np.radians(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    path = write_sitk(
        tmp_path / "oblique.nrrd", np.ones((6, 6, 4), np.float32), (1, 1, 1), (0, 0, 0), rotation
    )
    with pytest.raises(InputError, match=r"oblique\.nrrd: the volume is oblique.*20\.0 degrees"):
        read_volume(path)


def test_oblique_volume_can_be_resampled_and_results_go_back_to_its_grid(tmp_path):
    angle = np.radians(15)
    rotation = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    data = np.zeros((10, 12, 8), np.float32)
    data[3:7, 4:9, 2:6] = 1.0
    path = write_sitk(tmp_path / "oblique.nrrd", data, (1, 1, 1), (0, 0, 0), rotation)
    volume = read_volume(path, oblique="resample")
    np.testing.assert_allclose(volume.direction, np.eye(3))
    assert volume.array.max() > 0.9
    out = write_like(volume, (volume.array > 0.5).astype(np.uint8), tmp_path / "back.nrrd")
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == (10, 12, 8)
    np.testing.assert_allclose(back.GetDirection(), rotation.ravel(), atol=1e-9)
    recovered = np.transpose(sitk.GetArrayFromImage(back), (2, 1, 0))
    overlap = (recovered > 0) & (data > 0)
    assert 2 * overlap.sum() / ((recovered > 0).sum() + (data > 0).sum()) > 0.8


def test_la_h5_volume_has_default_spacing_and_a_missing_dataset_is_named(tmp_path):
    import h5py

    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as handle:
        handle["image"] = np.zeros((4, 5, 6), np.float32)
    volume = read_volume(path)
    assert volume.shape == (4, 5, 6) and volume.spacing == (0.625, 0.625, 0.625)
    with pytest.raises(InputError, match=r"case\.h5: has no 'label' dataset \(found: image\)"):
        read_volume(path, kind="label")


def test_missing_truncated_and_unsupported_files_give_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="nothere.nrrd: file not found"):
        read_volume(tmp_path / "nothere.nrrd")
    good = write_sitk(
        tmp_path / "good.nrrd", np.ones((20, 20, 20), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3)
    )
    truncated = tmp_path / "truncated.nrrd"
    truncated.write_bytes(good.read_bytes()[:-4000])
    with pytest.raises(InputError) as info:
        read_volume(truncated)
    assert str(info.value).startswith(str(truncated)) and "\n" not in str(info.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="unsupported file type '.txt'"):
        read_volume(tmp_path / "notes.txt")


def test_nan_voxels_and_non_integer_labels_are_rejected(tmp_path):
    data = np.ones((5, 5, 5), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = write_sitk(tmp_path / "nan.nrrd", data, (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(InputError, match="nan.nrrd: 2 voxels are NaN or Inf"):
        read_volume(path)
    fractional = write_sitk(
        tmp_path / "frac.nrrd", np.full((5, 5, 5), 0.5, np.float32), (1, 1, 1), (0, 0, 0), np.eye(3)
    )
    with pytest.raises(InputError, match="non-integer values"):
        read_volume(fractional, kind="label")


def test_label_on_another_grid_is_refused_naming_the_label(tmp_path):
    image = read_volume(
        write_sitk(
            tmp_path / "img.nrrd", np.zeros((6, 6, 6), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3)
        )
    )
    shifted = write_sitk(
        tmp_path / "lab.nrrd", np.zeros((6, 6, 6), np.uint8), (1, 1, 1), (5, 0, 0), np.eye(3)
    )
    with pytest.raises(InputError, match=r"lab\.nrrd: origin .* does not match the image's"):
        read_label_for(image, shifted)
    smaller = write_sitk(
        tmp_path / "small.nrrd", np.zeros((6, 6, 5), np.uint8), (1, 1, 1), (0, 0, 0), np.eye(3)
    )
    with pytest.raises(
        InputError, match=r"small\.nrrd: shape \(6, 6, 5\) does not match the image's \(6, 6, 6\)"
    ):
        read_label_for(image, smaller)


def test_writing_into_a_path_under_a_file_fails_cleanly(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    volume = volume_from_array(np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(InputError, match="cannot create the output folder"):
        write_like(volume, volume.array, blocker / "sub" / "out.nrrd")


def test_existing_output_survives_a_failed_write(tmp_path, monkeypatch):
    volume = volume_from_array(np.ones((3, 3, 3), np.uint8))
    target = write_like(volume, volume.array, tmp_path / "keep.nrrd")
    before = target.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken)
    with pytest.raises(InputError, match=r"keep\.nrrd: could not be written: .*no space left"):
        write_like(volume, np.zeros((3, 3, 3), np.uint8), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nrrd"]
