"""Cohort manifests: which volumes, which carry annotations, where their labels are.

A manifest is a JSON file::

    {"format": "rada-cohort/1", "name": "LA2018", "classes": {"1": "left atrium"},
     "cases": [{"id": "case_000", "image": "images/case_000.nrrd",
                "sparse_label": "sparse/case_000.nrrd",   # a user's painted slices, or null
                "dense_label": "labels/case_000.nrrd",    # evaluation only, or null
                "labeled": true, "simulate_from_dense": false,
                "split": "train"}]}

Paths are relative to the manifest's folder (absolute paths are kept as they are). A case id
becomes a folder name (``<out>/cases/<id>/``): it must be a plain file name
(:func:`~RADALib.paths.name_problem`), and no two ids may differ only in case. ``classes`` maps
the class numbers 1, 2, ... (no gaps, 0 is the background) to distinct names. A case is
labeled when it has a sparse label map, or when ``simulate_from_dense`` asks to simulate the
sparse annotation from its dense label (benchmarks on fully labeled data such as LA2018:
the largest-foreground slice per plane). ``split`` is ``train`` or ``validation``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .atomic import check_output_file, ensure_writable_folder, write_text_atomic
from .errors import InputError
from .paths import plain_name
from .terminology import normal_name
from .volume import _H5_SUFFIXES, _SITK_SUFFIXES, file_suffix

FORMAT = "rada-cohort/1"
Split = Literal["train", "validation"]


@dataclass
class Case:
    """One volume of a cohort (paths absolute once loaded)."""

    id: str
    image: Path
    sparse_label: Path | None = None
    dense_label: Path | None = None
    simulate_from_dense: bool = False
    split: Split = "train"

    @property
    def labeled(self) -> bool:
        return self.sparse_label is not None or (
            self.simulate_from_dense and self.dense_label is not None
        )


@dataclass
class Cohort:
    """A named list of cases and the class names (label value -> name)."""

    name: str
    cases: list[Case]
    classes: dict[int, str] = field(default_factory=lambda: {1: "foreground"})
    path: Path | None = None

    @property
    def labeled(self) -> list[Case]:
        return [c for c in self.cases if c.labeled and c.split == "train"]

    @property
    def unlabeled(self) -> list[Case]:
        return [c for c in self.cases if not c.labeled and c.split == "train"]

    @property
    def validation(self) -> list[Case]:
        return [c for c in self.cases if c.split == "validation"]

    def select(self, ids: Iterable[str]) -> Cohort:
        """A cohort holding only the cases named in ``ids`` (unknown ids are an error)."""
        wanted = list(ids)
        known = {c.id for c in self.cases}
        missing = [i for i in wanted if i not in known]
        if missing:
            raise InputError(self.path or self.name, f"no case named {', '.join(missing)}")
        return Cohort(
            self.name, [c for c in self.cases if c.id in wanted], dict(self.classes), self.path
        )

    def to_json(self, relative_to: Path) -> dict:
        def rel(path: Path | None) -> str | None:
            if path is None:
                return None
            try:
                return os.path.relpath(path, relative_to)
            except ValueError:  # another drive on Windows
                return str(path)

        return {
            "format": FORMAT,
            "name": self.name,
            "classes": {str(k): v for k, v in sorted(self.classes.items())},
            "cases": [
                {
                    "id": c.id,
                    "image": rel(c.image),
                    "sparse_label": rel(c.sparse_label),
                    "dense_label": rel(c.dense_label),
                    "labeled": c.labeled,
                    "simulate_from_dense": c.simulate_from_dense,
                    "split": c.split,
                }
                for c in self.cases
            ],
        }


def save_cohort(cohort: Cohort, path: str | os.PathLike[str]) -> Path:
    """Write the manifest atomically; paths inside are stored relative to its folder."""
    path = check_output_file(path)
    ensure_writable_folder(path.parent)
    text = json.dumps(cohort.to_json(path.parent.resolve()), indent=2) + "\n"
    write_text_atomic(path, text)
    cohort.path = path
    return path


def load_cohort(path: str | os.PathLike[str], check_files: bool = True) -> Cohort:
    """Read and validate a manifest; every error names the manifest and the case."""
    path = Path(path)
    data = _read_manifest(path)
    classes = _classes(path, data.get("classes"))
    base = path.parent.resolve()
    cases, seen = [], set()
    for number, entry in enumerate(data["cases"]):
        case_id = _entry_id(path, number, entry)
        if case_id in seen:
            raise InputError(path, f"case id {case_id} appears twice")
        seen.add(case_id)
        cases.append(_case_from_entry(path, base, case_id, entry, check_files))
    check_case_ids((c.id for c in cases), path)
    return Cohort(str(data.get("name", path.stem)), cases, classes, path)


def check_case_ids(ids: Iterable[str], source: str | os.PathLike[str]) -> None:
    """Refuse, naming ``source``, a case id that is not a plain file name or two ids that differ
    only in case: each id names the folder ``<out>/cases/<id>/`` its results are written to."""
    folders: dict[str, str] = {}
    for case_id in ids:
        plain_name(case_id, "case id", source)
        other = folders.setdefault(case_id.casefold(), case_id)
        if other != case_id:
            raise InputError(
                source,
                f"case ids {other} and {case_id} differ only in case: they would share a folder "
                "on Windows and macOS; rename one",
            )


def _classes(path: Path, value: object) -> dict[int, str]:
    """The manifest's ``classes`` (class number -> name), checked; ``{1: "foreground"}`` when unset."""
    if value is None or value == {}:
        return {1: "foreground"}
    if not isinstance(value, dict):
        raise InputError(
            path, '\'classes\' must map class numbers to names, e.g. {"1": "left atrium"}'
        )
    classes: dict[int, str] = {}
    for key, name in value.items():
        number = _class_number(path, key)
        if number in classes:
            raise InputError(path, f"class {number} is listed twice")
        if not isinstance(name, str) or not name.strip():
            raise InputError(
                path, f"class {number}: the name must be a non-empty text, got {name!r}"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise InputError(path, f"class {number}: the name {name!r} holds a control character")
        classes[number] = name
    numbers = sorted(classes)
    if numbers != list(range(1, len(numbers) + 1)):
        raise InputError(
            path,
            "classes must be numbered 1, 2, ... without gaps (one network output each), got "
            + ", ".join(map(str, numbers)),
        )
    named: dict[str, int] = {}
    for number in numbers:
        first = named.setdefault(normal_name(classes[number]), number)
        if first != number:
            raise InputError(
                path,
                f"classes {first} {classes[first]!r} and {number} {classes[number]!r} name the "
                "same structure",
            )
    return classes


def _class_number(path: Path, key: str) -> int:
    """The class number a ``classes`` key of the manifest ``path`` names: 1 or more."""
    if not re.fullmatch(r"-?[0-9]+", key):
        raise InputError(
            path, f"'classes' key {key!r} is not a class number; expected e.g. {{\"1\": ...}}"
        )
    number = int(key)
    if number == 0:
        raise InputError(path, "class 0 is the background: number the classes from 1")
    if number < 0:
        raise InputError(path, f"class {number}: class numbers start at 1")
    return number


def read_json(path: Path, unreadable: str) -> Any:
    """The parsed JSON of ``path``; an :class:`InputError` naming it says ``<unreadable>: <why>``
    when it cannot be read, or where the JSON is broken (line and column)."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"{unreadable}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None


def _read_manifest(path: Path) -> dict:
    """The manifest's JSON object, checked to be a cohort file of this format."""
    if not path.exists():
        raise InputError(path, "cohort file not found")
    data = read_json(path, "cannot read the cohort file")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise InputError(path, "not a RADA cohort file (expected an object with a 'cases' list)")
    if data.get("format", FORMAT) != FORMAT:
        raise InputError(
            path, f"unknown cohort format {data.get('format')!r} (this version reads {FORMAT})"
        )
    if not data["cases"]:
        raise InputError(path, "the cohort lists no case")
    return data


def _entry_id(path: Path, number: int, entry: object) -> str:
    """The case id of manifest entry ``number``, which must name at least an id and an image;
    the id is a plain file name (a whole number is taken as its digits)."""
    if not isinstance(entry, dict) or "id" not in entry or "image" not in entry:
        raise InputError(path, f"case #{number} needs at least 'id' and 'image'")
    case_id = entry["id"]
    if isinstance(case_id, int) and not isinstance(case_id, bool):
        case_id = str(case_id)
    return plain_name(case_id, f"case #{number}: case id", path)


def _case_from_entry(path: Path, base: Path, case_id: str, entry: dict, check_files: bool) -> Case:
    """One manifest entry as a :class:`Case`; relative file paths are taken from ``base``."""

    def resolve(key: str) -> Path | None:
        return _manifest_file(path, base, entry.get(key), case_id, key, check_files)

    split = entry.get("split", "train")
    if split not in ("train", "validation"):
        raise InputError(
            path, f"case {case_id}: split must be 'train' or 'validation', got {split!r}"
        )
    if not isinstance(entry["image"], str) or not entry["image"]:
        raise InputError(path, f"case {case_id}: 'image' must be a path string")
    simulate = entry.get("simulate_from_dense", False)
    if not isinstance(simulate, bool):
        raise InputError(
            path, f"case {case_id}: simulate_from_dense must be true or false, got {simulate!r}"
        )
    case = Case(
        id=case_id,
        image=resolve("image"),  # type: ignore[arg-type]
        sparse_label=resolve("sparse_label"),
        dense_label=resolve("dense_label"),
        simulate_from_dense=simulate,
        split=split,
    )
    if case.simulate_from_dense and case.dense_label is None:
        raise InputError(path, f"case {case_id}: simulate_from_dense needs a dense_label")
    return case


def _manifest_file(
    path: Path, base: Path, value: object, case_id: str, key: str, check_files: bool
) -> Path | None:
    """A file named in the manifest ``path``, relative to ``base`` unless absolute; None if unset."""
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InputError(path, f"case {case_id}: '{key}' must be a path string")
    file = Path(value)
    file = file if file.is_absolute() else base / file
    if check_files and not file.exists():
        raise InputError(path, f"case {case_id}: {key} file {file} not found")
    return file


def classes_not_in_model(
    cohort_classes: Mapping[int, str], model_classes: Mapping[int, str]
) -> list[int]:
    """The cohort's class numbers whose structure the model's class of the same number is not.

    Names are compared as :func:`~RADALib.terminology.normal_name` gives them (case, ``_`` and
    known aliases aside), as the Slicer module compares a model's classes with the structures
    named in its settings; by number too, since a cohort's labels and a prediction share their
    numbers. A model may know more classes than the cohort names. A cohort that names no
    structure (``{1: "foreground"}``, what ``rada cohort`` writes without ``--class-name``)
    fits any model.
    """
    if {k: normal_name(v) for k, v in cohort_classes.items()} == {1: "foreground"}:
        return []
    return [
        number
        for number, name in sorted(cohort_classes.items())
        if number not in model_classes or normal_name(model_classes[number]) != normal_name(name)
    ]


def describe_classes(classes: Mapping[int, str]) -> str:
    """``1 'kidney', 2 'kidney tumor'``: class numbers and names, for a one-line message."""
    return ", ".join(f"{number} {name!r}" for number, name in sorted(classes.items())) or "none"


# ----------------------------------------------------------------------------- builders

_LABEL_TAGS = ("_label", "-label", "_seg", "-seg", ".seg", "_mask", "-mask", "_gt", "_labels")


def _volume_files(folder: Path) -> list[Path]:
    suffixes = _SITK_SUFFIXES + _H5_SUFFIXES
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and file_suffix(p) in suffixes and not p.name.startswith(".")
    )


def case_id_of(path: Path) -> str:
    """The case id a file name stands for: its name without format suffix or label tag."""
    stem = path.name[: -len(file_suffix(path))] if file_suffix(path) else path.name
    for tag in _LABEL_TAGS:
        if stem.lower().endswith(tag):
            return stem[: -len(tag)]
    return stem


def cohort_from_folders(
    images: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    sparse_labels: str | os.PathLike[str] | None = None,
    labeled: int | None = None,
    validation: int = 0,
    name: str | None = None,
    classes: dict[int, str] | None = None,
) -> Cohort:
    """A cohort from a folder of images and optional folders of dense and sparse labels.

    Files are matched by case id (name without suffix and without a ``_label``/``_seg``...
    tag). Cases with a sparse label map are labeled. With ``labeled=N`` and dense labels, the
    first N cases without a sparse label are labeled by simulation from their dense label.
    The last ``validation`` cases form the validation split.
    """
    images = Path(images)
    if not images.is_dir():
        raise InputError(images, "image folder not found")
    image_files = _volume_files(images)
    if not image_files:
        raise InputError(images, "no NRRD/NIfTI/MHA/h5 volumes in this folder")

    def by_id(folder: str | os.PathLike[str] | None) -> dict[str, Path]:
        if folder is None:
            return {}
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "label folder not found")
        return {case_id_of(p): p for p in _volume_files(folder)}

    dense, sparse = by_id(labels), by_id(sparse_labels)
    cases = [
        Case(case_id_of(p), p.resolve(), sparse.get(case_id_of(p)), dense.get(case_id_of(p)))
        for p in image_files
    ]
    check_case_ids((c.id for c in cases), images)
    _assign_roles(cases, labeled, validation, images)
    return Cohort(name or images.name, cases, classes or {1: "foreground"})


def cohort_from_la_folder(
    folder: str | os.PathLike[str],
    labeled: int = 8,
    validation: int = 0,
    list_file: str = "train.list",
    name: str = "LA2018",
) -> Cohort:
    """The LA2018 layout: ``<id>/mri_norm2.h5`` per case and a list file of ids.

    The first ``labeled`` ids are labeled (three orthogonal slices simulated from their dense
    label, as in the papers), the last ``validation`` ids form a validation split, and the rest
    are unlabeled (their dense labels are kept for evaluation only).
    """
    folder = Path(folder)
    listing = folder / list_file
    if not listing.exists():
        raise InputError(listing, "list file not found (expected one case id per line)")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise InputError(listing, "the list file is empty")
    check_case_ids(ids, listing)
    cases = []
    for case_id in ids:
        file = folder / case_id / "mri_norm2.h5"
        if not file.exists():
            raise InputError(listing, f"case {case_id}: {file} not found")
        cases.append(Case(case_id, file.resolve(), None, file.resolve()))
    _assign_roles(cases, labeled, validation, listing)
    return Cohort(name, cases, {1: "left atrium"})


def _assign_roles(cases: list[Case], labeled: int | None, validation: int, source: Path) -> None:
    if validation < 0 or validation >= len(cases):
        raise InputError(
            source, f"cannot hold out {validation} of {len(cases)} cases for validation"
        )
    for case in cases[len(cases) - validation :] if validation else []:
        case.split = "validation"
    if labeled is None:
        return
    candidates = [c for c in cases if c.split == "train" and c.sparse_label is None]
    if labeled > len(candidates):
        raise InputError(
            source, f"asked for {labeled} labeled cases, only {len(candidates)} are available"
        )
    for case in candidates[:labeled]:
        if case.dense_label is None:
            raise InputError(case.image, "no dense label to simulate the sparse annotation from")
        case.simulate_from_dense = True
