"""How much true structure each view's bound removes: the bound's safety, measured on dense labels.

Each view's propagation is bounded along its axis by the extent that the other planes'
annotated slices show, plus a margin (``RADALib/bounds.py``, docs/method.md, Propagation).
Where those slices miss part of the structure (a thin part they do not cross, a slice that
grazes the structure), the bound sets true foreground to background. This benchmark measures
that loss, with no registration at all (it is cheap): per case, the three largest-foreground
orthogonal slices are simulated from the dense label (``simulate_sparse_annotation``), each
view's bound is computed, and the fraction of the true foreground (per class, when there are
several) lying outside it is counted.

    python Testing/Benchmarks/benchmark_bounds.py --data ../shared/data/LA2018 [--cases 8]
    python Testing/Benchmarks/benchmark_bounds.py --data ../shared/data/Hippocampus \\
        --layout decathlon [--cases 200] [--margins 0,2,4,8] [--json results.json]

Layouts: ``la`` (``train.list`` and ``<id>/mri_norm2.h5``, the first ``--cases`` ids) and
``decathlon`` (``labelsTr/*.nii.gz``, sorted, the first ``--cases``). Measured figures:
``Testing/Benchmarks/RESULTS.md`` (Propagation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from RADALib.annotation import PLANES, simulate_sparse_annotation
from RADALib.bounds import view_bounds
from RADALib.volume import read_volume

ROOT = Path(__file__).resolve().parents[2]


def label_files(data: Path, layout: str, cases: int) -> list[Path]:
    """The dense label files of the first ``cases`` cases of ``data``."""
    if layout == "la":
        ids = [i.strip() for i in (data / "train.list").read_text().splitlines() if i.strip()]
        return [data / i / "mri_norm2.h5" for i in ids[:cases]]
    names = sorted(p for p in (data / "labelsTr").glob("*.nii.gz") if not p.name.startswith("."))
    return names[:cases]


def cut_fractions(truth: np.ndarray, margin: int) -> dict[str, float]:
    """Per view and class, the fraction of the class's true voxels outside the view's bound."""
    annotation = simulate_sparse_annotation(truth)
    bounds = view_bounds(annotation, margin)
    figures = {}
    for axis, plane in enumerate(PLANES):
        kept = np.moveaxis(truth, axis, 0).copy()
        bounds[axis].apply(kept)
        classes = np.unique(truth[truth != 0]).tolist()
        for value in classes if len(classes) > 1 else []:
            total = np.count_nonzero(truth == value)
            figures[f"{plane}/{value}"] = 1.0 - np.count_nonzero(kept == value) / total
        figures[plane] = 1.0 - np.count_nonzero(kept) / np.count_nonzero(truth)
    return figures


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per figure: the mean, the largest, and the share of cases where anything was cut."""
    return {
        key: {
            "mean": float(np.mean([r[key] for r in rows])),
            "max": float(np.max([r[key] for r in rows])),
            "cases_cut": float(np.mean([r[key] > 0 for r in rows])),
        }
        for key in rows[0]
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "LA2018"))
    parser.add_argument("--layout", choices=("la", "decathlon"), default="la")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--margins", default="0,2,4,8")
    parser.add_argument("--json", help="write all figures here")
    args = parser.parse_args()

    files = label_files(Path(args.data), args.layout, args.cases)
    if not files:
        print(f"no labels found under {args.data} ({args.layout} layout)", file=sys.stderr)
        return 1
    truths = [read_volume(path, "label").array for path in files]
    margins = [int(m) for m in args.margins.split(",")]
    report = {}
    print(f"{len(files)} case(s) of {args.data}; true foreground outside each view's bound")
    print(f"{'margin':>6} {'figure':<14} {'mean':>8} {'max':>8} {'cases cut':>9}")
    for margin in margins:
        summary = summarize([cut_fractions(truth, margin) for truth in truths])
        report[str(margin)] = summary
        for key, s in summary.items():
            print(
                f"{margin:>6} {key:<14} {s['mean']:>8.4f} {s['max']:>8.4f} {s['cases_cut']:>9.2f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": len(files), "margins": report}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
