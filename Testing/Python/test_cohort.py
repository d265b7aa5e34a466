"""Tests of RADALib.cohort's manifest reader: paths, defaults and the errors a user sees."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from RADALib.cohort import Case, Cohort, load_cohort, save_cohort
from RADALib.errors import InputError


def manifest(folder: Path, data: object) -> Path:
    path = folder / "cohort.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    for name in ("a.nrrd", "b.nrrd"):
        (tmp_path / "images" / name).write_bytes(b"")
    return tmp_path


def test_relative_paths_are_read_from_the_manifest_folder_and_defaults_filled(files):
    absolute = files / "images" / "b.nrrd"
    path = manifest(
        files,
        {
            "cases": [
                {"id": "a", "image": "images/a.nrrd", "dense_label": "images/b.nrrd"},
                {"id": 7, "image": str(absolute), "sparse_label": "", "split": "validation"},
            ]
        },
    )
    cohort = load_cohort(path)
    assert cohort.name == "cohort"
    assert cohort.classes == {1: "foreground"}
    first, second = cohort.cases
    assert first == Case(
        "a", files.resolve() / "images" / "a.nrrd", None, files.resolve() / "images" / "b.nrrd"
    )
    assert (second.id, second.image, second.sparse_label, second.split) == (
        "7",
        absolute,
        None,
        "validation",
    )


def test_a_saved_cohort_loads_back_equal(files):
    cohort = Cohort(
        "demo",
        [Case("a", files / "images" / "a.nrrd", dense_label=files / "images" / "b.nrrd")],
        {1: "organ", 2: "tumour"},
    )
    path = save_cohort(cohort, files / "out" / "cohort.json")
    loaded = load_cohort(path)
    assert (loaded.name, loaded.classes) == (cohort.name, cohort.classes)
    (case,) = loaded.cases
    assert (case.id, case.image.resolve(), case.dense_label.resolve(), case.labeled) == (
        "a",
        (files / "images" / "a.nrrd").resolve(),
        (files / "images" / "b.nrrd").resolve(),
        False,
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{", r"not valid JSON \(line 1, column 2\)"),
        ([], "not a RADA cohort file"),
        ({"format": "rada-cohort/9", "cases": []}, "unknown cohort format 'rada-cohort/9'"),
        ({"cases": [{"id": "a"}]}, "case #0 needs at least 'id' and 'image'"),
        ({"cases": [{"id": "a", "image": 3}]}, "case a: 'image' must be a path string"),
        (
            {"cases": [{"id": "a", "image": "images/a.nrrd", "split": "test"}]},
            "case a: split must be 'train' or 'validation', got 'test'",
        ),
        (
            {"cases": [{"id": "a", "image": "images/a.nrrd", "simulate_from_dense": True}]},
            "case a: simulate_from_dense needs a dense_label",
        ),
        ({"cases": [{"id": "a", "image": "images/c.nrrd"}]}, "case a: image file .* not found"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_the_case(files, data, problem):
    path = manifest(files, data)
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: {problem}"):
        load_cohort(path)


def test_a_duplicate_case_id_is_reported_before_its_missing_files(files):
    path = manifest(
        files,
        {"cases": [{"id": "a", "image": "images/a.nrrd"}, {"id": "a", "image": "gone.nrrd"}]},
    )
    with pytest.raises(InputError, match="case id a appears twice"):
        load_cohort(path)


def test_missing_files_are_accepted_when_files_are_not_checked(files):
    path = manifest(files, {"cases": [{"id": "a", "image": "gone.nrrd"}]})
    assert load_cohort(path, check_files=False).cases[0].image == files.resolve() / "gone.nrrd"
