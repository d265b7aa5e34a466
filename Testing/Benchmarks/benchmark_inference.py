"""Inference benchmark: seconds per LA volume for the dense and a faster stride, and what it costs in Dice.

Runs the engine's ``predict_volume`` (z-score, sliding windows, the three view networks'
softmax averaged, argmax) on the same volume(s) once per stride, in the same run, after an
untimed warm-up window, and prints per case and stride: windows per volume, seconds per
volume, seconds per window, the foreground Dice of each stride's label map against the first
stride's (default: Dice(fast, dense)) and, where a truth label exists, against the truth, with
the difference to the first stride. Then the mean seconds per stride and their ratio to the
first stride's.

Strides (``--strides``, comma-separated): the presets of ``RADALib.inference`` (``dense`` =
(18, 18, 4), the paper's evaluation protocol: 45 windows on a 183x140x88 LA volume; ``fast`` =
the patch: 8 windows) or ``X,Y,Z`` / ``XxYxZ`` triples, e.g. ``--strides dense,fast,56,56,40``.

Model: ``--model BUNDLE`` (a trained bundle folder). Without it, a random-weight model of the
paper configuration (base 16 filters, patch 112x112x80) is built in memory: the timings are
real, but the Dice figures are meaningless, and the output says so.

Inputs: the first ``--cases`` ids of ``--data``/``--list`` (LA2018 h5 with ``image`` and
``label``), or ``--image FILE`` (any format ``read_volume`` reads; ``--label FILE`` for a
truth, h5 files use their own ``label`` dataset). ``--crop X,Y,Z`` crops every volume around
its centre (a quick stand-in for a whole volume); ``--patch X,Y,Z`` overrides the patch (a
random model is then built for it).

    python Testing/Benchmarks/benchmark_inference.py [--model BUNDLE] [--data ../shared/data/LA2018]
        [--cases 1] [--image FILE [--label FILE]] [--strides dense,fast] [--threads N]
        [--patch X,Y,Z] [--crop X,Y,Z] [--batch-size 1] [--device cpu] [--json results.json]

Not a test: a dense pass over a whole LA volume takes minutes on a CPU (45 windows of three
VNets); ``--patch 32,32,32 --crop 48,48,40`` gives a check in seconds. Measured figures, with
their commands: ``Testing/Benchmarks/RESULTS.md`` (Inference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine_info import host_info

from RADALib.bundle import Bundle, load_bundle
from RADALib.cli import parse_triple
from RADALib.inference import (
    INFERENCE_MODES,
    PAPER_PATCH,
    WHOLE,
    bundle_patch,
    check_stride,
    n_windows,
    predict_volume,
    resolve_stride,
)
from RADALib.metrics import dice
from RADALib.networks import DOWNSAMPLING, NetworkConfig
from RADALib.volume import Volume, read_volume, volume_from_array

ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- arguments


def parse_strides(text: str) -> list[str | tuple[int, int, int]]:
    """``"dense,fast,56,56,40,32x32x16"`` -> ``["dense", "fast", (56, 56, 40), (32, 32, 16)]``."""
    out: list[str | tuple[int, int, int]] = []
    numbers: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "x" in token:
            out.append(parse_triple(token, "--strides"))
        elif token.lstrip("-").isdigit():
            numbers.append(int(token))
            if len(numbers) == 3:
                out.append(tuple(numbers))  # type: ignore[arg-type]
                numbers = []
        elif token in INFERENCE_MODES:
            if numbers:
                raise argparse.ArgumentTypeError(
                    f"--strides: {numbers} is not a whole X,Y,Z triple"
                )
            out.append(token)
        else:
            raise argparse.ArgumentTypeError(
                f"--strides: unknown preset {token!r} (presets: {', '.join(INFERENCE_MODES)}; or X,Y,Z triples)"
            )
    if numbers:
        raise argparse.ArgumentTypeError(f"--strides: {numbers} is not a whole X,Y,Z triple")
    if not out:
        raise argparse.ArgumentTypeError("--strides names no stride")
    return out


def stride_name(stride: str | Sequence[int]) -> str:
    return stride if isinstance(stride, str) else "x".join(str(s) for s in stride)


# ----------------------------------------------------------------------------- model and inputs


def random_bundle(patch: Sequence[int], seed: int = 0) -> Bundle:
    """A bundle in memory: the paper network with random weights and random unit prompts."""
    torch.manual_seed(seed)
    config = NetworkConfig()
    model = config.build().eval()
    rng = np.random.default_rng(seed)

    def unit(n: int) -> np.ndarray:  # CLIP embeddings are unit vectors
        v = rng.normal(size=n).astype(np.float32)
        return v / np.linalg.norm(v)

    region = np.concatenate(
        [unit(config.region_dim // 2), unit(config.region_dim - config.region_dim // 2)]
    )
    manifest = {
        "normalization": "zscore",
        "inference": {"patch": list(patch), "stride": "fast"},
        "classes": {"1": {"name": "left atrium"}},
    }
    return Bundle(
        folder=Path("<random weights>"),
        model=model,
        manifest=manifest,
        classes={1: {"name": "left atrium"}},
        text_embedding=unit(config.text_dim),
        region_embedding_mean=region,
        config=config,
    )


def centre_crop(array: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """The central ``size`` block of ``array`` (axes already smaller are kept whole)."""
    if size is None:
        return array
    starts = [max(0, (n - s) // 2) for n, s in zip(array.shape, size)]
    return np.ascontiguousarray(
        array[tuple(slice(b, b + min(n, s)) for b, n, s in zip(starts, array.shape, size))]
    )


def load_cases(args) -> list[tuple[str, Volume, np.ndarray | None]]:
    """``(name, image volume, truth mask or None)``, cropped if asked."""
    items: list[tuple[str, Path, Path | None]] = []
    if args.image:
        image = Path(args.image)
        label = Path(args.label) if args.label else None
        if label is None and image.suffix.lower() in (".h5", ".hdf5"):
            label = image
        name = (
            image.parent.name if image.name == "mri_norm2.h5" else image.name
        )  # LA2018: the case folder
        items.append((name, image, label))
    else:
        folder = Path(args.data)
        listing = folder / args.list
        if not listing.exists():
            raise SystemExit(
                f"no {args.list} in {folder}: give --data (an LA2018 folder) or --image FILE"
            )
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()][
            : args.cases
        ]
        items = [
            (case_id, folder / case_id / "mri_norm2.h5", folder / case_id / "mri_norm2.h5")
            for case_id in ids
        ]
    cases = []
    for name, image_path, label_path in items:
        volume = read_volume(image_path, "image")
        truth = None
        if label_path is not None:
            try:
                truth = read_volume(label_path, "label").array
            except Exception as error:  # noqa: BLE001 - an image without a label is benchmarked anyway
                print(f"{name}: no truth label ({error})", file=sys.stderr)
        if args.crop:
            volume = volume_from_array(
                centre_crop(volume.array, args.crop),
                volume.spacing,
                volume.origin,
                volume.direction,
                volume.source,
            )
            truth = None if truth is None else centre_crop(truth, args.crop)
        if truth is not None and truth.shape != volume.shape:
            print(
                f"{name}: the label's shape {truth.shape} is not the image's {volume.shape}; ignored",
                file=sys.stderr,
            )
            truth = None
        cases.append((name, volume, None if truth is None else truth > 0))
    return cases


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine, torch's thread count and the GPU's name where one ran."""
    info = host_info() | {"threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="a trained bundle folder (default: random weights, paper configuration)"
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "LA2018"))
    parser.add_argument(
        "--list", default="train.list", help="file of case ids in --data (default train.list)"
    )
    parser.add_argument("--cases", type=int, default=1)
    parser.add_argument("--image", help="one image file instead of --data")
    parser.add_argument("--label", help="its truth label (h5 images use their own 'label' dataset)")
    parser.add_argument(
        "--strides",
        type=parse_strides,
        default=parse_strides("dense,fast"),
        help="comma-separated presets or X,Y,Z triples; the first is the reference (default dense,fast)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="torch.set_num_threads (default: all cores)",
    )
    parser.add_argument(
        "--patch",
        type=parse_triple,
        default=None,
        help="window size X,Y,Z (multiples of 16; default the bundle's, else 112,112,80)",
    )
    parser.add_argument(
        "--crop",
        type=parse_triple,
        default=None,
        help="crop every volume around its centre to X,Y,Z voxels",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write all figures here")
    return parser


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(args: argparse.Namespace) -> tuple[Bundle, bool]:
    """The ``--model`` bundle (trained: True), else a random-weight one of the paper configuration."""
    if args.model:
        return load_bundle(args.model), True
    return random_bundle(args.patch or PAPER_PATCH), False


def _strides(
    requested: Sequence[str | tuple[int, int, int]], patch: Sequence[int]
) -> dict[str, Any]:
    """Each requested stride by its name, resolved against ``patch`` and checked."""
    strides = {stride_name(s): s if s == WHOLE else resolve_stride(s, patch) for s in requested}
    for stride in strides.values():
        if stride != WHOLE:
            check_stride(patch, stride)
    return strides


def _print_setup(
    info: dict[str, Any],
    device: torch.device,
    bundle: Bundle,
    trained: bool,
    patch: Sequence[int],
    strides: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    print(
        f"machine: {info['host']} {info['machine']}, {info['cores']} cores, {info['cpu']}; "
        f"torch {info['torch']}, {info['threads']} thread(s), device {info.get('gpu', device)}"
    )
    print(
        f"model: {bundle.folder if trained else 'random weights, paper configuration (no --model)'}; "
        f"base filters {bundle.config.base_filters}, patch {patch}, batch size {args.batch_size}"
    )
    print(
        "strides: "
        + ", ".join(f"{name} {stride}" for name, stride in strides.items())
        + (f"; volumes cropped to {args.crop}" if args.crop else "")
    )
    if not trained:
        print(
            "WARNING: no trained model (--model): the Dice figures below compare random-weight predictions "
            "and are MEANINGLESS; only the timings and window counts mean something."
        )


def _warm_up(bundle: Bundle, first: Volume, patch: Sequence[int], device: torch.device) -> None:
    """One window through the same path (kernels, thread pools, layout conversion), untimed."""
    warm = np.full(patch, float(first.array.min()), np.float32)
    block = centre_crop(first.array, patch)
    warm[tuple(slice(0, n) for n in block.shape)] = block
    predict_volume(
        bundle,
        volume_from_array(warm, first.spacing),
        patch=patch,
        stride=patch,
        device=device,
        batch_size=1,
    )
    _sync(device)


def _time_stride(
    bundle: Bundle,
    volume: Volume,
    patch: Sequence[int],
    stride: Any,
    device: torch.device,
    batch_size: int,
) -> tuple[np.ndarray, float]:
    """The plain argmax label map of one stride, and the seconds it took."""
    _sync(device)
    started = time.perf_counter()
    prediction = predict_volume(
        bundle,
        volume,
        patch=patch,
        stride=stride,
        device=device,
        batch_size=batch_size,
        largest_component=False,
    )  # the plain argmax
    _sync(device)
    return prediction.label, time.perf_counter() - started


def _case_rows(
    bundle: Bundle,
    case: tuple[str, Volume, np.ndarray | None],
    patch: Sequence[int],
    strides: dict[str, Any],
    device: torch.device,
    batch_size: int,
) -> list[dict[str, Any]]:
    """One row per stride for a case: windows, timings, Dice against the reference and truth."""
    name, volume, truth = case
    reference = next(iter(strides))
    labels: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    for sname, stride in strides.items():
        label, seconds = _time_stride(bundle, volume, patch, stride, device, batch_size)
        labels[sname] = label
        windows = 1 if stride == WHOLE else n_windows(volume.shape, patch, stride)
        row = {
            "case": name,
            "shape": list(volume.shape),
            "stride_name": sname,
            "stride": stride if stride == WHOLE else list(stride),
            "windows": windows,
            "seconds": seconds,
            "seconds_per_window": seconds / windows,
            "foreground_voxels": int(np.count_nonzero(label)),
        }
        # foreground Dice; None where both masks are empty (NaN)
        row["dice_vs_reference"] = _number(dice(label, labels[reference]))
        row["dice_truth"] = _number(dice(label, truth)) if truth is not None else None
        rows.append(row)
    ref_truth = next(r["dice_truth"] for r in rows if r["stride_name"] == reference)
    for row in rows:
        row["dice_truth_minus_reference"] = (
            None
            if row["dice_truth"] is None or ref_truth is None
            else row["dice_truth"] - ref_truth
        )
    return rows


def _summary(rows: list[dict[str, Any]], strides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Means over the volumes per stride, and each stride's speed-up over the reference."""
    summary: dict[str, dict[str, Any]] = {}
    for sname in strides:
        mine = [r for r in rows if r["stride_name"] == sname]
        summary[sname] = {
            "stride": strides[sname] if strides[sname] == WHOLE else list(strides[sname]),
            "seconds_per_volume": float(np.mean([r["seconds"] for r in mine])),
            "windows_per_volume": float(np.mean([r["windows"] for r in mine])),
            "dice_vs_reference": _mean([r["dice_vs_reference"] for r in mine]),
            "dice_truth": _mean([r["dice_truth"] for r in mine]),
            "dice_truth_minus_reference": _mean([r["dice_truth_minus_reference"] for r in mine]),
        }
    base = summary[next(iter(strides))]["seconds_per_volume"]
    for s in summary.values():
        s["speedup_vs_reference"] = (
            base / s["seconds_per_volume"] if s["seconds_per_volume"] > 0 else float("nan")
        )
    return summary


def _print_summary(
    summary: dict[str, dict[str, Any]], reference: str, cases: int, trained: bool
) -> None:
    print(f"\nmean over {cases} volume(s)")
    print(
        f"{'stride':<12} {'windows':>8} {'s/volume':>9} {'speed-up':>9} {'Dice vs ' + reference:>14} "
        f"{'Dice truth':>10} {'Δ truth':>8}"
    )
    for sname, s in summary.items():
        print(
            f"{sname:<12} {s['windows_per_volume']:>8.1f} {s['seconds_per_volume']:>9.2f} "
            f"{'x' + format(s['speedup_vs_reference'], '.2f'):>9} {_fmt(s['dice_vs_reference'], 14)} "
            f"{_fmt(s['dice_truth'], 10)} {_fmt(s['dice_truth_minus_reference'], 8, signed=True)}"
        )
    if not trained:
        print("(random weights: the Dice columns are meaningless without a trained --model)")


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(int(args.threads))
    device = torch.device(args.device)
    if args.patch is not None and any(p % DOWNSAMPLING for p in args.patch):
        parser.error(f"--patch sizes must be multiples of {DOWNSAMPLING}")

    bundle, trained = _model(args)
    patch = bundle_patch(bundle, args.patch)
    strides = _strides(args.strides, patch)
    cases = load_cases(args)

    info = machine_info(device)
    _print_setup(info, device, bundle, trained, patch, strides, args)
    _warm_up(bundle, cases[0][1], patch, device)

    reference = next(iter(strides))
    rows: list[dict[str, Any]] = []
    header = (
        f"{'case':<22} {'stride':<12} {'windows':>7} {'s/volume':>9} {'s/window':>9} "
        f"{'Dice vs ' + reference:>14} {'Dice truth':>10} {'Δ truth':>8}"
    )
    print("\n" + header, flush=True)
    for case in cases:
        case_rows = _case_rows(bundle, case, patch, strides, device, args.batch_size)
        for row in case_rows:
            print(_line(row), flush=True)
        rows += case_rows

    summary = _summary(rows, strides)
    _print_summary(summary, reference, len(cases), trained)

    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "model": str(bundle.folder) if trained else None,
                    "trained": trained,
                    "patch": list(patch),
                    "crop": args.crop,
                    "batch_size": args.batch_size,
                    "reference": reference,
                    "rows": rows,
                    "summary": summary,
                },
                indent=2,
                default=_json_default,
            )
        )
    return 0


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def _fmt(value: float | None, width: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>+{width}.4f}" if signed else f"{value:>{width}.4f}"


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['case']:<22} {row['stride_name']:<12} {row['windows']:>7} {row['seconds']:>9.2f} "
        f"{row['seconds_per_window']:>9.3f} {_fmt(row['dice_vs_reference'], 14)} "
        f"{_fmt(row['dice_truth'], 10)} {_fmt(row['dice_truth_minus_reference'], 8, signed=True)}"
    )


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
