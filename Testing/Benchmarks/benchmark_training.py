"""Training-step benchmark: iterations per second and peak memory, RADA's step vs a plain loop.

Measures one training iteration of the triple-view model (paper Algorithm 1) for a preset
(default ``paper``: patch 112x112x80, base 16 filters, T = 4 uncertainty passes) on the device
present, two ways, side by side in the same run:

- **engine**: the production step itself, ``RADALib.training.TrainingStep`` as ``train`` runs
  it (``setup_runtime`` for the device, AMP and channels-last choices, ``build_model``,
  ``build_optimizer``, ``GuidancePrompt``, ``build_training_step``; inside, the T noisy passes
  of ``peer_pseudo_labels`` batched into one forward per net): bf16 autocast and
  channels-last-3d on CUDA and on CPUs that compute bf16 natively (the preset's "auto",
  ``RADALib.runtime.native_bf16``), cuDNN autotuning, pinned host batches; ``--set KEY=VALUE``
  changes a setting for both variants (e.g. ``--set amp=off --set channels_last=off``);
- **plain**: the same math written the obvious way: fp32, eager, contiguous layout, PyTorch's
  default backend flags, each net's T MC-dropout passes run one by one (batch U each), then the
  three nets one after another (forward, L_sup, masked CE against the two peers' pseudo-labels),
  one backward, one SGD step.

Both start from the same weights (same seed) and see the same batches: ``labeled_batch`` +
``unlabeled_batch`` (2 + 2) patches drawn by the engine's ``TwoStreamSampler`` from synthetic
LA-sized volumes (183x140x88, a noisy ball), or from real LA2018 volumes with ``--data``
(labels = the truth for all three views; no propagation needed: only the compute matters).
Batches are drawn before timing (the engine draws them in a background thread anyway); the
host-to-device copy is timed. ``--warmup`` iterations (cuDNN autotuning, allocator) are not
timed; then ``--iterations`` are, between two device synchronisations.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (model, gradients, momentum and
activations); on CPU the peak resident set size minus the resident size just before the model
is built (``/proc/self/status`` VmHWM, else ``getrusage`` ru_maxrss). Each variant runs in a
fresh child process (spawned), so neither its memory high-water mark nor the engine's global
backend flags (cuDNN benchmark, TF32) leak into the other; ``--in-process`` runs both in this
process instead (plain first; the CPU peak then relies on ``malloc_trim`` and on resetting
VmHWM via ``/proc/self/clear_refs``). Before its baseline each variant runs one iteration of a
miniature of itself, so libraries loaded once (``torch.distributed``, ``torch._dynamo``, oneDNN
kernels, thread pools) are not charged to either. On CUDA the plain loop keeps PyTorch's default
backend flags, which let cuDNN convolutions use TF32; ``--strict-fp32`` turns that off.

    python Testing/Benchmarks/benchmark_training.py [--preset paper] [--device auto|cpu|cuda]
        [--iterations N] [--warmup N] [--patch X,Y,Z] [--threads N] [--data ../shared/data/LA2018]
        [--compile] [--strict-fp32] [--in-process] [--set KEY=VALUE ...] [--json results.json]

Not a test. On a GPU the paper preset takes seconds; on a CPU one paper iteration takes minutes
per variant, so use ``--preset cpu`` or ``small`` there (seconds). Measured figures, with their commands:
``Testing/Benchmarks/RESULTS.md`` (Training step).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine_info import host_info

from RADALib.cli import parse_setting, parse_triple
from RADALib.data import Batch, TrainingCase, normalize_intensity
from RADALib.losses import masked_cross_entropy, supervised_loss, uncertainty_mask
from RADALib.networks import VIEWS
from RADALib.runtime import setup_runtime
from RADALib.schedules import alpha, beta, learning_rate, uncertainty_threshold
from RADALib.train_config import TrainConfig, preset, presets
from RADALib.training import (
    GuidancePrompt,
    build_model,
    build_optimizer,
    build_sampler,
    build_training_step,
)

LA_SHAPE = (183, 140, 88)
"""Size of a typical LA2018 volume (x, y, z): the synthetic volumes the patches come from."""

VARIANTS = ("plain", "engine")


# ----------------------------------------------------------------------------- settings and data


def build_config(settings: dict[str, Any]) -> TrainConfig:
    changes: dict[str, Any] = {"device": settings["device"], "compile": bool(settings["compile"])}
    if settings.get("patch"):
        changes["patch"] = tuple(settings["patch"])
    if settings.get("threads"):
        changes["threads"] = int(settings["threads"])
    changes.update(dict(settings.get("set") or []))
    return preset(settings["preset"], **changes)


def _ball_case(case_id: str, seed: int, labeled: bool, shape=LA_SHAPE) -> TrainingCase:
    """A noisy bright ball in an LA-sized volume, with slices through its centre "annotated"."""
    rng = np.random.default_rng(seed)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    centre = [n / 2 + rng.uniform(-0.03, 0.03) * n for n in shape]
    radius = 0.3 * min(shape)
    label = (sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2).astype(np.uint8)
    image = normalize_intensity(100 + 40 * label + rng.normal(0, 8, shape).astype(np.float32))
    return _training_case(case_id, image, label if labeled else None)


def _training_case(case_id: str, image: np.ndarray, label: np.ndarray | None) -> TrainingCase:
    if label is None:
        return TrainingCase(case_id, image)
    shape = image.shape
    mask = np.zeros(shape, bool)
    mask[shape[0] // 2] = mask[:, shape[1] // 2] = mask[:, :, shape[2] // 2] = True
    distances = tuple(np.abs(np.arange(n) - n // 2).astype(np.float32) for n in shape)
    return TrainingCase(case_id, image, (label, label, label), distances, mask, label * mask)


def training_cases(
    config: TrainConfig, data: str | None, shape=LA_SHAPE
) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """``labeled_batch`` labeled and ``unlabeled_batch`` unlabeled cases (synthetic or LA2018)."""
    n_l, n_u = config.labeled_batch, config.unlabeled_batch
    if not data:
        return (
            [_ball_case(f"l{i}", i, True, shape) for i in range(n_l)],
            [_ball_case(f"u{i}", 100 + i, False, shape) for i in range(n_u)],
        )
    from RADALib.volume import read_volume

    folder = Path(data)
    ids = [
        line.strip() for line in (folder / "train.list").read_text().splitlines() if line.strip()
    ][: n_l + n_u]
    labeled, unlabeled = [], []
    for i, case_id in enumerate(ids):
        path = folder / case_id / "mri_norm2.h5"
        image = normalize_intensity(read_volume(path, "image").array)
        if i < n_l:
            labeled.append(
                _training_case(
                    case_id, image, (read_volume(path, "label").array > 0).astype(np.uint8)
                )
            )
        else:
            unlabeled.append(_training_case(case_id, image, None))
    return labeled, unlabeled


def host_batches(
    config: TrainConfig, data: str | None, count: int, shape=LA_SHAPE
) -> tuple[list[Batch], list[str]]:
    """The first ``count`` batches of the engine's sampler (identical in both variants) and the
    labeled case ids in sampler order (what ``Batch.labeled_index`` refers to)."""
    labeled, unlabeled = training_cases(config, data, shape)
    sampler = build_sampler(config, labeled, unlabeled, (config.seed, 0))
    return [sampler.sample(alpha(t, config.schedule), t) for t in range(count)], [
        c.id for c in labeled
    ]


def embeddings(config: TrainConfig, labeled_ids: list[str]) -> tuple[np.ndarray, dict]:
    """Random Et and Ev of the network's widths (the frozen encoders are not benchmarked)."""
    rng = np.random.default_rng(0)
    net = config.network
    per_plane = net.region_dim // len(config.visual_planes)
    text = rng.normal(size=net.text_dim).astype(np.float32)
    regions = {
        c: {p: rng.normal(size=per_plane).astype(np.float32) for p in set(config.visual_planes)}
        for c in labeled_ids
    }
    return text, regions


# ----------------------------------------------------------------------------- the two steps


class EngineStep:
    """One iteration of ``RADALib.training``'s own :class:`TrainingStep`, built as ``train``
    builds it (single process), plus the loop's running sums of the losses."""

    def __init__(
        self, config: TrainConfig, labeled_ids: list[str], strict_fp32: bool = False
    ) -> None:
        runtime = setup_runtime(config)
        self.runtime, self.device = runtime, runtime.device
        text, regions = embeddings(config, labeled_ids)
        prompt = GuidancePrompt.build(config, text, regions, labeled_ids, self.device)
        model = build_model(config, runtime)
        self.step = build_training_step(
            config, model, build_optimizer(config, model), prompt, runtime
        )
        self.sums = torch.zeros(3, device=self.device)
        torch.manual_seed(config.seed)
        model.train()

    def prepare(self, batch: Batch) -> Batch:
        return batch.pin_memory() if self.device.type == "cuda" else batch

    def __call__(self, host_batch: Batch, t: int) -> torch.Tensor:
        result = self.step(host_batch, t)
        self.sums += result.stacked()  # as train's loop does between two log lines
        return result.supervised


class PlainStep:
    """The same iteration written plainly: fp32, eager, contiguous, T passes one by one.

    Backend flags stay at PyTorch's defaults (which allow TF32 in cuDNN convolutions) unless
    ``strict_fp32``.
    """

    def __init__(
        self, config: TrainConfig, labeled_ids: list[str], strict_fp32: bool = False
    ) -> None:
        self.config = config
        name = (
            config.device
            if config.device != "auto"
            else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        self.device = torch.device(name)
        if (
            strict_fp32 and self.device.type == "cuda"
        ):  # PyTorch's default lets cuDNN convolutions use TF32
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        if config.threads:
            torch.set_num_threads(int(config.threads))
        text, regions = embeddings(config, labeled_ids)
        self.text = torch.as_tensor(text[None], device=self.device)
        self.regions = {
            c: {p: torch.as_tensor(v, device=self.device) for p, v in planes.items()}
            for c, planes in regions.items()
        }
        self.labeled_ids = labeled_ids
        torch.manual_seed(config.seed)
        self.model = config.network.build().to(self.device)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=config.schedule.base_lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        torch.manual_seed(config.seed)
        self.model.train()

    def prepare(self, batch: Batch) -> Batch:
        return batch

    def region(self, labeled_index: list[int]) -> torch.Tensor:
        planes = self.config.visual_planes
        parts = [
            self.regions[self.labeled_ids[labeled_index[i % len(labeled_index)]]][p]
            for i, p in enumerate(planes)
        ]
        return torch.cat(parts)[None]

    def __call__(self, host_batch: Batch, t: int) -> torch.Tensor:
        config, model, schedule = self.config, self.model, self.config.schedule
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(t, schedule)
        b = beta(t, schedule)
        threshold = uncertainty_threshold(t, schedule, config.network.n_classes)
        x_l, x_u = host_batch.x_l.to(self.device), host_batch.x_u.to(self.device)
        y_l = {v: host_batch.y_l[v].to(self.device).long() for v in VIEWS}
        w_l = {v: host_batch.w_l[v].to(self.device) for v in VIEWS}
        region = self.region(host_batch.labeled_index)

        # pseudo-labels: each net in eval mode, dropout on, T noisy passes one at a time
        pseudo = {}
        with torch.no_grad():
            era = model.embed(self.text, region)
            for view in VIEWS:
                net = model.nets[view]
                net.eval()
                total = None
                for _ in range(config.uncertainty_passes):
                    noise = (torch.randn_like(x_u) * config.noise_std).clamp(
                        -config.noise_clip, config.noise_clip
                    )
                    p = torch.softmax(net(x_u + noise, era, force_dropout=True), dim=1)
                    total = p if total is None else total + p
                net.train()
                mean = total / config.uncertainty_passes
                pseudo[view] = (mean.argmax(dim=1), uncertainty_mask(mean, threshold))

        # the three nets one after another on labeled + unlabeled patches
        x = torch.cat([x_l, x_u])
        n_l = x_l.shape[0]
        era = model.embed(self.text, region)
        loss = sup_total = None
        for view in VIEWS:
            out = model.nets[view](x, era)
            sup = supervised_loss(out[:n_l], y_l[view], w_l[view])
            peers = [j for j in VIEWS if j != view]
            unsup = sum(masked_cross_entropy(out[n_l:], *pseudo[j]) for j in peers) / len(peers)
            term = (1.0 - b) * sup + b * unsup
            loss = term if loss is None else loss + term
            sup_total = sup.detach() if sup_total is None else sup_total + sup.detach()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return sup_total


# ----------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    """Current resident set size."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it otherwise, which would hide the
    second in-process variant's memory inside the first one's leftovers)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _prime(variant: str, config: TrainConfig, strict_fp32: bool = False) -> None:
    """One iteration of a miniature of the same step (patch 16³, base 2 filters), so that the RSS
    baseline taken after it counts what the first step loads once (``torch.distributed`` imported
    by ``setup_runtime``, ``torch._dynamo`` by the first optimizer, oneDNN kernels, thread
    pools), not what a step of the benchmarked size holds."""
    mini = config.replace(patch=(16, 16, 16), compile=False, network={"base_filters": 2})
    batches, ids = host_batches(mini, None, 1, shape=(20, 20, 20))
    step = (EngineStep if variant == "engine" else PlainStep)(mini, ids, strict_fp32)
    step(step.prepare(batches[0]), 0)
    del step, batches


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ----------------------------------------------------------------------------- one variant


def run_variant(variant: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Build ``variant``'s model, run warm-up and measured iterations; timings and peak memory."""
    config = build_config(settings)
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    warmup, iterations = int(settings["warmup"]), int(settings["iterations"])
    batches, labeled_ids = host_batches(config, settings.get("data"), min(warmup + iterations, 4))

    cuda = settings["device"] == "cuda"
    strict = bool(settings.get("strict_fp32"))
    _prime(variant, config, strict)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    _release_freed_memory()
    baseline_rss = _rss_bytes()
    reset_ok = _reset_peak_rss()
    step = (EngineStep if variant == "engine" else PlainStep)(config, labeled_ids, strict)
    device = step.device
    batches = [step.prepare(b) for b in batches]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    first = last = None
    started = time.perf_counter()
    for t in range(warmup + iterations):
        if t == warmup:  # the measured window starts on an idle device
            sync()
            started = time.perf_counter()
        last = step(batches[t % len(batches)], t)
        if t == 0:
            first = last
    sync()
    seconds = time.perf_counter() - started
    first_sup, last_sup = float(first), float(last)  # type: ignore[arg-type]

    result: dict[str, Any] = {
        "variant": variant,
        "iterations": iterations,
        "warmup": warmup,
        "seconds": seconds,
        "it_per_s": iterations / seconds if seconds > 0 else float("nan"),
        "s_per_it": seconds / iterations if iterations else float("nan"),
        "first_loss_sup": first_sup,
        "last_loss_sup": last_sup,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if cuda else False,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False,
    }
    if variant == "engine":
        result.update(
            amp=str(step.runtime.amp_dtype), channels_last=bool(step.runtime.channels_last)
        )
    else:
        result.update(amp="None", channels_last=False)
    if device.type == "cuda":
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device))
        result["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        result["memory_kind"] = "cuda max_memory_allocated"
    else:
        peak = _peak_rss_bytes()
        result["peak_bytes"] = max(0, peak - baseline_rss)
        result["peak_rss_bytes"] = peak
        result["memory_kind"] = "peak RSS - RSS before the model" + (
            "" if reset_ok else " (high-water mark not reset)"
        )
    return result


def run_isolated(variant: str, settings: dict[str, Any]) -> dict[str, Any]:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(run_variant, variant, settings).result()


# ----------------------------------------------------------------------------- report


def machine_info(device: str) -> dict[str, Any]:
    """The machine and, on CUDA, the GPU."""
    info = host_info()
    if device == "cuda":
        info.update(
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="paper", choices=sorted(presets))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="measured iterations (default 5 on CUDA, 2 on CPU)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed iterations first (default 3 on CUDA, 1 on CPU)",
    )
    parser.add_argument(
        "--patch",
        type=parse_triple,
        default=None,
        help="override the preset's patch, X,Y,Z (multiples of 16)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--data", default=None, help="LA2018 folder: real patches instead of synthetic ones"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the engine's nets (TrainConfig.compile)",
    )
    parser.add_argument(
        "--strict-fp32",
        action="store_true",
        help="plain loop on CUDA without TF32 (PyTorch's default allows it in cuDNN convolutions)",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="run both variants in this process (plain first)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=parse_setting,
        metavar="KEY=VALUE",
        help="a TrainConfig setting for both variants, as rada train --set (e.g. amp=bf16)",
    )
    parser.add_argument("--json", help="write all figures here")
    return parser


def run_settings(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """What each variant's run needs (a plain dict: it travels to a fresh process)."""
    cuda = device == "cuda"
    return {
        "preset": args.preset,
        "device": device,
        "iterations": args.iterations if args.iterations is not None else (5 if cuda else 2),
        "warmup": args.warmup if args.warmup is not None else (3 if cuda else 1),
        "patch": list(args.patch) if args.patch else None,
        "threads": args.threads,
        "data": args.data,
        "compile": args.compile,
        "strict_fp32": args.strict_fp32,
        "set": [list(item) for item in args.set],
    }


def print_setup(
    info: dict[str, Any], config: TrainConfig, settings: dict[str, Any], args: argparse.Namespace
) -> None:
    print(f"machine: {info['host']} {info['machine']}, {info['cores']} cores, {info['cpu']}")
    print(
        f"device: {info.get('gpu', 'cpu')}"
        + (f" (CUDA {info['cuda']}, cuDNN {info['cudnn']})" if settings["device"] == "cuda" else "")
        + f"; torch {info['torch']}, python {info['python']}"
    )
    print(
        f"preset {args.preset}: patch {tuple(config.patch)}, batch {config.labeled_batch}+{config.unlabeled_batch}, "
        f"base filters {config.network.base_filters}, T = {config.uncertainty_passes}, amp {config.amp}, "
        f"channels_last {config.channels_last}, compile {config.compile}"
    )
    print(
        f"data: {'LA2018 ' + args.data if args.data else 'synthetic LA-sized volumes'}; "
        f"{settings['warmup']} warm-up + {settings['iterations']} measured iteration(s) per variant, "
        f"{'in this process' if args.in_process else 'each variant in a fresh process'}",
        flush=True,
    )


def print_comparison(results: dict[str, dict[str, Any]], cuda: bool) -> tuple[float, float]:
    """The variants side by side; returns the engine's speed-up and the plain/engine memory ratio."""
    plain, engine = results["plain"], results["engine"]
    speedup = engine["it_per_s"] / plain["it_per_s"]
    memory_ratio = (
        plain["peak_bytes"] / engine["peak_bytes"] if engine["peak_bytes"] else float("nan")
    )
    print(
        f"\n{'':<8} {'it/s':>9} {'s/it':>9} {'peak memory':>13} {'amp':>15} {'ch-last':>8} {'L_sup(t=0)':>11}"
    )
    for name in VARIANTS:
        r = results[name]
        print(
            f"{name:<8} {r['it_per_s']:>9.4g} {r['s_per_it']:>9.4g} {_mib(r['peak_bytes']):>13} "
            f"{r['amp']:>15} {str(r['channels_last']):>8} {r['first_loss_sup']:>11.4f}"
        )
    if cuda:
        for name in VARIANTS:
            r = results[name]
            print(
                f"{name} backend: cudnn.benchmark {r['cudnn_benchmark']}, TF32 conv {r['tf32_conv']}, "
                f"TF32 matmul {r['tf32_matmul']}, peak reserved {_mib(r['peak_reserved_bytes'])}"
            )
    print(
        f"\nspeed-up engine/plain: x{speedup:.2f}; peak memory plain/engine: x{memory_ratio:.2f} "
        f"({engine['memory_kind']})"
    )
    return speedup, memory_ratio


def main() -> int:
    parser = build_parser()
    args = parser.parse_args()

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for, but no CUDA GPU is available", file=sys.stderr)
        return 1
    settings = run_settings(args, device)
    if settings["iterations"] < 1 or settings["warmup"] < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    config = build_config(settings)

    info = machine_info(device)
    print_setup(info, config, settings, args)

    results: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:  # plain first: the engine sets global backend flags
        results[variant] = (
            run_variant(variant, settings) if args.in_process else run_isolated(variant, settings)
        )
        r = results[variant]
        print(
            f"  {variant}: {r['s_per_it']:.3f} s/it, peak {_mib(r['peak_bytes'])}, {r['threads']} torch thread(s)",
            flush=True,
        )

    speedup, memory_ratio = print_comparison(results, device == "cuda")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "settings": settings,
                    "config": config.to_dict(),
                    "results": results,
                    "speedup": speedup,
                    "memory_ratio_plain_over_engine": memory_ratio,
                },
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
