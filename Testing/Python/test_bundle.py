"""Model bundles: round trip, refusals with clear messages, and atomic replacement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import RADALib.bundle as bundle_module
from RADALib.bundle import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    check_classes,
    default_models_dir,
    list_bundles,
    load_bundle,
    read_manifest,
    save_bundle,
)
from RADALib.errors import InputError
from RADALib.networks import NetworkConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = NetworkConfig(
        base_filters=2, text_dim=8, region_dim=12, era_dim=8, adapter_hidden_dim=8
    ).build()
    # non-trivial batch-norm statistics, so buffers are part of the round trip
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def fields(**extra):
    rng = np.random.default_rng(0)
    base = {
        "classes": {1: "left atrium"},
        "prompt": "An image containing the left atrium, with the rest being background",
        "visual_planes": ["axial", "axial"],
        "text_embedding": rng.normal(size=8),
        "region_embedding_mean": rng.normal(size=12).astype(np.float32),
        "encoder": {"arch": "ViT-B/16", "pretrained": {"vision": False, "text": False}},
        "inference": {"patch": [16, 16, 16], "stride": "dense"},
        "training": {"iterations": 3, "metrics": {"dice": 0.5, "hd95": float("nan")}},
    }
    base.update(extra)
    return base


def outputs(model, bundle_fields):
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        era = model.embed(
            torch.as_tensor(np.asarray(bundle_fields["text_embedding"], np.float32)),
            torch.as_tensor(np.asarray(bundle_fields["region_embedding_mean"], np.float32)),
        )
        return model(x, era)


def test_save_then_load_gives_identical_outputs(tmp_path):
    model, f = tiny_model(), fields()
    folder = save_bundle(tmp_path / "la", model, f)
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_FILE, WEIGHTS_FILE]
    assert [p.name for p in tmp_path.iterdir()] == ["la"]  # no temporary left behind
    bundle = load_bundle(folder)
    assert not bundle.model.training
    assert all(
        p.dtype == torch.float32 and p.device.type == "cpu" for p in bundle.model.parameters()
    )
    before, after = outputs(model, f), outputs(bundle.model, f)
    for view in before:
        assert torch.equal(before[view], after[view])
    manifest = bundle.manifest
    assert manifest["format"] == "rada-bundle" and manifest["format_version"] == 1
    assert manifest["network"] == model.config.to_dict()
    assert manifest["training"]["metrics"]["hd95"] is None  # NaN is stored as null
    assert len(manifest["checksums"][WEIGHTS_FILE]) == 64
    assert bundle.class_names == {1: "left atrium"}
    la = bundle.classes[1]
    assert la["terminology"]["type"]["code"] == "82471001" and len(la["color"]) == 3
    np.testing.assert_allclose(bundle.text_embedding, np.asarray(f["text_embedding"], np.float32))
    np.testing.assert_array_equal(bundle.region_embedding_mean, f["region_embedding_mean"])
    assert bundle.inference_settings["stride"] == "dense"


def test_unknown_structure_has_a_colour_and_no_terminology(tmp_path):
    bundle = load_bundle(save_bundle(tmp_path / "m", tiny_model(), fields(classes={1: "pancreas"})))
    assert bundle.classes[1]["terminology"] is None
    assert all(0 <= c <= 1 for c in bundle.classes[1]["color"])


def test_bad_manifest_fields_are_refused_at_save(tmp_path):
    with pytest.raises(ValueError, match="region_embedding_mean"):
        save_bundle(tmp_path / "m", tiny_model(), fields(region_embedding_mean=np.zeros(5)))
    with pytest.raises(ValueError, match="classes"):
        save_bundle(tmp_path / "m", tiny_model(), fields(classes={1: "kidney", 2: "kidney tumor"}))
    with pytest.raises(ValueError, match="set by save_bundle"):
        save_bundle(tmp_path / "m", tiny_model(), fields(format_version=7))
    assert list(tmp_path.iterdir()) == []


def _edit_manifest(folder, **changes):
    path = folder / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_newer_format_version_is_refused(tmp_path):
    folder = save_bundle(tmp_path / "m", tiny_model(), fields())
    _edit_manifest(folder, format_version=2)
    with pytest.raises(
        InputError, match=r"format_version 2 was written by a newer RADA.*upgrade"
    ) as info:
        load_bundle(folder)
    assert info.value.source.endswith(MANIFEST_FILE)


def test_not_a_bundle_is_refused(tmp_path):
    folder = save_bundle(tmp_path / "m", tiny_model(), fields())
    _edit_manifest(folder, format="something-else")
    with pytest.raises(InputError, match="not a RADA model bundle"):
        load_bundle(folder)
    with pytest.raises(InputError, match="model bundle not found"):
        load_bundle(tmp_path / "nowhere")


def test_a_corrupted_weights_file_is_refused(tmp_path):
    folder = save_bundle(tmp_path / "m", tiny_model(), fields())
    weights = folder / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="checksum mismatch.*corrupt") as info:
        load_bundle(folder)
    assert info.value.source == str(weights)


def test_missing_files_are_named(tmp_path):
    folder = save_bundle(tmp_path / "m", tiny_model(), fields())
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(InputError, match="missing") as info:
        load_bundle(folder)
    assert info.value.source == str(folder / WEIGHTS_FILE)
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(InputError, match="missing") as info:
        load_bundle(folder)
    assert info.value.source == str(folder / MANIFEST_FILE)


def test_weights_that_do_not_fit_the_network_are_refused(tmp_path):
    folder = save_bundle(tmp_path / "m", tiny_model(), fields())
    network = json.loads((folder / MANIFEST_FILE).read_text())["network"]
    _edit_manifest(folder, network={**network, "base_filters": 4})
    with pytest.raises(InputError, match="do not match the network.*wrong shape"):
        load_bundle(folder)


def test_check_classes_names_both_class_sets(tmp_path):
    bundle = load_bundle(save_bundle(tmp_path / "m", tiny_model(), fields()))
    check_classes(bundle, {0: "background", 1: "Left_Atrium"})  # case and underscores do not matter
    with pytest.raises(
        InputError, match=r"trained for classes 1 'left atrium'.*1 'kidney', 2 'kidney tumor'"
    ):
        check_classes(bundle, {1: "kidney", 2: "kidney tumor"})


def test_a_failed_save_leaves_the_old_bundle_intact(tmp_path, monkeypatch):
    folder = save_bundle(tmp_path / "m", tiny_model(0), fields())
    old_manifest = (folder / MANIFEST_FILE).read_text()
    old_weights = (folder / WEIGHTS_FILE).read_bytes()
    import safetensors.torch

    def half_write(state, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"\x00" * 100)  # a partial file, then the disk "fills up"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(InputError, match=r"m: could not be written: no space left on device$"):
        save_bundle(folder, tiny_model(1), fields())
    monkeypatch.undo()

    def broken_manifest(*args, **kwargs):
        raise RuntimeError("crash while writing the manifest")

    monkeypatch.setattr(bundle_module, "_fsync", broken_manifest)
    with pytest.raises(RuntimeError, match="crash"):
        save_bundle(folder, tiny_model(1), fields())
    monkeypatch.undo()

    assert (folder / MANIFEST_FILE).read_text() == old_manifest
    assert (folder / WEIGHTS_FILE).read_bytes() == old_weights
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no half bundle, no temporaries
    load_bundle(folder)
    # a successful save does replace it
    save_bundle(folder, tiny_model(1), fields(prompt="new"))
    assert load_bundle(folder).prompt == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_folder_that_is_not_a_bundle_is_never_replaced(tmp_path):
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(InputError, match="not a RADA model bundle; refusing"):
        save_bundle(precious, tiny_model(), fields())
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_models_dir_and_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("RADA_CACHE_DIR", str(tmp_path / "cache"))
    assert default_models_dir() == tmp_path / "cache" / "models"
    monkeypatch.delenv("RADA_CACHE_DIR")
    assert default_models_dir().parts[-3:] == (".cache", "rada", "models")
    models = tmp_path / "models"
    assert list_bundles(models) == []
    save_bundle(models / "b", tiny_model(), fields())
    save_bundle(models / "a", tiny_model(), fields())
    (models / "notes").mkdir()
    (models / ".c.x.part").mkdir()
    assert [p.name for p in list_bundles(models)] == ["a", "b"]
    assert read_manifest(models / "a" / MANIFEST_FILE)["classes"]["1"]["name"] == "left atrium"
