"""Supervision benchmark: how much of RADA's Dice is lost to its pseudo-labels, how much to training.

A trained RADA model can score well below the pseudo-labels it learns from (the demo's model
does: ``Testing/Benchmarks/RESULTS.md``, Demo). That gap has two possible
causes, and they call for different fixes: the supervision (the α^d weights of eq. 6 decay, so
late training trusts little more than the three annotated slices), or the training budget
(network size, patch, iterations). This benchmark trains the same model, with the same
settings, seeds and unlabeled volumes, from three supervision sources side by side in one run:

- ``rada``: the method, the mixed labels Ỹv of each view with the weights Wv of eq. (6);
- ``fused``: the fused pseudo-label of the three views for every net, weight 1 on every voxel
  (no decay: what the propagation knows, trusted fully; ``rada train --set label_source=fused``);
- ``truth``: the dense truth of the labeled volumes for every net, weight 1 on every voxel (an
  oracle: what this budget can learn at best from these labeled volumes).

and prints each one's Dice on the labeled and the unlabeled volumes with its ratio to
``truth``, and the Dice after keeping the largest connected component (``rada predict
--largest-component``). When ``truth`` itself stays far below the pseudo-labels, the budget is the limit;
when ``truth`` is high and ``rada`` is not, the supervision is.

Cohort: the demo's synthetic one (``--cases``, ``--labeled``, ``--seed``), or any cohort
manifest whose labeled cases have dense labels (``--cohort``, e.g. ``rada cohort --la
../shared/data/LA2018 --labeled 8 --validation 10``), propagated and embedded (frozen encoders,
random weights unless their checkpoints are in the cache) into ``--out`` (reused when run
again). Scored: the labeled volumes, and the validation cases (else the unlabeled ones) that
have dense labels, the first ``--eval-cases`` of them. Training: the ``small`` preset, with ``--iterations``,
``--patch``, ``--base-filters`` and ``--set KEY=VALUE`` (as ``run_la_gpu.py``) applied to all
sources alike. Segmentation: the three nets' mean softmax over windows of stride patch/2.

    python Testing/Benchmarks/benchmark_supervision.py [--out DIR] [--sources rada,fused,truth]
        [--cases 6] [--labeled 3] [--seed 0] [--cohort MANIFEST] [--eval-cases N]
        [--iterations 200] [--patch 32,32,32]
        [--base-filters 4] [--set KEY=VALUE ...] [--threads 1] [--workers 0] [--bound-margin N|off]
        [--json results.json]

The paper's ablations run through ``--set``: ``use_registration=false`` (the annotated slices
only), ``use_text=false`` (Et as zeros), ``region_mode=no_mask`` (Ev computed without the mask),
``region_mode=none``; evaluation then feeds the prompt the way training did, and each setting
trains into its own ``runs/<source>+<key>=<value>`` folder. With random encoders (no weights on
these machines) the text and mask ablations test the plumbing, not the method.

Not a test: each source trains for as long as the demo's training (minutes on a CPU, small
preset, 200 iterations); sources can run in separate processes
(``--sources rada`` and ``--sources truth`` with the same ``--out``, once one run has prepared
it) to use both cores.

Measured figures on the demo cohort and on LA2018 (CPU-sized, with and without the unlabeled
stream, several seeds), with their commands: ``Testing/Benchmarks/RESULTS.md`` (Supervision on
the demo cohort, Supervision on LA2018).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from RADALib.atomic import write_text_atomic
from RADALib.cli import parse_setting, parse_triple
from RADALib.cohort import Cohort, load_cohort
from RADALib.data import TrainingCase, fused_supervision, load_training_cases, normalize_intensity
from RADALib.demo import write_synthetic_cohort
from RADALib.errors import InputError
from RADALib.inference import ensemble_probabilities, sliding_window_inference
from RADALib.metrics import dice
from RADALib.postprocessing import keep_largest_component
from RADALib.propagation import PropagationConfig
from RADALib.pseudo_labels import load_case_result
from RADALib.synthetic import SyntheticConfig
from RADALib.train_config import TrainConfig, preset
from RADALib.training import train_on_cases
from RADALib.volume import read_volume
from RADALib.workflow import cohort_embeddings, ensure_propagation

SOURCES = ("rada", "fused", "truth")


def supervision(
    source: str,
    labeled: Sequence[TrainingCase],
    truths: dict[str, np.ndarray],
    fused: dict[str, np.ndarray],
) -> list[TrainingCase]:
    """The labeled cases as ``source`` supervises them."""
    if source == "rada":
        return list(labeled)
    table = truths if source == "truth" else fused
    return [fused_supervision(case, table[case.id]) for case in labeled]


def segment(model, image: np.ndarray, text, region, patch: Sequence[int]) -> np.ndarray:
    """Label map of one normalised volume: mean softmax of the three nets, windows at patch/2."""
    device = next(model.parameters()).device
    era = model.embed(text, region) if (text is not None or region is not None) else None
    stride = tuple(max(1, p // 2) for p in patch)
    x = torch.as_tensor(image, device=device)[None, None]
    with torch.no_grad():
        probabilities = sliding_window_inference(
            x,
            lambda w: ensemble_probabilities(model, w, era),
            patch,
            stride,
            pad_value=float(image.min()),
        )
    return probabilities.argmax(0).cpu().numpy()


def scored_cases(cohort: Cohort, limit: int | None) -> list:
    """The labeled cases, then the first ``limit`` validation (else unlabeled) cases with a dense label."""
    others = [c for c in (cohort.validation or cohort.unlabeled) if c.dense_label is not None]
    return list(cohort.labeled) + (others[:limit] if limit is not None else others)


def mean_over(values: dict[str, float], ids: Sequence[str]) -> float | None:
    """Mean of ``values`` over ``ids``; None without ids."""
    return float(np.mean([values[i] for i in ids])) if ids else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("rada-supervision"))
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--labeled", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic cohort")
    parser.add_argument(
        "--cohort",
        type=Path,
        help="a cohort manifest instead of the synthetic cohort "
        "(its labeled cases need dense labels)",
    )
    parser.add_argument(
        "--eval-cases", type=int, help="score only the first N validation (else unlabeled) cases"
    )
    parser.add_argument("--iterations", type=int)
    parser.add_argument("--patch", type=parse_triple)
    parser.add_argument("--base-filters", type=int)
    parser.add_argument(
        "--set",
        dest="settings",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any training setting, dotted for nested ones (repeatable)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (timings by thread count: Testing/Benchmarks/RESULTS.md)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="ANTs registration processes (0: one per core)"
    )
    parser.add_argument(
        "--bound-margin",
        default=None,
        help="propagation: margin of each view's bound in slices, or 'off' (default: the engine's)",
    )
    parser.add_argument("--json", type=Path)
    return parser


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The ``small`` preset on the CPU with the command line's changes."""
    changes: dict[str, Any] = {"device": "cpu", "threads": args.threads}
    if args.iterations:
        changes["iterations"] = args.iterations
    if args.patch:
        changes["patch"] = args.patch
    if args.base_filters:
        changes["network.base_filters"] = args.base_filters
    changes.update(dict(args.settings))
    return preset("small", **changes)


def benchmark_cohort(args: argparse.Namespace, out: Path) -> Cohort:
    """``--cohort`` (its labeled cases must have dense labels), else a synthetic cohort."""
    if not args.cohort:
        return write_synthetic_cohort(
            out / "data", args.cases, args.labeled, args.seed, SyntheticConfig()
        )
    cohort = load_cohort(args.cohort)
    without = [c.id for c in cohort.labeled if c.dense_label is None]
    if without:
        raise InputError(
            args.cohort,
            f"labeled case(s) without a dense label: {', '.join(without)} "
            "(the truth source and the scores need one)",
        )
    return cohort


def label_tables(
    cohort: Cohort, scored: Sequence, propagation: Path, config: PropagationConfig
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The truth of each scored volume, the fused pseudo-label of each labeled one, and each
    scored volume's normalised image."""
    truths = {
        c.id: (read_volume(c.dense_label, "label").array > 0).astype(np.uint8) for c in scored
    }
    fused = {
        c.id: load_case_result(propagation / "cases" / c.id).fused(
            config.fusion, config.fusion_alpha
        )
        for c in cohort.labeled
    }
    images = {c.id: normalize_intensity(read_volume(c.image, "image").array) for c in scored}
    return truths, fused, images


def evaluation_prompt(embeddings, config: TrainConfig) -> tuple[Any, Any]:
    """The text and region prompt at evaluation as training saw them (None where ablated)."""
    # an ablated embedding is None (zeros in the Adapter)
    text = torch.as_tensor(embeddings.text, dtype=torch.float32)[None] if config.use_text else None
    region_mean = (
        embeddings.region_mean(list(config.visual_planes)) if config.region_mode != "none" else None
    )
    region = (
        None if region_mean is None else torch.as_tensor(region_mean, dtype=torch.float32)[None]
    )
    return text, region


def source_scores(
    run,
    scored: Sequence,
    images: dict[str, np.ndarray],
    truths: dict[str, np.ndarray],
    prompt: tuple[Any, Any],
    patch: Sequence[int],
    groups: dict[str, Sequence[str]],
) -> dict[str, Any]:
    """Dice of a trained run on the scored volumes, per case and averaged over each group.

    ``groups`` maps a group name (``labeled``, then the other scored volumes') to its case ids;
    the keys: ``dice_<group>`` each, then ``dice_largest_component_<group>`` each, then per case.
    """
    text, region = prompt
    labels = {c.id: segment(run.model, images[c.id], text, region, patch) for c in scored}
    scores = {i: dice(label, truths[i]) for i, label in labels.items()}
    kept = {i: dice(keep_largest_component(label), truths[i]) for i, label in labels.items()}
    result: dict[str, Any] = {
        f"dice_{name}": mean_over(scores, ids) for name, ids in groups.items()
    }
    for name, ids in groups.items():
        result[f"dice_largest_component_{name}"] = mean_over(kept, ids)
    result["per_case"], result["per_case_largest_component"] = scores, kept
    return result


def machine(threads: int) -> str:
    """This computer and torch, for the report."""
    return (
        f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{threads} thread(s)"
    )


def training_text(config: TrainConfig) -> str:
    """``training: patch ..., base ..., N iterations, L+U per batch``."""
    return (
        f"training: patch {config.patch}, base {config.network.base_filters}, "
        f"{config.iterations} iterations, {config.labeled_batch}+{config.unlabeled_batch} per batch"
    )


def print_table(results: dict[str, Any], other: str, pseudo_dice: float) -> None:
    """Each source's Dice, its ratio to the truth source's, and with the largest component kept."""
    print(
        f"\nsource   labeled  {other:>10}  ratio to truth (labeled / {other})  largest component (labeled / {other})"
    )
    base = results.get("truth")
    for source, r in results.items():
        held = r[f"dice_{other}"]
        ratio = ""
        if base:
            ratio = f"{r['dice_labeled'] / max(base['dice_labeled'], 1e-9):.2f}"
            if held is not None:
                ratio += f" / {held / max(base[f'dice_{other}'], 1e-9):.2f}"
        unl = "-" if held is None else f"{held:.3f}"
        kept_unl = "-" if held is None else f"{r[f'dice_largest_component_{other}']:.3f}"
        print(
            f"{source:<8} {r['dice_labeled']:>7.3f} {unl:>10}  {ratio:<37} "
            f"{r['dice_largest_component_labeled']:.3f} / {kept_unl}"
        )
    print(f"fused pseudo-labels (labeled volumes): {pseudo_dice:.3f}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        parser.error(f"unknown source(s) {', '.join(unknown)}; choose among {', '.join(SOURCES)}")

    config = train_config(args)
    torch.set_num_threads(args.threads)

    out = args.out.resolve()
    cohort = benchmark_cohort(args, out)
    propagation_config = PropagationConfig()
    if args.bound_margin is not None:
        margin = None if args.bound_margin == "off" else int(args.bound_margin)
        propagation_config = replace(propagation_config, bound_margin=margin)
    ensure_propagation(cohort, out / "propagation", propagation_config, out / "cache", args.workers)
    embeddings = cohort_embeddings(
        cohort,
        out / "propagation",
        out,
        cache_dir=out / "cache",
        use_mask=config.region_mode != "no_mask",
    )
    labeled, unlabeled = load_training_cases(
        cohort, out / "propagation", label_source=config.label_source
    )
    scored = scored_cases(cohort, args.eval_cases)
    truths, fused, images = label_tables(cohort, scored, out / "propagation", propagation_config)
    labeled_ids = [c.id for c in cohort.labeled]
    other_ids = [c.id for c in scored if not c.labeled]
    other = "validation" if cohort.validation else "unlabeled"  # what the second score is of
    pseudo_dice = float(np.mean([dice(fused[i], truths[i]) for i in labeled_ids]))

    print(
        f"{len(labeled)} labeled + {len(unlabeled)} unlabeled training volumes; scored: the labeled ones and "
        f"{len(other_ids)} {other} volume(s); fused pseudo-label "
        f"Dice on the labeled ones {pseudo_dice:.3f}; {training_text(config)}; "
        f"encoders pretrained: {embeddings.pretrained}",
        flush=True,
    )
    prompt = evaluation_prompt(embeddings, config)
    tag = "".join(
        f"+{key}={v if isinstance(v, str) else json.dumps(v)}" for key, v in args.settings
    )  # a folder per setting
    groups = {"labeled": labeled_ids, other: other_ids}
    results: dict[str, Any] = {}
    for source in sources:
        started = time.perf_counter()
        run = train_on_cases(
            config,
            supervision(source, labeled, truths, fused),
            unlabeled,
            embeddings.text,
            embeddings.regions,
            out / "runs" / f"{source}{tag}",
            resume=False,
        )
        seconds = time.perf_counter() - started
        r = source_scores(run, scored, images, truths, prompt, config.patch, groups)
        r["train_seconds"] = round(seconds, 1)
        r["final_loss_sup"] = run.history[-1]["loss_sup"] if run.history else None
        results[source] = r
        held = r[f"dice_{other}"]
        print(
            f"{source:>6}: Dice labeled {r['dice_labeled']:.3f}, {other} "
            f"{'-' if held is None else round(held, 3)} ({seconds:.0f} s of training)",
            flush=True,
        )

    print_table(results, other, pseudo_dice)
    report = {
        "machine": machine(args.threads),
        "config": config.to_dict(),
        "cohort": str(args.cohort) if args.cohort else "synthetic",
        "cases": len(cohort.cases),
        "labeled": len(cohort.labeled),
        "seed": args.seed,
        "pseudo_label_dice": pseudo_dice,
        "encoders_pretrained": embeddings.pretrained,
        "results": results,
    }
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
