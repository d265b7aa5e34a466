"""The chained steps (propagate, embed, train, bundle, predict) on a tiny cohort, and the demo's first half."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TranslationRegistrar, disk_stack

from RADALib.bundle import load_bundle
from RADALib.cohort import Case, Cohort
from RADALib.embeddings import CohortEmbeddings
from RADALib.events import Progress
from RADALib.inference import predict_files
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import load_case_result, propagate_cohort
from RADALib.region_prompt import region_embedding_for
from RADALib.train_config import preset
from RADALib.volume import read_volume, volume_from_array, write_like
from RADALib.workflow import largest_component_record, model_folder, train_model


def test_train_model_writes_a_bundle_that_segments_with_the_input_header(
    tmp_path, caplog, monkeypatch
):
    monkeypatch.setenv("RADA_CACHE_DIR", str(tmp_path / "no-weights"))
    cases = []
    direction = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], float)
    for i in range(3):
        image, label = disk_stack(shape=(32, 32, 32), radius=8, shift_per_slice=(0.5, 0.0), seed=i)
        reference = volume_from_array(image, spacing=(1.0, 0.8, 1.5), direction=direction)
        image_path = write_like(reference, image, tmp_path / "images" / f"c{i}.nrrd")
        label_path = write_like(reference, label, tmp_path / "labels" / f"c{i}.nrrd")
        cases.append(Case(f"c{i}", image_path, None, label_path, simulate_from_dense=i < 2))
    cohort = Cohort("tiny", cases, {1: "left atrium"})
    experiment = tmp_path / "experiment"
    propagate_cohort(
        cohort,
        experiment / "propagation",
        TranslationRegistrar(),
        PropagationConfig(crop_margin=20),
    )

    config = preset(
        "small",
        iterations=2,
        patch=(16, 16, 16),
        network={"base_filters": 2},
        uncertainty_passes=1,
        device="cpu",
        checkpoint_every=1,
        validate_every=0,
        prefetch=0,
        inference_stride="dense",
        inference_mirror=True,
    )
    events: list[dict] = []
    with caplog.at_level(logging.WARNING):
        run = train_model(
            cohort,
            experiment,
            config,
            propagation_dir=experiment / "propagation",
            cache_dir=tmp_path / "cache",
            progress=Progress(events.append),
        )

    # random encoders are said once, with the files and folder that would replace them, not logged twice
    random = [e["message"] for e in events if "RANDOM" in e["message"]]
    assert len(random) == 1 and "RANDOM Alpha-CLIP/CLIP weights" in random[0]
    assert (
        "clip_b16_grit1m_fultune_8xe.pth, ViT-B-16.pt" in random[0]
        and str(tmp_path / "no-weights") in random[0]
    )
    assert "RANDOM" not in caplog.text
    manifest = json.loads((run.model / "manifest.json").read_text())
    assert run.iterations == 2 and model_folder(experiment) == run.model
    assert manifest["encoder"]["pretrained"] == {
        "vision": False,
        "text": False,
    }  # said, never hidden
    assert len(manifest["text_embedding"]) == 512 and len(manifest["region_embedding_mean"]) == 1024
    assert manifest["classes"]["1"]["name"] == "left atrium"
    assert (experiment / "embeddings.npz").exists() and (experiment / "checkpoint.pt").exists()
    assert manifest["encoder"]["region_mode"] == "alpha"
    assert manifest["encoder"]["files"] == {"vision": None, "text": None}  # random towers: no files
    # the tube is one region in both labeled cases' pseudo-labels: predictions keep its largest component
    assert manifest["inference"]["largest_component"]["classes"] == [1]
    assert manifest["inference"]["largest_component"]["cases"] == 2
    assert manifest["inference"]["stride"] == "dense"  # the preset's choice, for rada predict
    assert manifest["inference"]["mirror"] is True  # trained with mirror images (augment=True)

    # a training case's own region prompt, recomputed with the encoder rebuilt from the manifest
    # (random ViT-B/16 towers, same seed), equals the Ev stored at training
    stored = CohortEmbeddings.load(experiment / "embeddings.npz").regions["c0"]["axial"]
    image = read_volume(cases[0].image)
    sparse = image.with_array(
        load_case_result(experiment / "propagation" / "cases" / "c0").annotation.label
    )
    recomputed = region_embedding_for(load_bundle(run.model), image, sparse)
    np.testing.assert_allclose(recomputed, np.concatenate([stored, stored]), rtol=1e-5, atol=1e-5)

    [output] = predict_files(
        run.model, [cases[2].image], tmp_path / "predictions", patch=(16, 16, 16)
    )
    written, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(cases[2].image))
    assert written.GetSize() == source.GetSize()
    np.testing.assert_allclose(written.GetDirection(), source.GetDirection())
    np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing())


def test_train_model_trains_on_the_fusion_its_propagation_settings_name(tmp_path, monkeypatch):
    import RADALib.training as training
    import RADALib.workflow as workflow

    image, label = disk_stack(shape=(32, 32, 32), radius=8, shift_per_slice=(0.5, 0.0), seed=0)
    reference = volume_from_array(image)
    case = Case(
        "c0",
        write_like(reference, image, tmp_path / "c0.nrrd"),
        None,
        write_like(reference, label, tmp_path / "c0_label.nrrd"),
        simulate_from_dense=True,
    )
    cohort = Cohort("tiny", [case], {1: "left atrium"})
    settings = PropagationConfig(crop_margin=20, fusion="majority", fusion_alpha=0.8)
    propagate_cohort(cohort, tmp_path / "propagation", TranslationRegistrar(), settings)
    monkeypatch.setattr(workflow, "cohort_embeddings", lambda *a, **k: None)
    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train", stop)
    with pytest.raises(KeyboardInterrupt):
        train_model(
            cohort,
            tmp_path / "experiment",
            preset("small", label_source="fused"),
            propagation_dir=tmp_path / "propagation",
            propagation_config=settings,
        )
    assert seen["fusion"] == ("majority", 0.8)


def _tubes(shape=(48, 32, 24), parts=1, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """``parts`` parallel tubes along z (x centres 12 and 36): one structure in one or two parts."""
    x, y = np.mgrid[0 : shape[0], 0 : shape[1]]
    label = np.zeros(shape, np.uint8)
    for centre in (12, 36)[:parts]:
        label[
            ((x - centre) ** 2 + (y - 16) ** 2 <= 25)[:, :, None]
            & (np.arange(shape[2]) >= 2)[None, None, :]
            & (np.arange(shape[2]) < 22)[None, None, :]
        ] = 1
    image = label + np.random.default_rng(seed).normal(0, 0.05, shape).astype(np.float32)
    return image.astype(np.float32), label


def test_largest_component_is_recommended_only_for_a_structure_that_is_one_region_in_the_pseudo_labels(
    tmp_path,
):
    config = PropagationConfig(crop_margin=20)
    for parts, expected in ((1, [1]), (2, [])):
        cases = []
        for i in range(2):
            image, label = _tubes(parts=parts, seed=i)
            reference = volume_from_array(image, spacing=(1.0, 1.0, 1.0))
            folder = tmp_path / f"parts{parts}"
            cases.append(
                Case(
                    f"c{i}",
                    write_like(reference, image, folder / "images" / f"c{i}.nrrd"),
                    None,
                    write_like(reference, label, folder / "labels" / f"c{i}.nrrd"),
                    simulate_from_dense=True,
                )
            )
        cohort = Cohort("tubes", cases, {1: "vessel"})
        propagate_cohort(cohort, folder / "propagation", TranslationRegistrar(), config)
        record = largest_component_record(cohort, folder / "propagation", config)
        assert record["classes"] == expected, record
        assert record["cases"] == 2
    # no propagation (the ablation without registration): nothing to judge, nothing recommended
    assert largest_component_record(cohort, None, config)["classes"] == []


def test_demo_without_training_reports_pseudo_label_dice(tmp_path, monkeypatch):
    import RADALib.demo as demo
    from RADALib.synthetic import SyntheticConfig

    monkeypatch.setattr(
        demo, "AntsRegistrar", lambda config, workers=0: _Managed(TranslationRegistrar())
    )
    monkeypatch.setattr(demo, "SyntheticConfig", lambda: SyntheticConfig(shape=(48, 40, 32)))
    report = demo.run_demo(tmp_path / "demo", n_cases=2, n_labeled=1, train=False)
    assert [row["id"] for row in report["cases"]] == ["case_000"]
    assert 0.5 < report["mean"]["dice_fused"] <= 1.0
    assert (
        json.loads((tmp_path / "demo" / "report.json").read_text())["cases"][0]["id"] == "case_000"
    )


class _Managed:
    def __init__(self, registrar):
        self.registrar = registrar

    def __enter__(self):
        return self.registrar

    def __exit__(self, *exc):
        return None


def test_demo_scores_rada_with_and_without_the_largest_component(tmp_path, monkeypatch, capsys):
    import RADALib.demo as demo
    from RADALib.metrics import dice
    from RADALib.postprocessing import keep_largest_component
    from RADALib.synthetic import SyntheticConfig

    monkeypatch.setattr(
        demo, "AntsRegistrar", lambda config, workers=0: _Managed(TranslationRegistrar())
    )
    monkeypatch.setattr(demo, "SyntheticConfig", lambda: SyntheticConfig(shape=(48, 40, 32)))
    events = []
    report = demo.run_demo(
        tmp_path / "demo", n_cases=2, n_labeled=1, iterations=2, progress=Progress(events.append)
    )
    rada = report["rada"]
    stage_of = {e["message"].split(" (")[0]: e["stage"] for e in events if e.get("message")}
    assert stage_of["computing the frozen encoders' embeddings"] == "embed"
    assert stage_of["case 1/2: case_000.nrrd"] == "inference"
    assert rada["iterations"] == 2 and [r["labeled"] for r in rada["cases"]] == [True, False]
    for row in rada["cases"]:  # both scores recomputed from the files the demo wrote
        truth = read_volume(
            tmp_path / "demo" / "data" / "labels" / f"{row['id']}_label.nrrd", "label"
        ).array
        prediction = read_volume(
            tmp_path / "demo" / "predictions" / f"{row['id']}_rada.nrrd", "label"
        ).array
        assert row["dice"] == dice(prediction, truth)
        assert row["dice_largest_component"] == dice(keep_largest_component(prediction), truth)
    assert rada["dice_largest_component_unlabeled"] == rada["cases"][1]["dice_largest_component"]
    out = capsys.readouterr().out
    assert "with the largest component kept: labeled" in out
    assert (
        "the model segments the 1 volume(s) nobody painted, which propagation cannot, at Dice"
        in out
    )
    assert rada["largest_component_recommended"] == [1], (
        "the synthetic organ is one region in its pseudo-labels"
    )
    assert sorted(p.name for p in (tmp_path / "demo" / "overlays").iterdir()) == [
        "case_000.png",
        "case_001.png",
    ]


def test_the_demo_trains_the_cpu_preset_sized_to_minutes():
    from RADALib.demo import DEMO_ITERATIONS, DEMO_TIME_BUDGET, demo_training
    from RADALib.train_config import preset

    cpu = preset("cpu")
    config = demo_training()
    assert config.network == cpu.network and config.fit_patch
    assert 1 < config.spacing_factor <= cpu.spacing_factor
    assert all(p <= c for p, c in zip(config.patch, cpu.patch))
    assert config.uncertainty_passes == cpu.uncertainty_passes and config.device == "cpu"
    assert config.iterations == DEMO_ITERATIONS == config.schedule.max_iterations
    assert config.time_budget == DEMO_TIME_BUDGET < cpu.time_budget  # sized to minutes


def test_validation_during_training_pads_windows_with_the_volume_minimum(tmp_path, monkeypatch):
    import torch

    import RADALib.inference as inference
    from RADALib.data import normalize_intensity
    from RADALib.workflow import _validator

    image, label = disk_stack(shape=(20, 24, 12), radius=5, shift_per_slice=(0.0, 0.0), seed=0)
    reference = volume_from_array(image)
    case = Case(
        "v",
        write_like(reference, image, tmp_path / "v.nrrd"),
        dense_label=write_like(reference, label, tmp_path / "v_label.nrrd"),
        split="validation",
    )
    pads: list[float] = []

    def windows(x, predictor, patch, stride, *args, pad_value=0.0, **kwargs):
        pads.append(pad_value)
        return torch.zeros((2, *x.shape[2:]))

    monkeypatch.setattr(inference, "sliding_window_inference", windows)
    validate = _validator([case], preset("small", spacing=[1.0, 1.0, 1.0]))
    validate(torch.nn.Linear(1, 1), None, None)
    expected = float(normalize_intensity(read_volume(case.image, "image").array).min())
    assert pads == [pytest.approx(expected)] and expected < -0.5  # not the z-score mean 0
