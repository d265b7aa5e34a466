"""How much a model's Dice depends on how a volume's intensities happen to come out, side by side.

Every volume is z-scored as a whole before a network sees it, so the same tissue lands at other
z values when the field of view holds more or less background, or when the scanner weights the
contrast differently. This benchmark segments a cohort's validation volumes with each model as
``rada predict`` does (the bundle's stride, mirroring and largest component) as they are and
under perturbations a user's volumes bring, and prints each model's Dice under each of them and
as a ratio to its Dice on the volumes as they are:

- ``padded``: a quarter of the volume's width of empty background (zeros) added on each side in
  x and y (a wider field of view: the z-scores of every tissue shift);
- ``gamma 0.7`` / ``gamma 1.4``: the intensities, scaled to [0, 1], raised to that power (another
  contrast weighting);
- ``bias``: a smooth multiplicative field, brighter towards one side (a coil's falloff), ±20 %.

    python Testing/Benchmarks/benchmark_intensity_robustness.py --cohort la.json \
        --model plain=bench/runs/cpu/model --model augmented=bench/runs/cpu+.../model \
        [--eval-cases N] [--mirror bundle|on|off] [--json results.json]

Not a test: figures, with the command and machine, in ``Testing/Benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine_info import host_info

from RADALib.atomic import write_text_atomic
from RADALib.bundle import load_bundle
from RADALib.cohort import load_cohort
from RADALib.inference import predict_volume
from RADALib.metrics import metrics_for_masks
from RADALib.volume import Volume, read_volume, volume_from_array

PAD_FRACTION = 0.25
BIAS_AMPLITUDE = 0.2


def _pad(volume: Volume) -> tuple[Volume, tuple[slice, ...]]:
    nx, ny = (int(round(n * PAD_FRACTION)) for n in volume.shape[:2])
    array = np.pad(volume.array, ((nx, nx), (ny, ny), (0, 0)), constant_values=0)
    inner = (slice(nx, nx + volume.shape[0]), slice(ny, ny + volume.shape[1]), slice(None))
    return volume_from_array(array, volume.spacing, volume.origin, volume.direction), inner


def _gamma(power: float) -> Callable[[Volume], tuple[Volume, tuple[slice, ...]]]:
    def perturb(volume: Volume) -> tuple[Volume, tuple[slice, ...]]:
        a = volume.array.astype(np.float32)
        low, high = float(a.min()), float(a.max())
        scaled = (a - low) / max(high - low, 1e-8)
        return volume.with_array(low + (high - low) * scaled**power), (slice(None),) * 3

    return perturb


def _bias(volume: Volume) -> tuple[Volume, tuple[slice, ...]]:
    x = np.linspace(-1.0, 1.0, volume.shape[0], dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, volume.shape[1], dtype=np.float32)[None, :, None]
    field = 1.0 + BIAS_AMPLITUDE * (0.7 * x + 0.3 * y)
    return volume.with_array(volume.array.astype(np.float32) * field), (slice(None),) * 3


PERTURBATIONS: dict[str, Callable[[Volume], tuple[Volume, tuple[slice, ...]]]] = {
    "as is": lambda v: (v, (slice(None),) * 3),
    "padded": _pad,
    "gamma 0.7": _gamma(0.7),
    "gamma 1.4": _gamma(1.4),
    "bias": _bias,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, help="NAME=BUNDLE_FOLDER")
    parser.add_argument("--eval-cases", type=int, default=None)
    parser.add_argument(
        "--mirror",
        choices=("bundle", "on", "off"),
        default="bundle",
        help="test-time mirroring: as each bundle says, or the same for every model",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    models = dict(item.split("=", 1) for item in args.model)
    bundles = {name: load_bundle(Path(folder)) for name, folder in models.items()}
    cohort = load_cohort(args.cohort)
    cases = [c for c in cohort.validation if c.dense_label is not None][: args.eval_cases]
    if not cases:
        raise SystemExit(f"{args.cohort}: no validation case with a dense label to score")
    mirror = {"bundle": None, "on": True, "off": False}[args.mirror]
    dice: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PERTURBATIONS} for m in models}
    started = time.perf_counter()
    for case in cases:
        image = read_volume(case.image, "image")
        truth = read_volume(case.dense_label, "label").array > 0
        for perturbation, perturb in PERTURBATIONS.items():
            changed, inner = perturb(image)
            for name, bundle in bundles.items():
                label = predict_volume(bundle, changed, mirror=mirror).label[inner]
                dice[name][perturbation].append(
                    metrics_for_masks(label > 0, truth, image.spacing).dice
                )
        print(f"{case.id}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    print(f"\n{len(cases)} validation volumes of {args.cohort}; mean Dice (ratio to 'as is')")
    print("model".ljust(14) + "".join(p.rjust(18) for p in PERTURBATIONS))
    table = {}
    for name in models:
        means = {p: float(np.mean(v)) for p, v in dice[name].items()}
        table[name] = {"mean_dice": means, "cases": dice[name], "bundle": models[name]}
        cells = [f"{means[p]:.3f} ({means[p] / means['as is']:.2f})" for p in PERTURBATIONS]
        print(name.ljust(14) + "".join(c.rjust(18) for c in cells))
    if args.json:
        record = {
            "machine": host_info(),
            "cohort": str(args.cohort),
            "mirror": args.mirror,
            "models": table,
        }
        write_text_atomic(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
