"""The Medical Segmentation Decathlon layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

``dataset.json`` names the classes (``"labels": {"0": "background", "1": "Anterior", ...}``),
the image channels (``"modality"``) and the training cases, in order
(``"training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]``),
with paths relative to the task folder. This is the layout nnU-Net (v1) and MONAI read.
Single-channel tasks only: a task whose images hold several channels (several modalities,
stored as 4D volumes) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from .cohort import Case, Cohort, _assign_roles, case_id_of, check_case_ids, read_json
from .errors import InputError

DATASET_FILE = "dataset.json"
LABELS_FOLDER = "labelsTr"


def is_decathlon_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a Decathlon task folder (it holds dataset.json and labelsTr/)."""
    folder = Path(folder)
    return (folder / DATASET_FILE).is_file() and (folder / LABELS_FOLDER).is_dir()


def cohort_from_decathlon(
    folder: str | os.PathLike[str],
    labeled: int | None = None,
    validation: int = 0,
    name: str | None = None,
) -> Cohort:
    """A cohort from a Decathlon task folder, its cases in the order of the training list.

    The classes are the non-zero entries of ``labels``. As with the LA layout, the first
    ``labeled`` cases are labeled (three orthogonal slices simulated from their dense label),
    the last ``validation`` cases form the validation split and the rest are unlabeled (their
    dense labels kept for evaluation). Every error names the file and the problem.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "Decathlon task folder not found")
    listing = folder / DATASET_FILE
    data = _read_dataset(listing)
    classes = _classes(listing, data.get("labels"))
    _refuse_several_channels(listing, data.get("modality"))
    entries = data.get("training")
    if not isinstance(entries, list) or not entries:
        raise InputError(listing, "no 'training' list of {image, label} entries")
    cases, seen = [], set()
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise InputError(listing, f"training entry #{number} has no 'image' path")
        image = _listed_file(listing, folder, entry["image"], number, "image")
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise InputError(listing, f"training entry #{number}: 'label' must be a path string")
        dense = _listed_file(listing, folder, label, number, "label") if label else None
        case_id = case_id_of(image)
        if case_id in seen:
            raise InputError(listing, f"case {case_id} appears twice in the training list")
        seen.add(case_id)
        _check_single_channel(image)
        cases.append(Case(case_id, image, None, dense))
    check_case_ids((c.id for c in cases), listing)
    _assign_roles(cases, labeled, validation, listing)
    title = name or (str(data["name"]) if data.get("name") else folder.name)
    return Cohort(title, cases, classes)


def decathlon_labels_folder(folder: str | os.PathLike[str]) -> Path:
    """The folder of a Decathlon task that holds the dense labels (``labelsTr/``)."""
    return Path(folder) / LABELS_FOLDER


def _read_dataset(listing: Path) -> dict:
    """The JSON object of ``dataset.json``."""
    if not listing.is_file():
        raise InputError(listing, "not found (a Decathlon task folder holds dataset.json)")
    data = read_json(listing, "cannot be read")
    if not isinstance(data, dict):
        raise InputError(listing, "not a Decathlon dataset.json (expected a JSON object)")
    return data


def _classes(listing: Path, labels: object) -> dict[int, str]:
    """Class number -> name from ``labels`` (``{"0": "background", "1": "liver"}``), without 0."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(listing, 'no \'labels\' object naming the classes, e.g. {"1": "liver"}')
    classes = {}
    for key, value in labels.items():
        try:
            number = int(str(key).strip())
        except ValueError:
            raise InputError(
                listing,
                f"'labels' key {key!r} is not a class number; expected e.g. "
                '{"0": "background", "1": "liver"}',
            ) from None
        if number < 0:
            raise InputError(listing, f"'labels' key {key!r} is negative")
        if number:
            classes[number] = str(value)
    if not classes:
        raise InputError(listing, "'labels' names no class besides background (0)")
    return dict(sorted(classes.items()))


def _refuse_several_channels(listing: Path, modality: object) -> None:
    """Refuse a task whose ``modality`` lists several channels (4D images)."""
    if isinstance(modality, dict) and len(modality) > 1:
        names = ", ".join(str(v) for v in modality.values())
        raise InputError(
            listing,
            f"the task has {len(modality)} image channels ({names}); multi-channel "
            "(4D) images are not supported",
        )


def _listed_file(listing: Path, folder: Path, value: str, number: int, key: str) -> Path:
    """A file the training list names, relative to the task folder; it must exist."""
    file = Path(value)
    file = (file if file.is_absolute() else folder / file).resolve()
    if not file.is_file():
        raise InputError(listing, f"training entry #{number}: {key} {file} not found")
    return file


def _check_single_channel(image: Path) -> None:
    """Refuse a 4D or multi-component image, reading its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(image))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # reading the volume later says what is wrong with the file
    size = reader.GetSize()
    channels = reader.GetNumberOfComponents() * (size[3] if reader.GetDimension() == 4 else 1)
    if reader.GetDimension() > 4 or channels > 1:
        raise InputError(
            image,
            f"a {reader.GetDimension()}D image with {channels} channels (modalities); "
            "multi-channel images are not supported",
        )
