"""Reading refuses what is not the file the user saved: cut-off or damaged volume files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from RADALib.cli import main
from RADALib.errors import InputError
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
