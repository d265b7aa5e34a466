"""Reading refuses what is not the file the user saved: cut-off or damaged volume files, and
label values that are no class; and a header survives read -> canonical -> write unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from RADALib.cli import main
from RADALib.cohort import Case
from RADALib.errors import InputError
from RADALib.pseudo_labels import case_annotation
from RADALib.volume import read_volume, volume_from_array, write_like

SHAPE_ZYX = (10, 20, 30)


def _voxels() -> np.ndarray:
    """int16 voxels in (z, y, x) order, none of them 0: a voxel read as 0 was not in the file."""
    return np.random.default_rng(0).integers(1, 100, size=SHAPE_ZYX).astype(np.int16)


def _write(path, compress: bool):
    sitk.WriteImage(sitk.GetImageFromArray(_voxels()), str(path), compress)
    return path


def _cut(path, cut: str) -> None:
    """Cut the end off ``path``: half the file, or only the last bytes (a gzip/zlib stream's
    checksum and length, or the last voxel of a raw file)."""
    data = path.read_bytes()
    keep = {"half": len(data) // 2, "checksum": len(data) - 4, "last voxel": len(data) - 2}[cut]
    path.write_bytes(data[:keep])


@pytest.mark.parametrize(
    "name, compress, cut",
    [
        ("cut.nii.gz", True, "half"),
        ("cut.nii.gz", True, "checksum"),
        ("cut.nii", False, "half"),
        ("cut.nii", False, "last voxel"),
        ("cut.nrrd", False, "half"),
        ("cut.nrrd", True, "half"),
        ("cut.nrrd", True, "checksum"),
        ("cut.seg.nrrd", True, "checksum"),
        ("cut.mha", False, "half"),
        ("cut.mha", True, "half"),
        ("cut.mha", True, "checksum"),
    ],
)
def test_a_cut_off_volume_file_is_refused_as_truncated_naming_it(tmp_path, name, compress, cut):
    path = _write(tmp_path / name, compress)
    _cut(path, cut)
    with pytest.raises(InputError) as error:
        read_volume(path, "label" if ".seg." in name else "image")
    message = str(error.value)
    assert message.startswith(f"{path}: truncated: ") and "\n" not in message


@pytest.mark.parametrize(
    "name, compress, data_name",
    [
        ("cut.nhdr", False, "cut.raw"),
        ("cut.nhdr", True, "cut.raw.gz"),
        ("cut.mhd", False, "cut.raw"),
        ("cut.mhd", True, "cut.zraw"),
    ],
)
def test_a_header_whose_data_file_is_short_or_missing_is_refused_naming_the_data_file(
    tmp_path, name, compress, data_name
):
    header = _write(tmp_path / name, compress)
    data = tmp_path / data_name
    assert data.exists()
    _cut(data, "half")
    with pytest.raises(InputError) as error:
        read_volume(header)
    assert str(error.value).startswith(f"{header}: truncated: its data file {data} ")
    data.unlink()
    with pytest.raises(InputError) as error:
        read_volume(header)
    assert str(error.value) == f"{header}: its data file {data} is not found"


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nrrd", "bad.mha"])
def test_a_damaged_compressed_volume_is_refused_naming_it(tmp_path, name):
    path = _write(tmp_path / name, True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit in the compressed voxels
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as error:
        read_volume(path)
    message = str(error.value)
    assert message.startswith(f"{path}: damaged: ") and "\n" not in message


def test_a_cut_off_h5_file_is_refused_as_truncated_naming_it(tmp_path):
    import h5py

    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as handle:
        handle["image"] = _voxels().astype(np.float32)
    _cut(path, "half")
    with pytest.raises(InputError) as error:
        read_volume(path)
    assert str(error.value).startswith(f"{path}: truncated: ")


@pytest.mark.parametrize(
    "name, compress",
    [
        ("ok.nii.gz", True),
        ("ok.nii", False),
        ("ok.nrrd", False),
        ("ok.nrrd", True),
        ("ok.nhdr", False),
        ("ok.nhdr", True),
        ("ok.mha", False),
        ("ok.mha", True),
        ("ok.mhd", False),
        ("ok.mhd", True),
    ],
)
def test_whole_files_of_every_format_read_back_every_voxel(tmp_path, name, compress):
    path = _write(tmp_path / name, compress)
    volume = read_volume(path)
    assert np.array_equal(volume.array, np.transpose(_voxels(), (2, 1, 0)))


def test_evaluate_refuses_a_truncated_truth_with_exit_code_2(tmp_path, capsys):
    label = (np.random.default_rng(2).random(SHAPE_ZYX[::-1]) < 0.5).astype(np.uint8)
    volume = volume_from_array(label)
    truth = write_like(volume, label, tmp_path / "truth" / "a.nii.gz")
    write_like(volume, label, tmp_path / "pred" / "a.nii.gz")
    _cut(truth, "half")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"rada: {truth}: truncated: ") and "\n" not in err


# ----------------------------------------------------------------------------- label values


def _image_and_sparse(tmp_path, stray: int, name: str = "sparse.nrrd"):
    """An image and a sparse label painted with class 1 on one slice per plane, plus a patch
    of value ``stray`` on the axial slice."""
    image = np.random.default_rng(1).random((16, 14, 12)).astype(np.float32)
    volume = volume_from_array(image)
    sparse = np.zeros(image.shape, np.uint8)
    sparse[8, 3:10, 3:9] = 1
    sparse[4:12, 7, 3:9] = 1
    sparse[4:12, 3:10, 6] = 1
    sparse[2:4, 2:4, 6] = stray
    image_path = write_like(volume, image, tmp_path / "img" / "c0.nrrd")
    sparse_path = write_like(volume, sparse, tmp_path / "sparse" / name)
    return image_path, sparse_path


def test_a_sparse_label_holding_a_value_that_is_no_class_of_the_cohort_is_refused(tmp_path):
    image_path, sparse_path = _image_and_sparse(tmp_path, 255)
    case = Case("c0", image_path, sparse_label=sparse_path)
    with pytest.raises(InputError) as error:
        case_annotation(case, read_volume(image_path), classes={1: "left atrium"})
    assert str(error.value) == (
        f"{sparse_path}: label values 255 are not classes of this cohort "
        "(valid: 0 background, 1 left atrium)"
    )


def test_a_dense_label_to_simulate_from_holding_another_class_is_refused(tmp_path):
    image_path, dense_path = _image_and_sparse(tmp_path, 2, "dense.nrrd")
    case = Case("c0", image_path, dense_label=dense_path, simulate_from_dense=True)
    with pytest.raises(InputError, match=r"dense\.nrrd: label values 2 are not classes"):
        case_annotation(case, read_volume(image_path), classes={1: "left atrium"})


def test_propagate_refuses_a_sparse_label_holding_255_before_registering(
    tmp_path, capsys, monkeypatch
):
    import RADALib.registration as registration

    class NoRegistrar:
        def __init__(self, config=None, workers=0):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def register(self, pairs, spacing):
            raise AssertionError("the label should have been refused before any registration")

    monkeypatch.setattr(registration, "AntsRegistrar", NoRegistrar)
    image_path, sparse_path = _image_and_sparse(tmp_path, 255)
    manifest = tmp_path / "cohort.json"
    manifest.write_text(
        json.dumps(
            {
                "format": "rada-cohort/1",
                "name": "t",
                "classes": {"1": "left atrium"},
                "cases": [{"id": "c0", "image": str(image_path), "sparse_label": str(sparse_path)}],
            }
        )
    )
    code = main(["propagate", "--cohort", str(manifest), "--out", str(tmp_path / "out")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert code == 2
    assert last.startswith(f"rada: {sparse_path}: label values 255 are not classes of this cohort")
    assert not (tmp_path / "out" / "cases" / "c0" / "case.json").exists()


# ----------------------------------------------------------------------------- geometry


def _random_header(rng: np.random.Generator):
    """A random axis-aligned header: the file axes in any order, each in either direction."""
    permutation = rng.permutation(3)
    signs = rng.choice([-1.0, 1.0], size=3)
    direction = np.zeros((3, 3))
    for file_axis, world_axis in enumerate(permutation):
        direction[world_axis, file_axis] = signs[file_axis]
    spacing = tuple(float(s) for s in np.round(rng.uniform(0.3, 4.0, size=3), 3))
    origin = tuple(float(o) for o in np.round(rng.uniform(-200.0, 200.0, size=3), 2))
    shape_xyz = tuple(int(n) for n in rng.integers(2, 9, size=3))
    return shape_xyz, spacing, origin, tuple(direction.ravel().tolist())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_read_canonical_write_gives_back_the_header_and_voxels_for_random_orientations(
    tmp_path, suffix
):
    rng = np.random.default_rng(27)
    for number in range(25):
        shape_xyz, spacing, origin, direction = _random_header(rng)
        voxels = rng.integers(0, 200, size=shape_xyz[::-1]).astype(np.int16)  # (z, y, x)
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
        source = tmp_path / f"in{number}{suffix}"
        sitk.WriteImage(image, str(source))
        stored = sitk.ReadImage(str(source))  # the header as the file holds it

        volume = read_volume(source, "label")
        # canonical: every array axis runs along its patient axis, in the positive direction
        np.testing.assert_allclose(volume.direction, np.eye(3), atol=1e-6)
        corner = np.asarray(volume.origin) + volume.direction @ (
            (np.asarray(volume.shape) - 1) * volume.spacing
        )
        first = stored.TransformIndexToPhysicalPoint((0, 0, 0))
        last = stored.TransformIndexToPhysicalPoint(tuple(int(n) - 1 for n in stored.GetSize()))
        low, high = np.minimum(first, last), np.maximum(first, last)
        np.testing.assert_allclose(volume.origin, low, atol=1e-4)
        np.testing.assert_allclose(corner, high, atol=1e-4)

        back = sitk.ReadImage(str(write_like(volume, volume.array, tmp_path / f"out{suffix}")))
        case = f"case {number}: {shape_xyz} {spacing} {origin} {direction}"
        assert back.GetSize() == stored.GetSize(), case
        np.testing.assert_allclose(back.GetSpacing(), stored.GetSpacing(), rtol=1e-6, err_msg=case)
        np.testing.assert_allclose(back.GetOrigin(), stored.GetOrigin(), atol=1e-4, err_msg=case)
        np.testing.assert_allclose(
            back.GetDirection(), stored.GetDirection(), atol=1e-6, err_msg=case
        )
        np.testing.assert_allclose(stored.GetDirection(), direction, atol=1e-6, err_msg=case)
        np.testing.assert_allclose(stored.GetSpacing(), spacing, rtol=1e-6, err_msg=case)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), voxels, err_msg=case)
