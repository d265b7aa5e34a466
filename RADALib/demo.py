"""``rada demo``: the whole pipeline on a built-in synthetic cohort, in minutes on a CPU.

Writes a synthetic cohort (``synthetic.py``) as NRRD files and a cohort manifest whose first
cases are labeled by simulating three orthogonal annotated slices; propagates them; trains the
triple-view model with the ``cpu`` preset (:func:`demo_training`); segments every volume; and
reports, against the dense truth (which neither propagation nor training ever sees): each
view's pseudo-label Dice and the fused label's Dice on the labeled volumes ("propagation
alone"), and RADA's Dice on the labeled and on the unlabeled volumes. Everything lands in the
output folder: ``report.json`` and PNG overlays of a few slices (image, truth, prediction) in
``overlays/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .annotation import PLANES
from .atomic import check_output_folder, ensure_writable_folder, replacing, write_text_atomic
from .cache import ArrayCache
from .cohort import Case, Cohort, save_cohort
from .errors import InputError
from .events import Progress
from .metrics import dice
from .postprocessing import keep_largest_component
from .propagation import PropagationConfig
from .pseudo_labels import load_case_result, propagate_cohort
from .registration import AntsRegistrar
from .synthetic import SyntheticConfig, synthetic_cohort
from .train_config import TrainConfig, preset, scale_schedule
from .volume import read_volume, volume_from_array, write_like

DEMO_PRESET = "cpu"
"""The demo trains with what a CPU user would use: the cpu preset, with :data:`DEMO_CHANGES`
for its small volumes, for as many iterations as fit :data:`DEMO_TIME_BUDGET` on this machine
(its schedule scaled from :data:`DEMO_ITERATIONS`)."""
DEMO_ITERATIONS = 300
DEMO_TIME_BUDGET = 180.0
"""Seconds of training: the demo's model is sized to three minutes, as the cpu preset to thirty."""
DEMO_CHANGES = {"spacing_factor": 2.0, "patch": (32, 32, 32)}
"""Voxels twice (not three times) the demo's own size, in 32-voxel windows: at three times the
whole of a demo volume fits in one window, so every sample of a painted volume is that volume
again; at twice the windows are crops of it, and the model did better on the unpainted volumes
in the same time (Testing/Benchmarks/RESULTS.md, "Demo")."""


def demo_training() -> TrainConfig:
    """The demo's settings: the :data:`DEMO_PRESET` preset on the CPU with
    :data:`DEMO_CHANGES`, its schedule scaled to :data:`DEMO_ITERATIONS` iterations, and sized
    to :data:`DEMO_TIME_BUDGET` when training starts (:mod:`RADALib.time_budget`)."""
    config = preset(DEMO_PRESET, device="cpu").replace(**DEMO_CHANGES)
    return scale_schedule(config, DEMO_ITERATIONS).replace(time_budget=DEMO_TIME_BUDGET)


def write_synthetic_cohort(
    folder: Path, n_cases: int, n_labeled: int, seed: int, config: SyntheticConfig
) -> Cohort:
    """Write ``n_cases`` synthetic volumes and labels as NRRD and return their cohort."""
    if not 1 <= n_labeled <= n_cases:
        raise InputError("--labeled", f"needs 1 <= labeled <= cases, got {n_labeled} of {n_cases}")
    cases = []
    for number, (case_id, image, label) in enumerate(synthetic_cohort(n_cases, seed, config)):
        reference = volume_from_array(image, config.spacing, origin=(-40.0, -30.0, 10.0))
        image_path = write_like(reference, image, folder / "images" / f"{case_id}.nrrd")
        label_path = write_like(reference, label, folder / "labels" / f"{case_id}_label.nrrd")
        cases.append(
            Case(
                case_id,
                image_path.resolve(),
                None,
                label_path.resolve(),
                simulate_from_dense=number < n_labeled,
            )
        )
    return Cohort("synthetic", cases, {1: "organ"})


def run_demo(
    out: Path,
    n_cases: int = 6,
    n_labeled: int = 3,
    seed: int = 0,
    workers: int = 0,
    progress: Progress | None = None,
    config: PropagationConfig | None = None,
    train: bool = True,
    iterations: int | None = None,
    training: TrainConfig | None = None,
) -> dict:
    """Run the demo into ``out`` and return its report (also written to ``out/report.json``).

    ``train=False`` stops after propagation; ``training``: the settings (default:
    :func:`demo_training`); ``iterations`` fixes their count (no time budget).
    """
    progress = progress or Progress()
    config = config or PropagationConfig()
    started = time.perf_counter()
    out = check_output_folder(out)
    progress.start("synthesize", n_cases, f"writing {n_cases} synthetic volumes to {out / 'data'}")
    cohort = write_synthetic_cohort(out / "data", n_cases, n_labeled, seed, SyntheticConfig())
    save_cohort(cohort, out / "cohort.json")
    progress.update(n_cases, "cohort written")

    with AntsRegistrar(config.registration, workers=workers) as registrar:
        reports = propagate_cohort(
            cohort,
            out / "propagation",
            registrar,
            config,
            ArrayCache(out / "cache"),
            progress=progress,
        )

    rows = []
    for case, report in zip(cohort.labeled, reports):
        truth = read_volume(case.dense_label, "label").array
        result = load_case_result(report.folder)
        row = {"id": case.id, "seconds": report.seconds, "registrations": report.registrations}
        for axis, plane in enumerate(PLANES):
            row[f"dice_{plane}"] = dice(result.mixed_label(axis), truth)
        row["dice_fused"] = dice(result.fused(config.fusion, config.fusion_alpha), truth)
        rows.append(row)
    report = {
        "cases": rows,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "id"},
        "config": config.to_dict(),
        "note": "Dice of the pseudo-labels propagated from three annotated slices per labeled volume, "
        "against the dense synthetic truth (never used by the propagation or the training).",
    }
    if train:
        training = training or demo_training()
        if iterations:
            training = scale_schedule(training, iterations)
        report["rada"] = _train_and_segment(cohort, out, training, workers, progress)
    report["seconds_total"] = round(time.perf_counter() - started, 1)
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    print(format_report(report))
    return report


def _train_and_segment(
    cohort: Cohort, out: Path, training: TrainConfig, workers: int, progress: Progress
) -> dict:
    """Train with ``training``, segment every volume, score it; PNG overlays of a few."""
    from .bundle import load_bundle
    from .inference import predict_files
    from .workflow import train_model

    run = train_model(
        cohort,
        out / "experiment",
        training,
        out / "propagation",
        cache_dir=out / "cache",
        workers=workers,
        progress=progress,
    )
    images = [case.image for case in cohort.cases]
    bundle = load_bundle(run.model)
    # the plain argmax (the paper's output); the largest component is scored beside it
    outputs = predict_files(
        bundle, images, out / "predictions", progress=progress, largest_component=False
    )
    per_case = _score_predictions(cohort, outputs, out / "overlays")

    def mean(key: str, labeled: bool) -> float | None:
        values = [r[key] for r in per_case if r["labeled"] == labeled]
        return float(np.mean(values)) if values else None

    return {
        "cases": per_case,
        "dice_labeled": mean("dice", True),
        "dice_unlabeled": mean("dice", False),
        "dice_largest_component_labeled": mean("dice_largest_component", True),
        "dice_largest_component_unlabeled": mean("dice_largest_component", False),
        "largest_component_recommended": bundle.largest_component_classes,
        "iterations": run.iterations,
        "patch": list(bundle.inference_settings.get("patch", training.patch)),
        "base_filters": training.network.base_filters,
        "spacing": list(bundle.spacing) if bundle.spacing else None,
        "train_seconds": round(run.seconds, 1),
        "encoders_pretrained": run.pretrained,
        "model": str(run.model),
    }


def _score_predictions(cohort: Cohort, outputs: list[Path], overlays: Path) -> list[dict]:
    """Each case's Dice against its dense truth, as predicted and with the largest component
    kept; overlays (in ``overlays``) of one labeled and two unlabeled volumes."""
    labeled_ids = [c.id for c in cohort.cases if c.labeled]
    unlabeled_ids = [c.id for c in cohort.cases if not c.labeled]
    shown = set(labeled_ids[:1] + unlabeled_ids[:2])
    per_case = []
    for case, path in zip(cohort.cases, outputs):
        truth = read_volume(case.dense_label, "label")
        prediction = read_volume(path, "label").array
        per_case.append(
            {
                "id": case.id,
                "labeled": case.labeled,
                "dice": dice(prediction, truth.array),
                "dice_largest_component": dice(keep_largest_component(prediction), truth.array),
            }
        )
        if case.id in shown:
            write_overlay(
                read_volume(case.image).array,
                truth.array,
                prediction,
                overlays / f"{case.id}.png",
                case.id,
            )
    return per_case


def write_overlay(
    image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, path: Path, title: str
) -> Path:
    """A PNG of the middle sagittal, coronal and axial slices: image, truth (green), RADA (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = (
        [int(v) for v in np.round(np.mean(np.nonzero(truth), axis=1))]
        if truth.any()
        else [n // 2 for n in truth.shape]
    )
    figure, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for axis, ax in enumerate(axes):

        def take(a: np.ndarray, axis: int = axis) -> np.ndarray:
            return np.take(a, centre[axis], axis=axis).T  # rows: the second in-plane axis

        ax.imshow(take(image), cmap="gray", origin="lower")
        ax.contour(take(truth) > 0, levels=[0.5], colors="lime", linewidths=1.2)
        ax.contour(
            take(prediction) > 0, levels=[0.5], colors="red", linewidths=1.0, linestyles="--"
        )
        ax.set_title(f"{title} {PLANES[axis]} {centre[axis]}", fontsize=9)
        ax.axis("off")
    figure.suptitle("truth (green), RADA (red, dashed)", fontsize=9)
    ensure_writable_folder(path.parent)
    try:
        with replacing(path, ".png") as temporary:
            figure.savefig(temporary, dpi=90, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def format_report(report: dict) -> str:
    """A short table of the demo's Dice: propagation alone, then RADA."""
    lines = [
        "",
        "Propagation alone: pseudo-label Dice against the dense truth (3 annotated slices per volume)",
        f"{'case':<10} {'sagittal':>9} {'coronal':>8} {'axial':>6} {'fused':>6} {'seconds':>8}",
    ]
    for row in report["cases"] + [dict(report["mean"], id="mean")]:
        lines.append(
            f"{row['id']:<10} {row['dice_sagittal']:>9.3f} {row['dice_coronal']:>8.3f} {row['dice_axial']:>6.3f} "
            f"{row['dice_fused']:>6.3f} {row['seconds']:>8.1f}"
        )
    rada = report.get("rada")
    if rada:
        lines += _rada_lines(rada, report["mean"]["dice_fused"])
    lines.append(f"total {report['seconds_total']} s")
    return "\n".join(lines)


def _rada_lines(rada: dict, fused: float) -> list[str]:
    """The model's part of :func:`format_report`: per case, the means, and one line comparing
    the unpainted volumes with the painted ones' pseudo-labels."""
    spacing = " x ".join(f"{v:.3g}" for v in rada["spacing"]) if rada.get("spacing") else "native"
    lines = [
        "",
        f"RADA ({rada['iterations']} iterations, {spacing} mm voxels, "
        f"{'x'.join(map(str, rada['patch']))} patches, {rada['base_filters']} base filters, "
        f"{rada['train_seconds']:.0f} s of training): Dice of the segmentation against the dense truth",
        f"{'case':<10} {'':>9} {'RADA':>6} {'+ largest component':>20}",
    ]
    lines += [
        f"{r['id']:<10} {'labeled' if r['labeled'] else 'unlabeled':>9} {r['dice']:>6.3f} "
        f"{r['dice_largest_component']:>20.3f}"
        for r in rada["cases"]
    ]
    unlabeled = rada["dice_unlabeled"] is not None
    lines.append(
        f"mean: labeled {rada['dice_labeled']:.3f} (propagation alone, fused: {fused:.3f})"
        + (f", unlabeled {rada['dice_unlabeled']:.3f}" if unlabeled else "")
    )
    lines.append(
        f"with the largest component kept: labeled {rada['dice_largest_component_labeled']:.3f}"
        + (f", unlabeled {rada['dice_largest_component_unlabeled']:.3f}" if unlabeled else "")
    )
    recommended = bool(rada.get("largest_component_recommended"))
    lines.append(
        "`rada predict` keeps the largest component by default for this model (its pseudo-labels were one "
        "region)"
        if recommended
        else "`rada predict` keeps every region by default for this model (--largest-component to change)"
    )
    if unlabeled:
        lines.append(_unpainted_line(rada, fused, recommended))
    if not all(rada["encoders_pretrained"].values()):
        lines.append(
            "note: the Alpha-CLIP/CLIP encoders ran with RANDOM weights (none found in the cache)"
        )
    return lines


def _unpainted_line(rada: dict, fused: float, largest_component: bool) -> str:
    """What the model adds to propagation: the volumes nobody painted, segmented (as
    `rada predict` would), against the pseudo-labels of the painted ones."""
    key = "dice_largest_component_unlabeled" if largest_component else "dice_unlabeled"
    kept = " (largest component kept)" if largest_component else ""
    unpainted = sum(not r["labeled"] for r in rada["cases"])
    painted = len(rada["cases"]) - unpainted
    return (
        f"the model segments the {unpainted} volume(s) nobody painted, which propagation cannot, "
        f"at Dice {rada[key]:.3f}{kept}, against {fused:.3f} for the fused pseudo-labels of the "
        f"{painted} painted one(s)"
    )
