"""Inference: window positions, exact averaging, padding, the ensemble, and file geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from RADALib.bundle import load_bundle, save_bundle
from RADALib.errors import InputError
from RADALib.events import Progress
from RADALib.inference import (
    check_stride,
    ensemble_probabilities,
    output_paths,
    predict_files,
    predict_volume,
    resolve_stride,
    sliding_window_inference,
    whole_volume_inference,
    window_grid,
    window_starts,
)
from RADALib.networks import VIEWS, NetworkConfig
from RADALib.volume import read_volume

PATCH = (16, 16, 16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(n_classes: int = 2) -> NetworkConfig:
    return NetworkConfig(
        n_classes=n_classes,
        base_filters=2,
        text_dim=8,
        region_dim=12,
        era_dim=8,
        adapter_hidden_dim=8,
    )


def tiny_bundle(
    tmp_path, n_classes: int = 2, largest_component: list[int] | None = None, name: str = "model"
):
    """A bundle of a tiny random model; ``largest_component``: the classes its manifest marks
    as one region (``None``: no record, as in bundles older than the record)."""
    torch.manual_seed(0)
    model = tiny_config(n_classes).build()
    rng = np.random.default_rng(0)
    fields = {
        "classes": {k: f"structure {k}" for k in range(1, n_classes)},
        "prompt": "An image containing the structure, with the rest being background",
        "visual_planes": ["axial", "axial"],
        "text_embedding": rng.normal(size=8),
        "region_embedding_mean": rng.normal(size=12),
        "inference": {"patch": list(PATCH), "stride": [8, 8, 8]},
    }
    if largest_component is not None:
        fields["inference"]["largest_component"] = {"classes": largest_component}
    return save_bundle(tmp_path / name, model, fields)


def pointwise(x: torch.Tensor) -> torch.Tensor:
    """A 'predictor' whose output at a voxel depends only on the input there."""
    return torch.cat([2 * x + 1, -x, x * x], dim=1)


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "size,patch,stride", [(32, 16, 6), (30, 16, 16), (16, 16, 4), (17, 16, 5), (100, 16, 1)]
)
def test_windows_cover_the_axis_exactly_and_the_last_ends_at_the_border(size, patch, stride):
    starts = window_starts(size, patch, stride)
    assert starts[0] == 0 and starts[-1] == size - patch
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))  # no gaps
    assert all(s == i * stride for i, s in enumerate(starts[:-1]))  # 0, s, 2s, ... then the border
    covered = np.zeros(size, int)
    for s in starts:
        covered[s : s + patch] += 1
    assert covered.min() >= 1


def test_window_positions_match_ua_mt_counts():
    # LA-sized volume, paper patch: ceil((n - p) / s) + 1 windows per axis
    grid = window_grid((190, 140, 88), (112, 112, 80), (18, 18, 4))
    assert [len(g) for g in grid] == [6, 3, 3]
    assert grid[0] == [0, 18, 36, 54, 72, 78]
    assert [
        len(g)
        for g in window_grid((190, 140, 88), (112, 112, 80), resolve_stride("fast", (112, 112, 80)))
    ] == [2, 2, 2]


def test_stride_presets_and_invalid_strides():
    assert resolve_stride("dense", (112, 112, 80)) == (18, 18, 4)
    assert resolve_stride("dense", PATCH) == (16, 16, 4)  # clamped to the patch
    assert resolve_stride("fast", PATCH) == PATCH
    for bad in [(0, 8, 8), (17, 8, 8), (8, -1, 8)]:
        with pytest.raises(ValueError, match=r"1 <= stride <= patch"):
            check_stride(PATCH, bad)
        with pytest.raises(ValueError, match=r"1 <= stride <= patch"):
            sliding_window_inference(torch.zeros(1, 1, 20, 20, 20), pointwise, PATCH, bad)
    with pytest.raises(ValueError, match="unknown stride preset"):
        resolve_stride("fastest", PATCH)
    with pytest.raises(ValueError, match="three integers"):
        resolve_stride((8, 8), PATCH)


# ----------------------------------------------------------------------------- sliding window


def test_overlapping_windows_reproduce_a_pointwise_predictor_exactly():
    # integer-valued input: sums of identical values divided by their count are exact in float32
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(-20, 20, size=(1, 1, 30, 27, 21)).astype(np.float32))
    events = []
    out = sliding_window_inference(
        image, pointwise, PATCH, (5, 7, 4), batch_size=3, progress=Progress(events.append)
    )
    assert out.shape == (3, 30, 27, 21) and out.dtype == torch.float32
    assert torch.equal(out, pointwise(image)[0])
    n_windows = np.prod([len(g) for g in window_grid((30, 27, 21), PATCH, (5, 7, 4))])
    assert events[0]["total"] == n_windows and events[-1]["step"] == n_windows


def test_every_voxel_is_averaged_over_the_windows_covering_it():
    # a predictor that returns 1 everywhere -> exactly 1 after averaging (count map is right)
    ones = lambda x: torch.ones(x.shape[0], 1, *x.shape[2:])  # noqa: E731
    out = sliding_window_inference(
        torch.zeros(1, 1, 33, 20, 18), ones, PATCH, (3, 5, 2), batch_size=4
    )
    assert torch.equal(out, torch.ones(1, 33, 20, 18))


def test_a_volume_smaller_than_the_patch_is_padded_and_cropped_back():
    image = torch.arange(10 * 20 * 7, dtype=torch.float32).reshape(1, 1, 10, 20, 7)
    seen = []

    mins = []

    def predictor(x):
        seen.append(tuple(x.shape))
        mins.append(float(x.min()))
        return pointwise(x)

    out = sliding_window_inference(image, predictor, PATCH, (8, 8, 8), pad_value=-7.0)
    assert out.shape == (3, 10, 20, 7)
    assert torch.equal(out, pointwise(image)[0])
    assert all(s[2:] == PATCH for s in seen)
    assert min(mins) == -7.0  # the padding the windows saw


def test_a_predictor_with_the_wrong_output_shape_is_reported():
    with pytest.raises(ValueError, match="predictor returned shape"):
        sliding_window_inference(torch.zeros(1, 1, 16, 16, 16), lambda x: x[:, :, :8], PATCH, PATCH)


# ----------------------------------------------------------------------------- ensemble


def test_ensemble_is_the_mean_of_the_three_softmaxes():
    torch.manual_seed(0)
    model = tiny_config(3).build()
    model.train()  # ensemble_probabilities must switch to eval itself
    x = torch.randn(2, 1, 16, 16, 16)
    era = model.embed(torch.randn(8), torch.randn(12))
    got = ensemble_probabilities(model, x, era)
    assert not model.training
    with torch.no_grad():
        manual = sum(torch.softmax(model.forward_view(v, x, era), dim=1) for v in VIEWS) / 3
    torch.testing.assert_close(got, manual, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2, 16, 16, 16))


def test_predict_volume_uses_the_given_region_embedding(tmp_path):
    bundle = load_bundle(tiny_bundle(tmp_path))
    from RADALib.volume import volume_from_array

    volume = volume_from_array(
        np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32)
    )
    base = predict_volume(bundle, volume, return_probabilities=True)
    assert base.label.dtype == np.uint8 and base.label.shape == (20, 18, 16)
    assert base.probabilities.shape == (2, 20, 18, 16) and base.probabilities.dtype == np.float32
    np.testing.assert_array_equal(base.label, base.probabilities.argmax(0))
    same = predict_volume(
        bundle, volume, region_embedding=bundle.region_embedding_mean, return_probabilities=True
    )
    np.testing.assert_array_equal(same.probabilities, base.probabilities)
    other = predict_volume(
        bundle, volume, region_embedding=np.full(12, 3.0, np.float32), return_probabilities=True
    )
    assert not np.allclose(other.probabilities, base.probabilities)
    with pytest.raises(InputError, match="region_embedding"):
        predict_volume(bundle, volume, region_embedding=np.zeros(5))
    with pytest.raises(ValueError, match="multiple of 16"):
        predict_volume(bundle, volume, patch=(20, 16, 16))


# ----------------------------------------------------------------------------- whole volume


def test_whole_volume_inference_of_a_one_patch_volume_is_the_windowed_inference():
    torch.manual_seed(0)
    model = tiny_config(3).build().eval()
    x = torch.randn(1, 1, *PATCH)
    for era in (model.embed(torch.randn(8), torch.randn(12)), None):
        windowed = sliding_window_inference(
            x, lambda w, era=era: ensemble_probabilities(model, w, era), PATCH, "fast"
        )
        whole = whole_volume_inference(model, x, era, PATCH)
        torch.testing.assert_close(whole, windowed, rtol=1e-5, atol=1e-6)


def test_whole_volume_inference_takes_gamma_from_each_windows_part_of_the_bottleneck():
    torch.manual_seed(1)
    model = tiny_config(2).build().eval()
    with torch.no_grad():
        for net in model.nets.values():  # a strong guidance, so that γ visibly matters
            for parameter in net.mlp.parameters():
                parameter.mul_(4.0)
    x = torch.randn(1, 1, 32, 16, 16)  # two windows of PATCH along x, with different contents
    x[:, :, 16:] = 3.0 * x[:, :, 16:] + 2.0
    era = model.embed(torch.randn(8), torch.randn(12))
    got = whole_volume_inference(model, x, era, PATCH)
    with torch.no_grad():
        expected = torch.zeros(2, 32, 16, 16)
        global_gamma = torch.zeros(2, 32, 16, 16)
        for net in model.nets.values():
            features = net.vnet.encode(x)
            z = net.vnet.decode(features)
            for start in (0, 16):
                gamma = net.gamma(era, features[-1][:, :, start // 16 : start // 16 + 1])
                expected[:, start : start + 16] += torch.softmax(
                    net.head(z[:, :, start : start + 16] + gamma), 1
                )[0]
            global_gamma += torch.softmax(net.head(z + net.gamma(era, features[-1])), 1)[0]
    torch.testing.assert_close(got, expected / 3, rtol=1e-5, atol=1e-6)
    assert (got - global_gamma / 3).abs().max() > 1e-4  # one γ for the whole volume would differ


def test_predict_volume_whole_pads_crops_back_and_falls_back_to_windows_when_too_large(
    tmp_path, monkeypatch
):
    from RADALib import inference
    from RADALib.volume import volume_from_array

    bundle = load_bundle(tiny_bundle(tmp_path))
    volume = volume_from_array(
        np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32)
    )
    whole = predict_volume(bundle, volume, stride="whole", return_probabilities=True)
    assert whole.label.shape == (20, 18, 16) and whole.probabilities.shape == (2, 20, 18, 16)
    np.testing.assert_allclose(whole.probabilities.sum(0), 1.0, rtol=1e-5)
    monkeypatch.setattr(inference, "MAX_WHOLE_VOXELS", 1000)
    progress = Progress()
    messages = []
    progress.message = messages.append
    fallback = predict_volume(
        bundle, volume, stride="whole", return_probabilities=True, progress=progress
    )
    fast = predict_volume(bundle, volume, stride="fast", return_probabilities=True)
    np.testing.assert_array_equal(fallback.probabilities, fast.probabilities)
    assert any("too large" in m for m in messages)
    with pytest.raises(ValueError, match="not a stride"):
        resolve_stride("whole", PATCH)


def test_on_a_cpu_a_bundle_asking_for_many_windows_is_told_about_fast(tmp_path):
    from RADALib.inference import n_windows
    from RADALib.volume import volume_from_array

    assert n_windows((190, 140, 88), (112, 112, 80), (18, 18, 4)) == 6 * 3 * 3
    assert n_windows((10, 10, 10), PATCH, PATCH) == 1  # padded up to the patch
    bundle = load_bundle(tiny_bundle(tmp_path))
    bundle.manifest["inference"]["stride"] = [4, 4, 4]  # 125 windows against fast's 8
    volume = volume_from_array(np.zeros((32, 32, 32), np.float32))

    def messages(**kwargs) -> list[str]:
        progress, seen = Progress(), []
        progress.message = lambda text, *a, **k: seen.append(text)
        predict_volume(bundle, volume, progress=progress, **kwargs)
        return seen

    assert any("--stride fast" in m for m in messages())
    assert not any("--stride fast" in m for m in messages(stride=(4, 4, 4)))  # the user's choice
    bundle.manifest["inference"]["stride"] = "fast"
    assert not any("--stride fast" in m for m in messages())


# ----------------------------------------------------------------------------- files and geometry

# file axis i runs along world -z, j along world x, k along world -y (permuted and flipped)
PERMUTED = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)


def test_predict_files_writes_labels_on_the_inputs_exact_grid(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.normal(size=(14, 20, 18)).astype(np.float32)  # file order (i, j, k)
    image = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))
    image.SetSpacing((2.5, 0.7, 1.3))
    image.SetOrigin((10.0, -31.5, 7.25))
    image.SetDirection(PERMUTED.ravel().tolist())
    source = tmp_path / "case01.nii.gz"
    sitk.WriteImage(image, str(source))

    bundle_folder = tiny_bundle(tmp_path)
    out = predict_files(bundle_folder, [source], tmp_path / "out", write_probabilities=True)
    label_path, probability_path = output_paths(source, tmp_path / "out")
    assert out == [label_path] and label_path.name == "case01_rada.nrrd"
    original, written = sitk.ReadImage(str(source)), sitk.ReadImage(str(label_path))
    assert written.GetSize() == original.GetSize()
    assert written.GetSpacing() == original.GetSpacing()
    assert written.GetOrigin() == original.GetOrigin()
    assert written.GetDirection() == original.GetDirection()
    assert written.GetPixelID() == sitk.sitkUInt8
    # voxel for voxel: the file equals the canonical prediction put back in file order
    expected = predict_volume(
        load_bundle(bundle_folder), read_volume(source), return_probabilities=True
    )
    np.testing.assert_array_equal(read_volume(label_path, "label").array, expected.label)
    probability = read_volume(probability_path)
    assert sitk.ReadImage(str(probability_path)).GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(probability.array, expected.probabilities[1], atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "case01_rada.nrrd",
        "case01_rada_probabilities.nrrd",
    ]


def test_predict_files_refuses_colliding_case_names(tmp_path):
    with pytest.raises(InputError, match="same case name"):
        predict_files(
            tiny_bundle(tmp_path),
            [tmp_path / "a" / "x.nrrd", tmp_path / "b" / "x.nii.gz"],
            tmp_path / "out",
        )


def test_predict_names_a_cohort_s_outputs_for_its_case_ids_when_images_share_a_file_name(
    tmp_path,
):
    # LA2018 keeps every case as <case id>/mri_norm2.h5: file names alone would collide
    from RADALib.cli import main

    rng = np.random.default_rng(3)
    cases = []
    for case_id in ("P1OT", "SN4L"):
        (tmp_path / case_id).mkdir()
        image = sitk.GetImageFromArray(rng.normal(size=(12, 16, 16)).astype(np.float32))
        sitk.WriteImage(image, str(tmp_path / case_id / "image.nrrd"))
        cases.append({"id": case_id, "image": f"{case_id}/image.nrrd"})
    manifest = tmp_path / "cohort.json"
    manifest.write_text(json.dumps({"format": "rada-cohort/1", "cases": cases}))
    out = tmp_path / "out"
    code = main(["predict", "--model", str(tiny_bundle(tmp_path)), "--cohort", str(manifest),
                 "--out", str(out), "--stride", "fast"])  # fmt: skip
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["P1OT_rada.nrrd", "SN4L_rada.nrrd"]
    for case_id in ("P1OT", "SN4L"):
        written = read_volume(out / f"{case_id}_rada.nrrd", "label")
        assert written.shape == read_volume(tmp_path / case_id / "image.nrrd").shape


@pytest.mark.parametrize("n_classes", [2, 3])
def test_predict_volume_can_keep_only_each_class_largest_component(
    tmp_path, monkeypatch, n_classes
):
    from scipy import ndimage

    import RADALib.inference as inference
    from RADALib.data import normalize_intensity
    from RADALib.volume import volume_from_array

    # image: background 0; each class k a large block and a small island of value k
    array = np.zeros((24, 20, 18), np.float32)
    for k in range(1, n_classes):
        array[2:9, 2 + 8 * (k - 1) : 8 + 8 * (k - 1), 2:9] = k
        array[14 + 4 * (k - 1) : 16 + 4 * (k - 1), 16:18, 14:16] = k
    levels = torch.as_tensor(
        np.unique(normalize_intensity(array))
    )  # the z-scored values of 0, 1, ...

    def by_intensity(model, x, era):  # class k where the input has level k: islands by construction
        return torch.softmax(-100 * (x - levels.view(1, -1, 1, 1, 1)) ** 2, dim=1)

    monkeypatch.setattr(inference, "ensemble_probabilities", by_intensity)
    volume = volume_from_array(array, (1.0, 1.0, 1.0))
    bundle = load_bundle(tiny_bundle(tmp_path, n_classes))  # no recommendation recorded
    plain = predict_volume(bundle, volume, return_probabilities=True)
    kept = predict_volume(bundle, volume, return_probabilities=True, largest_component=True)
    np.testing.assert_array_equal(
        plain.label, array.astype(np.uint8)
    )  # the fake predictor is exact
    assert plain.largest_component == ()
    expected = array.astype(np.uint8)
    expected[14:, 16:18, 14:16] = 0  # the islands go to background
    np.testing.assert_array_equal(kept.label, expected)
    assert kept.largest_component == tuple(range(1, n_classes))
    for k in range(1, n_classes):
        assert ndimage.label(kept.label == k)[1] == 1
    np.testing.assert_array_equal(kept.probabilities, plain.probabilities)

    # by default, the classes the bundle marks as one region; False overrides the record
    marked = load_bundle(
        tiny_bundle(tmp_path, n_classes, largest_component=[n_classes - 1], name="marked")
    )
    default = predict_volume(marked, volume)
    assert default.largest_component == (n_classes - 1,)
    only_last = array.astype(np.uint8)
    only_last[(only_last == n_classes - 1) & (expected == 0)] = 0
    np.testing.assert_array_equal(default.label, only_last)
    np.testing.assert_array_equal(
        predict_volume(marked, volume, largest_component=False).label, plain.label
    )


@pytest.mark.parametrize("record", [{"classes": [2]}, {"classes": "1"}, {"classes": [True]}, [1]])
def test_a_bundle_whose_largest_component_record_is_malformed_is_refused(tmp_path, record):
    folder = tiny_bundle(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"]["largest_component"] = record
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="manifest.json: field 'inference.largest_component'"):
        load_bundle(folder)


# ----------------------------------------------------------------------------- mirroring


def by_position(image: np.ndarray) -> torch.Tensor:
    """A 'network' that is not mirror-symmetric: its answer depends on where a voxel lies."""
    ramp = np.arange(image.shape[0], dtype=np.float32)[:, None, None] / image.shape[0]
    wave = np.sin(np.arange(image.shape[1], dtype=np.float32))[None, :, None]
    foreground = 1.0 / (1.0 + np.exp(-(image + 2.0 * ramp + wave)))
    return torch.from_numpy(np.stack([1.0 - foreground, foreground]).astype(np.float32))


def test_mirror_averaged_probabilities_are_the_same_for_a_volume_and_its_mirror_images():
    from RADALib.mirroring import PLANE_MIRRORS, mirror_averaged_probabilities

    image = np.random.default_rng(0).normal(size=(9, 7, 5)).astype(np.float32)
    averaged = mirror_averaged_probabilities(by_position, image)
    assert averaged.shape == (2, 9, 7, 5)
    torch.testing.assert_close(averaged.sum(0), torch.ones(9, 7, 5))
    # the network alone changes its answer when the volume is mirrored; the average does not
    flipped_x = torch.flip(by_position(np.ascontiguousarray(image[::-1])), dims=[1])
    assert (flipped_x - by_position(image)).abs().max() > 0.1
    for axes in PLANE_MIRRORS:
        mirrored = np.ascontiguousarray(np.flip(image, axis=axes)) if axes else image
        back = mirror_averaged_probabilities(by_position, mirrored)
        back = torch.flip(back, dims=[a + 1 for a in axes]) if axes else back
        torch.testing.assert_close(back, averaged)
    # one mirror, the identity, is the network itself; z is never flipped
    torch.testing.assert_close(
        mirror_averaged_probabilities(by_position, image, mirrors=((),)), by_position(image)
    )
    assert all(2 not in axes for axes in PLANE_MIRRORS)


def test_predict_volume_mirrors_as_its_bundle_says_unless_told(tmp_path, monkeypatch):
    import RADALib.inference as inference
    from RADALib.data import normalize_intensity
    from RADALib.volume import volume_from_array

    array = np.random.default_rng(1).normal(size=(20, 18, 16)).astype(np.float32)
    normalized = normalize_intensity(array)

    def positional(model, era, patch, stride, batch_size, progress, autocast, fmt, image):
        return by_position(image)

    monkeypatch.setattr(inference, "_volume_probabilities", positional)
    volume = volume_from_array(array, (1.0, 1.0, 1.0))
    folder = tiny_bundle(tmp_path)
    plain = predict_volume(load_bundle(folder), volume, return_probabilities=True)
    np.testing.assert_allclose(plain.probabilities, by_position(normalized).numpy(), atol=1e-6)

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"]["mirror"] = True
    (folder / "manifest.json").write_text(json.dumps(manifest))
    bundle = load_bundle(folder)
    mirrored = predict_volume(bundle, volume, return_probabilities=True)
    expected = np.mean(
        [
            np.flip(
                by_position(np.ascontiguousarray(np.flip(normalized, a))).numpy(),
                [x + 1 for x in a],
            )
            for a in ((0,), (1,), (0, 1))
        ]
        + [by_position(normalized).numpy()],
        axis=0,
    )
    np.testing.assert_allclose(mirrored.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(mirrored.label, expected.argmax(0).astype(np.uint8))
    overridden = predict_volume(bundle, volume, return_probabilities=True, mirror=False)
    np.testing.assert_allclose(overridden.probabilities, plain.probabilities)


def test_a_bundle_whose_mirror_switch_is_not_a_boolean_is_refused(tmp_path):
    folder = tiny_bundle(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["inference"]["mirror"] = "yes"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        InputError, match="manifest.json: field 'inference.mirror' must be true or false"
    ):
        load_bundle(folder)
