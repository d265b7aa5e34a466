"""LA2018 paper-preset training and evaluation on the GPU machine (issue 3), within one command's limit.

Runs where there is no ANTs, SimpleITK or open_clip: everything those make was computed ahead by
``prepare_la_gpu.py`` (``.devcarry/prep/``: split, propagation of the 8 labeled cases, Et/Ev
embeddings). The volumes come from ``pack_la.py``'s chunks: every ``.devcarry/*/<id>.json`` with
its ``<id>.image.xz`` and ``<id>.label.xz`` (``la0..la2`` or ``carry0..carry1``) is decoded in
memory, exactly as ``unpack_la.py`` would (no h5 files written); ``--data DIR`` reads an LA
layout (``<id>/mri_norm2.h5``) instead.

What a run does:

1. loads the prep bundle and the 80 cases (8 labeled, 62 unlabeled, 10 validation), checking
   every decoded label against the SHA-256 recorded by the prep;
2. trains the ``--preset`` (``paper``: 6000 iterations, patch 112x112x80, bf16 on CUDA) with
   ``RADALib.training.train_on_cases`` into ``--run-dir`` (``.devcarry/run/``: git-ignored and
   never carried, so it stays on the device machine between calls while the machine is held).
   Training stops cleanly when ``--budget-s`` seconds have passed since this script started: it
   runs in segments (``stop_after``), the first of ``--first-segment`` iterations, the next sized
   from the measured speed to end before the budget; each segment ends with a checkpoint, so a
   second call resumes exactly where this one stopped (same batches, same random numbers);
   ``--fit-budget`` instead times a few iterations first and, if the preset's iterations do not fit
   the budget, trains fewer with the schedule's steps (lr, α, β) scaled in proportion, so the run
   completes its whole schedule in this call;
3. writes the model bundle (``run-dir/model``), reloads it, segments the validation cases
   (stride ``fast``, ``whole``, then ``dense``, each if it fits before ``--limit-s``) and scores Dice, Jaccard,
   HD95 and ASD (mm, 0.625 mm voxels);
4. writes ``OUT/la_gpu_metrics.json`` (also once right after training, in case evaluation is cut
   off), ``OUT/la_gpu_log.txt``, ``OUT/metrics.jsonl`` and prints a table: iterations done, it/s,
   wall time, peak ``torch.cuda.max_memory_allocated``, GPU name, per-case and mean metrics, and
   whether the encoders had random weights.

``--check`` instead runs a short end-to-end check on whatever cases are present (the dense label
of each stands in for the propagation): environment report, ``--check-iterations`` training steps
timed, bundle save/load, one case segmented and scored; nothing is written to the run folder.

    # the GPU machine (see README.md beside this file for the device calls)
    python3 Testing/Benchmarks/la_gpu/run_la_gpu.py --check
    python3 Testing/Benchmarks/la_gpu/run_la_gpu.py [--budget-s 480] [--limit-s 570] [--fit-budget]
    # a CPU smoke test here
    python Testing/Benchmarks/la_gpu/run_la_gpu.py --device cpu --iterations 2 --patch 32,32,32 \\
        --validation-cases 2 --budget-s 60 --run-dir /tmp/la_smoke --out /tmp/la_smoke_out --fresh

``OUT`` is ``--out``, else ``$OUT``, else ``.devcarry/out``.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse
import gc
import hashlib
import json
import lzma
import math
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
try:
    import RADALib  # noqa: F401
except ImportError:  # the GPU machine has no installed RADA (README.md): use this checkout's
    sys.path.insert(0, str(ROOT))

import torch

from RADALib.bundle import load_bundle, save_bundle
from RADALib.checkpoint import CHECKPOINT, load_checkpoint
from RADALib.cli import parse_setting, parse_triple
from RADALib.data import (
    BatchPrefetcher,
    TrainingCase,
    labeled_case_from_result,
    normalize_intensity,
)
from RADALib.embeddings import CohortEmbeddings
from RADALib.events import Progress
from RADALib.inference import (
    WHOLE,
    predict_volume,
    resolve_stride,
    whole_volume_voxels,
)
from RADALib.inference import n_windows as n_windows_of
from RADALib.metrics import SegmentationMetrics, dice, metrics_for_masks, summarize
from RADALib.postprocessing import keep_largest_component, recommend_largest_component
from RADALib.pseudo_labels import load_case_result
from RADALib.region_prompt import encoder_record
from RADALib.runtime import setup_runtime
from RADALib.schedules import alpha
from RADALib.train_config import TrainConfig, preset, scale_schedule
from RADALib.training import (
    METRICS_FILE,
    GuidancePrompt,
    TrainResult,
    build_model,
    build_optimizer,
    build_sampler,
    build_training_step,
    fit_network_to_prompt,
    train_on_cases,
)
from RADALib.volume import read_volume, volume_from_array

PREP_FORMAT = "rada-la-gpu-prep/1"
RUN_FILE = "run.json"
# settings a resumed run may change (TrainConfig's runtime-only settings)
RUNTIME_KEYS = ("device", "checkpoint_every", "log_every", "prefetch", "compile", "threads")
PAPER_ITERATIONS = 6000
DICE_TARGET = 0.865


# ----------------------------------------------------------------------------- output


class Tee:
    """Writes to a stream and to a log file (line by line, flushed)."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.write(text)
        if "\n" in text:
            self.stream.flush()
            self.log.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return False


def elapsed() -> float:
    """Seconds since this script started."""
    return time.monotonic() - STARTED


def say(text: str) -> None:
    print(f"[{elapsed():7.1f} s] {text}", flush=True)


def training_sink(print_every: int) -> Callable[[dict[str, Any]], None]:
    """Prints messages and every ``print_every``-th training step (fewer lines in the tail)."""

    def emit(event: dict[str, Any]) -> None:
        step, total = event.get("step"), event.get("total")
        if event.get("level") or not total:
            level = event.get("level", "info")
            say(
                f"{'' if level == 'info' else level.upper() + ': '}[{event.get('stage')}] {event.get('message', '')}"
            )
            return
        if "loss" not in event:  # a stage's start
            say(f"[{event['stage']}] from {step}/{total}: {event.get('message', '')}")
            return
        if step and (step % print_every == 0 or step == total):
            loss = event.get("loss")
            rate = event.get("s_per_it")
            say(
                f"[{event['stage']}] {step}/{total} loss {loss if loss is None else f'{loss:.4f}'} "
                f"lr {event.get('lr', float('nan')):.3g} beta {event.get('beta', float('nan')):.3f} "
                f"{'' if not rate else f'{1 / rate:.2f} it/s'}"
            )

    return emit


def jsonable(value: Any) -> Any:
    """NaN/inf to None, numpy scalars to Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")
    os.replace(temporary, path)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and the accelerator, for the report."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "numpy": np.__version__,
        "device": str(device),
        "host_cpus": os.cpu_count(),
    }
    for name in ("h5py", "scipy", "safetensors"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - reported, not fatal here
            info[name] = f"missing ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            {
                "gpu": torch.cuda.get_device_name(device),
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "gpu_capability": f"{props.major}.{props.minor}",
                "cudnn": torch.backends.cudnn.version(),
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    else:
        info["gpu"] = None
    return info


# ----------------------------------------------------------------------------- data


@dataclass
class LoadedCase:
    """One volume as decoded: image (float32, as unpack_la.py rebuilds it) and dense label."""

    id: str
    image: np.ndarray
    label: np.ndarray


def chunk_index(root: Path) -> dict[str, Path]:
    """Case id -> its ``.json`` header, over every ``root/*/`` folder holding pack_la.py chunks."""
    index: dict[str, Path] = {}
    for header in sorted(root.glob("*/*.json")):
        case_id = header.name[: -len(".json")]
        if (header.with_name(f"{case_id}.image.xz")).exists() and (
            header.with_name(f"{case_id}.label.xz")
        ).exists():
            index.setdefault(case_id, header)
    return index


def decode_chunk_case(header: Path) -> LoadedCase:
    """Decode one case of pack_la.py (same arithmetic as unpack_la.py)."""
    case_id = header.name[: -len(".json")]
    meta = json.loads(header.read_text())
    shape = tuple(meta["shape"])
    quantized = np.frombuffer(
        lzma.decompress(header.with_name(f"{case_id}.image.xz").read_bytes()), np.uint8
    ).reshape(shape)
    label = np.frombuffer(
        lzma.decompress(header.with_name(f"{case_id}.label.xz").read_bytes()), np.uint8
    ).reshape(shape)
    image = (
        meta["low"] + quantized.astype(np.float32) * ((meta["high"] - meta["low"]) / 255)
    ).astype(np.float32)
    return LoadedCase(case_id, image, label.copy())


def read_la_case(folder: Path, case_id: str) -> LoadedCase:
    """One case of an LA layout folder (``<id>/mri_norm2.h5``)."""
    file = folder / case_id / "mri_norm2.h5"
    return LoadedCase(
        case_id,
        read_volume(file, "image").array.astype(np.float32),
        read_volume(file, "label").array.astype(np.uint8),
    )


def label_digest(label: np.ndarray) -> str:
    """As prepare_la_gpu.label_digest."""
    array = np.ascontiguousarray(label, dtype=np.uint8)
    digest = hashlib.sha256(f"{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def load_cases(
    ids: Sequence[str], chunks_root: Path, data: Path | None, split: dict, require_all: bool = True
) -> dict[str, LoadedCase]:
    """Decode (threads: lzma releases the GIL) and check the cases named in ``ids``."""
    if data is not None:
        sources = {
            i: (lambda i=i: read_la_case(data, i))
            for i in ids
            if (data / i / "mri_norm2.h5").exists()
        }
    else:
        index = chunk_index(chunks_root)
        sources = {i: (lambda h=index[i]: decode_chunk_case(h)) for i in ids if i in index}
    missing = [i for i in ids if i not in sources]
    if missing and require_all:
        where = str(data) if data is not None else f"{chunks_root}/*/"
        folders = (
            sorted({p.parent.name for p in chunks_root.glob("*/*.image.xz")})
            if data is None
            else []
        )
        raise SystemExit(
            f"{len(missing)} of {len(ids)} cases are not in {where} (found chunk folders: {folders or 'none'}), e.g. "
            f"{', '.join(missing[:3])}. On the device: the machine went back between calls (it stays warm ~30 s) "
            "or a chunk was not carried; carry every chunk folder again (README.md)."
        )
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        loaded = dict(zip(sources, pool.map(lambda f: f(), sources.values())))
    bad = [
        i
        for i, c in loaded.items()
        if split["label_sha256"].get(i) not in (None, label_digest(c.label))
    ]
    if bad:
        raise SystemExit(
            f"decoded labels differ from the prep's checksums for {', '.join(bad[:5])}: stale chunks or prep"
        )
    return loaded


def load_prep(prep: Path) -> tuple[dict, CohortEmbeddings]:
    split_file = prep / "split.json"
    if not split_file.exists():
        raise SystemExit(
            f"{split_file} not found: run prepare_la_gpu.py here and carry .devcarry/prep (README.md)"
        )
    split = json.loads(split_file.read_text())
    if split.get("format") != PREP_FORMAT:
        raise SystemExit(f"{split_file}: unknown format {split.get('format')!r}")
    return split, CohortEmbeddings.load(prep / "embeddings.npz")


def training_cases(
    split: dict, loaded: dict[str, LoadedCase], prep: Path
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """Labeled cases with their propagation results, and the unlabeled ones (images z-scored)."""
    labeled = []
    for case_id in split["labeled"]:
        result = load_case_result(prep / "propagation" / "cases" / case_id)
        image = normalize_intensity(loaded[case_id].image)
        if tuple(result.annotation.label.shape) != image.shape:
            raise SystemExit(
                f"case {case_id}: propagation shape {result.annotation.label.shape} != image {image.shape}"
            )
        labeled.append(labeled_case_from_result(case_id, image, result))
    unlabeled = [
        TrainingCase(i, normalize_intensity(loaded[i].image))
        for i in split["unlabeled"]
        if i in loaded
    ]
    return labeled, unlabeled


# ----------------------------------------------------------------------------- configuration


def requested_config(args: argparse.Namespace) -> TrainConfig:
    changes: dict[str, Any] = {
        "device": args.device,
        "log_every": args.log_every,
        "compile": args.compile,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.iterations is not None:
        changes["iterations"] = args.iterations
    if args.patch:
        changes["patch"] = args.patch
    if args.threads:
        changes["threads"] = args.threads
    changes.update(args.set)
    return preset(args.preset, **changes)


def with_runtime(saved: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """A stored config with this call's runtime-only settings."""
    changes: dict[str, Any] = {
        "device": args.device,
        "log_every": args.log_every,
        "compile": args.compile,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.threads:
        changes["threads"] = args.threads
    return saved.replace(**changes)


# ----------------------------------------------------------------------------- timing probe


def probe_rate(
    config: TrainConfig,
    labeled: list[TrainingCase],
    unlabeled: list[TrainingCase],
    text: np.ndarray,
    regions: dict,
    warmup: int,
    timed: int,
) -> dict[str, float]:
    """Iterations per second of the production step on a throwaway model (batches from a
    separate sampler, prepared by the same background prefetcher as in training)."""
    runtime = setup_runtime(config)
    device = runtime.device
    prompt = GuidancePrompt.build(
        config, text, regions, [c.id for c in labeled], device, require_text=False
    )
    config, _ = fit_network_to_prompt(config, prompt)
    model = build_model(config, runtime)
    optimizer = build_optimizer(config, model)
    step = build_training_step(
        config,
        model,
        optimizer,
        prompt,
        runtime,
        semi_supervised=bool(unlabeled) and config.unlabeled_batch > 0,
    )
    sampler = build_sampler(config, labeled, unlabeled, (config.seed, 4242))
    model.train()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times: list[float] = []
    with BatchPrefetcher(
        sampler,
        lambda t: alpha(t, config.schedule),
        0,
        warmup + timed,
        depth=config.prefetch,
        pin_memory=device.type == "cuda",
    ) as batches:
        began = time.perf_counter()
        for batch in batches:
            outcome = step(batch, batch.iteration)
            if batch.iteration == warmup - 1 or batch.iteration == warmup + timed - 1:
                outcome.loss.item()
                sync()
                times.append(time.perf_counter())
    first = times[0] - began
    seconds = (times[-1] - times[0]) / timed
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    del step, optimizer, model, sampler
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "warmup_seconds": first,
        "s_per_it": seconds,
        "it_per_s": 1 / seconds,
        "peak_bytes": peak,
    }


# ----------------------------------------------------------------------------- training in segments


def segment_rate(history: list[dict], start: int, end: int) -> float | None:
    """Steady iterations per second between the first and last logged steps of (start, end]."""
    entries = [h for h in history if start < h["step"] <= end]
    if len(entries) < 2 or entries[-1]["seconds"] <= entries[0]["seconds"]:
        return None
    return (entries[-1]["step"] - entries[0]["step"]) / (
        entries[-1]["seconds"] - entries[0]["seconds"]
    )


def next_segment_end(
    done: int,
    iterations: int,
    started: bool,
    first_segment: int,
    rate: float | None,
    overhead: float,
    left: float,
    min_segment: int,
) -> int | None:
    """Where the next training segment ends, or None when no segment fits the time ``left``.

    The first segment runs ``first_segment`` iterations; each later one as many as the steady
    ``rate`` fits in the time left after the ``overhead`` of a segment (setup, checkpoint). A
    later segment shorter than ``min_segment`` (unless it finishes the run) is not started.
    """
    if not started:
        target = done + first_segment
    elif rate is None:
        return None
    else:
        target = done + int((left - overhead) * rate)
    target = min(target, iterations)
    if (
        left <= 0
        or target <= done
        or (started and target - done < min(min_segment, iterations - done))
    ):
        return None
    return target


def measure_segment(
    history: list[dict], done: int, target: int, wall: float, rate: float | None
) -> tuple[float, float]:
    """The steady rate after a segment and the segment's overhead (wall time beyond that rate).

    The rate comes from the segment's logged steps; without two of them, the last rate stands,
    or the segment's own wall-clock rate when there is none yet.
    """
    measured = segment_rate(history, done, target)
    if measured is not None:
        rate = measured
    elif rate is None:
        rate = (target - done) / wall
    return rate, max(0.0, wall - (target - done) / rate)


def release_memory() -> None:
    """Free what a dropped model held (host, and the CUDA cache) before the next is built."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_within_budget(
    config: TrainConfig,
    labeled,
    unlabeled,
    text,
    regions,
    run_dir: Path,
    budget_s: float,
    first_segment: int,
    margin_s: float,
    progress: Progress,
    min_segment: int = 20,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train until ``config.iterations`` or until ``budget_s`` after the script's start, whichever
    comes first, as consecutive ``train_on_cases(stop_after=...)`` segments (each ends with a
    checkpoint; each resumes exactly from the previous one)."""
    checkpoint = run_dir / CHECKPOINT
    done = int(load_checkpoint(checkpoint)["iteration"]) if checkpoint.exists() else 0
    resumed_from = done
    segments: list[dict[str, Any]] = []
    rate: float | None = None
    overhead = 0.0
    result: TrainResult | None = None
    while done < config.iterations:
        left = budget_s - elapsed() - margin_s
        target = next_segment_end(
            done,
            config.iterations,
            bool(segments),
            first_segment,
            rate,
            overhead,
            left,
            min_segment,
        )
        if target is None:
            break
        if result is not None:  # free the last segment's model before building the next
            result = None
            release_memory()
        began = elapsed()
        result = train_on_cases(
            config, labeled, unlabeled, text, regions, run_dir, progress, stop_after=target
        )
        wall = elapsed() - began
        rate, overhead = measure_segment(result.history, done, target, wall, rate)
        segments.append(
            {
                "from": done,
                "to": target,
                "wall_s": round(wall, 2),
                "it_per_s": round(rate, 3),
                "overhead_s": round(overhead, 2),
            }
        )
        say(
            f"segment {done} -> {target}: {wall:.1f} s, {rate:.2f} it/s steady, {overhead:.1f} s setup+checkpoint"
        )
        done = target
    if result is None:  # nothing left to run (finished, or out of budget): the checkpoint's model
        if not checkpoint.exists():
            raise SystemExit(
                f"no training iteration fits --budget-s {budget_s} and {run_dir} has no checkpoint"
            )
        result = train_on_cases(
            config, labeled, unlabeled, text, regions, run_dir, progress, stop_after=done
        )
    info = {"resumed_from": resumed_from, "segments": segments, "steady_it_per_s": rate}
    return result, info


# ----------------------------------------------------------------------------- evaluation


def bundle_fields(
    config: TrainConfig, embeddings: CohortEmbeddings, split: dict, result: TrainResult, prep: Path
) -> dict[str, Any]:
    """The manifest fields workflow.train_model writes (without running the encoders)."""
    planes = list(config.visual_planes)
    fused = (load_case_result(prep / "propagation" / "cases" / i).fused() for i in split["labeled"])
    components = recommend_largest_component(fused, sorted(int(k) for k in split["classes"]))
    return {
        "classes": {int(k): v for k, v in split["classes"].items()},
        "prompt": embeddings.prompts[0] if embeddings.prompts else None,
        "visual_planes": planes,
        "text_embedding": embeddings.text if config.use_text else np.zeros_like(embeddings.text),
        "region_embedding_mean": (
            np.concatenate(
                [
                    np.mean([embeddings.regions[c][p] for c in split["labeled"]], axis=0)
                    for p in planes
                ]
            ).astype(np.float32)
            if config.region_mode != "none"
            else None
        ),
        "encoder": encoder_record(embeddings, config.region_mode),
        "inference": {"patch": list(config.patch), "largest_component": components},
        "training": {
            "iterations": result.iteration,
            "seconds": round(result.seconds, 1),
            "config": config.to_dict(),
            "history_tail": result.history[-5:],
            "cohort": "LA2018 (Testing/Benchmarks/la_gpu)",
        },
    }


def n_windows(shape: Sequence[int], patch: Sequence[int], stride: str) -> float:
    """Windows per volume; for ``whole``, the padded volume in patch-sized window equivalents."""
    if stride == WHOLE:
        return whole_volume_voxels(shape, patch) / float(np.prod(patch))
    return n_windows_of(shape, patch, resolve_stride(stride, patch))


def evaluate(
    bundle,
    cases: Sequence[LoadedCase],
    stride: str,
    device: torch.device,
    window_batch: int,
    spacing: Sequence[float],
) -> dict[str, Any]:
    """Segment each case, score it; per-case metrics, summary and seconds. Each case's Dice after
    keeping the largest component (``rada predict --largest-component``) is scored too."""
    per_case: dict[str, dict] = {}
    scores: list[SegmentationMetrics] = []
    began = time.perf_counter()
    for case in cases:
        t = time.perf_counter()
        prediction = predict_volume(
            bundle,
            volume_from_array(case.image, tuple(spacing)),
            stride=stride,
            device=device,
            batch_size=window_batch,
            largest_component=False,
        )
        predict_s = time.perf_counter() - t
        m = metrics_for_masks(prediction.label == 1, case.label == 1, spacing)
        kept = dice(keep_largest_component(prediction.label) == 1, case.label == 1)
        scores.append(m)
        per_case[case.id] = {
            **m.as_dict(),
            "dice_largest_component": kept,
            "predict_s": round(predict_s, 2),
        }
        say(
            f"  {stride:5s} {case.id}: dice {m.dice:.4f} jaccard {m.jaccard:.4f} hd95 {m.hd95_mm:.2f} mm "
            f"asd {m.asd_mm:.2f} mm, dice with the largest component {kept:.4f} ({predict_s:.1f} s)"
        )
    kept_mean = (
        float(np.mean([c["dice_largest_component"] for c in per_case.values()]))
        if per_case
        else math.nan
    )
    return {
        "per_case": per_case,
        "summary": summarize(scores),
        "dice_largest_component_mean": kept_mean,
        "seconds": round(time.perf_counter() - began, 2),
    }


def print_table(report: dict[str, Any]) -> None:
    """The summary table at the end of the output."""
    t = report["training"]
    env = report["environment"]
    peak = report.get("peak_memory_allocated_bytes") or 0
    rows = [
        ("GPU", env.get("gpu") or f"none ({env['device']})"),
        ("torch / CUDA", f"{env['torch']} / {env.get('cuda_runtime')}"),
        (
            "preset / iterations target",
            f"{report['preset']} / {t['iterations_target']}"
            + (" (schedule scaled to fit the budget)" if t.get("schedule_scaled") else ""),
        ),
        (
            "iterations done (this call)",
            f"{t['iterations_done']} ({t['iterations_this_call']}, resumed from {t['resumed_from']})",
        ),
        (
            "it/s steady / this call",
            f"{fmt(t.get('steady_it_per_s'), '.2f')} / {fmt(t.get('it_per_s_this_call'), '.2f')}",
        ),
        (
            "training seconds this call / total",
            f"{t['seconds_this_call']:.1f} / {t['seconds_total']:.1f}",
        ),
        ("projected seconds for 6000 iterations", fmt(t.get("projected_s_6000"), ".0f")),
        ("peak max_memory_allocated", f"{peak / 2**30:.2f} GiB"),
        (
            "encoder weights",
            "RANDOM ("
            + ", ".join(k for k, v in report["encoders"]["pretrained"].items() if not v)
            + ")"
            if report["encoders"]["random"]
            else "pretrained",
        ),
        ("wall time of this command", f"{report['wall_seconds']:.1f} s"),
    ]
    print("\n" + "=" * 78)
    for name, value in rows:
        print(f"{name:40s} {value}")
    for stride, result in report["evaluation"].items():
        if "summary" not in result:
            print(f"evaluation {stride}: {result.get('skipped', 'not run')}")
            continue
        print(f"\nvalidation, stride {stride} ({result['seconds']:.1f} s):")
        print(f"  {'case':22s} {'Dice':>7s} {'Jaccard':>8s} {'HD95 mm':>8s} {'ASD mm':>7s}  status")
        for case_id, m in result["per_case"].items():
            print(
                f"  {case_id:22s} {fmt(m['dice'], '.4f'):>7s} {fmt(m['jaccard'], '.4f'):>8s} "
                f"{fmt(m['hd95_mm'], '.2f'):>8s} {fmt(m['asd_mm'], '.2f'):>7s}  {m['status']}"
            )
        s = result["summary"]
        print(
            f"  {'mean':22s} {fmt(s['dice']['mean'], '.4f'):>7s} {fmt(s['jaccard']['mean'], '.4f'):>8s} "
            f"{fmt(s['hd95_mm']['mean'], '.2f'):>8s} {fmt(s['asd_mm']['mean'], '.2f'):>7s}  "
            f"failures {s['n_failures']}"
        )
        print(
            f"  mean Dice with --largest-component: {fmt(result.get('dice_largest_component_mean'), '.4f')}"
        )
    targets = report.get("targets", {})
    if targets:
        print(
            "\ntargets: "
            + "; ".join(
                f"{k}: {'met' if v else ('not met' if v is not None else 'n/a')}"
                for k, v in targets.items()
            )
        )
    print("=" * 78, flush=True)


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    return format(value, spec)


# ----------------------------------------------------------------------------- modes


def check_mode(
    args: argparse.Namespace, split: dict, embeddings: CohortEmbeddings, out: Path
) -> None:
    """Short end-to-end check on the cases present (stand-in labels: each case's dense label)."""
    ids = split["labeled"] + split["unlabeled"] + split["validation"]
    loaded = load_cases(
        ids,
        Path(args.chunks_root),
        Path(args.data) if args.data else None,
        split,
        require_all=False,
    )
    say(
        f"check: {len(loaded)} of {len(ids)} cases present and their labels match the prep's checksums"
    )
    if len(loaded) < 2:
        raise SystemExit("check: fewer than 2 cases present")
    config = requested_config(args)
    device = setup_runtime(config).device
    report: dict[str, Any] = {
        "mode": "check",
        "environment": environment(device),
        "cases_present": len(loaded),
    }
    say("environment: " + json.dumps(report["environment"]))
    present = list(loaded.values())
    labeled = []
    for number, case in enumerate(present[:2]):  # stand-ins: full labels, a few annotated slices
        image = normalize_intensity(case.image)
        annotated = np.zeros(image.shape, bool)
        annotated[image.shape[0] // 2] = True
        labels = (case.label,) * 3
        distances = tuple(np.abs(np.arange(n) - n // 2).astype(np.float32) for n in image.shape)
        labeled.append(
            TrainingCase(
                f"standin{number}", image, labels, distances, annotated, case.label * annotated
            )
        )
    unlabeled = [TrainingCase(c.id, normalize_intensity(c.image)) for c in present[2:6]] or [
        TrainingCase("u", normalize_intensity(present[0].image))
    ]
    real = split["labeled"]
    regions = {c.id: embeddings.regions[real[n % len(real)]] for n, c in enumerate(labeled)}
    say(
        f"check: timing {args.check_iterations} iterations after 2 warm-up ones, preset {config.patch} ..."
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    probe = probe_rate(
        config, labeled, unlabeled, embeddings.text, regions, warmup=2, timed=args.check_iterations
    )
    report["probe"] = probe
    say(
        f"check: {probe['it_per_s']:.2f} it/s ({probe['s_per_it'] * 1000:.0f} ms/it; first 2 incl. autotuning "
        f"{probe['warmup_seconds']:.1f} s), peak {probe['peak_bytes'] / 2**30:.2f} GiB; "
        f"6000 iterations would take {6000 * probe['s_per_it']:.0f} s"
    )
    # bundle save / load / predict one case with a fresh model of the same config
    runtime = setup_runtime(config)
    model = build_model(config, runtime).eval()
    # a temporary folder, never in OUT: the weights of three networks would crowd what comes back
    temporary = Path(tempfile.mkdtemp(prefix="la_gpu_check_")) / "model"
    fake = TrainResult(model, [], temporary, 0, 0.0, config)
    save_bundle(
        temporary, model.cpu(), bundle_fields(config, embeddings, split, fake, Path(args.prep))
    )
    bundle = load_bundle(temporary, device)
    case = present[-1]
    began = time.perf_counter()
    prediction = predict_volume(
        bundle,
        volume_from_array(case.image, tuple(split["spacing_mm"])),
        stride="fast",
        device=device,
        batch_size=args.window_batch,
    )
    m = metrics_for_masks(prediction.label == 1, case.label == 1, split["spacing_mm"])
    report["predict_fast_s"] = time.perf_counter() - began
    say(
        f"check: bundle saved, reloaded; {case.id} segmented (fast stride, untrained model) in "
        f"{report['predict_fast_s']:.1f} s, status {m.status}"
    )
    shutil.rmtree(temporary.parent, ignore_errors=True)
    report["wall_seconds"] = elapsed()
    write_json(out / "la_gpu_check.json", report)
    say(f"check done: {out / 'la_gpu_check.json'}")


def load_run_cases(
    args: argparse.Namespace, split: dict
) -> tuple[list, list, list[str], list[LoadedCase]]:
    """The training cases (labeled with their pseudo-labels, unlabeled) and the validation cases."""
    validation_ids = (
        split["validation"][: args.validation_cases]
        if args.validation_cases
        else split["validation"]
    )
    ids = split["labeled"] + split["unlabeled"] + validation_ids
    loaded = load_cases(ids, Path(args.chunks_root), Path(args.data) if args.data else None, split)
    labeled, unlabeled = training_cases(split, loaded, Path(args.prep))
    # only the validation cases are kept: the training images live on z-scored in the cases
    validation = [loaded[i] for i in validation_ids]
    say(
        f"data: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(validation_ids)} validation cases in memory"
    )
    return labeled, unlabeled, validation_ids, validation


def fit_to_budget(
    args: argparse.Namespace,
    config: TrainConfig,
    labeled,
    unlabeled,
    embeddings: CohortEmbeddings,
) -> tuple[TrainConfig, dict[str, Any]]:
    """Time a few iterations; when fewer than requested fit the budget, scale the schedule to them."""
    say(
        f"fit-budget: timing {args.probe_iterations} iterations of {config.patch} after 2 warm-up ones ..."
    )
    probe = probe_rate(
        config,
        labeled,
        unlabeled,
        embeddings.text,
        embeddings.regions,
        2,
        args.probe_iterations,
    )
    available = args.budget_s - elapsed() - args.margin_s - 2 * args.segment_overhead_s
    fits = int(available * probe["it_per_s"] * 0.97)
    fit = {
        "probe": probe,
        "available_s": available,
        "fits": fits,
        "requested": config.iterations,
    }
    say(f"fit-budget: {probe['it_per_s']:.2f} it/s; {fits} iterations fit in {available:.0f} s")
    if fits < config.iterations:
        if fits < 1:
            raise SystemExit("fit-budget: no iteration fits the budget")
        config = scale_schedule(config, fits)
        fit["scaled"] = True
        say(
            f"fit-budget: training {fits} iterations with the schedule scaled by {fits / fit['requested']:.3f} "
            f"(lr step {config.schedule.lr_step}, alpha step {config.schedule.alpha_step}, "
            f"beta step {config.schedule.beta_step})"
        )
    return config, fit


def run_config(
    args: argparse.Namespace,
    run_file: Path,
    labeled,
    unlabeled,
    embeddings: CohortEmbeddings,
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The run's settings and budget fit: those stored in ``run_file`` when resuming (made with
    the same prep bundle only), else the requested ones (fitted with --fit-budget), then stored."""
    if run_file.exists():
        saved = json.loads(run_file.read_text())
        if saved.get("split_sha256") != split_digest(Path(args.prep)):
            raise SystemExit(
                f"{run_file}: made with another prep bundle; use --fresh or another --run-dir"
            )
        config = with_runtime(TrainConfig.from_dict(saved["config"]), args)
        say(
            f"resuming the run in {run_file.parent} with its stored settings ({config.iterations} iterations, patch "
            f"{config.patch}); --preset/--iterations/--patch/--set/--fit-budget of this call are not used"
        )
        return config, saved.get("fit")
    config = requested_config(args)
    fit = None
    if args.fit_budget:
        config, fit = fit_to_budget(args, config, labeled, unlabeled, embeddings)
    write_json(
        run_file,
        {
            "config": config.to_dict(),
            "fit": fit,
            "preset": args.preset,
            "split_sha256": split_digest(Path(args.prep)),
        },
    )
    return config, fit


def training_record(
    config: TrainConfig,
    result: TrainResult,
    info: dict[str, Any],
    train_wall: float,
    fit: dict[str, Any] | None,
) -> dict[str, Any]:
    """The report's ``training`` entry: iterations done, rates, segments, the fit, the last log."""
    this_call = result.iteration - info["resumed_from"]
    rate = info["steady_it_per_s"]
    return {
        "iterations_target": config.iterations,
        "iterations_done": result.iteration,
        "iterations_this_call": this_call,
        "resumed_from": info["resumed_from"],
        "segments": info["segments"],
        "steady_it_per_s": rate,
        "it_per_s_this_call": this_call / train_wall if this_call and train_wall > 0 else None,
        "seconds_this_call": train_wall,
        "seconds_total": result.seconds,
        "projected_s_6000": PAPER_ITERATIONS / rate if rate else None,
        "schedule_scaled": bool(fit and fit.get("scaled")),
        "fit": fit,
        "complete": result.iteration >= config.iterations,
        "last_log": result.history[-1] if result.history else None,
    }


def evaluate_strides(
    args: argparse.Namespace,
    report: dict[str, Any],
    bundle,
    validation: Sequence[LoadedCase],
    patch: Sequence[int],
    device: torch.device,
    spacing: Sequence[float],
    out: Path,
) -> None:
    """Evaluate each of --strides into ``report["evaluation"]`` (written after each), skipping a
    stride whose windows would not fit before --limit-s. The time per window is the least of the
    strides done so far (seconds / windows): each includes the per-case costs (reading, metrics),
    which inflate it most for the stride with the fewest windows."""
    strides = [s.strip() for s in args.strides.split(",") if s.strip()]
    per_window: float | None = None
    for stride in strides:
        windows = sum(n_windows(c.image.shape, patch, stride) for c in validation)
        left = args.limit_s - elapsed()
        if per_window is not None and windows * per_window * 1.3 + 5 > left:
            report["evaluation"][stride] = {
                "skipped": f"{windows:.0f} windows at {per_window:.3f} s each would not fit "
                f"the {left:.0f} s left before --limit-s"
            }
            say(f"evaluation {stride}: skipped ({report['evaluation'][stride]['skipped']})")
            continue
        say(f"evaluation, stride {stride}: {len(validation)} cases, {windows:.0f} windows")
        result_eval = evaluate(bundle, validation, stride, device, args.window_batch, spacing)
        result_eval["windows"] = windows
        report["evaluation"][stride] = result_eval
        measured = result_eval["seconds"] / max(windows, 1)
        per_window = measured if per_window is None else min(per_window, measured)
        report["wall_seconds"] = elapsed()
        write_json(out / "la_gpu_metrics.json", report)


def run_targets(report: dict[str, Any], rate: float | None) -> dict[str, bool | None]:
    """Whether the run met the paper's Dice (dense stride, else fast) and the speed target."""
    best = next(
        (
            report["evaluation"][s]
            for s in ("dense", "fast")
            if "summary" in report["evaluation"].get(s, {})
        ),
        None,
    )
    return {
        f"mean Dice >= {DICE_TARGET} ({'dense' if 'summary' in report['evaluation'].get('dense', {}) else 'fast'})": (
            best["summary"]["dice"]["mean"] >= DICE_TARGET
        )
        if best
        else None,
        "6000 iterations in <= 600 s (projected from the steady rate)": (
            PAPER_ITERATIONS / rate <= 600
        )
        if rate
        else None,
    }


def train_run(
    args: argparse.Namespace,
    config: TrainConfig,
    fit: dict[str, Any] | None,
    labeled,
    unlabeled,
    embeddings: CohortEmbeddings,
    run_dir: Path,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train within the call's budget, logging every --print-every iterations."""
    progress = Progress(training_sink(args.print_every))
    # a schedule fitted to the budget may overrun it a little rather than stop a few iterations short
    budget = args.budget_s + (args.fit_slack_s if fit else 0.0)
    return train_within_budget(
        config,
        labeled,
        unlabeled,
        embeddings.text,
        embeddings.regions,
        run_dir,
        budget,
        args.first_segment,
        args.margin_s,
        progress,
        args.min_segment,
    )


def run_mode(
    args: argparse.Namespace, split: dict, embeddings: CohortEmbeddings, out: Path
) -> None:
    run_dir = Path(args.run_dir)
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    labeled, unlabeled, validation_ids, validation = load_run_cases(args, split)
    run_file = run_dir / RUN_FILE
    config, fit = run_config(args, run_file, labeled, unlabeled, embeddings)

    device = setup_runtime(config).device
    env = environment(device)
    say("environment: " + json.dumps(env))
    random = [k for k, v in embeddings.pretrained.items() if not v]
    if random:
        say(
            f"encoder weights are RANDOM ({', '.join(random)}): the guidance carries no pretrained semantics"
        )
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    began = elapsed()
    result, info = train_run(args, config, fit, labeled, unlabeled, embeddings, run_dir)
    train_wall = elapsed() - began
    training = training_record(config, result, info, train_wall, fit)
    report: dict[str, Any] = {
        "mode": "run",
        "preset": json.loads(run_file.read_text()).get("preset", args.preset),
        "environment": env,
        "config": config.to_dict(),
        "encoders": {
            "pretrained": embeddings.pretrained,
            "random": bool(random),
            "arch": split["encoder"]["arch"],
        },
        "cases": {
            "labeled": len(labeled),
            "unlabeled": len(unlabeled),
            "validation": validation_ids,
        },
        "training": training,
        "peak_memory_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_memory_reserved_bytes": torch.cuda.max_memory_reserved(device) if cuda else None,
        "evaluation": {},
    }
    report["wall_seconds"] = elapsed()
    write_json(out / "la_gpu_metrics.json", report)
    if (run_dir / METRICS_FILE).exists():
        shutil.copy2(run_dir / METRICS_FILE, out / "metrics.jsonl")
    say(
        f"training: {result.iteration}/{config.iterations} iterations "
        f"({training['iterations_this_call']} in this call, {train_wall:.1f} s)"
    )

    # evaluation through the product path: bundle on disk, reloaded, predict_volume
    model_dir = save_bundle(
        run_dir / "model",
        result.model.cpu(),
        bundle_fields(config, embeddings, split, result, Path(args.prep)),
    )
    del result
    gc.collect()
    bundle = load_bundle(model_dir, device)
    report["largest_component_recommended"] = bundle.inference_settings.get("largest_component")
    say(
        f"bundle: largest component kept by default for classes {bundle.largest_component_classes} "
        f"(pseudo-label fractions {report['largest_component_recommended']['fractions']})"
    )
    spacing = tuple(split["spacing_mm"])
    evaluate_strides(args, report, bundle, validation, config.patch, device, spacing, out)
    report["targets"] = run_targets(report, training["steady_it_per_s"])
    if cuda:
        report["peak_memory_allocated_bytes_with_eval"] = torch.cuda.max_memory_allocated(device)
    report["wall_seconds"] = elapsed()
    write_json(out / "la_gpu_metrics.json", report)
    print_table(report)


def split_digest(prep: Path) -> str:
    return hashlib.sha256((prep / "split.json").read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--prep", default=str(ROOT / ".devcarry" / "prep"), help="prepare_la_gpu.py's output"
    )
    parser.add_argument(
        "--chunks-root",
        default=str(ROOT / ".devcarry"),
        help="folder whose subfolders hold pack_la.py chunks",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="an LA layout folder (<id>/mri_norm2.h5) to read instead of the chunks",
    )
    parser.add_argument(
        "--run-dir",
        default=str(ROOT / ".devcarry" / "run"),
        help="checkpoint, logs, model (kept for resuming)",
    )
    parser.add_argument(
        "--out", default=None, help="report folder (default $OUT, else .devcarry/out)"
    )
    parser.add_argument("--preset", default="paper")
    parser.add_argument(
        "--iterations", type=int, default=None, help="override the preset's iterations"
    )
    parser.add_argument(
        "--patch",
        type=parse_triple,
        default=None,
        help="override the preset's patch, e.g. 32,32,32",
    )
    parser.add_argument(
        "--set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting, e.g. --set network.base_filters=4 --set unlabeled_batch=0",
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:0 or cpu")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each sub-network (recompiles per segment)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="training stops this many seconds after the script started (default 480)",
    )
    parser.add_argument(
        "--limit-s",
        type=float,
        default=570.0,
        help="evaluation strides that would end later than this (from the start) are skipped",
    )
    parser.add_argument(
        "--margin-s",
        type=float,
        default=8.0,
        help="kept free before --budget-s for the last checkpoint",
    )
    parser.add_argument(
        "--segment-overhead-s",
        type=float,
        default=6.0,
        help="fit-budget: setup time assumed per segment",
    )
    parser.add_argument(
        "--first-segment", type=int, default=100, help="iterations of the first (timing) segment"
    )
    parser.add_argument(
        "--min-segment", type=int, default=20, help="no further segment shorter than this"
    )
    parser.add_argument(
        "--fit-budget",
        action="store_true",
        help="fewer iterations, schedule scaled, when the preset's do not fit the budget",
    )
    parser.add_argument(
        "--probe-iterations", type=int, default=12, help="fit-budget: timed iterations"
    )
    parser.add_argument(
        "--fit-slack-s",
        type=float,
        default=15.0,
        help="fit-budget: seconds past --budget-s the fitted schedule may use to complete",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="checkpoints inside a segment (each segment also ends with one)",
    )
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument(
        "--print-every", type=int, default=200, help="print every N-th training step"
    )
    parser.add_argument(
        "--strides", default="fast,whole,dense", help="evaluation strides (or whole), in order"
    )
    parser.add_argument(
        "--window-batch", type=int, default=0, help="windows per forward (0: 4 on CUDA, 1 on CPU)"
    )
    parser.add_argument(
        "--validation-cases", type=int, default=0, help="evaluate only the first N validation cases"
    )
    parser.add_argument("--fresh", action="store_true", help="delete --run-dir first (no resume)")
    parser.add_argument(
        "--check", action="store_true", help="short end-to-end check on the cases present"
    )
    parser.add_argument("--check-iterations", type=int, default=8)
    parser.add_argument(
        "--imports-only", action="store_true", help="import everything and exit (tests)"
    )
    args = parser.parse_args()
    if args.imports_only:
        import safetensors.torch  # noqa: F401  (what save_bundle/load_bundle import lazily)
        import scipy.ndimage  # noqa: F401

        from RADALib import propagation, registration  # noqa: F401  (lazy imports of load_case_result's users)

        print("imports ok")
        return

    out = Path(args.out or os.environ.get("OUT") or ROOT / ".devcarry" / "out")
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / ("la_gpu_check_log.txt" if args.check else "la_gpu_log.txt"), "a", buffering=1)
    sys.stdout = Tee(sys.__stdout__, log)  # type: ignore[assignment]
    sys.stderr = Tee(sys.__stderr__, log)  # type: ignore[assignment]
    if args.window_batch <= 0:
        args.window_batch = (
            4
            if (
                args.device.startswith("cuda")
                or (args.device == "auto" and torch.cuda.is_available())
            )
            else 1
        )
    say(f"run_la_gpu.py {' '.join(sys.argv[1:])}")
    split, embeddings = load_prep(Path(args.prep))
    if args.check:
        check_mode(args, split, embeddings, out)
    else:
        run_mode(args, split, embeddings, out)


if __name__ == "__main__":
    main()
