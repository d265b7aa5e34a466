"""Propagation benchmark on LA2018: pseudo-label quality and speed, RADA settings vs plain.

On the first N labeled ids of ``train.list`` (default 8): simulate the three largest-foreground
orthogonal slices per case, propagate with the engine's default settings (cropped, stopping,
slice step, a process pool), and print per case each view's pseudo-label Dice and volume ratio
(the view's mixed label's voxels over the true voxels), the fused label's Dice
(distance-weighted vote, and plain majority) and seconds per case.

``--bounds`` runs several settings of each view's bound side by side, case by case in one run
(default ``off,default``: no bound, and the default margin; e.g. ``off,0,2,4,8``), and prints
each one's mean, with the fraction of the true foreground that lies outside each view's bound.

In the same run, the plain approach (serial SyNRA chains with ANTs' default iterations, every
slice, over the whole extent, one process) runs on ``--plain-cases`` cases (default 2), so the
speed-up is a ratio measured side by side on the same machine.

    python Testing/Benchmarks/benchmark_propagation.py [--data ../shared/data/LA2018] [--cases 8]
        [--bounds off,default] [--plain-cases 2] [--workers 2] [--json results.json]

Not a test: it takes minutes (the plain approach alone takes several minutes per case).
Measured figures, with their commands: ``Testing/Benchmarks/RESULTS.md`` (Propagation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from RADALib.annotation import PLANES, simulate_sparse_annotation
from RADALib.bounds import view_bounds
from RADALib.metrics import dice
from RADALib.propagation import PropagationConfig, propagate
from RADALib.registration import AntsRegistrar, RegistrationConfig
from RADALib.volume import read_volume

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    *PLANES,
    *(f"volume_{p}" for p in PLANES),
    *(f"cut_{p}" for p in PLANES),
    "fused_weighted",
    "fused_majority",
    "seconds",
    "registrations",
)


def truth_outside_bounds(truth: np.ndarray, annotation, margin: int | None) -> dict[str, float]:
    """Per view, the fraction of the true foreground that its bound sets to background."""
    bounds = view_bounds(annotation, margin)
    total = max(int(np.count_nonzero(truth)), 1)
    figures = {}
    for axis, plane in enumerate(PLANES):
        kept = np.moveaxis(truth, axis, 0).copy()
        if axis in bounds:
            bounds[axis].apply(kept)
        figures[f"cut_{plane}"] = 1.0 - np.count_nonzero(kept) / total
    return figures


def run_case(path: Path, config: PropagationConfig, registrar) -> dict:
    image = read_volume(path, "image")
    truth = read_volume(path, "label").array
    annotation = simulate_sparse_annotation(truth, source=str(path))
    started = time.perf_counter()
    result = propagate(image.array, annotation, image.spacing, registrar, config)
    seconds = time.perf_counter() - started
    row = {"seconds": seconds, "registrations": result.registrations, "methods": result.methods}
    true_voxels = max(int(np.count_nonzero(truth)), 1)
    for axis, plane in enumerate(PLANES):
        mixed = result.mixed_label(axis)
        row[plane] = dice(mixed, truth)
        row[f"volume_{plane}"] = np.count_nonzero(mixed) / true_voxels
    row.update(truth_outside_bounds(truth, annotation, config.bound_margin))
    row["fused_weighted"] = dice(result.fused("weighted", config.fusion_alpha), truth)
    row["fused_majority"] = dice(result.fused("majority"), truth)
    return row


def plain_config() -> PropagationConfig:
    """Serial SyNRA chains, ANTs' default iterations, every slice, whole extent, no crop."""
    return PropagationConfig(
        registration=RegistrationConfig.ants_defaults("SyNRA"),
        slice_step=1,
        crop_margin=100_000,
        stop_when_empty=False,
        slice_smoothing=0,
        bound_margin=None,
    )


def bound_settings(text: str, base: PropagationConfig) -> dict[str, PropagationConfig]:
    """``off,default,0,4`` -> the settings to compare, by name (``margin N``, ``off``)."""
    settings = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item == "off":
            settings["bound off"] = replace(base, bound_margin=None)
        else:
            margin = base.bound_margin if item == "default" else int(item)
            settings[f"bound margin {margin}"] = replace(base, bound_margin=margin)
    return settings


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "LA2018"))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument(
        "--bounds", default="off,default", help="bound settings side by side: off, default, N"
    )
    parser.add_argument("--plain-cases", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--transform", default=None, help="override the RADA transform (e.g. SyNRA)"
    )
    parser.add_argument("--slice-step", type=int, default=None)
    parser.add_argument("--json", help="write all figures here")
    return parser.parse_args()


def rada_config(args: argparse.Namespace) -> PropagationConfig:
    config = PropagationConfig()
    if args.transform:
        config = replace(
            config, registration=replace(config.registration, transform=args.transform)
        )
    if args.slice_step:
        config = replace(config, slice_step=args.slice_step)
    return config


def run_settings(
    data: Path, ids: list[str], settings: dict[str, PropagationConfig], workers: int
) -> dict[str, dict[str, dict]]:
    """Every setting on every case, case by case (the settings side by side in time)."""
    rows: dict[str, dict[str, dict]] = {name: {} for name in settings}
    registration = next(iter(settings.values())).registration
    print("\nRADA propagation, per case and setting\n" + HEADER, flush=True)
    with AntsRegistrar(registration, workers=workers) as registrar:
        registrar.start()  # the workers' start-up is not charged to the first case
        for case_id in ids:
            for name, config in settings.items():
                row = run_case(data / case_id / "mri_norm2.h5", config, registrar)
                rows[name][case_id] = row
                print(_line(f"{case_id} {name}", row), flush=True)
    return rows


def mean_rows(rows: dict[str, dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows.values()])) for k in FIGURES}


def run_plain(data: Path, ids: list[str], rada: dict[str, dict]) -> dict[str, dict]:
    """The plain approach on ``ids``, and its speed-up against ``rada``'s rows of those cases."""
    print(
        "\nPlain approach (serial SyNRA, ANTs default iterations, every slice, whole extent) "
        f"on {len(ids)} case(s)\n" + HEADER,
        flush=True,
    )
    plain = plain_config()
    rows = {}
    with AntsRegistrar(plain.registration, workers=1) as registrar:
        for case_id in ids:
            rows[case_id] = run_case(data / case_id / "mri_norm2.h5", plain, registrar)
            print(_line(case_id, rows[case_id]), flush=True)
    ratio = sum(rows[c]["seconds"] for c in ids) / sum(rada[c]["seconds"] for c in ids)
    print(
        f"\nspeed-up on the same {len(ids)} case(s): x{ratio:.1f} "
        f"(plain {np.mean([rows[c]['seconds'] for c in ids]):.1f} s/case, "
        f"RADA {np.mean([rada[c]['seconds'] for c in ids]):.1f} s/case); fused Dice plain "
        f"{np.mean([rows[c]['fused_majority'] for c in ids]):.3f} (majority) vs RADA "
        f"{np.mean([rada[c]['fused_weighted'] for c in ids]):.3f}"
    )
    return rows


def main() -> int:
    args = parse_args()
    data = Path(args.data)
    listing = data / "train.list"
    if not listing.exists():
        print(
            f"LA2018 not found at {data} (need train.list): nothing to benchmark", file=sys.stderr
        )
        return 1
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()][: args.cases]
    config = rada_config(args)
    settings = bound_settings(args.bounds, config)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; workers {args.workers}"
    )
    print(f"RADA settings: {json.dumps(config.to_dict())}")

    rows = run_settings(data, ids, settings, args.workers)
    means = {name: mean_rows(table) for name, table in rows.items()}
    print(f"\nmean of {len(ids)} case(s)\n" + HEADER)
    for name, mean in means.items():
        print(_line(name, mean))
    print(
        f"\ntrue foreground outside each view's bound (mean fraction)\n{'':<34} "
        + " ".join(f"{p:>8}" for p in PLANES)
    )
    for name, mean in means.items():
        print(f"{name:<34} " + " ".join(f"{mean[f'cut_{p}']:>8.4f}" for p in PLANES))

    # the plain approach is compared with the default setting (else the first one)
    reference = next(
        (rows[n] for n, c in settings.items() if c == config), next(iter(rows.values()))
    )
    plain_rows = run_plain(data, ids[: args.plain_cases], reference) if args.plain_cases else {}
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "config": config.to_dict(),
                    "settings": {n: c.to_dict() for n, c in settings.items()},
                    "rada": rows,
                    "mean": means,
                    "plain": plain_rows,
                },
                indent=2,
                default=str,
            )
        )
    return 0


HEADER = (
    f"{'case / setting':<34} {'sagittal':>8} {'coronal':>8} {'axial':>8} "
    f"{'vol sag':>7} {'vol cor':>7} {'vol ax':>7} {'fused':>7} {'majority':>8} "
    f"{'seconds':>8} {'regs':>5}"
)


def _line(name: str, row: dict) -> str:
    return (
        f"{name:<34} {row['sagittal']:>8.3f} {row['coronal']:>8.3f} {row['axial']:>8.3f} "
        f"{row['volume_sagittal']:>7.2f} {row['volume_coronal']:>7.2f} {row['volume_axial']:>7.2f} "
        f"{row['fused_weighted']:>7.3f} {row['fused_majority']:>8.3f} {row['seconds']:>8.1f} "
        f"{row['registrations']:>5.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
