"""Slices painted on an oblique image's own grid stay whole slices under --oblique resample."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from RADALib.cli import main

ANGLE = np.radians(20)
ROTATION = np.array(  # 20 degrees about the patient's z axis
    [[np.cos(ANGLE), -np.sin(ANGLE), 0], [np.sin(ANGLE), np.cos(ANGLE), 0], [0, 0, 1]]
)
SPACING = (1.0, 1.0, 1.5)
ORIGIN = (10.0, -5.0, 3.0)
N = 32


def write_oblique(path, array_ijk, spacing=SPACING, origin=ORIGIN, direction=ROTATION):
    """Write an (i, j, k) file-order array with the oblique test header."""
    image = sitk.GetImageFromArray(np.transpose(array_ijk, (2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def read_ijk(path):
    image = sitk.ReadImage(str(path))
    return image, np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0))


def sphere_case(tmp_path, paint):
    """An oblique image of a ball, and ``paint(ball, world)`` as its sparse label (same header)."""
    i, j, k = np.mgrid[0:N, 0:N, 0:N]
    world = np.asarray(ORIGIN) + (np.stack([i, j, k], -1) * SPACING) @ ROTATION.T
    ball = np.linalg.norm(world - world[16, 15, 16], axis=-1) <= 8
    noise = np.random.default_rng(0).normal(0, 5, ball.shape)
    write_oblique(tmp_path / "img" / "c0.nrrd", (ball * 100.0 + noise).astype(np.float32))
    label = paint(ball, world).astype(np.uint8)
    write_oblique(tmp_path / "sparse" / "c0.nrrd", label)
    cohort = tmp_path / "cohort.json"
    assert (
        main(
            [
                "cohort",
                "--images",
                str(tmp_path / "img"),
                "--sparse-labels",
                str(tmp_path / "sparse"),
                "--out",
                str(cohort),
            ]
        )
        == 0
    )
    return cohort, label


def on_index_planes(ball, world):
    """One sagittal, one coronal and one axial slice of the image's own (oblique) grid."""
    label = np.zeros(ball.shape, bool)
    label[16] = ball[16]
    label[:, 15] = ball[:, 15]
    label[:, :, 17] = ball[:, :, 17]
    return label


def on_patient_planes(ball, world):
    """Planes of the patient (x, y, z = const) rasterised on the oblique grid: tilted there."""
    centre = world[16, 15, 16]
    label = np.zeros(ball.shape, bool)
    for axis, half in enumerate((0.5, 0.5, 0.75)):
        label |= ball & (np.abs(world[..., axis] - centre[axis]) <= half)
    return label


def propagate(cohort, out):
    return main(
        ["propagate", "--cohort", str(cohort), "--out", str(out), "--no-cache"]
        + ["--oblique", "resample"]
    )


def test_slices_painted_on_an_oblique_grid_are_propagated_on_it_and_kept_exact(
    tmp_path, fake_ants, capsys
):
    cohort, painted = sphere_case(tmp_path, on_index_planes)
    assert propagate(cohort, tmp_path / "out") == 0, capsys.readouterr().err
    folder = tmp_path / "out" / "cases" / "c0"
    record = json.loads((folder / "case.json").read_text())
    assert record["slices"] == {"sagittal": [16], "coronal": [15], "axial": [17]}
    original = sitk.ReadImage(str(tmp_path / "img" / "c0.nrrd"))
    for name in ("sparse", "pseudo_sagittal", "pseudo_coronal", "pseudo_axial", "fused"):
        written, array = read_ijk(folder / f"{name}.nrrd")
        assert written.GetSize() == original.GetSize(), name
        np.testing.assert_allclose(written.GetSpacing(), original.GetSpacing())
        np.testing.assert_allclose(written.GetOrigin(), original.GetOrigin())
        np.testing.assert_allclose(written.GetDirection(), original.GetDirection(), atol=1e-12)
        if name == "sparse":
            np.testing.assert_array_equal(array, painted)  # voxel for voxel, nothing moved
    _, axial = read_ijk(folder / "pseudo_axial.nrrd")
    np.testing.assert_array_equal(axial[:, :, 17] > 0, painted[:, :, 17] > 0)
    assert "oblique and its annotation lies on its own grid" in capsys.readouterr().err


def test_patient_planes_painted_on_an_oblique_grid_are_refused_saying_how_to_paint(
    tmp_path, fake_ants, capsys
):
    cohort, _ = sphere_case(tmp_path, on_patient_planes)
    assert propagate(cohort, tmp_path / "out") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rada:")]
    assert len(err) == 1
    assert err[0].startswith(f"rada: {tmp_path / 'sparse' / 'c0.nrrd'}: ")
    assert "the image is oblique" in err[0] and "Rotate to volume plane" in err[0]


def test_a_label_on_the_axis_aligned_grid_still_gets_the_image_resampled(tmp_path):
    from RADALib.volume import read_image_for_label, read_volume, volume_from_array, write_like

    data = np.zeros((12, 12, 8), np.float32)
    data[3:8, 4:9, 2:6] = 1.0
    image_path = write_oblique(tmp_path / "img.nrrd", data)
    resampled = read_volume(image_path, oblique="resample")
    label_path = tmp_path / "label.nrrd"  # painted on the image as resampled (axis-aligned)
    grid = volume_from_array(resampled.array, resampled.spacing, resampled.origin)
    write_like(grid, (resampled.array > 0.5).astype(np.uint8), label_path)
    image = read_image_for_label(image_path, label_path, "resample")
    assert image.file is not None and image.file.resampled
    assert image.same_grid(grid) is None
    kept = read_image_for_label(image_path, image_path, "resample")  # a label on its own grid
    assert kept.file is not None and not kept.file.resampled and kept.shape == (12, 12, 8)
    np.testing.assert_array_equal(kept.array, data)
