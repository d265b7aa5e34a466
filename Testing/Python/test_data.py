"""Tests of RADALib.data: cases in memory, crops with padding, aligned augmentation, sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from RADALib.cohort import Case, Cohort
from RADALib.data import (
    BatchPrefetcher,
    TrainingCase,
    TwoStreamSampler,
    augment,
    crop_window,
    extract,
    load_training_cases,
    normalize_intensity,
)
from RADALib.errors import InputError
from RADALib.intensity_augmentation import IntensityAugmentation, apply_contrast_shift
from RADALib.networks import VIEWS
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import load_case_result, propagate_cohort
from RADALib.registration import PairResult, identity_coordinates
from RADALib.scale_augmentation import ScaleAugmentation, resize_patch, source_window
from RADALib.train_config import TrainConfig
from RADALib.volume import volume_from_array, write_like

# ----------------------------------------------------------------------------- helpers (also used by test_training)


class IdentityRegistrar:
    """A registrar that never moves anything (propagation copies the source slice along)."""

    def register(self, pairs, spacing):
        return [PairResult(identity_coordinates(f.shape), "fake") for f, _ in pairs]


def blob_case(seed: int, shape=(32, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """A bright noisy ball (label) in a darker noisy volume, raw intensities around 100."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    radius = min(shape) * 0.25 + rng.uniform(-1, 1)
    label = (((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2).astype(np.uint8)
    image = (100 + 40 * label + rng.normal(0, 4, shape)).astype(np.float32)
    return image, label


def write_cohort(
    folder: Path, n_labeled: int = 2, n_unlabeled: int = 2, shape=(32, 32, 32)
) -> Cohort:
    cases = []
    for i in range(n_labeled + n_unlabeled):
        image, label = blob_case(i, shape)
        reference = volume_from_array(image, (1.0, 1.0, 1.0))
        image_path = write_like(reference, image, folder / "images" / f"case{i}.nrrd")
        label_path = write_like(reference, label, folder / "labels" / f"case{i}_label.nrrd")
        cases.append(
            Case(f"case{i}", image_path, None, label_path, simulate_from_dense=i < n_labeled)
        )
    return Cohort("blobs", cases, {1: "ball"})


def propagated_cohort(folder: Path, **kw) -> tuple[Cohort, Path]:
    cohort = write_cohort(folder, **kw)
    propagate_cohort(cohort, folder / "propagation", IdentityRegistrar(), PropagationConfig())
    return cohort, folder / "propagation"


def synthetic_training_case(
    case_id: str, shape=(20, 20, 12), seed: int = 0, labeled: bool = True
) -> TrainingCase:
    """An in-memory case with label = image > 0 and annotated slices in the middle of each axis."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32)
    if not labeled:
        return TrainingCase(case_id, image)
    label = (image > 0).astype(np.uint8)
    mask = np.zeros(shape, bool)
    mask[shape[0] // 2] = mask[:, shape[1] // 2] = mask[:, :, shape[2] // 2] = True
    distances = tuple(np.abs(np.arange(n) - n // 2).astype(np.float32) for n in shape)
    return TrainingCase(case_id, image, (label, label, label), distances, mask, label * mask)


@pytest.fixture(scope="module")
def disk_cohort(tmp_path_factory):
    return propagated_cohort(tmp_path_factory.mktemp("cohort"))


# ----------------------------------------------------------------------------- loading


def test_load_training_cases_normalizes_and_carries_the_views(disk_cohort):
    cohort, propagation = disk_cohort
    labeled, unlabeled = load_training_cases(cohort, propagation)
    assert [c.id for c in labeled] == ["case0", "case1"] and [c.id for c in unlabeled] == [
        "case2",
        "case3",
    ]
    for case in labeled + unlabeled:
        assert case.image.dtype == np.float32 and case.image.shape == (32, 32, 32)
        assert (
            abs(float(case.image.mean())) < 1e-4 and abs(float(case.image.std()) - 1) < 1e-3
        )  # z-score
        assert case.pad_value == pytest.approx(float(case.image.min()))
    case = labeled[0]
    assert len(case.labels) == 3 and all(
        a.dtype == np.uint8 and a.shape == (32, 32, 32) for a in case.labels
    )
    assert [d.shape for d in case.distances] == [(32,), (32,), (32,)]
    assert all(float(d.min()) == 0.0 for d in case.distances)  # the source slice of each view
    assert case.annotated.any() and not case.annotated.all()
    assert np.array_equal(
        case.sparse[case.annotated] > 0, case.labels[0][case.annotated] > 0
    )  # mixing keeps the truth
    assert not unlabeled[0].labeled and unlabeled[0].labels is None


def test_fused_label_source_gives_every_view_the_fused_pseudo_label_with_weight_one(disk_cohort):
    cohort, propagation = disk_cohort
    fused = load_case_result(propagation / "cases" / "case0").fused()
    views = load_training_cases(cohort, propagation)[0][0]
    case = load_training_cases(cohort, propagation, label_source="fused")[0][0]
    assert all(np.array_equal(label, fused) for label in case.labels)
    assert not all(
        np.array_equal(a, b) for a, b in zip(case.labels, views.labels)
    )  # not the views' own Ỹv
    assert np.array_equal(case.annotated, views.annotated) and np.array_equal(
        case.sparse, views.sparse
    )
    # the sampler's weights: 1 on every voxel, whatever α (no α^d decay)
    sampler = TwoStreamSampler(
        [case], [], patch=(32, 32, 32), labeled_batch=1, seed=0, augment=False
    )
    batch = sampler.sample(alpha=0.5)
    for view in VIEWS:
        assert batch.w_l[view][0].numpy().min() == 1.0
        assert np.array_equal(batch.y_l[view][0].numpy(), fused)


def test_fused_label_source_learns_the_fusion_the_propagation_was_reviewed_with(disk_cohort):
    cohort, propagation = disk_cohort
    result = load_case_result(propagation / "cases" / "case0")
    majority, weighted = result.fused("majority"), result.fused("weighted")
    assert not np.array_equal(majority, weighted)  # the two votes differ on this case
    case = load_training_cases(
        cohort, propagation, label_source="fused", fusion=("majority", 0.93)
    )[0][0]
    assert all(np.array_equal(label, majority) for label in case.labels)


def test_missing_propagation_and_missing_labels_are_clear_errors(disk_cohort, tmp_path):
    cohort, _ = disk_cohort
    with pytest.raises(
        InputError, match=r"case case0 has no propagation result: run `rada propagate`"
    ):
        load_training_cases(cohort, tmp_path / "nowhere")
    # the no-registration ablation reads the sparse annotation itself
    labeled, _ = load_training_cases(cohort, tmp_path / "nowhere", require_propagation=False)
    assert np.isinf(labeled[0].distances[0]).all() and labeled[0].annotated.any()
    unlabeled_only = Cohort("x", [Case("u", cohort.cases[2].image)])
    with pytest.raises(InputError, match="no labeled training case"):
        load_training_cases(unlabeled_only, tmp_path)
    # no unlabeled case is not an error: training runs supervised only
    labeled, unlabeled = load_training_cases(cohort.select(["case0"]), disk_cohort[1])
    assert len(labeled) == 1 and unlabeled == []


def test_normalize_intensity_handles_constant_volumes():
    assert np.array_equal(
        normalize_intensity(np.full((3, 3, 3), 7.0)), np.zeros((3, 3, 3), np.float32)
    )
    z = normalize_intensity(np.arange(27, dtype=np.int16).reshape(3, 3, 3))
    assert z.dtype == np.float32 and abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-5


# ----------------------------------------------------------------------------- crops


def test_crop_pads_small_axes_and_padding_is_never_supervised():
    case = synthetic_training_case("a", shape=(20, 20, 12))
    sampler = TwoStreamSampler(
        [case], [], patch=(16, 16, 16), labeled_batch=3, seed=0, augment=False
    )
    batch = sampler.sample(alpha=0.9)
    assert tuple(batch.x_l.shape) == (3, 1, 16, 16, 16) and batch.x_u is None
    pad = np.r_[0:2, 14:16]  # 12 slices centred in 16
    for view in VIEWS:
        assert batch.y_l[view].dtype == torch.uint8 and tuple(batch.y_l[view].shape) == (
            3,
            16,
            16,
            16,
        )
        assert float(batch.w_l[view][..., pad].abs().max()) == 0.0
        assert int(batch.y_l[view][..., pad].max()) == 0
        assert float(batch.w_l[view][..., 2:14].min()) > 0.0  # alpha^d > 0 inside the volume
    assert torch.all(batch.x_l[..., pad] == case.pad_value)


def test_crop_window_is_uniform_and_in_bounds():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        (src, dst) = crop_window((20, 16, 10), (16, 16, 16), rng)
        assert src[0].stop - src[0].start == 16 and dst[0] == slice(0, 16)
        assert src[1] == slice(0, 16) and src[2] == slice(0, 10) and dst[2] == slice(3, 13)
        starts.add(src[0].start)
    assert starts == set(range(5))
    array = np.arange(20 * 16 * 10).reshape(20, 16, 10)
    out = extract(array, crop_window((20, 16, 10), (16, 16, 16), rng), (16, 16, 16), fill=-1)
    assert out.shape == (16, 16, 16) and (out[..., :3] == -1).all() and (out[..., 3:13] >= 0).all()


def test_weights_follow_equation_6_on_the_crop():
    case = synthetic_training_case("a", shape=(16, 16, 16))
    sampler = TwoStreamSampler(
        [case], [], patch=(16, 16, 16), labeled_batch=1, seed=0, augment=False
    )
    batch = sampler.sample(alpha=0.5)
    w = batch.w_l["axial"][0].numpy()
    expected = np.broadcast_to(0.5 ** case.distances[2][None, None, :], w.shape).copy()
    expected[case.annotated] = 1.0
    assert np.allclose(w, expected)
    assert np.array_equal(batch.y_l["coronal"][0].numpy(), case.labels[1])


def test_without_registration_only_annotated_voxels_supervise():
    case = synthetic_training_case("a", shape=(16, 16, 16))
    sampler = TwoStreamSampler(
        [case], [], (16, 16, 16), 1, 0, seed=0, use_registration=False, augment=False
    )
    batch = sampler.sample(alpha=0.97)
    for view in VIEWS:
        w = batch.w_l[view][0].numpy()
        assert np.array_equal(w > 0, case.annotated) and set(np.unique(w)) == {0.0, 1.0}
        assert np.array_equal(batch.y_l[view][0].numpy(), case.sparse)


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_image_labels_and_weights_aligned():
    # label = image > 0 and annotated mask = image > 0.5; with alpha 0 and no d = 0 left, W = mask
    shape = (24, 24, 16)
    rng = np.random.default_rng(3)
    image = rng.normal(size=shape).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    mask = image > 0.5
    distances = tuple(np.ones(n, np.float32) for n in shape)
    case = TrainingCase("a", image, (label, label, label), distances, mask, label * mask)
    sampler = TwoStreamSampler([case], [], (16, 16, 16), labeled_batch=2, seed=5)
    seen = set()
    for _ in range(12):
        batch = sampler.sample(alpha=0.0)
        x = batch.x_l[:, 0].numpy()
        inside = x != case.pad_value
        for view in VIEWS:
            y, w = batch.y_l[view].numpy(), batch.w_l[view].numpy()
            assert np.array_equal(y[inside], (x[inside] > 0).astype(np.uint8))
            assert np.array_equal(w[inside] > 0, x[inside] > 0.5)
        seen.add(x.tobytes())
    assert len(seen) > 1


def test_augmentation_reaches_the_8_in_plane_symmetries_and_keeps_shapes():
    base = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    transforms = {}
    for k in range(4):
        for flip in (False, True):
            transforms[augment(base, k, flip).tobytes()] = (k, flip)
    assert len(transforms) == 8  # the dihedral group of the square
    case = TrainingCase("u", base)
    sampler = TwoStreamSampler(
        [synthetic_training_case("l", (4, 4, 2))], [case], (4, 4, 2), 1, 1, seed=1
    )
    found = {transforms[sampler.sample(0.9).x_u[0, 0].numpy().tobytes()] for _ in range(160)}
    assert len(found) == 8
    # a non-square (x, y) patch only turns by 0 or 180 degrees, so batches keep their shape
    rect = TwoStreamSampler([synthetic_training_case("l", (8, 4, 2))], [], (8, 4, 2), 2, 0, seed=1)
    for _ in range(20):
        assert tuple(rect.sample(0.9).x_l.shape) == (2, 1, 8, 4, 2)


# ----------------------------------------------------------------------------- sampling


def _same(a, b) -> bool:
    return (
        torch.equal(a.x_l, b.x_l)
        and torch.equal(a.x_u, b.x_u)
        and a.labeled_ids == b.labeled_ids
        and all(torch.equal(a.y_l[v], b.y_l[v]) and torch.equal(a.w_l[v], b.w_l[v]) for v in VIEWS)
    )


def _sampler(seed=7):
    labeled = [synthetic_training_case(f"l{i}", (20, 18, 16), seed=i) for i in range(3)]
    unlabeled = [
        synthetic_training_case(f"u{i}", (18, 20, 16), seed=10 + i, labeled=False) for i in range(3)
    ]
    return TwoStreamSampler(labeled, unlabeled, (16, 16, 16), 2, 2, seed=seed)


def test_sampler_is_deterministic_and_its_state_round_trips():
    a, b = _sampler(), _sampler()
    first = [a.sample(0.9, t) for t in range(3)]
    assert all(_same(x, b.sample(0.9, t)) for t, x in enumerate(first))
    assert len(set(first[0].labeled_ids)) == 2  # without replacement inside a batch
    state = a.state()
    following = a.sample(0.9, 3)
    c = _sampler(seed=123)
    c.set_state(state)
    assert _same(c.sample(0.9, 3), following)
    assert first[2].sampler_state == state  # the state stored in a batch is the one after it
    assert not _same(_sampler(seed=8).sample(0.9), _sampler(seed=7).sample(0.9))


def test_prefetcher_yields_the_synchronous_sequence_and_resumes_exactly():
    direct = _sampler()
    expected = [direct.sample(0.97 - 0.1 * t, t) for t in range(5)]
    with BatchPrefetcher(_sampler(), lambda t: 0.97 - 0.1 * t, 0, 5, depth=2) as prefetcher:
        got = list(prefetcher)
    assert [b.iteration for b in got] == list(range(5))
    assert all(_same(x, y) for x, y in zip(expected, got))
    # resume after batch 2 from the state stored in it, although the thread had drawn further
    resumed = _sampler(seed=99)
    resumed.set_state(got[2].sampler_state)
    with BatchPrefetcher(resumed, lambda t: 0.97 - 0.1 * t, 3, 5, depth=2) as prefetcher:
        assert all(_same(x, y) for x, y in zip(expected[3:], prefetcher))


def test_prefetcher_stops_early_and_forwards_errors():
    with BatchPrefetcher(_sampler(), lambda t: 0.9, 0, 1000, depth=2) as prefetcher:
        for _batch in prefetcher:
            break
    assert prefetcher._thread is None

    def broken(t):
        raise RuntimeError("no alpha")

    with (
        pytest.raises(RuntimeError, match="no alpha"),
        BatchPrefetcher(_sampler(), broken, 0, 3, depth=1) as p,
    ):
        list(p)


def test_batch_to_makes_int64_labels():
    batch = _sampler().sample(0.9).to("cpu")
    assert all(batch.y_l[v].dtype == torch.int64 for v in VIEWS)
    assert batch.x_l.dtype == torch.float32 and batch.x_u.shape[0] == 2


# ----------------------------------------------------------------------------- intensity


def _intensity_sampler(probability: float, seed: int = 7) -> TwoStreamSampler:
    sampler = _sampler(seed)
    sampler.intensity = IntensityAugmentation(probability, contrast=0.3, shift=0.5)
    return sampler


def test_intensity_augmentation_changes_contrast_and_brightness_but_not_labels_or_crops():
    plain, changed = _intensity_sampler(0.0), _intensity_sampler(1.0)
    plain_batch = plain.sample(0.9)
    # the geometric draws come first for each patch, so the crops differ only after the first
    # labeled patch; compare that patch: same voxels, new contrast and brightness
    changed_batch = changed.sample(0.9)
    x0, x1 = plain_batch.x_l[0, 0].numpy(), changed_batch.x_l[0, 0].numpy()
    assert not np.allclose(x0, x1)
    mean0 = x0.mean(dtype=np.float64)
    slope, intercept = np.polyfit((x0 - mean0).ravel(), x1.ravel(), 1)
    assert 0.7 - 1e-4 <= slope <= 1.3 + 1e-4
    assert abs(intercept - mean0) <= 0.5 + 1e-4
    assert np.allclose(x1, (x0 - mean0) * slope + intercept, atol=1e-4)  # an affine map, no more
    for view in VIEWS:
        assert torch.equal(plain_batch.y_l[view][0], changed_batch.y_l[view][0])
        assert torch.equal(plain_batch.w_l[view][0], changed_batch.w_l[view][0])


def test_intensity_augmentation_off_leaves_a_seeded_run_as_it_was():
    baseline, off = _sampler(), _intensity_sampler(0.0)
    assert all(_same(baseline.sample(0.9, t), off.sample(0.9, t)) for t in range(4))


def test_intensity_augmentation_is_drawn_with_its_probability_and_in_its_ranges():
    rng = np.random.default_rng(0)
    augmentation = IntensityAugmentation(0.25, contrast=0.3, shift=0.5)
    draws = [augmentation.draw(rng) for _ in range(4000)]
    applied = [d for d in draws if d is not None]
    assert 0.22 < len(applied) / len(draws) < 0.28
    contrasts, shifts = np.array(applied).T
    assert contrasts.min() >= 0.7 and contrasts.max() <= 1.3
    assert shifts.min() >= -0.5 and shifts.max() <= 0.5
    assert contrasts.min() < 0.75 and contrasts.max() > 1.25  # the whole range is reached
    patch = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    out = apply_contrast_shift(patch.copy(), 2.0, 1.0)
    assert np.allclose(out, (patch - 3.5) * 2.0 + 3.5 + 1.0)


@pytest.mark.parametrize(
    "setting", [{"intensity_augment": 1.5}, {"intensity_contrast": 1.0}, {"intensity_shift": -0.1}]
)
def test_intensity_settings_out_of_range_are_refused(setting):
    with pytest.raises(ValueError, match="intensity"):
        TrainConfig(**setting)


def test_training_builds_its_sampler_with_the_configured_intensity_augmentation():
    from RADALib.training import build_sampler

    labeled = [synthetic_training_case("l", (20, 18, 16))]
    config = TrainConfig(
        patch=(16, 16, 16), intensity_augment=0.4, intensity_contrast=0.2, intensity_shift=0.1
    )
    sampler = build_sampler(config, labeled, [], seed=1)
    assert sampler.intensity == IntensityAugmentation(0.4, 0.2, 0.1)


# ----------------------------------------------------------------------------- scale


def _ramp_case(case_id: str, shape=(40, 40, 40)) -> TrainingCase:
    """Image = the x index; label 1 where x >= 20 (all three views); one annotated slice per axis."""
    x = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()
    label = (x >= 20).astype(np.uint8)
    mask = np.zeros(shape, bool)
    mask[:, :, shape[2] // 2] = True
    distances = tuple(np.abs(np.arange(n) - n // 2).astype(np.float32) for n in shape)
    return TrainingCase(case_id, x, (label, label, label), distances, mask, label * mask)


def test_scale_augmentation_zooms_image_labels_and_weights_together():
    sampler = TwoStreamSampler(
        [_ramp_case("a")],
        [],
        (16, 16, 16),
        1,
        0,
        seed=3,
        augment=False,
        scale=ScaleAugmentation(1.0, 0.25),
    )
    slopes = []
    for t in range(12):
        batch = sampler.sample(0.8, t)
        image = batch.x_l[0, 0].numpy()
        slope = float(np.mean(np.diff(image[:, 8, 8])))
        slopes.append(slope)
        assert 1 / 1.25 - 0.02 <= slope <= 1.25 + 0.02  # voxels per patch voxel = 1 / s
        for view in VIEWS:
            label = batch.y_l[view][0].numpy()
            assert set(np.unique(label)) <= {0, 1}  # still one class per voxel
            # the label follows the zoomed image: x >= 20 there, up to one boundary voxel
            disagree = label != (image >= 20)
            assert disagree.any(axis=(1, 2)).sum() <= 1
            weights = batch.w_l[view][0].numpy()
            assert weights.min() >= 0 and weights.max() <= 1
    assert min(slopes) < 0.95 and max(slopes) > 1.05  # zoomed both in and out
    # the annotated axial slice (weight 1) survives the zoom as whole slices of weight 1
    assert (batch.w_l["axial"][0].numpy() == 1.0).all(axis=(0, 1)).any()


def test_scale_augmentation_zooms_unlabeled_patches_too():
    sampler = TwoStreamSampler(
        [_ramp_case("a")],
        [TrainingCase("u", _ramp_case("u").image)],
        (16, 16, 16),
        1,
        1,
        seed=5,
        augment=False,
        scale=ScaleAugmentation(1.0, 0.25),
    )
    slopes = {
        round(float(np.mean(np.diff(sampler.sample(0.8, t).x_u[0, 0, :, 4, 4].numpy()))), 3)
        for t in range(6)
    }
    assert len(slopes) > 1 and all(0.78 <= s <= 1.27 for s in slopes)


def test_scale_augmentation_off_leaves_a_seeded_run_as_it_was():
    baseline, off = _sampler(), _sampler()
    off.scale = ScaleAugmentation(0.0, 0.25)
    assert all(_same(baseline.sample(0.9, t), off.sample(0.9, t)) for t in range(4))


def test_scale_augmentation_is_drawn_with_its_probability_and_in_its_range():
    rng = np.random.default_rng(0)
    augmentation = ScaleAugmentation(0.3, 0.25)
    draws = [augmentation.draw(rng) for _ in range(4000)]
    scales = np.array([d for d in draws if d is not None])
    assert 0.27 < scales.size / len(draws) < 0.33
    assert scales.min() >= 1 / 1.25 and scales.max() <= 1.25
    assert scales.min() < 0.82 and scales.max() > 1.22  # the whole range is reached
    assert 0.45 < np.mean(scales > 1) < 0.55  # zooming in as often as out
    assert source_window((48, 48, 32), 1.25) == (38, 38, 26)
    assert source_window((48, 48, 32), 0.8) == (60, 60, 40)


def test_resize_patch_keeps_labels_whole_and_interpolates_images():
    label = np.zeros((8, 8, 8), np.uint8)
    label[:4] = 2
    out = resize_patch(label, (16, 16, 16), linear=False)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 2}
    assert (out[:8] == 2).all() and (out[8:] == 0).all()
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None, None], (8, 8, 8))
    zoomed = resize_patch(ramp, (16, 8, 8), linear=True)
    assert np.allclose(np.diff(zoomed[1:-1, 0, 0]), 0.5)


@pytest.mark.parametrize("setting", [{"scale_augment": -0.1}, {"scale_range": 1.5}])
def test_scale_settings_out_of_range_are_refused(setting):
    with pytest.raises(ValueError, match="scale"):
        TrainConfig(**setting)


def test_training_builds_its_sampler_with_the_configured_scale_augmentation():
    from RADALib.training import build_sampler

    config = TrainConfig(patch=(16, 16, 16), scale_augment=0.4, scale_range=0.3)
    sampler = build_sampler(config, [synthetic_training_case("l", (20, 18, 16))], [], seed=1)
    assert sampler.scale == ScaleAugmentation(0.4, 0.3)
