"""A new volume's own region prompt (Era at inference): the training encoder rebuilt, and its use.

Tiny Alpha-CLIP towers (width 64, image 64, 32-d embeddings) and a tiny triple-view model keep
every test on the CPU in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TranslationRegistrar, disk_stack

from RADALib.alpha_clip import TextSpec, VisionSpec, build_text_tower, build_vision_tower
from RADALib.annotation import detect_sparse_annotation, simulate_sparse_annotation
from RADALib.bundle import load_bundle, save_bundle
from RADALib.cli import main
from RADALib.cohort import Case, Cohort, save_cohort
from RADALib.embeddings import compute_embeddings, weight_files
from RADALib.encoders import EncoderConfig, RegionAwareDualEncoder
from RADALib.errors import InputError
from RADALib.inference import output_paths, predict_files
from RADALib.networks import GuidanceMLP, NetworkConfig
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import propagate_cohort
from RADALib.region_prompt import encoder_for_bundle, encoder_record, region_embedding_for
from RADALib.volume import read_label_for, read_volume, volume_from_array, write_like

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_V = VisionSpec(width=64, layers=2, heads=1, patch_size=16, image_size=64, output_dim=32)
TINY_T = TextSpec(width=64, layers=1, heads=1, context_length=77, vocab_size=49408, output_dim=32)
PATCH = (16, 16, 16)


def tiny_encoder(seed: int = 7) -> RegionAwareDualEncoder:
    """Random tiny towers built as ``from_config`` builds them (vision ``seed``, text ``seed + 1``)."""
    return RegionAwareDualEncoder(
        build_vision_tower(TINY_V, seed=seed), build_text_tower(TINY_T, seed=seed + 1), seed=seed
    )


def tiny_network() -> NetworkConfig:
    return NetworkConfig(
        base_filters=2, text_dim=32, region_dim=64, era_dim=8, adapter_hidden_dim=8
    )


def write_bundle(
    folder: Path, embeddings, planes=("axial", "axial"), region_mode="alpha", encoder=None
) -> Path:
    """A bundle whose manifest records the encoder as ``workflow.train_model`` does."""
    torch.manual_seed(0)
    record = encoder_record(embeddings, region_mode)
    if encoder is not None:  # no cohort: the record of an encoder alone
        record = {
            "identity": encoder.identity(),
            "pretrained": dict(encoder.pretrained),
            "files": weight_files(encoder),
            "region_mode": region_mode,
        }
    mean = (
        embeddings.region_mean(list(planes))
        if embeddings is not None
        else np.random.default_rng(1).normal(size=64)
    )
    fields = {
        "classes": {1: "left atrium"},
        "visual_planes": list(planes),
        "text_embedding": np.random.default_rng(0).normal(size=32),
        "region_embedding_mean": None if region_mode == "none" else mean,
        "encoder": record,
        "inference": {"patch": list(PATCH), "stride": [8, 8, 8]},
    }
    model = tiny_network().build()
    with torch.no_grad():  # a random tiny model barely listens to its prompt: make it listen
        for layer in (model.adapter[0], model.adapter[2]):
            layer.weight.mul_(20.0)
        for mlp in [m for m in model.modules() if isinstance(m, GuidanceMLP)]:
            mlp[-1].weight.mul_(20.0)
    return save_bundle(folder, model, fields)


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory):
    """Two labeled cases (painted sparse labels) and one unlabeled, propagated."""
    root = tmp_path_factory.mktemp("cohort")
    cases = []
    for i in range(3):
        image, dense = disk_stack(shape=(32, 32, 32), radius=7, shift_per_slice=(0.4, 0.0), seed=i)
        reference = volume_from_array(image, spacing=(1.0, 1.0, 1.5))
        image_path = write_like(reference, image, root / "images" / f"c{i}.nrrd")
        sparse_path = None
        if i < 2:
            sparse = simulate_sparse_annotation(dense).label
            sparse_path = write_like(reference, sparse, root / "sparse" / f"c{i}.nrrd")
        cases.append(Case(f"c{i}", image_path, sparse_path, None))
    cohort = Cohort("tiny", cases, {1: "left atrium"})
    propagate_cohort(
        cohort, root / "propagation", TranslationRegistrar(), PropagationConfig(crop_margin=20)
    )
    return root, cohort


def case_volumes(case: Case):
    image = read_volume(case.image, "image")
    return image, read_label_for(image, case.sparse_label)


# ----------------------------------------------------------------------------- the same Ev as training


@pytest.mark.parametrize(
    "planes,mode", [(("axial", "axial"), "alpha"), (("sagittal", "coronal"), "no_mask")]
)
def test_a_training_cases_ev_recomputed_from_the_manifest_equals_the_stored_one(
    cohort_run, tmp_path, planes, mode
):
    root, cohort = cohort_run
    embeddings = compute_embeddings(
        cohort, root / "propagation", tiny_encoder(), use_mask=mode != "no_mask"
    )
    bundle = load_bundle(write_bundle(tmp_path / "model", embeddings, planes, mode))
    for case in cohort.labeled:
        ev = region_embedding_for(bundle, *case_volumes(case))  # encoder rebuilt from the manifest
        stored = np.concatenate([embeddings.regions[case.id][p] for p in planes])
        assert ev.dtype == np.float32 and ev.shape == (64,)
        np.testing.assert_allclose(ev, stored, rtol=1e-5, atol=1e-6)
    given = region_embedding_for(
        bundle, *case_volumes(cohort.labeled[0]), encoder=tiny_encoder()
    )  # checked, used
    np.testing.assert_allclose(
        given, np.concatenate([embeddings.regions["c0"][p] for p in planes]), rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(
        region_embedding_for(bundle, *case_volumes(cohort.cases[0])),
        region_embedding_for(bundle, *case_volumes(cohort.cases[1])),
    )


def test_the_rebuilt_random_tower_is_the_training_tower_bit_for_bit(cohort_run, tmp_path):
    original = tiny_encoder(seed=11)
    bundle = load_bundle(write_bundle(tmp_path / "model", None, encoder=original))
    rebuilt = encoder_for_bundle(bundle)
    for (name, a), (_, b) in zip(
        original.vision.state_dict().items(), rebuilt.vision.state_dict().items()
    ):
        assert torch.equal(a, b), name
    assert rebuilt.identity() == json.loads(json.dumps(original.identity()))
    with pytest.raises(
        InputError,
        match=r"^encoder: is not the encoder this model was trained with \(differs in vision.seed\)$",
    ):
        region_embedding_for(
            bundle, *case_volumes(cohort_run[1].cases[0]), encoder=tiny_encoder(seed=12)
        )


def test_a_model_without_a_region_prompt_keeps_its_stored_prompt(cohort_run, tmp_path):
    root, cohort = cohort_run
    bundle = load_bundle(
        write_bundle(tmp_path / "model", None, region_mode="none", encoder=tiny_encoder())
    )
    assert region_embedding_for(bundle, *case_volumes(cohort.cases[0])) is None


def test_several_annotated_slices_in_a_plane_use_the_first_as_training_did(cohort_run, tmp_path):
    root, cohort = cohort_run
    encoder = tiny_encoder()
    bundle = load_bundle(write_bundle(tmp_path / "model", None, encoder=encoder))
    image = read_volume(cohort.cases[0].image)
    painted = np.zeros(image.shape, np.uint8)
    painted[8:16, 8:16, 12] = 1
    painted[14:26, 10:24, 20] = 1  # a larger second axial slice
    ev = region_embedding_for(bundle, image, image.with_array(painted, "two_axial.nrrd"))
    first = encoder.encode_regions([image.array[:, :, 12]], [painted[:, :, 12]])[0]
    np.testing.assert_allclose(ev, np.concatenate([first, first]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- pretrained weights


def test_pretrained_weights_are_found_by_hash_or_reported_with_the_mean_prompt_hint(
    cohort_run, tmp_path
):
    from test_encoders import official_text_sd, official_visual_sd

    root, cohort = cohort_run
    vision_file = tmp_path / "train" / "alpha_tiny.pth"
    vision_file.parent.mkdir()
    torch.save(official_visual_sd(), vision_file)
    torch.save(official_text_sd(), tmp_path / "train" / "clip_tiny.pt")
    encoder = RegionAwareDualEncoder.from_config(
        EncoderConfig(
            vision_checkpoint=str(vision_file),
            text_checkpoint=str(tmp_path / "train" / "clip_tiny.pt"),
            cache_dir=str(tmp_path / "train"),
        )
    )
    bundle = load_bundle(write_bundle(tmp_path / "model", None, encoder=encoder))
    image, sparse = case_volumes(cohort.cases[0])
    [axial] = detect_sparse_annotation(sparse.array).slices[2]
    expected = encoder.encode_regions([image.array[:, :, axial]], [sparse.array[:, :, axial] != 0])[
        0
    ]
    # found at the path recorded at training
    np.testing.assert_allclose(
        region_embedding_for(bundle, image, sparse), np.concatenate([expected] * 2), atol=1e-6
    )

    cache = tmp_path / "cache"
    shutil.move(vision_file, tmp_path / "elsewhere.pth")
    with pytest.raises(InputError) as error:
        region_embedding_for(bundle, image, sparse, cache_dir=cache)
    message = str(error.value)
    assert message.startswith("alpha_tiny.pth: the Alpha-CLIP weights this model was trained with")
    assert (
        "--vision-weights" in message and "without --sparse-label" in message and "mean" in message
    )
    assert "\n" not in message

    # given explicitly, or put in the cache's weights folder under its name
    ev = region_embedding_for(bundle, image, sparse, vision_weights=tmp_path / "elsewhere.pth")
    np.testing.assert_allclose(ev, np.concatenate([expected] * 2), atol=1e-6)
    (cache / "weights").mkdir(parents=True)
    shutil.copy(tmp_path / "elsewhere.pth", cache / "weights" / "alpha_tiny.pth")
    np.testing.assert_allclose(
        region_embedding_for(bundle, image, sparse, cache_dir=cache),
        np.concatenate([expected] * 2),
        atol=1e-6,
    )
    # other weights under the right name are refused
    torch.save(official_visual_sd(seed=4), tmp_path / "other.pth")
    with pytest.raises(
        InputError, match="other.pth: has SHA256 .* but this model was trained with alpha_tiny.pth"
    ):
        region_embedding_for(bundle, image, sparse, vision_weights=tmp_path / "other.pth")


# ----------------------------------------------------------------------------- errors


def test_a_sparse_label_without_the_needed_plane_names_the_file_and_the_plane(cohort_run, tmp_path):
    root, cohort = cohort_run
    bundle = load_bundle(
        write_bundle(tmp_path / "model", None, ("sagittal", "axial"), encoder=tiny_encoder())
    )
    image = read_volume(cohort.cases[0].image)
    painted = np.zeros(image.shape, np.uint8)
    painted[10:20, 12:22, 16] = 1  # one axial slice only
    label_path = write_like(image, painted, tmp_path / "axial_only.nrrd")
    with pytest.raises(InputError) as error:
        region_embedding_for(bundle, image, read_label_for(image, label_path))
    message = str(error.value)
    assert message.startswith(f"{label_path}: no annotated sagittal slice (found axial 16)")
    assert "without --sparse-label" in message and "\n" not in message


def test_an_old_bundle_without_encoder_identity_is_refused_with_the_mean_hint(cohort_run, tmp_path):
    root, cohort = cohort_run
    folder = write_bundle(tmp_path / "model", None, encoder=tiny_encoder())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["encoder"] = {"identity": None, "pretrained": {}}  # as bundles before this field
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        InputError,
        match="manifest.json: records no identity of the frozen Alpha-CLIP encoder.*mean",
    ):
        region_embedding_for(load_bundle(folder), *case_volumes(cohort.cases[0]))


def test_mismatched_image_and_sparse_label_counts_are_a_one_line_error(tmp_path, capsys):
    code = main(
        [
            "predict",
            "--model",
            str(tmp_path / "m"),
            "--image",
            "a.nrrd",
            "--image",
            "b.nrrd",
            "--sparse-label",
            "a_sparse.nrrd",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        "rada: rada predict: 2 --image but 1 --sparse-label; "
        "give one --sparse-label per --image, in the same order"
    )


# ----------------------------------------------------------------------------- the prompt is used


def test_predict_with_a_sparse_label_uses_the_volumes_own_prompt(cohort_run, tmp_path):
    root, cohort = cohort_run
    embeddings = compute_embeddings(cohort, root / "propagation", tiny_encoder())
    bundle = load_bundle(write_bundle(tmp_path / "model", embeddings))
    case = cohort.cases[0]
    own = region_embedding_for(bundle, *case_volumes(case))
    assert not np.allclose(own, bundle.region_embedding_mean)
    [with_own] = predict_files(
        bundle,
        [case.image],
        tmp_path / "own",
        region_embedding=[own],
        write_probabilities=True,
        stride="fast",
    )
    [with_mean] = predict_files(
        bundle,
        [case.image],
        tmp_path / "mean",
        region_embedding=[None],
        write_probabilities=True,
        stride="fast",
    )
    p_own = read_volume(output_paths(case.image, tmp_path / "own")[1]).array
    p_mean = read_volume(output_paths(case.image, tmp_path / "mean")[1]).array
    # the same prompt gives the same map bit for bit (test_inference); float noise is ~1e-7
    assert np.abs(p_own - p_mean).max() > 1e-4
    with pytest.raises(InputError, match="has 2 entries for 1 inputs"):
        predict_files(bundle, [case.image], tmp_path / "x", region_embedding=[own, None])


def test_rada_predict_with_sparse_labels_end_to_end(cohort_run, tmp_path, capsys):
    root, cohort = cohort_run
    embeddings = compute_embeddings(cohort, root / "propagation", tiny_encoder())
    model = write_bundle(tmp_path / "model", embeddings)
    case = cohort.cases[0]
    common = [
        "--model",
        str(model),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--probabilities",
        "--events",
        "json",
        "--stride",
        "fast",
    ]

    assert (
        main(
            [
                "predict",
                "--image",
                str(case.image),
                "--sparse-label",
                str(case.sparse_label),
                "--out",
                str(tmp_path / "own"),
                *common,
            ]
        )
        == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(
        e["message"] == "case 1/1: c0.nrrd (region prompt: from this volume's sparse slices)"
        for e in events
    )
    assert (
        main(["predict", "--image", str(case.image), "--out", str(tmp_path / "mean"), *common]) == 0
    )
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(e.get("region_prompt") == "the training cohort's mean" for e in events)
    p_own = read_volume(output_paths(case.image, tmp_path / "own")[1]).array
    p_mean = read_volume(output_paths(case.image, tmp_path / "mean")[1]).array
    assert np.abs(p_own - p_mean).max() > 1e-4

    # '-' stands for an image without a sparse label
    assert (
        main(
            [
                "predict",
                "--image",
                str(case.image),
                "--sparse-label",
                "-",
                "--image",
                str(cohort.cases[1].image),
                "--sparse-label",
                str(cohort.cases[1].sparse_label),
                "--out",
                str(tmp_path / "mixed"),
                *common,
            ]
        )
        == 0
    )
    sources = [
        e["region_prompt"]
        for e in map(json.loads, capsys.readouterr().out.splitlines())
        if "region_prompt" in e
    ]
    assert sources == ["the training cohort's mean", "from this volume's sparse slices"]
    np.testing.assert_array_equal(
        read_volume(output_paths(case.image, tmp_path / "mixed")[1]).array, p_mean
    )

    # a cohort: each case's own sparse label when it has one, the mean otherwise
    manifest = save_cohort(cohort, tmp_path / "cohort.json")
    assert (
        main(["predict", "--cohort", str(manifest), "--out", str(tmp_path / "cohort"), *common])
        == 0
    )
    sources = {
        e["message"].split(":")[1].split()[0]: e["region_prompt"]
        for e in map(json.loads, capsys.readouterr().out.splitlines())
        if "region_prompt" in e
    }
    assert sources == {
        "c0.nrrd": "from this volume's sparse slices",
        "c1.nrrd": "from this volume's sparse slices",
        "c2.nrrd": "the training cohort's mean",
    }
    np.testing.assert_array_equal(
        read_volume(output_paths(case.image, tmp_path / "cohort")[1]).array, p_own
    )


def test_rada_predict_largest_component_flags_reach_the_label_maps(
    cohort_run, tmp_path, monkeypatch
):
    import RADALib.inference as inference
    from RADALib.postprocessing import keep_largest_component

    root, cohort = cohort_run
    embeddings = compute_embeddings(cohort, root / "propagation", tiny_encoder())
    model = write_bundle(tmp_path / "model", embeddings)
    case = cohort.cases[0]
    common = [
        "predict",
        "--model",
        str(model),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--image",
        str(case.image),
        "--stride",
        "fast",
    ]
    asked = []
    real = inference.predict_files
    monkeypatch.setattr(
        inference,
        "predict_files",
        lambda *a, **k: asked.append(k["largest_component"]) or real(*a, **k),
    )
    assert main([*common, "--out", str(tmp_path / "auto")]) == 0
    assert main([*common, "--out", str(tmp_path / "plain"), "--no-largest-component"]) == 0
    assert main([*common, "--out", str(tmp_path / "kept"), "--largest-component"]) == 0
    assert asked == [None, False, True], "no flag: the model's recommendation (None)"
    plain = read_volume(output_paths(case.image, tmp_path / "plain")[0], "label").array
    kept = read_volume(output_paths(case.image, tmp_path / "kept")[0], "label").array
    np.testing.assert_array_equal(kept, keep_largest_component(plain))
