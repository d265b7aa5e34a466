"""Training of RADA's triple-view model (paper Algorithm 1, eqs. 6-11).

One iteration t:

1. a batch of ``labeled_batch`` labeled and ``unlabeled_batch`` unlabeled patches
   (``data.TwoStreamSampler``; weights Wv = eq. 6 with α(t));
2. the guidance Era = Adapter(Et ⊕ Ev), computed once from the *labeled* batch (Algorithm 1):
   Ev = concat over the visual planes i of Ev[labeled sample i][plane i] (LA: axial of sample 1
   ⊕ axial of sample 2), one (1, region_dim) row shared by the whole batch;
3. cross pseudo-labels on the unlabeled patches: every net j, in eval mode (batch-norm
   statistics untouched) under ``torch.no_grad``, predicts T noisy copies (input + N(0, 0.1)
   clipped to ±0.2, dropout forced on) in one batched forward; pseudo-label = argmax of the mean
   softmax, mask = entropy(mean softmax) < threshold(t). A net's pseudo-label does not depend on
   which peer uses it, so it is computed once per iteration and used by both other nets;
4. each net k sees the labeled and unlabeled patches in one train-mode forward;
   L_k = (1 − β) L_sup(P_k^l, Ỹ_k, W_k) + β · mean_{j≠k} L_masked_CE(P_k^u, ŷ_j, m_j);
   L = Σ_k L_k; one SGD step over the three nets and the shared Adapter (the same as three
   SGD optimisers with one schedule: the lr step applies to every parameter).

Steps 2-4 are one :class:`TrainingStep` (made by :func:`build_training_step` from
:func:`build_model`, :func:`build_optimizer`, a :class:`GuidancePrompt` and
:func:`~RADALib.runtime.setup_runtime`'s :class:`~RADALib.runtime.Runtime`): :func:`train` runs
exactly that object, and so does ``Testing/Benchmarks/benchmark_training.py``. The run around it
(:func:`train_on_cases`) resumes, logs, validates and checkpoints; the checkpoint file and its
random state are :mod:`RADALib.checkpoint`, the device, threads and process group
:mod:`RADALib.runtime`.

Settings are a :class:`~RADALib.train_config.TrainConfig` (presets "paper" and "small", in
:mod:`RADALib.train_config`). ``T`` (uncertainty_passes): UA-MT used 8 with a mean teacher; here
each of the three nets makes its own pseudo-label every iteration (3·T·U extra forward samples,
no backward), so the paper preset uses 4 and the small preset 2 (see
``TrainConfig.uncertainty_passes``).

Without unlabeled cases, training runs supervised only (β = 0, no pseudo-labels) and warns.
Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (nccl on
CUDA, gloo on CPU), each rank draws its own batches (seeded by (seed, rank)), and only rank 0
writes files and events; batch-norm buffers follow rank 0's (DDP broadcasts them at every
forward, and once more before each checkpoint and at the end).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import ensure_writable_folder, write_error, write_text_atomic
from .cache import ArrayCache
from .checkpoint import (
    CHECKPOINT,
    CHECKPOINT_FORMAT,
    check_compatible,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from .data import (
    Batch,
    BatchPrefetcher,
    TrainingCase,
    TwoStreamSampler,
    labeled_window_needs_mm,
    load_training_cases,
    training_spacings,
)
from .errors import RADAError
from .events import Progress
from .losses import masked_cross_entropy, supervised_loss, uncertainty_mask
from .networks import VIEWS, TripleViewModel
from .runtime import (
    Runtime,
    broadcast_buffers,
    gather_objects,
    is_out_of_memory,
    release_runtime,
    setup_runtime,
)
from .schedules import alpha, beta, learning_rate, uncertainty_threshold
from .time_budget import (
    MAX_TIMED_ITERATIONS,
    PROBE_SHARE,
    WARMUP_ITERATIONS,
    StepTiming,
    describe_sizing,
    iterations_for_budget,
    measure_step,
)
from .train_config import TrainConfig, scale_schedule

if TYPE_CHECKING:
    from typing_extensions import Unpack

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"

Validator = Callable[[TripleViewModel, Tensor | None, Tensor | None], Mapping[str, float]]
"""``validate(model, text, region)``: scores of the model in eval mode (see :func:`train_on_cases`)."""


# ----------------------------------------------------------------------------- guidance inputs


@dataclass
class GuidancePrompt:
    """The frozen encoders' outputs as training uses them (on the training device).

    ``text``: Et (1, text_dim) or ``None`` (``use_text=False``: the Adapter sees zeros).
    ``regions``: (n_labeled, n_planes, D) Ev of each labeled case's visual planes, or ``None``
    (no region prompt). :meth:`region` builds one batch's Ev from its labeled cases;
    :meth:`inference_region` is the mean over the cohort (the prompt at inference).
    """

    text: Tensor | None
    regions: Tensor | None
    planes: tuple[str, ...]

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        text_embedding: np.ndarray | None,
        region_embeddings: Mapping[str, Mapping[str, np.ndarray]] | None,
        labeled_ids: Sequence[str],
        device: torch.device | str = "cpu",
        require_text: bool = True,
    ) -> GuidancePrompt:
        text = None
        if config.use_text and text_embedding is None and require_text:
            raise RADAError("training needs the text embedding Et (or use_text=False)")
        if config.use_text and text_embedding is not None:
            text = torch.as_tensor(
                np.asarray(text_embedding, np.float32).reshape(1, -1), device=device
            )
        regions = None
        if config.region_mode != "none" and region_embeddings is not None:
            missing = [
                f"{c}/{p}"
                for c in labeled_ids
                for p in config.visual_planes
                if c not in region_embeddings or p not in region_embeddings[c]
            ]
            if missing:
                shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
                raise RADAError(
                    f"no region embedding for {shown}: compute the embeddings of this cohort's labeled cases "
                    f"for the planes {', '.join(config.visual_planes)}"
                )
            table = np.stack(
                [
                    np.stack(
                        [
                            np.asarray(region_embeddings[c][p], np.float32).reshape(-1)
                            for p in config.visual_planes
                        ]
                    )
                    for c in labeled_ids
                ]
            )
            regions = torch.as_tensor(table, device=device)
        return cls(text, regions, tuple(config.visual_planes))

    @property
    def text_dim(self) -> int | None:
        return None if self.text is None else int(self.text.shape[1])

    @property
    def region_dim(self) -> int | None:
        return None if self.regions is None else int(self.regions.shape[1] * self.regions.shape[2])

    def region(self, labeled_index: Sequence[int]) -> Tensor | None:
        """Ev of a batch: plane i of labeled sample i (cycling through the samples), concatenated."""
        if self.regions is None:
            return None
        parts = [
            self.regions[labeled_index[i % len(labeled_index)], i] for i in range(len(self.planes))
        ]
        return torch.cat(parts)[None]

    def inference_region(self) -> Tensor | None:
        """Mean Ev over the labeled cases, per plane, concatenated (1, region_dim)."""
        if self.regions is None:
            return None
        return self.regions.mean(dim=0).reshape(1, -1)


# ----------------------------------------------------------------------------- pseudo-labels


def peer_pseudo_labels(
    model: TripleViewModel,
    x_u: Tensor,
    era: Tensor | None,
    passes: int,
    threshold: float,
    noise_std: float = 0.1,
    noise_clip: float = 0.2,
    views: Sequence[str] = VIEWS,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per view: ``(pseudo-label (U, X, Y, Z) int64, mask (U, X, Y, Z) float 0/1)`` of that net.

    Each net runs in eval mode (batch-norm uses and keeps its running statistics) under
    ``torch.no_grad`` with dropout forced on, on ``passes`` noisy copies of ``x_u`` batched into
    one forward; its mode is restored afterwards. Noise: N(0, noise_std) clipped to ±noise_clip.
    """
    out: dict[str, tuple[Tensor, Tensor]] = {}
    u = x_u.shape[0]
    with torch.no_grad():
        era = None if era is None else era.detach()
        repeated = x_u.repeat(passes, 1, 1, 1, 1)
        for view in views:
            net = model.nets[view]
            was_training = net.training
            net.eval()
            try:
                noise = torch.randn_like(repeated).mul_(noise_std).clamp_(-noise_clip, noise_clip)
                logits = net(repeated + noise, era, force_dropout=True)
            finally:
                net.train(was_training)
            probs = torch.softmax(logits.float(), dim=1)
            mean = probs.reshape(passes, u, *probs.shape[1:]).mean(dim=0)
            # two classes: a comparison gives argmax (ties to class 0) at a fraction of its CPU cost
            pseudo = (mean[:, 1] > mean[:, 0]).long() if mean.shape[1] == 2 else mean.argmax(dim=1)
            out[view] = (pseudo, uncertainty_mask(mean, threshold))
    return out


class _TrainForward(nn.Module):
    """The differentiable part of an iteration, as one module (what DDP wraps)."""

    def __init__(self, model: TripleViewModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, text: Tensor | None, region: Tensor | None) -> dict[str, Tensor]:
        era = self.model.embed(text, region)  # eq. (3), once for the whole batch
        return {view: self.model.forward_view(view, x, era) for view in VIEWS}


def iteration_losses(
    logits: Mapping[str, Tensor],
    batch: Batch,
    pseudo: Mapping[str, tuple[Tensor, Tensor]] | None,
    beta_t: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L, Σ_k L_sup_k, Σ_k L_unsup_k)``: eqs. (9)-(11) summed over the three nets.

    ``logits[view]`` holds the labeled samples first, then the unlabeled ones.
    """
    n_l = batch.x_l.shape[0]
    sup_total = unsup_total = None
    total = None
    for view in VIEWS:
        out = logits[view]
        sup = supervised_loss(out[:n_l], batch.y_l[view], batch.w_l[view])
        if pseudo is not None:
            peers = [j for j in VIEWS if j != view]
            unsup = sum(masked_cross_entropy(out[n_l:], *pseudo[j]) for j in peers) / len(peers)
            loss = (1.0 - beta_t) * sup + beta_t * unsup
        else:
            unsup = torch.zeros((), device=sup.device)
            loss = sup
        sup_total = sup if sup_total is None else sup_total + sup
        unsup_total = unsup if unsup_total is None else unsup_total + unsup
        total = loss if total is None else total + loss
    return total, sup_total.detach(), unsup_total.detach()  # type: ignore[union-attr,return-value]


# ----------------------------------------------------------------------------- results and files


@dataclass
class TrainResult:
    """The trained model (eval mode, on the training device), its log and its folder."""

    model: TripleViewModel
    history: list[dict[str, Any]]
    out_dir: Path
    iteration: int = 0
    seconds: float = 0.0
    config: TrainConfig | None = None


# ----------------------------------------------------------------------------- one iteration


def fit_network_to_prompt(
    config: TrainConfig, prompt: GuidancePrompt
) -> tuple[TrainConfig, dict[str, int]]:
    """``config`` with the Adapter's input widths set to the embeddings actually given, and the
    widths that changed (empty when none did)."""
    changes = {}
    if prompt.text_dim is not None and prompt.text_dim != config.network.text_dim:
        changes["text_dim"] = prompt.text_dim
    if prompt.region_dim is not None and prompt.region_dim != config.network.region_dim:
        changes["region_dim"] = prompt.region_dim
    return (config.replace(network=changes) if changes else config), changes


def build_model(config: TrainConfig, runtime: Runtime) -> TripleViewModel:
    """The initial model, seeded by ``config.seed`` (identical on every rank), on the runtime's
    device and in its memory layout."""
    torch.manual_seed(config.seed)
    model = config.network.build().to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.SGD:
    """One SGD over every parameter (the three nets and the shared Adapter); the step sets its lr."""
    return torch.optim.SGD(
        model.parameters(),
        lr=config.schedule.base_lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


@dataclass
class StepResult:
    """One iteration's losses (detached, on the device: reading them syncs) and schedule values."""

    loss: Tensor
    supervised: Tensor
    unsupervised: Tensor
    lr: float
    beta: float

    def stacked(self) -> Tensor:
        """``(loss, supervised, unsupervised)`` as one (3,) tensor, for running sums."""
        return torch.stack([self.loss, self.supervised, self.unsupervised])


class TrainingStep:
    """One training iteration (module docstring, steps 2-4), as :func:`train` runs it.

    Calling it on a host batch and its iteration t sets the lr of t, moves the batch to the
    device, makes the cross pseudo-labels (unless ``semi_supervised`` is off: β = 0), runs the
    three nets under the runtime's autocast, and takes one SGD step. The model must be in train
    mode. Build it with :func:`build_training_step`.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: TripleViewModel,
        optimizer: torch.optim.Optimizer,
        forward: nn.Module,
        prompt: GuidancePrompt,
        runtime: Runtime,
        semi_supervised: bool,
    ) -> None:
        self.config, self.model, self.optimizer, self.forward = config, model, optimizer, forward
        self.prompt, self.runtime, self.semi_supervised = prompt, runtime, semi_supervised
        # Et is fed as zeros when use_text is off, so the Adapter and the guidance MLP (fed by
        # GAP(f_img) too, eq. 4) always run: the ablation removes the prompt, not the branch
        self.text_input: Tensor = (
            prompt.text
            if prompt.text is not None
            else torch.zeros(1, config.network.text_dim, device=runtime.device)
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.runtime.amp_dtype
        return (
            torch.autocast(self.runtime.device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )

    def __call__(self, host_batch: Batch, iteration: int) -> StepResult:
        t, config, model, schedule = iteration, self.config, self.model, self.config.schedule
        lr, b = learning_rate(t, schedule), beta(t, schedule) if self.semi_supervised else 0.0
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = host_batch.to(
            self.runtime.device, non_blocking=True, channels_last=self.runtime.channels_last
        )
        region = (
            self.prompt.inference_region()
            if config.training_region == "mean"
            else self.prompt.region(batch.labeled_index)
        )
        with self._autocast():
            pseudo = None
            if self.semi_supervised:
                threshold = uncertainty_threshold(t, schedule, config.network.n_classes)
                with torch.no_grad():
                    era = model.embed(self.text_input, region)
                pseudo = peer_pseudo_labels(
                    model,
                    batch.x_u,
                    era,
                    config.uncertainty_passes,
                    threshold,
                    config.noise_std,
                    config.noise_clip,
                )
                x = torch.cat([batch.x_l, batch.x_u])
            else:
                x = batch.x_l
            logits = self.forward(x, self.text_input, region)
        loss, loss_sup, loss_unsup = iteration_losses(logits, batch, pseudo, b)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepResult(loss.detach(), loss_sup, loss_unsup, lr, b)


def build_training_step(
    config: TrainConfig,
    model: TripleViewModel,
    optimizer: torch.optim.Optimizer,
    prompt: GuidancePrompt,
    runtime: Runtime,
    semi_supervised: bool = True,
) -> TrainingStep:
    """The step :func:`train` runs: each net compiled if ``config.compile``, the differentiable
    part wrapped in DistributedDataParallel under ``torchrun``. Call it after loading any
    checkpoint into ``model``. ``semi_supervised=False``: no unlabeled patches (β = 0)."""
    if config.compile:
        for net in model.nets.values():
            net.compile()
    forward: nn.Module = _TrainForward(model)
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        # every parameter takes part in every iteration (Et is fed as zeros when use_text is off)
        device = runtime.device
        forward = DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    return TrainingStep(config, model, optimizer, forward, prompt, runtime, semi_supervised)


def build_sampler(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    unlabeled: Sequence[TrainingCase],
    seed: int | Sequence[int],
) -> TwoStreamSampler:
    """The two-stream batch sampler of ``config`` (patch, batch sizes, registration, augmentation)
    drawing from ``seed``; :func:`train` seeds it with ``(config.seed, rank)``."""
    return TwoStreamSampler(
        labeled,
        unlabeled,
        config.patch,
        config.labeled_batch,
        config.unlabeled_batch,
        seed=seed,
        use_registration=config.use_registration,
        augment=config.augment,
        intensity=config.intensity_augmentation(),
        scale=config.scale_augmentation(),
    )


# ----------------------------------------------------------------------------- training


class TrainOptions(TypedDict, total=False):
    """How a run reports, checks and stops, as :func:`train` passes them on to
    :func:`train_on_cases` (which describes each)."""

    progress: Progress | None
    validate: Validator | None
    resume: bool
    stop_after: int | None


def with_training_spacing(
    config: TrainConfig,
    cohort,
    progress: Progress | None = None,
    propagation_dir: str | Path | None = None,
) -> TrainConfig:
    """``config`` with its training spacing decided: ``config.spacing`` when set, else the
    median voxel size per axis over the cohort's training volumes, labeled and unlabeled (as
    nnU-Net plans it), times ``config.spacing_factor`` or, with ``config.fit_spacing``, times
    the smallest factor up to it at which the labeled structures fit the window
    (:func:`~RADALib.patch_size.fitted_spacing_factor`, from the annotations in
    ``propagation_dir``); says which, and how many volumes will be resampled into it."""
    from .patch_size import fitted_spacing_factor
    from .resampling import plan_spacing, same_spacing

    if config.spacing is not None and progress is None:
        return config
    spacings = training_spacings(cohort)
    spacing = config.spacing
    origin = "set"
    if spacing is None:
        median = plan_spacing(spacings)
        factor = config.spacing_factor
        origin = "the cohort's median spacing per axis"
        if config.fit_spacing:
            needs = labeled_window_needs_mm(cohort, propagation_dir, config.use_registration)
            factor = fitted_spacing_factor(config.patch, needs, median, config.spacing_factor)
            factor = round(factor, 3)
            if factor != 1:
                origin += f" x {factor:g}"
            origin += (
                f", fitted: the labeled structures with context need up to "
                f"{_mm(np.max(needs, axis=0)) if needs else 'nothing'} mm, "
                f"the window holds {tuple(config.patch)} voxels, at most x {config.spacing_factor:g}"
            )
        elif factor != 1:
            origin += f" x {factor:g}"
        spacing = tuple(s * factor for s in median)
    if progress is not None:
        progress.enter("train")
        resampled = sum(not same_spacing(s, spacing) for s in spacings)
        progress.message(
            f"training spacing {' x '.join(f'{s:.4g}' for s in spacing)} mm ({origin}); "
            f"{resampled} of {len(spacings)} training volume(s) resampled into it"
        )
    return config if config.spacing is not None else config.replace(spacing=list(spacing))


def _mm(values) -> str:
    """``12.5 x 40 x 7.25``: a size in mm for a message."""
    return " x ".join(f"{float(v):.4g}" for v in values)


def with_cohort_classes(
    config: TrainConfig, cohort, progress: Progress | None = None
) -> TrainConfig:
    """``config`` whose networks output background and every class the cohort names
    (``network.n_classes`` = the largest class number + 1); says so when that changes it."""
    wanted = max((int(c) for c in cohort.classes), default=1) + 1
    if config.network.n_classes == wanted:
        return config
    if progress is not None:
        names = ", ".join(f"{c} {n}" for c, n in sorted(cohort.classes.items()))
        progress.message(
            f"network.n_classes set to {wanted}: background and the cohort's classes ({names})"
        )
    return config.replace(network={"n_classes": wanted})


def with_fitted_patch(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    unlabeled: Sequence[TrainingCase],
    progress: Progress | None = None,
) -> TrainConfig:
    """``config`` with its window fitted to the labeled structures and the volumes
    (:mod:`RADALib.patch_size`) when ``config.fit_patch``; says which window and why."""
    from .patch_size import fitted_patch, structure_extent

    if not config.fit_patch:
        return config
    extent = structure_extent([c.sparse for c in labeled if c.sparse is not None])
    largest = tuple(int(v) for v in np.max([c.shape for c in (*labeled, *unlabeled)], axis=0))
    patch = fitted_patch(config.patch, extent, largest)
    if progress is not None:
        covers = f"labeled structures up to {extent} voxels" if extent else "no labeled voxel"
        progress.message(
            f"training window {patch} (fitted within {tuple(config.patch)}: {covers}, "
            f"volumes up to {largest} voxels at the training spacing)"
        )
    return config if patch == tuple(config.patch) else config.replace(patch=list(patch))


def train(
    config: TrainConfig,
    cohort,
    propagation_dir: str | Path | None,
    text_embedding: np.ndarray | None,
    region_embeddings: Mapping[str, Mapping[str, np.ndarray]] | None,
    out_dir: str | Path,
    *,
    fusion: tuple[str, float] | None = None,
    cache: ArrayCache | None = None,
    **options: Unpack[TrainOptions],
) -> TrainResult:
    """Train on a cohort whose labeled cases were propagated into ``propagation_dir``.

    ``text_embedding``: Et (text_dim,); ``region_embeddings[case_id][plane]``: Ev (D,) of the
    labeled cases (``None``: no region prompt). ``fusion``: the propagation's vote and α, for
    ``label_source="fused"`` (None: the default vote). Every volume is resampled into the
    training spacing (:func:`with_training_spacing` when ``config.spacing`` is ``None``; the
    result's ``config`` holds it), through ``cache`` when given. ``options`` (progress,
    validate, resume, stop_after) and the rest: see :func:`train_on_cases`.
    """
    if config.spacing is None:
        config = with_training_spacing(config, cohort, options.get("progress"), propagation_dir)
    config = with_cohort_classes(config, cohort, options.get("progress"))
    labeled, unlabeled = load_training_cases(
        cohort,
        propagation_dir,
        require_propagation=config.use_registration,
        label_source=config.label_source,
        fusion=fusion,
        spacing=config.spacing,
        cache=cache,
    )
    return train_on_cases(
        config, labeled, unlabeled, text_embedding, region_embeddings, out_dir, **options
    )


def train_on_cases(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    unlabeled: Sequence[TrainingCase],
    text_embedding: np.ndarray | None,
    region_embeddings: Mapping[str, Mapping[str, np.ndarray]] | None,
    out_dir: str | Path,
    progress: Progress | None = None,
    validate: Validator | None = None,
    resume: bool = True,
    *,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the triple-view model on cases already in memory.

    Writes ``out_dir/config.json``, appends ``metrics.jsonl`` every ``log_every`` iterations and
    saves ``checkpoint.pt`` atomically every ``checkpoint_every`` iterations and at the end. With
    ``resume`` and an existing checkpoint, continues from it exactly (same batches, same random
    numbers). ``validate(model, text, region)`` (model in eval mode, under ``no_grad``) runs every
    ``validate_every`` iterations and its dict joins the events and metrics; ``text`` is the
    Adapter's text input of training, (1, text_dim) (Et, or zeros with ``use_text=False``), and
    ``region`` the inference prompt: the mean Ev over the labeled cases, (1, region_dim), or
    ``None`` without region prompt (the Adapter then sees zeros), so
    ``era = model.embed(text, region)`` is the guidance training used. ``stop_after=n`` stops
    after iteration n (with a checkpoint), as if interrupted.
    Ctrl-C leaves the last checkpoint whole and is re-raised. CUDA running out of memory raises
    :class:`RADAError`.
    """
    if not labeled:
        raise RADAError("training needs at least one labeled case")
    progress = progress or Progress()
    config = with_fitted_patch(config, labeled, unlabeled, progress)
    runtime = setup_runtime(config)
    try:
        return _train(
            config,
            list(labeled),
            list(unlabeled),
            text_embedding,
            region_embeddings,
            _Run(config, runtime, Path(out_dir), progress if runtime.main else Progress()),
            validate,
            resume,
            stop_after,
        )
    except BaseException as error:
        if is_out_of_memory(error):
            raise RADAError(
                f"the GPU ran out of memory training on {config.patch[0]}x{config.patch[1]}x{config.patch[2]} patches "
                f"(batch {config.labeled_batch}+{config.unlabeled_batch}, base filters {config.network.base_filters}); "
                "try --preset cpu, a smaller --patch, or --device cpu"
            ) from None
        raise
    finally:
        release_runtime(runtime)


@dataclass
class _Run:
    """One training run in this process: its settings, process, folder and reporting, then its
    model, optimizer and what it has logged (``history``, training ``seconds_before`` this call,
    ``started`` by :func:`time.perf_counter`)."""

    config: TrainConfig
    runtime: Runtime
    out_dir: Path
    progress: Progress
    model: TripleViewModel | None = None
    optimizer: torch.optim.Optimizer | None = None
    start: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_before: float = 0.0
    started: float = 0.0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def seconds(self, now: float | None = None) -> float:
        """Training seconds so far, over every call that trained this folder."""
        return self.seconds_before + (time.perf_counter() if now is None else now) - self.started

    def save(self, completed: int, sampler_state: dict) -> None:
        """Checkpoint after iteration ``completed`` (every rank's random state; rank 0 writes)."""
        model, runtime = self.model, self.runtime
        broadcast_buffers(model, runtime)
        states = gather_objects(rng_state(runtime.device, sampler_state), runtime)
        if runtime.main:
            save_checkpoint(
                self.checkpoint_path,
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": self.config.to_dict(),
                    "iteration": completed,
                    "model": model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "world_size": runtime.world,
                    "ranks": states,
                    "history": self.history,
                    "seconds": self.seconds(),
                },
            )

    def log(self, entry: dict[str, Any]) -> None:
        """Keep ``entry`` in the history and, on rank 0, append it to ``metrics.jsonl``."""
        self.history.append(entry)
        if self.runtime.main:
            path = self.out_dir / METRICS_FILE
            try:
                with open(path, "a") as handle:
                    handle.write(json.dumps(entry) + "\n")
            except OSError as exc:
                raise write_error(path, exc) from None


def _train(
    config: TrainConfig,
    labeled: list[TrainingCase],
    unlabeled: list[TrainingCase],
    text_embedding: np.ndarray | None,
    region_embeddings: Mapping[str, Mapping[str, np.ndarray]] | None,
    run: _Run,
    validate: Validator | None,
    resume: bool,
    stop_after: int | None,
) -> TrainResult:
    """:func:`train_on_cases` once the runtime is set up (the steps of its docstring, in order)."""
    runtime, progress = run.runtime, run.progress
    progress.enter("train")
    prompt, config = _guidance_prompt(
        config, labeled, text_embedding, region_embeddings, runtime.device, progress
    )
    run.config = config
    _check_classes(config, labeled)
    if runtime.main:
        ensure_writable_folder(run.out_dir)
    _warn_about_inputs(config, labeled, unlabeled, progress)
    run.config = config = _sized_to_budget(
        config, labeled, unlabeled, prompt, run, validate, resume
    )

    # model and optimizer, identical on every rank
    run.model = model = build_model(config, runtime)
    run.optimizer = build_optimizer(config, model)
    sampler = _resume_or_start(
        run, build_sampler(config, labeled, unlabeled, (config.seed, runtime.rank)), resume
    )
    step = build_training_step(
        config,
        model,
        run.optimizer,
        prompt,
        runtime,
        semi_supervised=bool(unlabeled) and config.unlabeled_batch > 0,
    )

    end = config.iterations if stop_after is None else min(config.iterations, int(stop_after))
    result = TrainResult(model, run.history, run.out_dir, run.start, run.seconds_before, config)
    if run.start < end:
        progress.start(
            "train",
            config.iterations,
            f"{len(labeled)} labeled + {len(unlabeled)} unlabeled volume(s), "
            f"patch {tuple(config.patch)}, on {runtime.device}"
            + (f" x{runtime.world}" if runtime.distributed else ""),
            first_step=run.start,
        )
        _run_loop(run, step, sampler, end, validate)
        broadcast_buffers(model, runtime)
        result.iteration, result.seconds = end, run.seconds()
    model.eval()
    return result


PROBE_STREAM = 7_919
"""Extra seed of the batches the time-budget measurement draws, apart from the run's streams."""


def _sized_to_budget(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    unlabeled: Sequence[TrainingCase],
    prompt: GuidancePrompt,
    run: _Run,
    validate: Validator | None,
    resume: bool,
) -> TrainConfig:
    """``config`` with ``iterations`` and the schedule sized to ``config.time_budget``
    (:mod:`RADALib.time_budget`; unchanged when it is 0). A run that resumes keeps the count its
    checkpoint was sized to; a new one measures this machine's step first (every rank; the
    slowest counts)."""
    budget = config.time_budget
    if budget <= 0:
        return config
    if resume and run.checkpoint_path.exists():
        saved = load_checkpoint(run.checkpoint_path).get("config", {})
        n = int(saved.get("iterations", config.iterations))
        run.progress.message(f"resuming a run sized to {n} iterations by its time budget")
    else:
        every = config.validate_every if validate is not None else 0
        timing = max(
            gather_objects(
                _time_the_step(config, labeled, unlabeled, prompt, run, validate), run.runtime
            ),
            key=lambda t: t.cost_per_iteration(every),
        )
        n = iterations_for_budget(budget, timing, every)
        run.progress.message(describe_sizing(budget, timing, every, n))
        if n < config.iterations:
            run.progress.message(
                f"only {n} iterations fit the time budget here, fewer than the preset's "
                f"{config.iterations}: the model may be weaker; --iterations {config.iterations} "
                "(Iterations in Slicer) trains them all, for longer",
                level="warning",
            )
    return scale_schedule(config, n).replace(time_budget=budget)


def _time_the_step(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    unlabeled: Sequence[TrainingCase],
    prompt: GuidancePrompt,
    run: _Run,
    validate: Validator | None,
) -> StepTiming:
    """:func:`~RADALib.time_budget.measure_step` on this run's step (its config, data, runtime,
    batches prepared in the background) with a throwaway model, optimizer and batch stream:
    the run itself is built afterwards from its own seeds, as if nothing had run."""
    runtime = run.runtime
    model = build_model(config, runtime)
    step = TrainingStep(
        config,
        model,
        build_optimizer(config, model),
        _TrainForward(model),  # no DistributedDataParallel: each rank measures on its own
        prompt,
        runtime,
        semi_supervised=bool(unlabeled) and config.unlabeled_batch > 0,
    )
    sampler = build_sampler(config, labeled, unlabeled, (config.seed, runtime.rank, PROBE_STREAM))
    n = WARMUP_ITERATIONS + MAX_TIMED_ITERATIONS
    prefetcher = BatchPrefetcher(
        sampler,
        lambda t: alpha(t, config.schedule),
        0,
        n,
        depth=config.prefetch,
        pin_memory=runtime.device.type == "cuda",
    )
    batches = iter(prefetcher)

    def one_step() -> None:
        batch = next(batches)
        float(step(batch, batch.iteration).loss)  # reading the loss waits for the device

    def one_validation() -> None:
        _validate(model, validate, step.text_input, prompt.inference_region())

    model.train()
    try:
        return measure_step(
            one_step,
            one_validation if validate is not None and config.validate_every else None,
            min_seconds=PROBE_SHARE * config.time_budget,
        )
    finally:
        prefetcher.close()


def _guidance_prompt(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    text_embedding: np.ndarray | None,
    region_embeddings: Mapping[str, Mapping[str, np.ndarray]] | None,
    device: torch.device,
    progress: Progress,
) -> tuple[GuidancePrompt, TrainConfig]:
    """The prompt on the device, and ``config`` with the Adapter's widths fitted to it (said)."""
    if config.use_text and text_embedding is None:
        progress.message(
            "no text embedding given: Et is fed as zeros, as with use_text=False", level="warning"
        )
    prompt = GuidancePrompt.build(
        config,
        text_embedding,
        region_embeddings,
        [c.id for c in labeled],
        device,
        require_text=False,
    )
    config, net_changes = fit_network_to_prompt(config, prompt)
    if net_changes:
        progress.message(f"network input widths set from the embeddings: {net_changes}")
    return prompt, config


def _check_classes(config: TrainConfig, labeled: Sequence[TrainingCase]) -> None:
    """Raise :class:`RADAError` when a label holds a class the network cannot output."""
    n_classes = config.network.n_classes
    largest = max(c.max_label for c in labeled)
    if largest >= n_classes:
        raise RADAError(
            f"the labels hold class {largest}, but the network has {n_classes} classes (network.n_classes)"
        )


def _warn_about_inputs(
    config: TrainConfig,
    labeled: Sequence[TrainingCase],
    unlabeled: Sequence[TrainingCase],
    progress: Progress,
) -> None:
    """Say what the inputs change about training: no unlabeled stream, fused labels with one,
    volumes smaller than the patch."""
    if not unlabeled:
        hint = ""
        if (
            config.label_source == "views"
            and config.use_registration
            and config.schedule.alpha_floor == 0
        ):
            hint = (
                "; as α ramps down to 0, late training learns from the annotated slices alone: "
                "label_source=fused (rada train --set label_source=fused; in Slicer, Training labels: fused) "
                "keeps the propagated labels"
            )
        progress.message(
            "no unlabeled training case: training runs supervised only (β = 0, no cross "
            f"pseudo-labels){hint}",
            level="warning",
        )
    elif config.label_source == "fused" and config.unlabeled_batch > 0:
        progress.message(
            "label_source=fused with unlabeled cases: the three networks learn the same labels, so "
            "their cross supervision (eq. 10) loses the view diversity it relies on; the default "
            "label_source=views keeps it (see docs/method.md)",
            level="warning",
        )
    small = [c for c in (*labeled, *unlabeled) if any(n < p for n, p in zip(c.shape, config.patch))]
    if small:
        progress.message(
            f"{len(small)} volume(s) are smaller than the patch {tuple(config.patch)} along some axis (e.g. "
            f"{small[0].id}, {small[0].shape}): they are padded (image with its minimum, labels 0, weight 0)"
        )


def _resume_or_start(run: _Run, sampler: TwoStreamSampler, resume: bool) -> TwoStreamSampler:
    """Seed this rank's random streams, then continue from the folder's checkpoint (with
    ``resume``) or start its metrics afresh; write ``config.json``. Returns the sampler to use."""
    config, runtime = run.config, run.runtime
    torch.manual_seed(config.seed + runtime.rank)
    if runtime.device.type == "cuda":
        torch.cuda.manual_seed(config.seed + runtime.rank)
    if resume and run.checkpoint_path.exists():
        sampler = _resume(run, sampler)
    elif runtime.main:
        (run.out_dir / METRICS_FILE).unlink(missing_ok=True)
    if runtime.main:  # after the resume check, so a refused run leaves the folder as it was
        write_text_atomic(run.out_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")
    return sampler


def _resume(run: _Run, sampler: TwoStreamSampler) -> TwoStreamSampler:
    """Load the checkpoint into ``run`` (model, optimizer, iteration, history, seconds) and this
    rank's random state; a checkpoint of another world size resumes with fresh random streams."""
    config, runtime, path = run.config, run.runtime, run.checkpoint_path
    saved = load_checkpoint(path)
    check_compatible(saved.get("config", {}), config, path)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.start = start = int(saved["iteration"])
    run.history = list(saved.get("history", []))
    run.seconds_before = float(saved.get("seconds", 0.0))
    ranks = saved.get("ranks", [])
    if len(ranks) == runtime.world:
        sampler.set_state(ranks[runtime.rank]["sampler"])
        restore_rng_state(runtime.device, ranks[runtime.rank])
    else:
        run.progress.message(
            f"the checkpoint was made by {len(ranks)} process(es), this run has {runtime.world}: "
            "resuming with fresh random streams",
            level="warning",
        )
        sampler = build_sampler(
            config, sampler.labeled, sampler.unlabeled, (config.seed, runtime.rank, start)
        )
        torch.manual_seed(config.seed + 1000 * start + runtime.rank)
    if runtime.main:  # metrics past the checkpoint were never saved in it: drop them
        write_text_atomic(
            run.out_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in run.history)
        )
    run.progress.message(f"resuming from {path} at iteration {start}")
    return sampler


class _LossWindow:
    """The losses summed on the device since the last log line (reading them is the one device
    sync of a logging step), and when that window began."""

    def __init__(self, device: torch.device, began: float) -> None:
        self.sums = torch.zeros(3, device=device)
        self.n = 0
        self.began = began

    def add(self, outcome: StepResult) -> None:
        self.sums += outcome.stacked()
        self.n += 1

    def entry(self, completed: int, outcome: StepResult, alpha_t: float, run: _Run) -> dict:
        """The metrics line of iteration ``completed``: mean losses over the window, the schedule
        values, seconds per iteration and training seconds. Raises if the loss is not finite."""
        values = (self.sums / self.n).tolist()
        now = time.perf_counter()
        if not math.isfinite(values[0]):
            raise RADAError(
                f"training diverged: the loss is {values[0]} at iteration {completed}; "
                "lower schedule.base_lr or check the input intensities"
            )
        return {
            "step": completed,
            "loss": values[0],
            "loss_sup": values[1],
            "loss_unsup": values[2],
            "lr": outcome.lr,
            "alpha": alpha_t,
            "beta": outcome.beta,
            "s_per_it": (now - self.began) / self.n,
            "seconds": run.seconds(now),
        }

    def reset(self) -> None:
        self.sums.zero_()
        self.began, self.n = time.perf_counter(), 0


def _run_loop(
    run: _Run, step: TrainingStep, sampler: TwoStreamSampler, end: int, validate: Validator | None
) -> None:
    """Iterations ``run.start .. end-1``: one step each, a metrics line every ``log_every``
    (and at the first, the last and each validation), a checkpoint every ``checkpoint_every``
    and at the end."""
    config, model, device = run.config, run.model, run.runtime.device
    inference_prompt = (step.text_input, step.prompt.inference_region())
    model.train()
    run.started = time.perf_counter()
    window = _LossWindow(device, run.started)
    prefetcher = BatchPrefetcher(
        sampler,
        lambda t: alpha(t, config.schedule),
        run.start,
        end,
        depth=config.prefetch,
        pin_memory=device.type == "cuda",
    )
    try:
        for host_batch in prefetcher:
            t = host_batch.iteration
            outcome = step(host_batch, t)
            window.add(outcome)
            completed = t + 1
            validating = bool(
                validate is not None
                and config.validate_every
                and completed % config.validate_every == 0
            )
            if completed % config.log_every == 0 or completed in (end, run.start + 1) or validating:
                entry = window.entry(completed, outcome, host_batch.alpha, run)
                if validating and run.runtime.main:
                    entry.update(_validate(model, validate, *inference_prompt))
                _report(run, entry)
                window.reset()
            if (config.checkpoint_every and completed % config.checkpoint_every == 0) or (
                completed == end
            ):
                run.save(completed, host_batch.sampler_state)
    finally:
        prefetcher.close()


def _validate(
    model: TripleViewModel, validate: Validator, text: Tensor | None, region: Tensor | None
) -> dict[str, Any]:
    """``validate``'s scores of the model in eval mode under ``no_grad`` (NumPy floats as floats);
    the model goes back to train mode."""
    model.eval()
    try:
        with torch.no_grad():
            scores = validate(model, text, region)
    finally:
        model.train()
    return {
        k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
        for k, v in dict(scores).items()
    }


def _report(run: _Run, entry: dict[str, Any]) -> None:
    """Log ``entry`` (history, metrics file) and send it as a progress update."""
    run.log(entry)
    extra = {k: v for k, v in entry.items() if k not in ("step", "seconds")}
    run.progress.update(
        entry["step"],
        f"sup {entry['loss_sup']:.4f} unsup {entry['loss_unsup']:.4f} lr {entry['lr']:.2g}",
        **extra,
    )
