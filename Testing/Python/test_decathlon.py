"""The Medical Segmentation Decathlon layout: a task folder as a cohort, and as evaluation truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import hippocampus_folder

from RADALib.cli import main
from RADALib.cohort import load_cohort, save_cohort
from RADALib.decathlon import cohort_from_decathlon
from RADALib.errors import InputError
from RADALib.evaluation import evaluate_files, pair_files
from RADALib.volume import read_volume, volume_from_array, write_like

SHARED_HIPPOCAMPUS = hippocampus_folder()
LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}
IDS = ["hip_007", "hip_002", "hip_010", "hip_004", "hip_001"]  # not in sorted order


def label_array(i: int) -> np.ndarray:
    array = np.zeros((9, 8, 7), np.uint8)
    array[2 : 5 + i % 2, 2:6, 1:4] = 1
    array[2:6, 2:6, 4:6] = 2
    return array


def make_task(folder: Path, ids=IDS, labels=LABELS, **extra) -> Path:
    """A tiny Decathlon task: ``imagesTr/<id>.nii.gz``, ``labelsTr/<id>.nii.gz``, dataset.json."""
    for i, case_id in enumerate(ids):
        label = label_array(i)
        volume = volume_from_array(label.astype(np.float32) * 100 + i, spacing=(1.0, 1.0, 1.5))
        write_like(volume, volume.array, folder / "imagesTr" / f"{case_id}.nii.gz")
        write_like(volume, label, folder / "labelsTr" / f"{case_id}.nii.gz")
    data = {
        "name": "Tiny",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI"},
        "labels": labels,
        "numTraining": len(ids),
        "training": [
            {"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in ids
        ],
        "test": [],
    }
    data.update(extra)
    (folder / "dataset.json").write_text(json.dumps(data, indent=1))
    return folder


def test_a_decathlon_folder_becomes_a_cohort_with_its_class_names(tmp_path):
    task = make_task(tmp_path / "Task99_Tiny")
    cohort = cohort_from_decathlon(task, labeled=2, validation=1)

    assert cohort.name == "Tiny"
    assert cohort.classes == {1: "Anterior", 2: "Posterior"}
    assert [c.id for c in cohort.cases] == IDS  # the training list's order
    assert [c.id for c in cohort.labeled] == IDS[:2]
    assert all(c.simulate_from_dense for c in cohort.labeled)
    assert [c.id for c in cohort.unlabeled] == IDS[2:4]
    assert [c.id for c in cohort.validation] == IDS[4:]
    case = cohort.cases[0]
    assert case.image == (task / "imagesTr" / "hip_007.nii.gz").resolve()
    assert case.dense_label == (task / "labelsTr" / "hip_007.nii.gz").resolve()

    reloaded = load_cohort(save_cohort(cohort, tmp_path / "out" / "tiny.json"))
    assert reloaded.classes == cohort.classes
    assert [
        (c.id, c.image.resolve(), c.dense_label.resolve(), c.labeled, c.split)
        for c in reloaded.cases
    ] == [(c.id, c.image, c.dense_label, c.labeled, c.split) for c in cohort.cases]


def test_without_labeled_every_decathlon_case_keeps_its_dense_label_for_evaluation(tmp_path):
    cohort = cohort_from_decathlon(make_task(tmp_path))
    assert not cohort.labeled and len(cohort.unlabeled) == len(IDS)
    assert all(c.dense_label is not None for c in cohort.cases)
    assert cohort.name == "Tiny"


def _break(task: Path, change) -> Path:
    data = json.loads((task / "dataset.json").read_text())
    change(data)
    (task / "dataset.json").write_text(json.dumps(data))
    return task


@pytest.mark.parametrize(
    "damage, where, problem",
    [
        (lambda t: (t / "dataset.json").unlink(), "dataset.json", "not found"),
        (
            lambda t: (t / "dataset.json").write_text('{"training": ['),
            "dataset.json",
            "not valid JSON",
        ),
        (lambda t: _break(t, lambda d: d.pop("training")), "dataset.json", "no 'training' list"),
        (
            lambda t: (t / "imagesTr" / "hip_010.nii.gz").unlink(),
            "dataset.json",
            "training entry #2: image",
        ),
        (
            lambda t: (t / "labelsTr" / "hip_002.nii.gz").unlink(),
            "dataset.json",
            "training entry #1: label",
        ),
        (
            lambda t: _break(t, lambda d: d.update(labels={"background": 0, "liver": 1})),
            "dataset.json",
            "'labels' key 'background' is not a class number",
        ),
        (
            lambda t: _break(t, lambda d: d.update(modality={"0": "FLAIR", "1": "T1w"})),
            "dataset.json",
            "2 image channels (FLAIR, T1w)",
        ),
    ],
    ids=[
        "no dataset.json",
        "malformed JSON",
        "no training list",
        "missing image",
        "missing label",
        "labels keyed by name",
        "several modalities",
    ],
)
def test_a_broken_decathlon_folder_gives_a_one_line_error_naming_the_file(
    tmp_path, damage, where, problem
):
    task = make_task(tmp_path / "task")
    damage(task)
    with pytest.raises(InputError) as error:
        cohort_from_decathlon(task, labeled=1)
    message = str(error.value)
    assert "\n" not in message
    assert error.value.source.endswith(where) and problem in error.value.problem, message


def test_a_four_dimensional_image_is_refused_naming_the_file(tmp_path):
    task = make_task(tmp_path / "task")
    four = sitk.GetImageFromArray(np.zeros((2, 7, 8, 9), np.float32), isVector=False)
    path = task / "imagesTr" / "hip_004.nii.gz"
    sitk.WriteImage(four, str(path))
    with pytest.raises(InputError) as error:
        cohort_from_decathlon(task)
    assert error.value.source == str(path.resolve())
    assert "2 channels" in error.value.problem and "not supported" in error.value.problem


def test_rada_cohort_decathlon_writes_a_manifest_with_the_class_names(tmp_path, capsys):
    task = make_task(tmp_path / "task")
    out = tmp_path / "tiny.json"
    args = ["cohort", "--decathlon", str(task), "--labeled", "2", "--validation", "1"]
    assert main([*args, "--out", str(out)]) == 0
    assert "5 cases, 2 labeled, 2 unlabeled, 1 validation" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["classes"] == {"1": "Anterior", "2": "Posterior"}
    assert [c["id"] for c in data["cases"]] == IDS


def test_rada_cohort_refuses_two_sources_at_once(tmp_path, capsys):
    task = make_task(tmp_path / "task")
    code = main(
        ["cohort", "--decathlon", str(task), "--la", str(tmp_path), "--out", str(tmp_path / "c")]
    )
    err = capsys.readouterr().err.strip()
    assert (
        code == 2 and err == "rada: rada cohort: --la and --decathlon exclude each other; give one"
    )


def test_evaluate_finds_the_truth_of_rada_predictions_in_a_decathlon_labels_folder(tmp_path):
    task = make_task(tmp_path / "task")
    predictions = tmp_path / "pred"
    for i, case_id in enumerate(IDS[:3]):
        truth = read_volume(task / "labelsTr" / f"{case_id}.nii.gz", "label")
        write_like(truth, label_array(i), predictions / f"{case_id}_rada.nrrd")
        write_like(truth, truth.array * 0, predictions / f"{case_id}_rada_probabilities.nrrd")

    pairs = pair_files(predictions, task)
    assert [(i, p.name, t.parent.name) for i, p, t in pairs] == [
        (i, f"{i}_rada.nrrd", "labelsTr") for i in sorted(IDS[:3])
    ]
    evaluation = evaluate_files(pairs)
    assert {c for _, c, _ in evaluation.rows} == {1, 2}
    assert all(m.dice == pytest.approx(1.0) for _, _, m in evaluation.rows)

    one = pair_files(predictions / "hip_002_rada.nrrd", task)
    assert [(i, t.name) for i, _, t in one] == [("hip_002", "hip_002.nii.gz")]


def test_rada_evaluate_takes_a_decathlon_task_folder_as_truth(tmp_path, capsys):
    task = make_task(tmp_path / "task")
    truth = read_volume(task / "labelsTr" / "hip_010.nii.gz", "label")
    write_like(truth, label_array(2), tmp_path / "pred" / "hip_010_rada.nrrd")
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(task)])
    out = capsys.readouterr().out
    assert code == 0 and "hip_010" in out and "failures 0 of 1" in out


@pytest.mark.skipif(
    SHARED_HIPPOCAMPUS is None,
    reason="the Hippocampus Decathlon task is not in shared/data/ (or $RADA_HIPPOCAMPUS_DIR)",
)
def test_the_real_hippocampus_task_becomes_a_two_class_cohort():
    cohort = cohort_from_decathlon(SHARED_HIPPOCAMPUS, labeled=8, validation=40)
    assert cohort.classes == {1: "Anterior", 2: "Posterior"}
    assert len(cohort.cases) == 200
    assert (len(cohort.labeled), len(cohort.unlabeled), len(cohort.validation)) == (8, 152, 40)
    first = cohort.cases[0]
    assert first.id == "hippocampus_003"
    label = read_volume(first.dense_label, "label")
    assert set(np.unique(label.array)) <= {0, 1, 2}
