"""Propagation benchmark on LA2018: pseudo-label quality and speed, RADA settings vs plain.

On the first N labeled ids of ``train.list`` (default 8): simulate the three largest-foreground
orthogonal slices per case, propagate with the engine's default settings (cropped, stopping,
slice step, a process pool), and print per case each view's pseudo-label Dice, the fused
label's Dice (distance-weighted vote, and plain majority) and seconds per case.

In the same run, the plain approach (serial SyNRA chains with ANTs' default iterations, every
slice, over the whole extent, one process) runs on ``--plain-cases`` cases (default 2), so the
speed-up is a ratio measured side by side on the same machine.

    python Testing/Benchmarks/benchmark_propagation.py [--data ../shared/data/LA2018] [--cases 8]
        [--plain-cases 2] [--workers 2] [--json results.json]

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

from RADALib.annotation import simulate_sparse_annotation
from RADALib.metrics import dice
from RADALib.propagation import PropagationConfig, propagate
from RADALib.registration import AntsRegistrar, RegistrationConfig
from RADALib.volume import read_volume

ROOT = Path(__file__).resolve().parents[2]


def run_case(path: Path, config: PropagationConfig, registrar) -> dict:
    image = read_volume(path, "image")
    truth = read_volume(path, "label").array
    annotation = simulate_sparse_annotation(truth, source=str(path))
    started = time.perf_counter()
    result = propagate(image.array, annotation, image.spacing, registrar, config)
    seconds = time.perf_counter() - started
    row = {"seconds": seconds, "registrations": result.registrations, "methods": result.methods}
    for axis, plane in enumerate(("sagittal", "coronal", "axial")):
        row[plane] = dice(result.mixed_label(axis), truth)
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
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "LA2018"))
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--plain-cases", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--transform", default=None, help="override the RADA transform (e.g. SyNRA)"
    )
    parser.add_argument("--slice-step", type=int, default=None)
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()

    data = Path(args.data)
    listing = data / "train.list"
    if not listing.exists():
        print(
            f"LA2018 not found at {data} (need train.list): nothing to benchmark", file=sys.stderr
        )
        return 1
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()][: args.cases]
    config = PropagationConfig()
    if args.transform:
        config = replace(
            config, registration=replace(config.registration, transform=args.transform)
        )
    if args.slice_step:
        config = replace(config, slice_step=args.slice_step)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; workers {args.workers}"
    )
    print(f"RADA settings: {json.dumps(config.to_dict())}")

    header = (
        f"{'case':<22} {'sagittal':>8} {'coronal':>8} {'axial':>8} {'fused':>7} {'majority':>8} "
        f"{'seconds':>8} {'regs':>5}"
    )
    rows = {}
    print("\nRADA propagation (defaults)\n" + header, flush=True)
    with AntsRegistrar(config.registration, workers=args.workers) as registrar:
        registrar.start()  # the workers' start-up is not charged to the first case
        for case_id in ids:
            row = run_case(data / case_id / "mri_norm2.h5", config, registrar)
            rows[case_id] = row
            print(_line(case_id, row), flush=True)
    mean = {
        k: float(np.mean([r[k] for r in rows.values()]))
        for k in (
            "sagittal",
            "coronal",
            "axial",
            "fused_weighted",
            "fused_majority",
            "seconds",
            "registrations",
        )
    }
    print(_line("mean", mean), flush=True)

    plain_rows = {}
    if args.plain_cases:
        print(
            "\nPlain approach (serial SyNRA, ANTs default iterations, every slice, whole extent) "
            f"on {args.plain_cases} case(s)\n" + header,
            flush=True,
        )
        plain = plain_config()
        with AntsRegistrar(plain.registration, workers=1) as registrar:
            for case_id in ids[: args.plain_cases]:
                row = run_case(data / case_id / "mri_norm2.h5", plain, registrar)
                plain_rows[case_id] = row
                print(_line(case_id, row), flush=True)
        same = list(plain_rows)
        ratio = sum(plain_rows[c]["seconds"] for c in same) / sum(rows[c]["seconds"] for c in same)
        print(
            f"\nspeed-up on the same {len(same)} case(s): x{ratio:.1f} "
            f"(plain {np.mean([plain_rows[c]['seconds'] for c in same]):.1f} s/case, "
            f"RADA {np.mean([rows[c]['seconds'] for c in same]):.1f} s/case); fused Dice plain "
            f"{np.mean([plain_rows[c]['fused_majority'] for c in same]):.3f} (majority) vs RADA "
            f"{np.mean([rows[c]['fused_weighted'] for c in same]):.3f}"
        )
    print(
        f"\ntargets: fused Dice >= 0.88 (got {mean['fused_weighted']:.3f}), "
        f"<= 20 s per case (got {mean['seconds']:.1f} s)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"config": config.to_dict(), "rada": rows, "mean": mean, "plain": plain_rows},
                indent=2,
                default=str,
            )
        )
    return 0


def _line(name: str, row: dict) -> str:
    return (
        f"{name:<22} {row['sagittal']:>8.3f} {row['coronal']:>8.3f} {row['axial']:>8.3f} "
        f"{row['fused_weighted']:>7.3f} {row['fused_majority']:>8.3f} {row['seconds']:>8.1f} "
        f"{row['registrations']:>5.0f}"
    )


if __name__ == "__main__":
    sys.exit(main())
