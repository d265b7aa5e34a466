"""Evaluate label files against truth files: a table, JSON and CSV (metrics in metrics.py)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import check_output_file, ensure_writable_folder, write_text_atomic
from .cohort import case_id_of
from .decathlon import decathlon_labels_folder, is_decathlon_folder
from .errors import InputError
from .metrics import SegmentationMetrics, evaluate_case, summarize
from .paths import LABEL_SUFFIX, PROBABILITY_SUFFIX
from .volume import _H5_SUFFIXES, _SITK_SUFFIXES, file_suffix, read_label_for, read_volume


@dataclass
class Evaluation:
    """Per case and class metrics, and their summary per class; ``no_prediction`` and
    ``no_truth`` name the cases of two folders that were not scored, having only one file."""

    rows: list[tuple[str, int, SegmentationMetrics]] = field(default_factory=list)
    no_prediction: list[str] = field(default_factory=list)
    no_truth: list[str] = field(default_factory=list)

    def summary(self) -> dict[int, dict]:
        """Per class (structure): :func:`summarize` over the cases."""
        classes = sorted({c for _, c, _ in self.rows})
        return {c: summarize([m for _, k, m in self.rows if k == c]) for c in classes}

    def structure_mean(self) -> dict[str, float]:
        """Per metric, the mean over structures of the per-structure means (each structure
        counts once, whatever its size; a structure with no value for a metric is left out)."""
        summary = self.summary()
        out = {}
        for name in _METRICS:
            values = [s[name]["mean"] for s in summary.values() if not math.isnan(s[name]["mean"])]
            out[name] = sum(values) / len(values) if values else math.nan
        return out

    def to_json(self) -> dict:
        return {
            "cases": [
                {"id": i, "class": c, **m.as_dict(nan_to_none=True)} for i, c, m in self.rows
            ],
            "summary": {str(c): _strict(s) for c, s in self.summary().items()},
            "mean_over_structures": _strict(self.structure_mean()),
            "no_prediction": list(self.no_prediction),
            "no_truth": list(self.no_truth),
            "rules": "empty prediction with non-empty truth: Dice 0, distances NaN, counted as a failure; "
            "empty truth: never scored as perfect (see RADALib/metrics.py)",
        }

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["id", "class", "dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm", "status"]
        )
        for case_id, value, m in self.rows:
            writer.writerow(
                [
                    case_id,
                    value,
                    *(
                        _num(getattr(m, k))
                        for k in ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm")
                    ),
                    m.status,
                ]
            )
        return buffer.getvalue()

    def table(self) -> str:
        lines = [
            f"{'case':<24} {'class':>5} {'Dice':>7} {'Jaccard':>7} {'HD95 vox':>9} {'HD95 mm':>8} "
            f"{'ASD vox':>8} {'ASD mm':>7}  status"
        ]
        for case_id, value, m in self.rows:
            lines.append(
                f"{case_id[:24]:<24} {value:>5} {_fmt(m.dice):>7} {_fmt(m.jaccard):>7} {_fmt(m.hd95_vox, 2):>9} "
                f"{_fmt(m.hd95_mm, 2):>8} {_fmt(m.asd_vox, 2):>8} {_fmt(m.asd_mm, 2):>7}  {m.status}"
            )
        for value, s in self.summary().items():
            lines.append(
                f"{'mean':<24} {value:>5} {_fmt(s['dice']['mean']):>7} {_fmt(s['jaccard']['mean']):>7} "
                f"{_fmt(s['hd95_vox']['mean'], 2):>9} {_fmt(s['hd95_mm']['mean'], 2):>8} "
                f"{_fmt(s['asd_vox']['mean'], 2):>8} "
                f"{_fmt(s['asd_mm']['mean'], 2):>7}  failures {s['n_failures']} of {s['n_cases']}"
            )
        if len(self.summary()) > 1:
            m = self.structure_mean()
            lines.append(
                f"{'mean of structures':<24} {'all':>5} {_fmt(m['dice']):>7} {_fmt(m['jaccard']):>7} "
                f"{_fmt(m['hd95_vox'], 2):>9} {_fmt(m['hd95_mm'], 2):>8} {_fmt(m['asd_vox'], 2):>8} "
                f"{_fmt(m['asd_mm'], 2):>7}"
            )
        for what, ids in (("no prediction", self.no_prediction), ("no truth", self.no_truth)):
            if ids:
                lines.append(f"not scored, {what}: {', '.join(ids)}")
        return "\n".join(lines)


_METRICS = ("dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm")


def _fmt(value: float, digits: int = 4) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _num(value: float) -> str:
    return "" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"


def _strict(value):
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@dataclass
class Pairing:
    """What :func:`match_files` found: the (case id, prediction, truth) triples to score, and,
    for two folders, the cases with a truth but no prediction and with a prediction but no truth."""

    pairs: list[tuple[str, Path, Path]]
    no_prediction: list[str] = field(default_factory=list)
    no_truth: list[str] = field(default_factory=list)


def pair_files(
    pred: str | os.PathLike[str], truth: str | os.PathLike[str]
) -> list[tuple[str, Path, Path]]:
    """(case id, prediction, truth) triples: two files, or two folders matched by case id
    (:func:`match_files`, without the unmatched cases)."""
    return match_files(pred, truth).pairs


def match_files(pred: str | os.PathLike[str], truth: str | os.PathLike[str]) -> Pairing:
    """Pair predictions with truths: two files, or two folders matched by case id.

    A prediction ``<case>_rada.nrrd`` stands for case ``<case>`` (its probability maps,
    ``<case>_rada_probabilities*.nrrd``, are no predictions). When ``truth`` is a Decathlon
    task folder (dataset.json and labelsTr/), the truth files are those of its ``labelsTr/``.
    A single prediction file against a truth folder is paired with the truth of its case. Two
    folders with no case in common, or two files of one folder that stand for the same case,
    are an :class:`InputError`.
    """
    pred, truth = Path(pred), Path(truth)
    for path in (pred, truth):
        if not path.exists():
            raise InputError(path, "not found")
    if truth.is_dir() and is_decathlon_folder(truth):
        truth = decathlon_labels_folder(truth)
    if pred.is_file() and truth.is_file():
        return Pairing([(_case_key(pred, pred.parent), pred, truth)])
    if truth.is_dir():
        truths = _listing(truth)
        if pred.is_file():
            case_id = _case_key(pred, pred.parent)
            if case_id not in truths:
                raise InputError(pred, f"no truth file for case {case_id} in {truth}")
            return Pairing([(case_id, pred, truths[case_id])])
        predictions = _listing(pred, predictions=True)
        common = sorted(set(predictions) & set(truths))
        if not common:
            raise InputError(
                pred,
                f"no prediction matches a truth file in {truth} by case id (predictions: "
                f"{_some(predictions)}; truths: {_some(truths)})",
            )
        return Pairing(
            [(i, predictions[i], truths[i]) for i in common],
            sorted(set(truths) - set(predictions)),
            sorted(set(predictions) - set(truths)),
        )
    raise InputError(pred, "give two files, two folders, or a prediction file and a truth folder")


def _some(ids: Iterable[str], shown: int = 5) -> str:
    """Up to ``shown`` of ``ids``, sorted, and how many there are when that is not all."""
    ids = sorted(ids)
    if not ids:
        return "none"
    more = f", ... ({len(ids)} in all)" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more


def _listing(folder: Path, predictions: bool = False) -> dict[str, Path]:
    """Case id -> volume file for every volume under ``folder`` (hidden files left out; with
    ``predictions``, the probability maps of ``rada predict`` too). Two files that stand for one
    case are an :class:`InputError`: which one to score would be a guess."""
    suffixes = _SITK_SUFFIXES + _H5_SUFFIXES
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
        and file_suffix(p) in suffixes
        and not p.name.startswith(".")
        and not (predictions and _is_probability_map(p))
    ]
    cases: dict[str, Path] = {}
    for path in files:
        other = cases.setdefault(_case_key(path, folder), path)
        if other != path:
            raise InputError(
                folder,
                f"{other.relative_to(folder)} and {path.relative_to(folder)} both stand for case "
                f"{_case_key(path, folder)}; keep one",
            )
    return cases


def _is_probability_map(path: Path) -> bool:
    """Whether ``path`` is a probability map of ``rada predict`` (``<case>_rada_probabilities``,
    ``..._<class>`` with several classes)."""
    stem = path.name[: -len(file_suffix(path))]
    return bool(re.search(re.escape(PROBABILITY_SUFFIX) + r"(_[0-9]+)?$", stem))


def _case_key(path: Path, folder: Path) -> str:
    # LA layout: <id>/mri_norm2.h5 -> the folder name is the case id
    if file_suffix(path) in _H5_SUFFIXES and path.parent != folder:
        return path.parent.name
    case_id = case_id_of(path)
    # a prediction of `rada predict`: <case>_rada.nrrd
    if case_id.endswith(LABEL_SUFFIX) and len(case_id) > len(LABEL_SUFFIX):
        return case_id[: -len(LABEL_SUFFIX)]
    return case_id


def evaluate_files(
    pairs: Sequence[tuple[str, Path, Path]], classes: Sequence[int] | None = None
) -> Evaluation:
    """Read each (prediction, truth) pair on one grid and compute the metrics (mm from the header)."""
    evaluation = Evaluation()
    for case_id, pred_path, truth_path in pairs:
        truth = read_volume(truth_path, "label")
        pred = read_label_for(truth, pred_path)
        for value, metrics in evaluate_case(
            pred.array, truth.array, truth.spacing, classes
        ).items():
            evaluation.rows.append((case_id, value, metrics))
    return evaluation


def write_outputs(evaluation: Evaluation, json_path: Path | None, csv_path: Path | None) -> None:
    """Write the JSON and CSV reports atomically."""
    for path, text in (
        (json_path, lambda: json.dumps(evaluation.to_json(), indent=2) + "\n"),
        (csv_path, evaluation.to_csv),
    ):
        if path is None:
            continue
        path = check_output_file(path)
        ensure_writable_folder(path.parent)
        write_text_atomic(path, text())
