"""Pseudo-labels for a cohort: files in, files out, cached, resumable.

For every labeled case: read the image and its sparse annotation (a user's painted slices, or
slices simulated from a dense label), propagate (``propagation.py``), and write into
``OUT/cases/<id>/``:

- ``propagation.npz``: per view the pseudo-label and per-slice distances, plus the sparse
  annotation, in canonical (x, y, z) order: what training reads;
- ``pseudo_sagittal.nrrd``, ``pseudo_coronal.nrrd``, ``pseudo_axial.nrrd`` (mixed labels Ỹv),
  ``fused.nrrd`` and ``sparse.nrrd``: for review, written with the image's own header;
- ``case.json``, written last: the done-marker (cache key, slices, timings, fallbacks, and per
  view the bound its chains stopped at and how many slices lay beyond it).

A case whose ``case.json`` carries the current key is skipped, so an interrupted run resumes
where it stopped. Results are also kept in a content-addressed cache (keyed by the image, the
annotation and the settings), so the same case is never registered twice, whatever ``OUT`` is.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .annotation import (
    PLANES,
    SparseAnnotation,
    SpreadSlicesError,
    check_structures,
    detect_sparse_annotation,
    missing_structures,
    simulate_sparse_annotation,
)
from .atomic import (
    check_output_folder,
    ensure_writable_folder,
    write_npz_atomic,
    write_text_atomic,
)
from .bounds import view_bounds
from .cache import ArrayCache, content_key
from .cohort import Case, Cohort, check_case_ids
from .errors import InputError
from .events import Progress
from .propagation import SCHEME, PropagationConfig, PropagationResult, propagate
from .registration import PairRegistrar
from .volume import (
    Oblique,
    Volume,
    check_label_classes,
    is_oblique,
    read_image_for_label,
    read_label_for,
    write_like,
)

CASE_FILE = "case.json"
ARRAYS_FILE = "propagation.npz"


def case_annotation(
    case: Case,
    image: Volume,
    allow_multiple: bool = False,
    oblique: Oblique = "refuse",
    classes: Mapping[int, str] | None = None,
) -> SparseAnnotation:
    """The case's sparse annotation: detected from its sparse label, or simulated from dense.

    ``classes`` (the cohort's, number -> name) maps a Slicer segmentation's segments by name,
    and a label holding another value than 0 and these is refused as it is read.
    Every structure must be on at least one annotated slice (:func:`check_structures`): each of
    ``classes`` for a painted label, each one the dense label holds for a simulated one."""
    if case.sparse_label is not None:
        label = read_label_for(image, case.sparse_label, oblique, classes)
        if classes:
            check_label_classes(label, classes)
        try:
            annotation = detect_sparse_annotation(
                label.array, str(case.sparse_label), allow_multiple=allow_multiple
            )
        except SpreadSlicesError as spread:
            if not is_oblique(image):
                raise
            raise InputError(
                case.sparse_label,
                f"labels are not confined to single slices of the image's own grid: {PLANES[spread.axis]} "
                f"slices {spread.first}-{spread.last} are painted side by side; the image is oblique, so "
                "its slices are tilted from the patient's planes: paint one whole slice per plane with a "
                "2D brush in slice views turned to the volume (Slicer: 'Rotate to volume plane')",
            ) from None
        if classes:
            check_structures(annotation, classes, str(case.sparse_label))
        return annotation
    if case.simulate_from_dense and case.dense_label is not None:
        dense = read_label_for(image, case.dense_label, oblique, classes)
        if classes:
            check_label_classes(dense, classes)
        if not dense.array.any():
            raise InputError(case.dense_label, "the label map is empty: nothing to annotate")
        annotation = simulate_sparse_annotation(dense.array, source=str(case.dense_label))
        present = {
            int(v): (classes or {}).get(int(v), f"class {int(v)}")
            for v in np.unique(dense.array)
            if v
        }
        check_structures(annotation, present, str(case.dense_label))
        return annotation
    raise InputError(case.image, f"case {case.id} has no annotation")


def case_image(case: Case, oblique: Oblique = "refuse") -> Volume:
    """The case's image on the grid its annotation file was made on (an oblique image whose
    label shares its header is propagated on its own grid: :func:`read_image_for_label`)."""
    label = case.sparse_label
    if label is None and case.simulate_from_dense:
        label = case.dense_label
    return read_image_for_label(case.image, label, oblique)


def propagation_key(image: Volume, annotation: SparseAnnotation, config: PropagationConfig) -> str:
    """Hash of everything that determines the propagated labels."""
    settings = config.to_dict()
    for unused in ("fusion", "fusion_alpha"):  # they only shape the fused review label
        settings.pop(unused)
    slices = {str(a): list(s) for a, s in annotation.slices.items()}
    return content_key(
        "propagation",
        __version__,
        SCHEME,
        image.array,
        list(image.spacing),
        annotation.label,
        slices,
        settings,
    )


def result_arrays(result: PropagationResult) -> dict[str, np.ndarray]:
    """The arrays of a result, by name, for ``propagation.npz`` and the cache."""
    arrays = {"sparse": result.annotation.label}
    for axis, plane in enumerate(PLANES):
        if axis in result.labels:
            arrays[f"label_{plane}"] = result.labels[axis]
            arrays[f"distance_{plane}"] = result.distances[axis]
        arrays[f"slices_{plane}"] = np.asarray(
            result.annotation.slices.get(axis, ()), dtype=np.int64
        )
    return arrays


def result_from_arrays(
    arrays: dict[str, np.ndarray], meta: dict | None = None
) -> PropagationResult:
    """Inverse of :func:`result_arrays`."""
    slices = {
        a: tuple(int(i) for i in arrays[f"slices_{p}"])
        for a, p in enumerate(PLANES)
        if arrays[f"slices_{p}"].size
    }
    annotation = SparseAnnotation(arrays["sparse"], slices)
    labels = {a: arrays[f"label_{p}"] for a, p in enumerate(PLANES) if f"label_{p}" in arrays}
    distances = {
        a: arrays[f"distance_{p}"] for a, p in enumerate(PLANES) if f"distance_{p}" in arrays
    }
    meta = meta or {}
    return PropagationResult(
        annotation,
        labels,
        distances,
        dict(meta.get("methods", {})),
        float(meta.get("seconds", 0.0)),
    )


def load_case_result(folder: str | os.PathLike[str]) -> PropagationResult:
    """Read a finished case folder's ``propagation.npz`` (what training consumes)."""
    path = Path(folder) / ARRAYS_FILE
    if not path.exists():
        raise InputError(path, "not found: run `rada propagate` for this case first")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta_path = Path(folder) / CASE_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return result_from_arrays(arrays, meta)


@dataclass
class CaseReport:
    """What happened to one case."""

    id: str
    status: str  # "propagated", "cached", "resumed"
    seconds: float
    registrations: int
    methods: dict[str, int]  # registrations per transform used (fallbacks included)
    slices: dict[str, list[int]]
    folder: Path
    missing: dict[str, list[int]] = field(default_factory=dict)
    """Per plane, the cohort's structures (class numbers) its annotated slices do not carry."""


def propagate_case(
    case: Case,
    out: Path,
    registrar: PairRegistrar,
    config: PropagationConfig,
    cache: ArrayCache | None = None,
    allow_multiple: bool = False,
    oblique: Oblique = "refuse",
    progress: Progress | None = None,
    classes: Mapping[int, str] | None = None,
) -> CaseReport:
    """Propagate one case into ``out/cases/<id>`` (skipped when already done with these inputs);
    an id that is not a plain file name is refused before anything is read or written."""
    check_case_ids([case.id], case.image)
    started = time.perf_counter()
    image = case_image(case, oblique)
    annotation = case_annotation(case, image, allow_multiple, oblique, classes)
    if progress is not None and is_oblique(image):
        progress.message(
            f"{case.id}: the image is oblique and its annotation lies on its own grid: propagated "
            "on that grid's slices (not resampled), results written on it"
        )
    key = propagation_key(image, annotation, config)
    folder = out / "cases" / case.id
    marker = folder / CASE_FILE
    done = _finished_record(folder, key)
    if done is not None:
        return _report(case, "resumed", done, folder)

    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        result, status = result_from_arrays(*cached), "cached"
    else:
        message = (lambda text: progress.message(f"{case.id}: {text}")) if progress else None
        result, status = (
            propagate(image.array, annotation, image.spacing, registrar, config, message),
            "propagated",
        )
        if cache is not None:
            cache.put(
                key, result_arrays(result), {"methods": result.methods, "seconds": result.seconds}
            )

    ensure_writable_folder(folder)  # the output folder is made with the first result
    marker.unlink(missing_ok=True)  # the case is not done until the marker is rewritten
    write_npz_atomic(folder / ARRAYS_FILE, result_arrays(result))
    write_like(image, annotation.label, folder / "sparse.nrrd")
    for axis, plane in enumerate(PLANES):
        if axis in result.labels:
            write_like(image, result.mixed_label(axis), folder / f"pseudo_{plane}.nrrd")
    if len(result.labels) == 3:
        write_like(image, result.fused(config.fusion, config.fusion_alpha), folder / "fused.nrrd")
    record = {
        "id": case.id,
        "key": key,
        "image": str(case.image),
        "slices": {p: list(s) for p, s in annotation.planes().items()},
        "seconds": round(
            result.seconds if status == "propagated" else time.perf_counter() - started, 2
        ),
        "methods": result.methods,
        "registrations": result.registrations,
        "bounds": bounds_record(annotation, config),
        "missing_structures": missing_structures(annotation, classes),
        "config": config.to_dict(),
    }
    _write_json(marker, record)
    return _report(case, status, record, folder)


def bounds_record(annotation: SparseAnnotation, config: PropagationConfig) -> dict[str, dict]:
    """Per annotated view: ``bound``, the [low, high] slices its chains were bounded to (null
    when the bound is off or nothing bounds it), and ``cut_slices``, how many slices of the
    view lie outside it (no registration there; background in the pseudo-label)."""
    bounds = view_bounds(annotation, config.bound_margin)
    return {
        PLANES[axis]: (
            bounds[axis].record() if axis in bounds else {"bound": None, "cut_slices": 0}
        )
        for axis in sorted(annotation.slices)
    }


def _finished_record(folder: Path, key: str) -> dict | None:
    """The case record in ``folder`` when it finished with the inputs and settings of ``key``."""
    try:
        done = json.loads((folder / CASE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return done if done.get("key") == key and (folder / ARRAYS_FILE).exists() else None


def _kept_record(
    case: Case,
    out: Path,
    config: PropagationConfig,
    allow_multiple: bool = False,
    oblique: Oblique = "refuse",
    classes: Mapping[int, str] | None = None,
) -> dict | None:
    """The record in ``out/cases/<id>`` when it holds this case's result for its current inputs and ``config``."""
    folder = Path(out) / "cases" / case.id
    if not (folder / CASE_FILE).exists():
        return None
    image = case_image(case, oblique)
    return _finished_record(
        folder,
        propagation_key(
            image, case_annotation(case, image, allow_multiple, oblique, classes), config
        ),
    )


def _plan_text(n_cases: int, n_kept: int) -> str:
    """What a cohort's propagation is about to do, for its first progress line."""
    if not n_kept:
        return f"{n_cases} labeled case(s)"
    if n_kept == n_cases:
        return f"all {n_cases} labeled case(s) already propagated with these inputs and settings (kept)"
    return (
        f"{n_cases - n_kept} of {n_cases} labeled case(s) to propagate "
        f"({n_kept} already done with these inputs and settings: kept)"
    )


def _status_text(report: CaseReport) -> str:
    """How a case's propagation went, for the progress line (kept cases have none)."""
    if report.status == "cached":
        return f"taken from the result cache in {report.seconds:.1f} s"
    return f"propagated in {report.seconds:.1f} s"


def _report(case: Case, status: str, record: dict, folder: Path) -> CaseReport:
    return CaseReport(
        case.id,
        status,
        float(record.get("seconds", 0.0)),
        int(record.get("registrations", 0)),
        dict(record.get("methods", {})),
        dict(record.get("slices", {})),
        folder,
        {p: list(v) for p, v in record.get("missing_structures", {}).items()},
    )


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def propagate_cohort(
    cohort: Cohort,
    out: str | os.PathLike[str],
    registrar: PairRegistrar,
    config: PropagationConfig = PropagationConfig(),
    cache: ArrayCache | None = None,
    allow_multiple: bool = False,
    oblique: Oblique = "refuse",
    progress: Progress | None = None,
) -> list[CaseReport]:
    """Propagate every labeled case of ``cohort`` into ``out`` and write ``out/propagation.json``.

    Case ids that are not plain file names (or differ only in case) are refused before anything
    is written: each names the folder ``out/cases/<id>``."""
    check_case_ids((c.id for c in cohort.cases), cohort.path or cohort.name)
    out = Path(out)
    cases = [c for c in cohort.cases if c.labeled]
    if not cases:
        raise InputError(
            cohort.path or cohort.name,
            "no labeled case: give sparse labels, or --labeled N with dense labels",
        )
    check_output_folder(out)  # created with the first case's result, so bad inputs leave none
    progress = progress or Progress()
    kept = {
        c.id: record
        for c in cases
        if (record := _kept_record(c, out, config, allow_multiple, oblique, cohort.classes))
    }
    todo = len(cases) - len(kept)
    progress.start("propagate", todo, _plan_text(len(cases), len(kept)))
    reports, done = [], 0
    for case in cases:
        if case.id in kept:
            reports.append(_report(case, "resumed", kept[case.id], out / "cases" / case.id))
            continue
        report = propagate_case(
            case, out, registrar, config, cache, allow_multiple, oblique, progress, cohort.classes
        )
        reports.append(report)
        done += 1  # the steps counted are the cases propagated now (a true ETA on resume)
        progress.update(done, f"{case.id}: {_status_text(report)}", case=case.id)
    summary = {
        "cohort": str(cohort.path) if cohort.path else cohort.name,
        "config": config.to_dict(),
        "cases": [
            {
                "id": r.id,
                "status": r.status,
                "seconds": r.seconds,
                "registrations": r.registrations,
                "methods": r.methods,
                "slices": r.slices,
                "folder": os.path.relpath(r.folder, out),
            }
            for r in reports
        ],
    }
    _write_json(out / "propagation.json", summary)
    return reports
