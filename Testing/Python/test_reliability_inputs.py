"""What the `rada` commands do with inputs that would write in the wrong place, are malformed, or
do not fit each other: case ids that are not plain names, broken manifests, predictions and
truths that do not pair up, and a model trained for other structures than a cohort's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from RADALib.cli import main
from RADALib.cohort import Case, Cohort, cohort_from_la_folder, load_cohort
from RADALib.errors import InputError
from RADALib.volume import volume_from_array, write_like


def _manifest(folder: Path, data: object) -> Path:
    path = folder / "cohort.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """tmp_path with two blank images ``images/a.nrrd`` and ``images/b.nrrd``."""
    (tmp_path / "images").mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        (tmp_path / "images" / name).write_bytes(b"")
    return tmp_path


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- plain names

BAD_NAMES = ["../../evil", "a/b", "a\\b", "..", ".", "", " ", "-a", "a\x00b", "a\nb", "c:evil"]


@pytest.mark.parametrize("name", ["case_000", "la-1", "a.b", "7", "Ünïcode case"])
def test_a_plain_name_has_no_problem(name):
    from RADALib.paths import name_problem

    assert name_problem(name) is None


@pytest.mark.parametrize("name", [*BAD_NAMES, None, 3, " a", "a "])
def test_a_name_that_is_not_a_plain_file_name_has_a_problem(name):
    from RADALib.paths import name_problem

    assert name_problem(name)


@pytest.mark.parametrize("case_id", BAD_NAMES)
def test_a_manifest_case_id_that_is_not_a_plain_name_is_refused_naming_the_manifest(
    images, case_id
):
    path = _manifest(images, {"cases": [{"id": case_id, "image": "images/a.nrrd"}]})
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: case #0: case id "):
        load_cohort(path)


def test_case_ids_differing_only_in_case_are_refused_as_they_share_a_folder(images):
    path = _manifest(
        images,
        {
            "cases": [
                {"id": "Case1", "image": "images/a.nrrd"},
                {"id": "case1", "image": "images/b.nrrd"},
            ]
        },
    )
    with pytest.raises(InputError, match="case ids Case1 and case1 differ only in case"):
        load_cohort(path)


def _propagatable_case(folder: Path) -> tuple[Path, Path]:
    """An image and a sparse label (one slice per plane) that the fake registrar propagates."""
    from conftest import disk_stack

    image, label = disk_stack(shape=(30, 30, 16), radius=6, shift_per_slice=(1.0, 0.0))
    sparse = np.zeros_like(label)
    sparse[15, :, :] = label[15, :, :]
    sparse[:, 15, :] = label[:, 15, :]
    sparse[:, :, 8] = label[:, :, 8]
    volume = volume_from_array(image)
    write_like(volume, image, folder / "img" / "c0.nrrd")
    write_like(volume, sparse, folder / "sparse" / "c0.nrrd")
    return folder / "img" / "c0.nrrd", folder / "sparse" / "c0.nrrd"


def test_rada_propagate_refuses_a_case_id_that_climbs_out_of_out_and_writes_nothing(
    tmp_path, capsys, fake_ants
):
    run = tmp_path / "run"
    image, sparse = _propagatable_case(tmp_path)
    cohort = _manifest(
        tmp_path,
        {"cases": [{"id": "../../evil", "image": str(image), "sparse_label": str(sparse)}]},
    )
    before = _files_under(tmp_path)
    code = main(["propagate", "--cohort", str(cohort), "--out", str(run / "out"), "--no-cache"])
    err = capsys.readouterr().err
    assert _files_under(tmp_path) == before  # nothing written, least of all run/evil/
    assert code == 2
    assert err == (
        f"rada: {cohort}: case #0: case id '../../evil' is not a plain file name: it holds a "
        "path separator ('/' or '\\')\n"
    )


def test_propagate_cohort_refuses_a_case_built_with_a_bad_id_before_writing(tmp_path):
    from conftest import TranslationRegistrar

    from RADALib.pseudo_labels import propagate_cohort

    image, sparse = _propagatable_case(tmp_path)
    cohort = Cohort("built", [Case("../evil", image, sparse_label=sparse)])
    before = _files_under(tmp_path)
    with pytest.raises(InputError, match=r"^built: case id '\.\./evil' "):
        propagate_cohort(cohort, tmp_path / "out", TranslationRegistrar())
    assert _files_under(tmp_path) == before


def test_an_la_list_file_naming_a_folder_outside_is_refused(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "mri_norm2.h5").write_bytes(b"")
    (tmp_path / "la").mkdir()
    (tmp_path / "la" / "train.list").write_text("../outside\n")
    with pytest.raises(InputError, match=r"train\.list: case id '\.\./outside' "):
        cohort_from_la_folder(tmp_path / "la", labeled=0)


# ----------------------------------------------------------------------------- malformed manifests

A = {"id": "a", "image": "images/a.nrrd"}
B = {"id": "b", "image": "images/b.nrrd"}

MALFORMED = [
    ({"classes": {"one": "atrium"}, "cases": [A]}, "'classes' key 'one' is not a class number"),
    ({"classes": {"1.5": "atrium"}, "cases": [A]}, "'classes' key '1.5' is not a class number"),
    ({"classes": {"1": 3}, "cases": [A]}, "class 1: the name must be a non-empty text, got 3"),
    ({"classes": {"1": ""}, "cases": [A]}, "class 1: the name must be a non-empty text"),
    (
        {"classes": {"1": "atrium", "2": "Atrium"}, "cases": [A]},
        "classes 1 'atrium' and 2 'Atrium' name the same structure",
    ),
    ({"classes": {"0": "background", "1": "atrium"}, "cases": [A]}, "class 0 is the background"),
    ({"classes": {"-1": "atrium"}, "cases": [A]}, "class -1: class numbers start at 1"),
    ({"classes": {"1": "atrium", "3": "vein"}, "cases": [A]}, "classes must be numbered 1, 2, "),
    ({"classes": ["atrium"], "cases": [A]}, "'classes' must map class numbers to names"),
    ({"cases": {"a": A}}, "not a RADA cohort file"),
    ({"cases": []}, "the cohort lists no case"),
    ({"cases": [{"image": "images/a.nrrd"}]}, "case #0 needs at least 'id' and 'image'"),
    ({"cases": [{"id": None, "image": "images/a.nrrd"}]}, "case #0: case id None "),
    ({"cases": [A, {**B, "id": "a"}]}, "case id a appears twice"),
    ({"cases": [{"id": "a", "image": None}]}, "case a: 'image' must be a path string"),
    ({"cases": [{"id": "a", "image": "images/gone.nrrd"}]}, "case a: image file .* not found"),
    (
        {"cases": [{**A, "simulate_from_dense": "no", "dense_label": "images/b.nrrd"}]},
        "case a: simulate_from_dense must be true or false, got 'no'",
    ),
]


@pytest.fixture
def nothing_runs(monkeypatch):
    """Propagation, training and prediction replaced by stubs: a manifest that gets through runs
    nothing (and the command exits 0)."""
    import RADALib.bundle
    import RADALib.inference
    import RADALib.pseudo_labels
    import RADALib.region_prompt
    import RADALib.workflow

    monkeypatch.setattr(RADALib.pseudo_labels, "propagate_cohort", lambda *a, **k: [])
    monkeypatch.setattr(
        RADALib.workflow,
        "train_model",
        lambda *a, **k: RADALib.workflow.TrainedRun(Path("x"), Path("x/model"), 0, 0.0, {}),
    )
    monkeypatch.setattr(RADALib.bundle, "load_bundle", lambda folder: None)
    monkeypatch.setattr(RADALib.region_prompt, "region_embeddings_for_files", lambda *a, **k: [])
    monkeypatch.setattr(RADALib.inference, "predict_files", lambda *a, **k: [])


@pytest.mark.parametrize("command", ["propagate", "train", "predict"])
@pytest.mark.parametrize(("data", "problem"), MALFORMED)
def test_a_malformed_manifest_is_one_line_and_exit_2_in_every_command(
    images, capsys, fake_ants, nothing_runs, command, data, problem
):
    path = _manifest(images, data)
    args = [command, "--cohort", str(path), "--out", str(images / "out")]
    if command == "predict":
        args += ["--model", str(images / "model")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert re.fullmatch(f"rada: {re.escape(str(path))}: (case #0: )?{problem}.*\n", err)
    assert not (images / "out").exists()


# ----------------------------------------------------------------------------- evaluate


def _label(folder: Path, name: str, shift: int = 0) -> None:
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[3:9, 3:9, 3:9] = 1
    write_like(volume_from_array(truth), np.roll(truth, shift, axis=0), folder / name)


def test_evaluate_pairs_the_files_rada_predict_writes_with_their_truth(tmp_path, capsys):
    for case in ("a", "b"):
        _label(tmp_path / "labels", f"{case}.nrrd")
        _label(tmp_path / "pred", f"{case}_rada.nrrd", shift=1)
        _label(tmp_path / "pred", f"{case}_rada_probabilities.nrrd")  # --probabilities
    code = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "labels"),
         "--json", str(tmp_path / "m.json")]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    report = json.loads((tmp_path / "m.json").read_text())
    assert [c["id"] for c in report["cases"]] == ["a", "b"]
    assert report["cases"][0]["dice"] == pytest.approx(5 / 6)


def test_evaluate_names_the_cases_without_prediction_or_truth_on_stderr_and_in_the_report(
    tmp_path, capsys
):
    for case in ("a", "b", "c"):
        _label(tmp_path / "labels", f"{case}.nrrd")
    for case in ("a", "d"):
        _label(tmp_path / "pred", f"{case}_rada.nrrd")
    code = main(
        ["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "labels"),
         "--json", str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv")]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.err.splitlines()
    assert lines == [
        f"rada: warning: {tmp_path / 'pred'}: no prediction for 2 of 3 truth case(s): b, c "
        "(scored: the 1 case(s) with both)",
        f"rada: warning: {tmp_path / 'labels'}: no truth for 1 prediction(s): d (not scored)",
    ]
    assert "no prediction: b, c" in captured.out and "no truth: d" in captured.out
    report = json.loads((tmp_path / "m.json").read_text())
    assert [c["id"] for c in report["cases"]] == ["a"]
    assert (report["no_prediction"], report["no_truth"]) == (["b", "c"], ["d"])


def test_evaluate_with_no_case_in_common_refuses_instead_of_scoring_nothing(tmp_path, capsys):
    _label(tmp_path / "labels", "a.nrrd")
    _label(tmp_path / "pred", "b_rada.nrrd")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "labels")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        f"rada: {tmp_path / 'pred'}: no prediction matches a truth file in {tmp_path / 'labels'} "
        "by case id (predictions: b; truths: a)\n"
    )


def test_evaluate_refuses_two_files_that_stand_for_one_case(tmp_path, capsys):
    _label(tmp_path / "labels", "a.nrrd")
    _label(tmp_path / "labels", "a_label.nii.gz", shift=2)
    _label(tmp_path / "pred", "a_rada.nrrd")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "labels")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"rada: {tmp_path / 'labels'}: a.nrrd and a_label.nii.gz both stand for case a; keep one\n"
    )


# ----------------------------------------------------------------------------- model vs cohort


def _bundle_manifest(folder: Path, classes: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    manifest = {
        "format": "rada-bundle",
        "format_version": 1,
        "classes": {k: {"name": v} for k, v in classes.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def predict_stubs(monkeypatch):
    """``rada predict`` without torch: the bundle, region prompts and inference are stubs; the
    list records the inputs inference was given."""
    import RADALib.bundle
    import RADALib.inference
    import RADALib.region_prompt

    segmented: list = []
    monkeypatch.setattr(RADALib.bundle, "load_bundle", lambda folder: "bundle")
    monkeypatch.setattr(
        RADALib.region_prompt,
        "region_embeddings_for_files",
        lambda b, inputs, *a, **k: [None] * len(inputs),
    )
    monkeypatch.setattr(
        RADALib.inference,
        "predict_files",
        lambda b, inputs, out, **k: segmented.extend(inputs) or inputs,
    )
    return segmented


def _predict(tmp_path: Path, cohort_classes: dict[str, str] | None, *extra: str) -> list[str]:
    data: dict = {"cases": [{"id": "a", "image": "images/a.nrrd"}]}
    if cohort_classes is not None:
        data["classes"] = cohort_classes
    cohort = _manifest(tmp_path, data)
    return ["predict", "--model", str(tmp_path / "model"), "--cohort", str(cohort),
            "--out", str(tmp_path / "out"), *extra]  # fmt: skip


def test_predict_refuses_a_cohort_whose_classes_the_model_was_not_trained_for(
    images, capsys, predict_stubs
):
    _bundle_manifest(images / "model", {"1": "kidney", "2": "kidney tumor"})
    code = main(_predict(images, {"1": "left atrium"}))
    err = capsys.readouterr().err
    assert code == 2 and predict_stubs == []
    assert err == (
        f"rada: {images / 'model'}: this model was trained for 1 'kidney', 2 'kidney tumor'; the "
        f"cohort {images / 'cohort.json'} names 1 'left atrium'; use a model trained for these "
        "structures, or --allow-other-classes\n"
    )


def test_predict_refuses_a_model_whose_class_numbers_are_swapped(images, capsys, predict_stubs):
    _bundle_manifest(images / "model", {"1": "kidney tumor", "2": "kidney"})
    assert main(_predict(images, {"1": "kidney", "2": "kidney tumor"})) == 2
    assert "this model was trained for 1 'kidney tumor', 2 'kidney'" in capsys.readouterr().err


def test_predict_with_allow_other_classes_warns_and_segments(images, capsys, predict_stubs):
    _bundle_manifest(images / "model", {"1": "kidney"})
    assert main(_predict(images, {"1": "left atrium"}, "--allow-other-classes")) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        f"rada: warning: {images / 'model'}: this model was trained for 1 'kidney'"
    )
    assert len(predict_stubs) == 1


@pytest.mark.parametrize(
    ("model", "cohort"),
    [
        ({"1": "Left_Atrium"}, {"1": "left atrium"}),  # the same structure, spelled otherwise
        ({"1": "LA"}, {"1": "left atrium"}),  # an alias
        ({"1": "kidney", "2": "kidney tumor"}, {"1": "kidney"}),  # the cohort names fewer
        ({"1": "kidney"}, None),  # the manifest names no structure
        ({"1": "kidney"}, {"1": "foreground"}),  # `rada cohort`'s default name: none named
    ],
)
def test_predict_accepts_a_model_trained_for_the_cohort_s_classes(
    images, capsys, predict_stubs, model, cohort
):
    _bundle_manifest(images / "model", model)
    assert main(_predict(images, cohort)) == 0
    assert "warning" not in capsys.readouterr().err
    assert len(predict_stubs) == 1
