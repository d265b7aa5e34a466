"""CPU training benchmark: the ``cpu`` preset against a native-resolution run, side by side.

Trains the whole method (three views, guidance, unlabeled stream, cross supervision) through the
production path (``RADALib.workflow.train_model``: propagation, embeddings, training spacing,
resampled-volume cache, model bundle) once per variant, then segments the cohort's validation
volumes with each bundle as ``rada predict`` does (``predict_volume``: the bundle's patch,
stride, training spacing and largest-component choice) and scores them against their dense
labels. Variants (``--variants``, in this order; all share one propagation, embedding and
resampling cache under ``--out``):

- ``cpu``: the ``cpu`` preset as shipped (coarser training spacing, its window, filters, T and
  iterations);
- ``native``: the small preset's network (4 base filters, T = 2) at the cohort's own spacing
  with a 64×64×48 window and the cpu preset's iteration count: the CPU-sized runs the project
  made before the cpu preset (``Supervision on LA2018`` in RESULTS.md).

A variant may carry settings of its own, ``NAME+KEY=VALUE+...`` (as ``rada train --set``), e.g.
``cpu+training_region=mean`` (``iterations`` scales the schedule, as ``rada train --iterations``
does); ``--set KEY=VALUE`` applies to every variant. Each variant trains into
``runs/<variant as written>``; a finished run is not trained again (its bundle and its
training seconds, kept in its checkpoint, are reused), so a later call can print any finished
runs side by side, and two calls with different variants can train at once. Scores are kept
beside each run (``score-*.json``) and reused while its model and the scored cases are the same.

Printed per variant: training spacing, window, base filters, iterations, training seconds,
mean validation Dice (and HD95 in mm) as ``rada predict`` writes the labels, Dice of the plain
argmax, inference seconds per volume; then each variant's Dice and time as a ratio to the last
variant's (``native`` by default). ``--strides fast,whole,dense`` also scores every model with
those inference strides (``rada predict --stride``), ``--mirror both`` with test-time mirroring
on and off (``rada predict --mirror`` / ``--no-mirror``).

    rada cohort --la ../shared/data/LA2018 --labeled 8 --validation 10 --out la.json
    python Testing/Benchmarks/benchmark_cpu_training.py --cohort la.json --out rada-cpu-bench \
        [--variants cpu,cpu+KEY=VALUE,native] [--set KEY=VALUE ...] [--workers 2]
        [--eval-cases N] [--strides fast,whole,dense] [--mirror bundle|on|off|both]
        [--json results.json]

Not a test: each variant trains for up to half an hour on two cores. Figures, with the command
and machine: ``Testing/Benchmarks/RESULTS.md`` (CPU training on LA2018).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine_info import host_info

from RADALib.atomic import write_text_atomic
from RADALib.bundle import load_bundle
from RADALib.cli import parse_setting
from RADALib.cohort import Case, Cohort, load_cohort
from RADALib.events import Progress
from RADALib.inference import DEFAULT_STRIDE, bundle_mirror, predict_volume
from RADALib.metrics import metrics_for_masks
from RADALib.train_config import TrainConfig, preset
from RADALib.volume import read_volume
from RADALib.workflow import MODEL_FOLDER, TrainedRun, train_model

NATIVE_PATCH = (64, 64, 48)


def split_variants(text: str) -> list[str]:
    """``--variants``: comma-separated, a comma inside a value (``cpu+patch=64,64,32``) kept, as
    only a comma before a variant name (``cpu``, ``native``) separates two variants."""
    return [v.strip() for v in re.split(r",(?=\s*(?:cpu|native)\b)", text) if v.strip()]


def variant_config(spec: str, common: dict[str, Any]) -> TrainConfig:
    """The training settings of variant ``spec`` (``NAME+KEY=VALUE+...``, module docstring):
    its base, then ``common``, then its own settings."""
    name, *own = spec.split("+")
    changes = {**common, **dict(parse_setting(item) for item in own)}
    if name == "cpu":
        return preset("cpu", device="cpu", **changes)  # a new iterations scales the schedule
    if name == "native":
        cpu = preset("cpu", device="cpu")
        return preset(
            "small",
            device="cpu",
            **{
                "patch": list(NATIVE_PATCH),
                "iterations": cpu.iterations,
                "checkpoint_every": cpu.checkpoint_every,
                "log_every": cpu.log_every,
                **changes,
            },
        )
    raise SystemExit(f"unknown variant {name!r}: choose cpu or native")


def score(
    bundle_folder: Path, cases: list[Case], stride: str | None = None, mirror: bool | None = None
) -> dict[str, Any]:
    """Segment ``cases`` with the bundle as ``rada predict`` does (``stride``, ``mirror``: its
    ``--stride`` and ``--mirror``/``--no-mirror``, default the bundle's); Dice, HD95 and seconds."""
    bundle = load_bundle(bundle_folder)
    rows = []
    for case in cases:
        image = read_volume(case.image, "image")
        truth = read_volume(case.dense_label, "label").array > 0
        started = time.perf_counter()
        prediction = predict_volume(
            bundle, image, stride=stride, return_probabilities=True, mirror=mirror
        )
        seconds = time.perf_counter() - started
        metrics = metrics_for_masks(prediction.label > 0, truth, image.spacing)
        plain = metrics_for_masks(prediction.probabilities.argmax(0) > 0, truth, image.spacing)
        rows.append(
            {
                "id": case.id,
                "dice": metrics.dice,
                "hd95_mm": metrics.hd95_mm,
                "dice_argmax": plain.dice,
                "seconds": seconds,
            }
        )
    return {
        "cases": rows,
        "dice": float(np.mean([r["dice"] for r in rows])),
        "hd95_mm": float(np.nanmean([r["hd95_mm"] for r in rows])),
        "dice_argmax": float(np.mean([r["dice_argmax"] for r in rows])),
        "seconds_per_case": float(np.mean([r["seconds"] for r in rows])),
        "largest_component": list(bundle.largest_component_classes),
        "stride": stride or bundle.inference_settings.get("stride") or DEFAULT_STRIDE,
        "mirror": bundle_mirror(bundle, mirror),
    }


def finished_run(experiment: Path, config: TrainConfig) -> TrainedRun | None:
    """The run in ``experiment`` when its model bundle holds all ``config.iterations``."""
    manifest = experiment / MODEL_FOLDER / "manifest.json"
    if not manifest.exists():
        return None
    training = json.loads(manifest.read_text()).get("training") or {}
    if int(training.get("iterations", 0)) < config.iterations:
        return None
    return TrainedRun(
        experiment, manifest.parent, int(training["iterations"]), float(training["seconds"]), {}
    )


def scored(
    bundle_folder: Path, cases: list[Case], stride: str | None, mirror: bool | None = None
) -> dict[str, Any]:
    """:func:`score`, kept beside the bundle (``score-<stride>[-mirror|-no-mirror].json``) and
    reused while the bundle and the scored cases are the same."""
    suffix = {None: "", True: "-mirror", False: "-no-mirror"}[mirror]
    record = bundle_folder.parent / f"score-{stride or 'bundle'}{suffix}.json"
    key = {
        "manifest": (bundle_folder / "manifest.json").stat().st_mtime_ns,
        "cases": [c.id for c in cases],
    }
    if record.exists():
        saved = json.loads(record.read_text())
        if saved.get("key") == key and "mirror" in saved["result"]:  # older records lack it
            return saved["result"]
    result = score(bundle_folder, cases, stride, mirror)
    write_text_atomic(record, json.dumps({"key": key, "result": result}, indent=2) + "\n")
    return result


def run_variant(
    spec: str, config: TrainConfig, cohort: Cohort, args: argparse.Namespace
) -> dict[str, Any]:
    """Train (or reuse) one variant and score it on the validation cases."""
    started = time.perf_counter()
    run = finished_run(args.out / "runs" / spec, config) or train_model(
        cohort,
        args.out / "runs" / spec,
        config,
        args.out / "propagation",
        cache_dir=args.out / "cache",
        workers=args.workers,
        progress=Progress(),
    )
    wall = time.perf_counter() - started
    cases = [c for c in cohort.validation if c.dense_label is not None][: args.eval_cases]
    if not cases:
        raise SystemExit(f"{args.cohort}: no validation case with a dense label to score")
    bundle = load_bundle(run.model)
    result = scored(run.model, cases, None)
    other = {"bundle": [], "on": [True], "off": [False], "both": [True, False]}[args.mirror]
    result["strides"] = [
        scored(run.model, cases, s, m)
        for s in [None, *args.strides]
        for m in [None, *other]
        if s is not None or (m is not None and m != result["mirror"])  # not the first row again
    ]
    result.update(
        variant=spec,
        spacing=list(bundle.spacing) if bundle.spacing else None,
        patch=list(bundle.inference_settings.get("patch", config.patch)),
        base_filters=config.network.base_filters,
        uncertainty_passes=config.uncertainty_passes,
        iterations=run.iterations,
        train_seconds=round(run.seconds, 1),
        call_seconds=round(wall, 1),
        settings=args.set,
    )
    return result


def format_results(results: list[dict[str, Any]]) -> str:
    """The side-by-side table, with ratios to the last variant."""
    last = results[-1]
    lines = [
        f"{'variant':<28} {'spacing mm':>17} {'window':>10} {'filt':>4} {'its':>5} "
        f"{'train s':>8} {'Dice':>6} {'HD95':>6} {'argmax':>6} {'s/case':>6} "
        f"{'Dice ratio':>10} {'time ratio':>10}"
    ]
    for r in results:
        spacing = "x".join(f"{s:.3g}" for s in r["spacing"]) if r["spacing"] else "native"
        lines.append(
            f"{r['variant']:<28} {spacing:>17} {'x'.join(map(str, r['patch'])):>10} "
            f"{r['base_filters']:>4} {r['iterations']:>5} {r['train_seconds']:>8.0f} "
            f"{r['dice']:>6.3f} {r['hd95_mm']:>6.1f} {r['dice_argmax']:>6.3f} "
            f"{r['seconds_per_case']:>6.1f} {r['dice'] / last['dice']:>10.2f} "
            f"{r['train_seconds'] / max(last['train_seconds'], 1e-9):>10.2f}"
        )
    for r in results:
        for other in r["strides"]:
            mirror = "mirrored" if other["mirror"] else "not mirrored"
            lines.append(
                f"{r['variant']:<28} stride {other['stride']:<7} {mirror:<12}: Dice {other['dice']:.3f}, "
                f"HD95 {other['hd95_mm']:.1f} mm, {other['seconds_per_case']:.1f} s per volume"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, required=True, help="cohort manifest")
    parser.add_argument("--out", type=Path, default=Path("rada-cpu-bench"))
    parser.add_argument("--variants", default="cpu,native")
    parser.add_argument("--set", action="append", default=[], type=parse_setting)
    parser.add_argument("--workers", type=int, default=0, help="propagation workers")
    parser.add_argument("--eval-cases", type=int, default=None, help="score the first N")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--strides",
        default="",
        help="also score each model with these inference strides (e.g. fast,whole,dense)",
    )
    parser.add_argument(
        "--mirror",
        choices=("bundle", "on", "off", "both"),
        default="bundle",
        help="also score each model with test-time mirroring on, off, or both (default: only "
        "as its bundle says)",
    )
    parser.add_argument("--json", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    changes = dict(args.set)
    args.set = changes
    args.strides = [s.strip() for s in args.strides.split(",") if s.strip()]
    cohort = load_cohort(args.cohort)
    results = []
    for spec in split_variants(args.variants):
        results.append(run_variant(spec, variant_config(spec, changes), cohort, args))
        print(format_results(results), flush=True)
    report = {"machine": host_info(), "cohort": str(args.cohort), "results": results}
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
