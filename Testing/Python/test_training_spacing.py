"""The training spacing end to end: the setting, its planning, training cases resampled (and
cached), bundles with and without a spacing, and a cohort of mixed, anisotropic spacings that
trains and predicts on each input's own grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import TranslationRegistrar
from test_inference import tiny_bundle

import RADALib.inference as inference_module
import RADALib.resampling as resampling_module
from RADALib.bundle import load_bundle
from RADALib.cache import ArrayCache
from RADALib.checkpoint import check_compatible
from RADALib.cli import main
from RADALib.cohort import Case, Cohort
from RADALib.data import load_training_cases
from RADALib.errors import InputError, RADAError
from RADALib.events import Progress
from RADALib.inference import predict_files, predict_volume
from RADALib.metrics import dice
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import propagate_cohort
from RADALib.train_config import preset
from RADALib.training import with_training_spacing
from RADALib.volume import read_volume, volume_from_array, write_like

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERMUTED = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)
ISOTROPIC, ANISOTROPIC = (1.0, 1.0, 1.0), (0.7, 0.7, 3.0)
SHAPES = {ISOTROPIC: (40, 40, 40), ANISOTROPIC: (57, 57, 13)}  # the same 40 mm field of view


def phantom(spacing, centre_mm=(-6.0, 4.0, 5.0), radius_mm=10.0, seed=0):
    """A bright ball off the centre of a 40 mm field of view, on the grid of ``spacing``:
    (image, label). The same physical object on every grid."""
    shape = SHAPES[tuple(spacing)]
    axes = [(np.arange(n) - (n - 1) / 2.0) * s - c for n, s, c in zip(shape, spacing, centre_mm)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    label = (x**2 + y**2 + z**2 <= radius_mm**2).astype(np.uint8)
    noise = np.random.default_rng(seed).normal(0.0, 0.15, shape)
    return (label + noise).astype(np.float32), label


def write_case(folder, name, spacing, direction=None, **kwargs):
    """The phantom as NRRD files (image, dense label); their volume."""
    image, label = phantom(spacing, **kwargs)
    volume = volume_from_array(image, spacing, (3.0, -20.0, 11.0), direction)
    image_path = write_like(volume, image, folder / "images" / f"{name}.nrrd")
    label_path = write_like(volume, label, folder / "labels" / f"{name}.nrrd")
    return image_path, label_path


# ----------------------------------------------------------------------------- the setting


def test_the_spacing_setting_takes_a_triple_one_number_or_text_and_refuses_nonsense():
    assert preset("small").spacing is None and preset("paper").spacing is None
    assert preset("small", spacing="1.25,1.25,2.5").spacing == (1.25, 1.25, 2.5)
    assert preset("small", spacing=1.5).spacing == (1.5, 1.5, 1.5)
    config = preset("small", spacing=[0.8, 0.8, 2])
    assert config.to_dict()["spacing"] == [0.8, 0.8, 2.0]
    assert config.replace(spacing=None).spacing is None
    for bad in ("0,1,1", "a,b,c", [1.0, 2.0], float("nan"), -1, [1, 1, float("inf")]):
        with pytest.raises(ValueError, match="spacing"):
            preset("small", spacing=bad)


def test_rada_settings_lists_the_spacing_and_set_reads_it(capsys):
    assert main(["settings", "--preset", "small"]) == 0
    assert "spacing=null" in capsys.readouterr().out.split()
    assert main(["settings", "--set", "spacing=1.25,1.25,1.25"]) == 0
    assert "spacing=[1.25,1.25,1.25]" in capsys.readouterr().out.split()
    assert main(["settings", "--set", "spacing=0,1,1"]) == 2
    assert "TrainConfig.spacing" in capsys.readouterr().err


def test_a_checkpoint_from_before_training_spacings_resumes_but_another_spacing_does_not(
    tmp_path,
):
    config = preset("small", spacing=[1.0, 1.0, 1.0])
    saved = config.to_dict()
    check_compatible({k: v for k, v in saved.items() if k != "spacing"}, config, tmp_path)
    with pytest.raises(RADAError, match="spacing"):
        check_compatible({**saved, "spacing": [2.0, 2.0, 2.0]}, config, tmp_path)


# ----------------------------------------------------------------------------- training cases


def mixed_cohort(folder, dense_labeled=2):
    """Four cases, two per spacing, the first ``dense_labeled`` labeled from dense labels."""
    cases = []
    for i, spacing in enumerate((ISOTROPIC, ANISOTROPIC, ISOTROPIC, ANISOTROPIC)):
        shift = (-6.0 + 2 * i, 4.0 - i, 5.0 - 2 * i)
        image, label = write_case(folder, f"c{i}", spacing, centre_mm=shift, seed=i)
        cases.append(Case(f"c{i}", image, None, label, simulate_from_dense=i < dense_labeled))
    return Cohort("mixed", cases, {1: "left atrium"})


def test_the_training_spacing_is_the_cohorts_median_unless_set(tmp_path):
    cohort = mixed_cohort(tmp_path)
    events: list[dict] = []
    planned = with_training_spacing(preset("small"), cohort, Progress(events.append))
    assert planned.spacing == (0.85, 0.85, 2.0)
    assert (
        "training spacing 0.85 x 0.85 x 2 mm (the cohort's median spacing per axis); "
        in (events[-1]["message"])
    )
    assert "4 of 4 training volume(s) resampled" in events[-1]["message"]
    chosen = with_training_spacing(preset("small", spacing=1.0), cohort, Progress(events.append))
    assert chosen.spacing == ISOTROPIC
    assert "(set); 2 of 4 training volume(s) resampled" in events[-1]["message"]


def test_a_spacing_factor_coarsens_the_planned_median_and_says_so(tmp_path):
    events: list[dict] = []
    planned = with_training_spacing(
        preset("small", spacing_factor=2.0), mixed_cohort(tmp_path), Progress(events.append)
    )
    assert planned.spacing == (1.7, 1.7, 4.0)
    assert "(the cohort's median spacing per axis x 2)" in events[-1]["message"]
    with pytest.raises(ValueError, match="spacing_factor"):
        preset("small", spacing_factor=0)


def test_a_fitted_spacing_coarsens_only_as_far_as_the_structures_need_to_fit_the_window(
    tmp_path,
):
    from RADALib.data import labeled_window_needs_mm

    cohort = mixed_cohort(tmp_path)  # a ball of 20 mm across in a 40 mm field of view
    needs = labeled_window_needs_mm(cohort, None, require_propagation=False)
    assert len(needs) == 2
    for need in needs:  # the three slices bound the ball (about 21 mm) times 1.5, within 40 mm
        assert all(29.0 <= n <= 34.0 for n in need)
    ratio = max(n / (0.85 * 16) for need in needs for n in need[:2])  # x, y bind at 0.85 mm
    fit = dict(fit_spacing=True, use_registration=False, spacing_factor=3.0)
    events: list[dict] = []
    small_window = with_training_spacing(
        preset("small", patch=[16, 16, 16], **fit), cohort, Progress(events.append)
    )
    assert small_window.spacing == pytest.approx(
        tuple(round(ratio, 3) * s for s in (0.85, 0.85, 2.0))
    )
    assert 2.0 < ratio < 3.0 and f"x {round(ratio, 3):g}, fitted:" in events[-1]["message"]
    capped = with_training_spacing(
        preset("small", patch=[16, 16, 16], **{**fit, "spacing_factor": 2.0}), cohort
    )
    assert capped.spacing == (1.7, 1.7, 4.0)  # never coarser than spacing_factor
    roomy = with_training_spacing(preset("small", patch=[48, 48, 48], **fit), cohort)
    assert roomy.spacing == (0.85, 0.85, 2.0)  # it fits already: the cohort's own voxels
    assert not preset("small").fit_spacing and preset("cpu").fit_spacing


def test_the_fitted_spacing_factor_is_the_largest_need_per_voxel_of_window_clamped():
    from RADALib.patch_size import fitted_spacing_factor, window_need_mm

    assert window_need_mm((20.0, 40.0, 8.0), (100.0, 50.0, 100.0)) == (30.0, 50.0, 12.0)
    needs = [(30.0, 50.0, 12.0), (60.0, 10.0, 10.0)]
    # 60 mm at 0.5 mm in 48 voxels: 2.5; 50 mm at 0.5 mm in 48: 2.08; z: 12 mm at 1 mm in 32
    assert fitted_spacing_factor((48, 48, 32), needs, (0.5, 0.5, 1.0), 3.0) == pytest.approx(2.5)
    assert fitted_spacing_factor((48, 48, 32), needs, (0.5, 0.5, 1.0), 2.0) == 2.0
    assert fitted_spacing_factor((128, 128, 32), needs, (0.5, 0.5, 1.0), 3.0) == 1.0
    assert fitted_spacing_factor((48, 48, 32), [], (0.5, 0.5, 1.0), 3.0) == 3.0


def test_training_cases_are_resampled_into_the_training_spacing_and_cached(tmp_path, monkeypatch):
    cohort = mixed_cohort(tmp_path)
    propagate_cohort(cohort, tmp_path / "propagation", TranslationRegistrar(), PropagationConfig())
    native, _ = load_training_cases(cohort, tmp_path / "propagation")
    cache = ArrayCache(tmp_path / "cache")
    labeled, unlabeled = load_training_cases(
        cohort, tmp_path / "propagation", spacing=ISOTROPIC, cache=cache
    )
    # the case already at the training spacing is untouched, array for array
    assert labeled[0].image is not None and labeled[0].shape == (40, 40, 40)
    np.testing.assert_array_equal(labeled[0].image, native[0].image)
    np.testing.assert_array_equal(labeled[0].labels[2], native[0].labels[2])
    # the anisotropic ones now have the training grid over the same field of view
    assert labeled[1].shape == (40, 40, 39) and unlabeled[1].shape == (40, 40, 39)
    assert labeled[1].annotated_slabs is not None
    assert all(len(s) == 1 for s in labeled[1].annotated_slabs)  # one whole slice per plane
    for view in range(3):  # each view's pseudo-label, resampled (and true on annotated slices)
        expected = resampling_module.resample_labels(native[1].labels[view], ANISOTROPIC, ISOTROPIC)
        assert dice(labeled[1].labels[view], expected) > 0.95
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # the two anisotropic cases

    def no_resampling(*args):
        raise AssertionError("resampled again instead of read from the cache")

    monkeypatch.setattr(resampling_module, "resample_case", no_resampling)
    again, _ = load_training_cases(cohort, tmp_path / "propagation", spacing=ISOTROPIC, cache=cache)
    np.testing.assert_array_equal(again[1].image, labeled[1].image)
    np.testing.assert_array_equal(again[1].distances[0], labeled[1].distances[0])
    np.testing.assert_array_equal(again[1].annotated, labeled[1].annotated)


# ----------------------------------------------------------------------------- inference


def with_spacing(folder, spacing):
    """Write ``spacing`` into the bundle's manifest (and its checksum stays valid: the weights
    are unchanged)."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inference"]["spacing"] = spacing
    path.write_text(json.dumps(manifest))
    return folder


def test_an_old_bundle_without_a_spacing_predicts_on_each_volumes_own_grid(tmp_path):
    bundle = load_bundle(tiny_bundle(tmp_path))
    assert "spacing" not in bundle.manifest["inference"] and bundle.spacing is None
    volume = volume_from_array(phantom(ANISOTROPIC)[0], ANISOTROPIC)
    prediction = predict_volume(bundle, volume, return_probabilities=True)
    assert prediction.label.shape == SHAPES[ANISOTROPIC]
    # the same as a bundle whose training spacing is the volume's own
    same = load_bundle(with_spacing(tiny_bundle(tmp_path, name="same"), list(ANISOTROPIC)))
    assert same.spacing == ANISOTROPIC
    again = predict_volume(same, volume, return_probabilities=True)
    np.testing.assert_array_equal(again.probabilities, prediction.probabilities)


@pytest.mark.parametrize("spacing", [[1.0, 1.0], [1.0, 0.0, 1.0], "1,1,1", [1.0, None, 1.0]])
def test_a_bundle_with_a_malformed_spacing_is_refused(tmp_path, spacing):
    with pytest.raises(InputError, match="inference.spacing"):
        load_bundle(with_spacing(tiny_bundle(tmp_path), spacing))


def test_the_networks_run_at_the_training_spacing_and_labels_keep_the_input_header(
    tmp_path, monkeypatch
):
    seen = []

    def bright_is_foreground(*args):  # the networks' place: probabilities from intensity
        image = torch.from_numpy(args[-1])
        seen.append(tuple(image.shape))
        foreground = torch.sigmoid(8.0 * (image - 1.5))  # z-scored: the ball is near 3
        return torch.stack([1.0 - foreground, foreground])

    monkeypatch.setattr(inference_module, "_volume_probabilities", bright_is_foreground)
    folder = with_spacing(tiny_bundle(tmp_path), [1.0, 1.0, 1.0])
    image_path, label_path = write_case(tmp_path, "aniso", ANISOTROPIC, direction=PERMUTED)
    [output] = predict_files(folder, [image_path], tmp_path / "out", write_probabilities=True)
    # the file's axes (57 x 0.7, 57 x 0.7, 13 x 3 mm) in canonical order are 0.7, 3 and 0.7 mm
    assert read_volume(image_path).spacing == pytest.approx((0.7, 3.0, 0.7))
    assert seen == [(40, 39, 40)]  # at 1 mm
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(image_path))
    assert written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
    assert written.GetOrigin() == source.GetOrigin()
    assert written.GetDirection() == source.GetDirection()
    probabilities = sitk.ReadImage(str(tmp_path / "out" / "aniso_rada_probabilities.nrrd"))
    assert probabilities.GetSize() == source.GetSize()
    truth = read_volume(label_path, "label").array
    assert dice(read_volume(output, "label").array, truth) > 0.9


# ----------------------------------------------------------------------------- end to end


def test_a_cohort_of_mixed_and_anisotropic_spacings_trains_and_predicts_on_each_grid(
    tmp_path, monkeypatch
):
    from RADALib import workflow

    # no frozen encoders: this test is about geometry (Et is fed as zeros, no region prompt)
    monkeypatch.setattr(workflow, "_embed_for_training", lambda *args: None)
    cohort = mixed_cohort(tmp_path / "train")
    experiment = tmp_path / "experiment"
    propagate_cohort(
        cohort, experiment / "propagation", TranslationRegistrar(), PropagationConfig()
    )
    config = preset(
        "small",
        iterations=60,
        patch=(16, 16, 16),
        device="cpu",
        validate_every=0,
        checkpoint_every=0,
        prefetch=0,
        **{"schedule.base_lr": 0.05},
    )
    events: list[dict] = []
    run = workflow.train_model(
        cohort,
        experiment,
        config,
        propagation_dir=experiment / "propagation",
        cache_dir=tmp_path / "cache",
        progress=Progress(events.append),
    )
    assert any("training spacing 0.85 x 0.85 x 2 mm" in e.get("message", "") for e in events)
    assert load_bundle(run.model).spacing == (0.85, 0.85, 2.0)

    # held-out volumes of both spacings, the second one stored in another axis order
    unseen = [
        write_case(tmp_path / "test", "iso", ISOTROPIC, centre_mm=(8.0, -7.0, -6.0), seed=7),
        write_case(tmp_path / "test", "aniso", ANISOTROPIC, PERMUTED, centre_mm=(8.0, -7.0, -6.0)),
    ]
    outputs = predict_files(run.model, [image for image, _ in unseen], tmp_path / "out")
    for output, (image_path, label_path) in zip(outputs, unseen):
        written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(image_path))
        assert written.GetSize() == source.GetSize()
        assert written.GetSpacing() == source.GetSpacing()
        assert written.GetOrigin() == source.GetOrigin()
        assert written.GetDirection() == source.GetDirection()
        predicted = read_volume(output, "label").array
        truth = read_volume(label_path, "label")
        # a flipped prediction of this off-centre ball scores 0, one shifted by 3 mm along any
        # axis below the floor that the trained model clears
        assert dice(np.flip(truth.array), truth.array) == 0.0
        for axis, size in enumerate(truth.spacing):
            shifted = np.roll(truth.array, max(1, round(3.0 / size)), axis)
            assert dice(shifted, truth.array) < 0.85
        assert dice(predicted, truth.array) > 0.88
