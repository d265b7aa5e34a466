"""Hippocampus benchmark: the whole method on a second real data set with two touching structures.

On the Decathlon's Hippocampus task (``--data``; structures 1 anterior and 2 posterior
hippocampus, volumes of about 35x50x36 voxels at 1 mm), through the production path:

1. Cohort: the first ``--labeled`` cases of the training list labeled (three orthogonal slices
   simulated from each dense label), the last ``--validation`` cases held out for validation,
   the rest unlabeled (``--unlabeled-limit N`` keeps only the first N of them, for small runs);
   the manifest is written into ``--out`` (what ``rada cohort --decathlon`` writes).
2. Propagation (``propagate_cohort`` with ``AntsRegistrar``, ``--workers`` processes, results
   kept under ``--out``): per labeled case and on average, the Dice of each structure in each
   view's pseudo-label (sagittal, coronal, axial) and in the fused one against the dense label,
   and seconds per case. Side by side, on the first ``--serial-cases`` cases, the plain serial
   approach of ``benchmark_propagation.py`` (its ``plain_config``: serial SyNRA chains with
   ANTs' default iterations, every slice, whole extent, one process), and the time ratio.
3. Training: ``RADALib.workflow.train_model`` with ``--preset`` (default ``cpu``),
   ``--iterations`` (scales the preset's schedule, as ``rada train --iterations``) and
   ``--set KEY=VALUE`` (as ``rada train --set``), into ``--out/runs/<name>``; a finished run
   (its bundle holds all the iterations) is not trained again.
4. Scoring: each validation case segmented as ``rada predict`` does (``predict_volume`` with the
   bundle's defaults), Dice and HD95 (mm) per structure and their mean over structures, seconds
   per case; and the training seconds, spacing and window.

Cases already propagated with the same inputs and settings are kept (their seconds are those
recorded when they were propagated; the table says which were measured in this call).

    python Testing/Benchmarks/benchmark_hippocampus.py [--data ../shared/data/Hippocampus]
        [--labeled 20] [--validation 30] [--unlabeled-limit N] [--out rada-hippo-bench]
        [--workers 2] [--serial-cases 3] [--preset cpu] [--iterations N]
        [--set KEY=VALUE ...] [--name NAME] [--eval-cases N] [--json results.json]

Smoke run (small: it proves the path end to end, its figures mean nothing):

    python Testing/Benchmarks/benchmark_hippocampus.py --labeled 3 --validation 2 \
        --unlabeled-limit 2 --iterations 2 --set network.base_filters=2

Not a test: the full run propagates 20 volumes (3 of them the plain way too), trains for the
preset's whole schedule and scores 30 volumes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchmark_cpu_training import finished_run
from benchmark_propagation import plain_config
from machine_info import host_info

from RADALib.annotation import PLANES
from RADALib.atomic import write_text_atomic
from RADALib.bundle import load_bundle
from RADALib.cache import ArrayCache
from RADALib.cli import parse_setting
from RADALib.cohort import Case, Cohort, save_cohort
from RADALib.decathlon import cohort_from_decathlon
from RADALib.errors import InputError
from RADALib.evaluation import Evaluation
from RADALib.events import Progress, terminal_sink
from RADALib.inference import predict_volume
from RADALib.metrics import dice, evaluate_case
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import CaseReport, load_case_result, propagate_cohort
from RADALib.registration import AntsRegistrar
from RADALib.train_config import TrainConfig, preset
from RADALib.volume import read_label_for, read_volume
from RADALib.workflow import train_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "Hippocampus"
LABELS = (*PLANES, "fused")


# ----------------------------------------------------------------------------- cohort


def build_cohort(args: argparse.Namespace) -> Cohort:
    """The Decathlon cohort (module docstring, step 1), saved into ``--out``."""
    cohort = cohort_from_decathlon(args.data, args.labeled, args.validation)
    if args.unlabeled_limit is not None:
        extra = {c.id for c in cohort.unlabeled[args.unlabeled_limit :]}
        cohort = cohort.select(c.id for c in cohort.cases if c.id not in extra)
    tag = f"l{args.labeled}-v{args.validation}"
    if args.unlabeled_limit is not None:
        tag += f"-u{args.unlabeled_limit}"
    save_cohort(cohort, args.out / f"cohort-{tag}.json")
    return cohort


# ----------------------------------------------------------------------------- propagation


def propagate_labeled(
    cohort: Cohort,
    folder: Path,
    config: PropagationConfig,
    workers: int,
    cache: ArrayCache | None,
    progress: Progress,
) -> list[CaseReport]:
    """``propagate_cohort`` on the labeled cases into ``folder`` (finished cases are kept)."""
    with AntsRegistrar(config.registration, workers=workers) as registrar:
        registrar.start()  # the workers' start-up is not charged to the first case
        return propagate_cohort(cohort, folder, registrar, config, cache, progress=progress)


def pseudo_label_row(
    case: Case, report: CaseReport, config: PropagationConfig, classes: list[int]
) -> dict[str, Any]:
    """Dice of each structure in each view's pseudo-label and the fused one; seconds."""
    image = read_volume(case.image, "image")
    truth = read_label_for(image, case.dense_label).array
    result = load_case_result(report.folder)
    labels = {plane: result.mixed_label(axis) for axis, plane in enumerate(PLANES)}
    labels["fused"] = result.fused(config.fusion, config.fusion_alpha)
    return {
        "id": case.id,
        "status": report.status,
        "seconds": report.seconds,
        "registrations": report.registrations,
        "dice": {
            name: {str(c): dice(label == c, truth == c) for c in classes}
            for name, label in labels.items()
        },
    }


def mean_row(rows: list[dict[str, Any]], classes: list[int]) -> dict[str, Any]:
    """The mean of :func:`pseudo_label_row` rows (NaN Dice, a structure in neither, left out)."""
    return {
        "id": "mean",
        "status": "",
        "seconds": float(np.mean([r["seconds"] for r in rows])),
        "registrations": float(np.mean([r["registrations"] for r in rows])),
        "dice": {
            name: {str(c): _nanmean([r["dice"][name][str(c)] for r in rows]) for c in classes}
            for name in LABELS
        },
    }


def propagation_table(
    rows: list[dict[str, Any]], classes: dict[int, str], mean: dict[str, Any]
) -> str:
    """Per case and on average: Dice per structure and label, seconds."""
    head = f"{'case':<18} {'status':<10}"
    for name in classes.values():
        head += " " + " ".join(f"{name[:4] + ' ' + label[:3]:>8}" for label in LABELS)
    lines = [head + f" {'seconds':>8} {'regs':>5}"]
    for row in [*rows, mean]:
        line = f"{row['id']:<18} {row['status']:<10}"
        for c in classes:
            line += " " + " ".join(f"{row['dice'][label][str(c)]:>8.3f}" for label in LABELS)
        lines.append(line + f" {row['seconds']:>8.1f} {row['registrations']:>5.0f}")
    return "\n".join(lines)


def propagation_section(
    cohort: Cohort, folder: Path, config: PropagationConfig, reports: list[CaseReport]
) -> dict[str, Any]:
    """Rows, mean and settings of one propagation (the cases of ``reports``)."""
    classes = sorted(cohort.classes)
    cases = {c.id: c for c in cohort.cases}
    rows = [pseudo_label_row(cases[r.id], r, config, classes) for r in reports]
    return {
        "folder": str(folder),
        "config": config.to_dict(),
        "cases": rows,
        "mean": mean_row(rows, classes),
    }


def serial_ratio(rada: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """The plain approach's seconds over RADA's on the same cases, and where they were measured."""
    ids = [r["id"] for r in plain["cases"]]
    rada_rows = [r for r in rada["cases"] if r["id"] in ids]
    rows = [*rada_rows, *plain["cases"]]
    return {
        "ratio_cases": ids,
        "ratio": sum(r["seconds"] for r in plain["cases"])
        / max(sum(r["seconds"] for r in rada_rows), 1e-9),
        "measured_now": all(r["status"] == "propagated" for r in rows),
        "rada_seconds_per_case": float(np.mean([r["seconds"] for r in rada_rows])),
        "plain_seconds_per_case": float(np.mean([r["seconds"] for r in plain["cases"]])),
    }


# ----------------------------------------------------------------------------- training


def train_config(args: argparse.Namespace) -> TrainConfig:
    """``--preset`` with ``--iterations`` (scaling its schedule) and ``--set`` applied."""
    changes: dict[str, Any] = {"device": "cpu", **dict(args.set)}
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    return preset(args.preset, **changes)


def run_name(args: argparse.Namespace) -> str:
    """``--name``, else the cohort's sizes, the preset and the settings (``l20-v30-cpu+K=V``)."""
    if args.name:
        return args.name
    name = f"l{args.labeled}-v{args.validation}"
    if args.unlabeled_limit is not None:
        name += f"-u{args.unlabeled_limit}"
    name += f"-{args.preset}"
    if args.iterations is not None:
        name += f"+iterations={args.iterations}"
    return name + "".join(
        f"+{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
        for k, v in args.set
    )


def train(
    cohort: Cohort, config: TrainConfig, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """Train (or reuse) the run and describe its bundle (spacing, window, iterations, seconds)."""
    experiment = args.out / "runs" / run_name(args)
    run = finished_run(experiment, config)
    reused = run is not None
    run = run or train_model(
        cohort,
        experiment,
        config,
        args.out / "propagation",
        cache_dir=args.out / "cache",
        workers=args.workers,
        progress=progress,
    )
    bundle = load_bundle(run.model)
    trained = json.loads((run.model / "manifest.json").read_text())["training"]["config"]
    return {
        "name": experiment.name,
        "model": str(run.model),
        "reused": reused,
        "iterations": run.iterations,
        "seconds": round(run.seconds, 1),
        "spacing": list(bundle.spacing) if bundle.spacing else None,
        "patch": list(bundle.inference_settings.get("patch", config.patch)),
        "stride": bundle.inference_settings.get("stride"),
        "mirror": bool(bundle.inference_settings.get("mirror", False)),
        "base_filters": trained["network"]["base_filters"],
        "n_classes": trained["network"]["n_classes"],
        "settings": dict(args.set),
        "config": trained,
    }


# ----------------------------------------------------------------------------- scoring


def score(model: Path, cohort: Cohort, limit: int | None) -> dict[str, Any]:
    """Segment the validation cases as ``rada predict`` does; per structure Dice and HD95."""
    bundle = load_bundle(model)
    classes = sorted(cohort.classes)
    evaluation, seconds = Evaluation(), {}
    for case in cohort.validation[:limit]:
        image = read_volume(case.image, "image")
        truth = read_label_for(image, case.dense_label).array
        started = time.perf_counter()
        prediction = predict_volume(bundle, image)
        seconds[case.id] = time.perf_counter() - started
        for value, metrics in evaluate_case(
            prediction.label, truth, image.spacing, classes
        ).items():
            evaluation.rows.append((case.id, value, metrics))
    report = evaluation.to_json()
    report["seconds"] = seconds
    report["seconds_per_case"] = float(np.mean(list(seconds.values()))) if seconds else math.nan
    return report


def score_table(scores: dict[str, Any], classes: dict[int, str]) -> str:
    """Per validation case: Dice and HD95 per structure, seconds; then the means."""
    names = [name[:9] for name in classes.values()]
    lines = [
        f"{'case':<18} "
        + " ".join(f"{n + ' Dice':>14} {n + ' HD95':>14}" for n in names)
        + f" {'seconds':>8}"
    ]
    by_case: dict[str, dict[str, dict]] = {}
    for row in scores["cases"]:
        by_case.setdefault(row["id"], {})[str(row["class"])] = row
    for case_id, rows in by_case.items():
        lines.append(
            f"{case_id:<18} "
            + " ".join(
                f"{_num(rows[str(c)]['dice']):>14} {_num(rows[str(c)]['hd95_mm'], 2):>14}"
                for c in classes
            )
            + f" {scores['seconds'][case_id]:>8.2f}"
        )
    summary = scores["summary"]
    lines.append(
        f"{'mean':<18} "
        + " ".join(
            f"{_num(summary[str(c)]['dice']['mean']):>14} "
            f"{_num(summary[str(c)]['hd95_mm']['mean'], 2):>14}"
            for c in classes
        )
        + f" {scores['seconds_per_case']:>8.2f}"
    )
    mean = scores["mean_over_structures"]
    lines.append(
        f"mean over structures: Dice {_num(mean['dice'])}, HD95 {_num(mean['hd95_mm'], 2)} mm"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Decathlon task folder")
    parser.add_argument("--labeled", type=int, default=20)
    parser.add_argument("--validation", type=int, default=30)
    parser.add_argument(
        "--unlabeled-limit", type=int, default=None, help="keep only the first N unlabeled cases"
    )
    parser.add_argument("--out", type=Path, default=Path("rada-hippo-bench"))
    parser.add_argument("--workers", type=int, default=2, help="propagation workers")
    parser.add_argument("--serial-cases", type=int, default=3, help="plain serial approach on N")
    parser.add_argument("--preset", default="cpu", help="training preset (cpu, small, paper)")
    parser.add_argument("--iterations", type=int, default=None, help="scales the schedule")
    parser.add_argument("--set", action="append", default=[], type=parse_setting)
    parser.add_argument("--name", default=None, help="run folder under OUT/runs")
    parser.add_argument("--eval-cases", type=int, default=None, help="score the first N")
    parser.add_argument("--json", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.data / "dataset.json").is_file():
        print(
            f"Hippocampus not found at {args.data} (need dataset.json): give --data DIR",
            file=sys.stderr,
        )
        return 1
    machine = host_info()
    print(f"machine: {machine['host']}, {machine['cores']} cores, {machine['cpu']}")
    progress = Progress(terminal_sink(sys.stderr, every_s=30.0))
    try:
        cohort = build_cohort(args)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(
        f"cohort: {len(cohort.labeled)} labeled, {len(cohort.unlabeled)} unlabeled, "
        f"{len(cohort.validation)} validation; classes {cohort.classes}"
    )
    rada = PropagationConfig()
    reports = propagate_labeled(
        cohort,
        args.out / "propagation",
        rada,
        args.workers,
        ArrayCache(args.out / "cache" / "propagation"),
        progress,
    )
    propagation = propagation_section(cohort, args.out / "propagation", rada, reports)
    print(f"\nRADA propagation ({args.workers} workers), Dice against the dense labels")
    print(propagation_table(propagation["cases"], cohort.classes, propagation["mean"]))

    serial = None
    if args.serial_cases:
        plain = plain_config()
        ids = [c.id for c in cohort.labeled[: args.serial_cases]]
        plain_reports = propagate_labeled(
            cohort.select(ids), args.out / "plain", plain, 1, None, progress
        )
        serial = propagation_section(cohort, args.out / "plain", plain, plain_reports)
        serial.update(serial_ratio(propagation, serial))
        print(
            "\nPlain serial approach (serial SyNRA, ANTs default iterations, every slice, "
            f"whole extent, one process) on {len(ids)} case(s)"
        )
        print(propagation_table(serial["cases"], cohort.classes, serial["mean"]))
        print(
            f"time ratio plain / RADA on the same {len(ids)} case(s): x{serial['ratio']:.1f} "
            f"(plain {serial['plain_seconds_per_case']:.1f} s/case, RADA "
            f"{serial['rada_seconds_per_case']:.1f} s/case; "
            + (
                "both measured in this call)"
                if serial["measured_now"]
                else "some seconds recorded by an earlier call)"
            )
        )

    config = train_config(args)
    training = train(cohort, config, args, progress)
    spacing = "x".join(f"{s:.3g}" for s in training["spacing"]) if training["spacing"] else "native"
    print(
        f"\ntraining run {training['name']} ({'reused' if training['reused'] else 'trained now'}): "
        f"spacing {spacing} mm, window {'x'.join(map(str, training['patch']))}, "
        f"{training['base_filters']} base filters, {training['n_classes']} outputs, "
        f"{training['iterations']} iterations, {training['seconds']:.0f} s; inference stride "
        f"{training['stride'] or 'default'}, mirror {'on' if training['mirror'] else 'off'}"
    )
    scores = score(Path(training["model"]), cohort, args.eval_cases)
    print(f"\nvalidation ({len(scores['seconds'])} case(s)), as rada predict writes the labels")
    print(score_table(scores, cohort.classes))

    if args.json:
        report = {
            "machine": machine,
            "data": str(args.data),
            "cohort": str(cohort.path),
            "classes": {str(k): v for k, v in cohort.classes.items()},
            "propagation": propagation,
            "serial": serial,
            "training": training,
            "validation": scores,
        }
        write_text_atomic(args.json, json.dumps(report, indent=2, default=_strict) + "\n")
    return 0


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _strict(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


if __name__ == "__main__":
    raise SystemExit(main())
