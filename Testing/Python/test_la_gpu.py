"""The LA2018 GPU-run scripts (Testing/Benchmarks/la_gpu): importable without ANTs/SimpleITK/open_clip,
chunks decoded as unpack_la.py rebuilds them, schedule scaling and segment timing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

HERE = Path(__file__).resolve().parents[1] / "Benchmarks" / "la_gpu"


def _module(name: str):
    key = f"la_gpu_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[key] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_run_script_imports_without_the_packages_the_gpu_machine_lacks():
    done = subprocess.run(
        [
            sys.executable,
            str(HERE / "run_blocked.py"),
            str(HERE / "run_la_gpu.py"),
            "--imports-only",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "imports ok" in done.stdout
    assert "loaded: none" in done.stderr


def test_blocker_refuses_the_packages():
    blocked = _module("run_blocked")
    finder = blocked.Blocker(["SimpleITK"])
    with pytest.raises(ModuleNotFoundError):
        finder.find_spec("SimpleITK._SimpleITK")
    assert finder.find_spec("numpy") is None


def test_chunks_decode_as_unpack_rebuilds_them(tmp_path):
    data = tmp_path / "LA"
    rng = np.random.default_rng(0)
    ids = ["caseA", "caseB"]
    for case_id in ids:
        (data / case_id).mkdir(parents=True)
        with h5py.File(data / case_id / "mri_norm2.h5", "w") as handle:
            handle["image"] = rng.standard_normal((12, 10, 8)).astype(np.float32)
            handle["label"] = (rng.random((12, 10, 8)) > 0.7).astype(np.uint8)
    (data / "train.list").write_text("\n".join(ids) + "\n")
    packed, unpacked = tmp_path / "packed", tmp_path / "unpacked"
    for script, options in (
        ("pack_la.py", ["--data", str(data), "--out", str(packed), "--chunks", "2"]),
        ("unpack_la.py", ["--src", str(packed), "--out", str(unpacked)]),
    ):
        subprocess.run([sys.executable, str(HERE / script), *options], check=True, timeout=120)
    run = _module("run_la_gpu")
    index = run.chunk_index(packed)
    assert sorted(index) == ids
    for case_id in ids:
        decoded = run.decode_chunk_case(index[case_id])
        rebuilt = run.read_la_case(unpacked, case_id)
        np.testing.assert_array_equal(decoded.image, rebuilt.image)
        np.testing.assert_array_equal(decoded.label, rebuilt.label)
        with h5py.File(data / case_id / "mri_norm2.h5", "r") as handle:
            np.testing.assert_array_equal(decoded.label, handle["label"][()])
            assert np.abs(decoded.image - handle["image"][()]).max() < 0.02


def test_segment_rate_counts_iterations_between_logged_steps():
    run = _module("run_la_gpu")
    history = [
        {"step": 5, "seconds": 1.0},
        {"step": 11, "seconds": 9.0},
        {"step": 20, "seconds": 10.0},
        {"step": 40, "seconds": 12.0},
    ]
    assert run.segment_rate(history, 10, 40) == pytest.approx((40 - 11) / (12.0 - 9.0))
    assert run.segment_rate(history, 30, 40) is None


def test_set_overrides_nested_and_plain_training_settings():
    run = _module("run_la_gpu")
    assert run.parse_setting("network.base_filters=4") == ("network.base_filters", 4)
    assert run.parse_setting("amp=off") == ("amp", "off")
    with pytest.raises(Exception, match="KEY=VALUE"):
        run.parse_setting("base_filters")
    args = type(
        "Args",
        (),
        {
            "device": "cpu",
            "log_every": 5,
            "compile": False,
            "checkpoint_every": 100,
            "iterations": None,
            "patch": None,
            "threads": 0,
            "preset": "paper",
            "set": [("network.base_filters", 4), ("unlabeled_batch", 0)],
        },
    )()
    config = run.requested_config(args)
    assert config.network.base_filters == 4 and config.unlabeled_batch == 0
    assert (
        config.patch == (112, 112, 80) and config.iterations == 6000
    )  # the rest stays the preset's


def test_evaluate_scores_each_case_with_and_without_the_largest_component(tmp_path, monkeypatch):
    import torch

    import RADALib.inference as inference
    from RADALib.bundle import load_bundle, save_bundle
    from RADALib.networks import NetworkConfig

    run = _module("run_la_gpu")
    torch.manual_seed(0)
    model = NetworkConfig(
        base_filters=2, text_dim=8, region_dim=12, era_dim=8, adapter_hidden_dim=8
    ).build()
    bundle = load_bundle(
        save_bundle(
            tmp_path / "model",
            model,
            {
                "classes": {1: "left atrium"},
                "prompt": "p",
                "visual_planes": ["axial", "axial"],
                "text_embedding": np.zeros(8),
                "region_embedding_mean": np.zeros(12),
                "inference": {"patch": [16, 16, 16]},
            },
        )
    )
    # the prediction: foreground where the image is bright; the image has the organ and an island
    monkeypatch.setattr(
        inference,
        "ensemble_probabilities",
        lambda model, x, era: torch.cat([(x <= 0).float(), (x > 0).float()], dim=1),
    )
    image = np.full((24, 20, 16), -1.0, np.float32)
    image[2:12, 2:12, 2:12] = 1.0  # the organ, 1000 voxels
    image[18:22, 14:18, 10:14] = 1.0  # a look-alike, 64 voxels
    truth = np.zeros(image.shape, np.uint8)
    truth[2:12, 2:12, 2:12] = 1
    result = run.evaluate(
        bundle,
        [run.LoadedCase("c1", image, truth)],
        "fast",
        torch.device("cpu"),
        1,
        (1.0, 1.0, 1.0),
    )
    case = result["per_case"]["c1"]
    assert case["dice"] == pytest.approx(2000 / 2064)
    assert case["dice_largest_component"] == 1.0
    assert result["dice_largest_component_mean"] == 1.0
