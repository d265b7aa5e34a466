"""Training settings: :class:`TrainConfig` with the paper's LA defaults, the named presets
("paper", "small"), and :func:`preset` / :meth:`TrainConfig.replace`, which check every changed
setting by name and kind (``rada train --set``, the Slicer panel's *Extra settings*).

The algorithm these settings drive is in :mod:`RADALib.training`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .annotation import PLANES
from .errors import RADAError
from .intensity_augmentation import IntensityAugmentation
from .networks import DOWNSAMPLING, NetworkConfig
from .scale_augmentation import ScaleAugmentation
from .schedules import ScheduleConfig

REGION_MODES = ("alpha", "no_mask", "none")
LABEL_SOURCES = ("views", "fused")
TRAINING_REGIONS = ("batch", "mean")
_SWITCHES = ("auto", "on", "off")
SETTING_GROUPS = ("schedule", "network")  # nested settings: schedule.<name>, network.<name>
# None or a value, checked by TrainConfig itself
OPTIONAL_SETTINGS = frozenset({"spacing", "inference_stride"})


@dataclass
class TrainConfig:
    """Training settings (paper / LA defaults). :mod:`RADALib.training` describes the algorithm.

    ``schedule.max_iterations`` always equals ``iterations`` (the ramps of α, β and the
    threshold span the run); the other schedule steps are absolute iteration counts
    (:func:`preset` with a new ``iterations`` scales them, :func:`scale_schedule`).
    ``amp``: "auto" = bf16 autocast where the device computes in bf16 natively (CUDA; an x86
    CPU with AVX-512 BF16 or AMX: :func:`RADALib.runtime.native_bf16`), else fp32; "bf16" forces
    it, "off" disables it. ``channels_last``: "auto" = channels-last 3D memory format on CUDA and
    on those CPUs.
    ``region_mode``: "alpha" (Alpha-CLIP with the mask), "no_mask" (the caller passes
    embeddings computed without the mask: used as given), "none" (no region prompt: zeros).
    ``training_region``: the Ev a training batch is guided by: "batch" (the axial embeddings of
    the batch's labeled cases, a different prompt each iteration) or "mean" (the mean over the
    labeled cases: the one prompt inference feeds). ``use_text=False``: Et is fed as zeros.
    ``use_registration=False``: only the truly annotated voxels supervise (see ``data``).
    ``label_source``: "views" (the paper, eq. 6: each view's network learns its own view's mixed
    label Ỹv with the weights α^d) or "fused" (not in the paper: every network learns the fused
    three-view pseudo-label with weight 1, so the propagated labels keep supervising after α has
    decayed; meant for runs without unlabeled cases: with them the three networks learn the same
    labels and their cross supervision loses its view diversity; see docs/method.md, and
    Testing/Benchmarks/RESULTS.md for figures).
    ``prefetch``: batches prepared ahead by a background thread (0: in the training thread).
    ``compile``: ``torch.compile`` each sub-network (off by default). ``deterministic``:
    deterministic cuDNN kernels instead of the fastest ones (CPU runs are deterministic anyway).
    ``threads``: torch CPU threads (0 = torch's default); on a busy machine fewer threads than
    cores can be as fast or faster for small models, since threads then wait for each other
    (see Testing/Benchmarks/RESULTS.md). ``uncertainty_passes`` (T): 4 for the paper preset
    (UA-MT used 8 for one teacher; here all three nets make pseudo-labels every iteration,
    3·T·U extra forward samples), 2 for the small one.
    ``spacing``: the training spacing (x, y, z) in mm that every volume is resampled into
    (:mod:`RADALib.resampling`); ``None`` = the cohort's median voxel size per axis times
    ``spacing_factor``, planned when training starts
    (:func:`RADALib.training.with_training_spacing`); one number means the same size on every
    axis. ``spacing_factor`` (>= 1 coarsens; only used when ``spacing`` is ``None``): the cpu
    preset trains on voxels up to three times the cohort's median size. ``fit_spacing``: the
    factor is the smallest up to ``spacing_factor`` at which the labeled structures fit
    ``patch`` (:mod:`RADALib.patch_size`), decided when training starts. ``fit_patch``: ``patch`` is the
    largest window, shrunk to the labeled structures' extent and the volumes' size at the
    training spacing when training starts (:mod:`RADALib.patch_size`). ``inference_stride``: the
    stride the model bundle names for ``rada predict`` and the panel ("fast", "dense" or
    "whole"; ``None``: inference's default). ``inference_mirror``: the bundle asks inference to
    average over the volume's mirror images in the (x, y) plane (:mod:`RADALib.mirroring`; only
    written when ``augment`` is on, since the networks have seen mirror images only then).
    ``intensity_augment``: the probability that a training patch gets a random contrast
    (×U(1 ± ``intensity_contrast``) about its mean) and brightness (+U(± ``intensity_shift``),
    z-score units); not in the paper, 0 (off) there (:mod:`RADALib.intensity_augmentation`).
    ``scale_augment``: the probability that a training patch is zoomed by a log-uniform factor
    in [1/(1 + ``scale_range``), 1 + ``scale_range``]; not in the paper, 0 (off) there
    (:mod:`RADALib.scale_augmentation`).
    ``time_budget``: seconds the training iterations and validations may take (0: off, train
    ``iterations``); when set, training measures this machine's iteration and sizes
    ``iterations`` (and the schedule) to the budget when it starts (:mod:`RADALib.time_budget`).
    Giving ``iterations`` in :meth:`replace` or :func:`preset` turns it off.
    """

    patch: tuple[int, int, int] = (112, 112, 80)
    iterations: int = 6000
    labeled_batch: int = 2
    unlabeled_batch: int = 2
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    uncertainty_passes: int = 4
    noise_std: float = 0.1
    noise_clip: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 1337
    checkpoint_every: int = 500
    validate_every: int = 500
    log_every: int = 20
    amp: str = "auto"
    visual_planes: tuple[str, ...] = ("axial", "axial")
    use_text: bool = True
    region_mode: str = "alpha"
    training_region: str = "batch"
    use_registration: bool = True
    label_source: str = "views"
    augment: bool = True
    intensity_augment: float = 0.0
    intensity_contrast: float = 0.25
    intensity_shift: float = 0.3
    scale_augment: float = 0.0
    scale_range: float = 0.25
    device: str = "auto"
    compile: bool = False
    channels_last: str = "auto"
    prefetch: int = 2
    deterministic: bool = False
    threads: int = 0
    spacing: tuple[float, float, float] | None = None
    spacing_factor: float = 1.0
    fit_spacing: bool = False
    fit_patch: bool = False
    inference_stride: str | None = None
    inference_mirror: bool = False
    time_budget: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.schedule, Mapping):
            self.schedule = ScheduleConfig.from_dict(self.schedule)
        if isinstance(self.network, Mapping):
            self.network = NetworkConfig.from_dict(self.network)
        self.patch = tuple(int(p) for p in self.patch)  # type: ignore[assignment]
        self.visual_planes = tuple(str(p) for p in self.visual_planes)
        self.spacing = _spacing_setting(self.spacing)
        self._check_sizes()
        self._check_choices()
        if not (math.isfinite(self.time_budget) and self.time_budget >= 0):
            raise ValueError(
                f"TrainConfig.time_budget must be 0 (off) or a number of seconds, got {self.time_budget!r}"
            )
        if not (math.isfinite(self.spacing_factor) and self.spacing_factor > 0):
            raise ValueError(
                f"TrainConfig.spacing_factor must be a positive number, got {self.spacing_factor!r}"
            )
        if self.noise_std < 0 or self.noise_clip < 0:
            raise ValueError("TrainConfig.noise_std and noise_clip must be >= 0")
        try:
            self.intensity_augmentation()
            self.scale_augmentation()
        except ValueError as exc:
            raise ValueError(f"TrainConfig: {exc}") from None
        if self.schedule.max_iterations != self.iterations:
            self.schedule = dataclasses.replace(self.schedule, max_iterations=int(self.iterations))

    def intensity_augmentation(self) -> IntensityAugmentation:
        """The training patches' intensity augmentation these settings describe."""
        return IntensityAugmentation(
            self.intensity_augment, self.intensity_contrast, self.intensity_shift
        )

    def scale_augmentation(self) -> ScaleAugmentation:
        """The training patches' scale augmentation these settings describe."""
        return ScaleAugmentation(self.scale_augment, self.scale_range)

    def _check_sizes(self) -> None:
        """``ValueError`` for a patch the VNet cannot halve four times, or a count out of range."""
        if len(self.patch) != 3 or any(p < DOWNSAMPLING or p % DOWNSAMPLING for p in self.patch):
            raise ValueError(
                f"patch must be 3 positive multiples of {DOWNSAMPLING}, got {self.patch}"
            )
        for name in ("iterations", "labeled_batch", "uncertainty_passes", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in (
            "unlabeled_batch",
            "checkpoint_every",
            "validate_every",
            "prefetch",
            "threads",
        ):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def _check_choices(self) -> None:
        """``ValueError`` for a named choice that is not one of its values."""
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"TrainConfig.amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if self.channels_last not in _SWITCHES:
            raise ValueError(
                f"TrainConfig.channels_last must be one of {_SWITCHES}, got {self.channels_last!r}"
            )
        if self.inference_stride not in (None, "fast", "dense", "whole"):
            raise ValueError(
                "TrainConfig.inference_stride must be fast, dense, whole or null, "
                f"got {self.inference_stride!r}"
            )
        if self.training_region not in TRAINING_REGIONS:
            raise ValueError(
                f"TrainConfig.training_region must be one of {TRAINING_REGIONS}, got {self.training_region!r}"
            )
        if self.label_source not in LABEL_SOURCES:
            raise ValueError(
                f"TrainConfig.label_source must be one of {LABEL_SOURCES}, got {self.label_source!r}"
            )
        if self.label_source == "fused" and not self.use_registration:
            raise ValueError(
                "TrainConfig.label_source 'fused' needs the propagated labels (use_registration=True)"
            )
        if self.region_mode not in REGION_MODES:
            raise ValueError(
                f"TrainConfig.region_mode must be one of {REGION_MODES}, got {self.region_mode!r}"
            )
        bad = [p for p in self.visual_planes if p not in PLANES]
        if bad or not self.visual_planes:
            raise ValueError(
                f"TrainConfig.visual_planes must name planes among {PLANES}, got {self.visual_planes}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (nested schedule and network dicts)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["schedule"] = self.schedule.to_dict()
        data["network"] = self.network.to_dict()
        data["patch"] = list(self.patch)
        data["visual_planes"] = list(self.visual_planes)
        data["spacing"] = None if self.spacing is None else list(self.spacing)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``, missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some settings changed.

        Nested settings take a dict (merged) or dotted names passed as a dict:
        ``cfg.replace(iterations=100, network={"base_filters": 8})`` or
        ``cfg.replace(**{"schedule.base_lr": 0.02})``. A new ``iterations`` fixes the count:
        it turns ``time_budget`` off unless ``time_budget`` is given too.
        """
        data = self.to_dict()
        for key, value in changes.items():
            if "." in key:
                group, name = key.split(".", 1)
                if group not in SETTING_GROUPS:
                    raise ValueError(
                        f"unknown training setting {key!r}{_closest_setting(key, data)}"
                    )
                if name not in data[group]:
                    raise ValueError(
                        f"unknown {group} setting {name!r}{_closest_setting(key, data)}"
                    )
                data[group][name] = _typed_setting(key, data[group][name], value)
            elif key in SETTING_GROUPS:
                value = value.to_dict() if hasattr(value, "to_dict") else dict(value)
                unknown = sorted(set(value) - set(data[key]))
                if unknown:
                    raise ValueError(f"unknown {key} setting(s): {', '.join(unknown)}")
                for name, item in value.items():
                    data[key][name] = _typed_setting(f"{key}.{name}", data[key][name], item)
            elif key in data:
                data[key] = _typed_setting(key, data[key], value)
            else:
                raise ValueError(f"unknown training setting {key!r}{_closest_setting(key, data)}")
        if "iterations" in changes:
            _fix_count(data, changes)
        return TrainConfig.from_dict(data)


def _fix_count(data: dict[str, Any], changes: Mapping[str, Any]) -> None:
    """A new ``iterations`` in ``changes``: the schedule spans it and the time budget is off,
    unless ``changes`` set them too."""
    if "schedule.max_iterations" not in changes:
        data["schedule"]["max_iterations"] = int(changes["iterations"])
    if "time_budget" not in changes:
        data["time_budget"] = 0.0


def _spacing_setting(value: Any) -> tuple[float, float, float] | None:
    """``spacing`` as three positive, finite mm (or ``None``), from a triple, one number (the same
    on every axis) or text such as ``1.25,1.25,2.5``; ``ValueError`` otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace("x", ",").split(",") if v.strip()]
    values = (
        [value] * 3 if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    )
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        triple = ()
    if len(triple) != 3 or any(not (math.isfinite(v) and v > 0) for v in triple):
        raise ValueError(
            f"TrainConfig.spacing must be three positive sizes in mm (x,y,z, e.g. 1.25,1.25,1.25) "
            f"or null for the cohort's median spacing, got {value!r}"
        )
    return triple  # type: ignore[return-value]


def _closest_setting(key: str, data: Mapping[str, Any]) -> str:
    """`` (did you mean schedule.alpha_floor?)`` for a misspelt or unqualified setting name, else ``""``."""
    names: list[str] = []
    for group, value in data.items():
        names += [f"{group}.{name}" for name in value] if group in SETTING_GROUPS else [group]
    bare = key.rsplit(".", 1)[-1]
    exact = [n for n in names if n.rsplit(".", 1)[-1] == bare and n != key]
    close = (
        exact
        or difflib.get_close_matches(key, names, n=1, cutoff=0.7)
        or difflib.get_close_matches(bare, [n.rsplit(".", 1)[-1] for n in names], n=1, cutoff=0.8)
    )
    if not close:
        return ""
    match = next(n for n in names if n == close[0] or n.rsplit(".", 1)[-1] == close[0])
    return f" (did you mean {match}?)"


def _typed_setting(key: str, current: Any, value: Any) -> Any:
    """``value`` for setting ``key``, or ``ValueError`` naming it when its kind differs from ``current``'s.

    A whole number passes for a decimal one, a list (or comma-separated text, ``64,64,48``) for a
    tuple; a setting that is ``None`` by default takes anything. (``rada train --set
    schedule.alpha_floor=x`` says what it wants, instead of failing later at a comparison.)
    :data:`OPTIONAL_SETTINGS` take ``None`` or a value, which :class:`TrainConfig` checks.
    """
    if current is None or key in OPTIONAL_SETTINGS:
        return value
    if (
        isinstance(current, (list, tuple)) and isinstance(value, str) and current
    ):  # "64,64,48", "axial,axial"
        parts = [v.strip() for v in value.split(",")]
        try:
            return [type(current[0])(v) for v in parts]
        except ValueError:
            raise ValueError(
                f"setting {key} takes a comma-separated list like {','.join(map(str, current))}, "
                f"got {value!r}"
            ) from None
    kinds = (
        (bool, "true or false", (bool,)),
        (int, "a whole number", (int,)),
        (float, "a number", (int, float)),
        (str, "text", (str,)),
        ((list, tuple), "a list, e.g. [112,112,80]", (list, tuple)),
    )
    for kind, wanted, accepted in kinds:
        if isinstance(current, kind):
            if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
                raise ValueError(f"setting {key} takes {wanted}, got {value!r}")
            return value
    return value


def _small_preset() -> TrainConfig:
    iterations = 200
    scale = iterations / 6000  # the paper's schedule steps, shrunk to the shorter run
    schedule = ScheduleConfig(
        max_iterations=iterations,
        lr_step=max(1, round(2500 * scale)),
        alpha_step=max(1, round(1000 * scale)),
        beta_step=max(1, round(150 * scale)),
    )
    return TrainConfig(
        patch=(32, 32, 32),
        iterations=iterations,
        schedule=schedule,
        network=NetworkConfig(base_filters=4),
        uncertainty_passes=2,
        checkpoint_every=50,
        validate_every=50,
        log_every=5,
    )


def _cpu_preset() -> TrainConfig:
    """The whole method (three views, guidance, unlabeled stream, cross supervision) sized for a
    CPU: voxels up to three times the cohort's median size per axis (27 times fewer voxels;
    only as coarse as the labeled structures need to fit the window), a window of at most
    48x48x32 fitted to them (at three times LA's spacing nearly what the paper's 112x112x80
    covers at LA's), 8 base filters, T = 2, a shorter run with the paper's
    schedule scaled to it, SGTC's share of cross supervision (β from about 0 to 0.2 here, i.e.
    (1 − 2β)·sup + β·c₁ + β·c₂ with β → 0.1), and at inference one pass over the whole volume
    (at that spacing a LA volume fits in one) and its three mirror images; half the patches get
    a random contrast (x U(0.7, 1.3)) and brightness (+-0.3 z), so a volume whose z-scores come
    out shifted (a wider field of view, another contrast) is still segmented; half the patches
    are zoomed by up to a quarter in or out, so the networks also see structures larger and
    smaller than the labeled ones. The run is sized to the machine: training measures its
    iteration and runs as many as fit :data:`CPU_TIME_BUDGET`, the schedule scaled from its
    1500 (``rada train --iterations N`` fixes the count instead). Figures and how they
    were chosen: Testing/Benchmarks/RESULTS.md ("CPU training on LA2018", "Demo")."""
    config = scale_schedule(
        TrainConfig(
            patch=(48, 48, 32),
            fit_patch=True,
            fit_spacing=True,
            inference_stride="whole",
            inference_mirror=True,
            intensity_augment=0.5,
            intensity_contrast=0.3,
            scale_augment=0.5,
            schedule=ScheduleConfig(beta0=0.0, beta_max=0.2),
            spacing_factor=3.0,
            network=NetworkConfig(base_filters=8),
            uncertainty_passes=2,
            checkpoint_every=100,
            validate_every=250,  # each validation pass takes iterations from the time budget
            log_every=10,
        ),
        1500,
    )
    return config.replace(time_budget=CPU_TIME_BUDGET)


CPU_TIME_BUDGET = 1800.0
"""The cpu preset's training time in seconds: iterations and validations in half an hour."""


def scale_schedule(config: TrainConfig, iterations: int) -> TrainConfig:
    """``config`` run for ``iterations``, its schedule's steps (lr, α, β) scaled in proportion.

    The schedule keeps its shape: the paper's lr drops at 5/12 and 5/6 of the run, α and β
    change as often relative to the run's length. Without scaling, a longer run of the small
    preset would spend most of its iterations at a learning rate 10⁻⁴ to 10⁻⁸ times the base.
    """
    iterations = int(iterations)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    scale = iterations / config.iterations
    s = config.schedule
    return config.replace(
        iterations=iterations,
        schedule={
            "max_iterations": iterations,
            "lr_step": max(1, round(s.lr_step * scale)),
            "alpha_step": max(1, round(s.alpha_step * scale)),
            "beta_step": max(1, round(s.beta_step * scale)),
        },
    )


presets: dict[str, TrainConfig] = {
    # dense: the paper's evaluation stride, the best of the three on the paper model (RESULTS.md)
    "paper": TrainConfig(inference_stride="dense"),
    "cpu": _cpu_preset(),
    "small": _small_preset(),
}
"""Named settings: "paper" (LA recipe, a GPU job), "cpu" (the whole method on a CPU, minutes)
and "small" (tests). ``auto`` (:func:`resolve_preset`) picks "paper" with CUDA, else "cpu"."""
AUTO_PRESET = "auto"


def resolve_preset(name: str, device: str = "auto") -> str:
    """``name``, or for ``auto`` the preset ``device`` can run: "paper" on CUDA, else "cpu"
    (``device`` "auto": CUDA when torch finds it)."""
    if name != AUTO_PRESET:
        return name
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "paper" if device.startswith("cuda") else "cpu"


def preset(name: str, **changes: Any) -> TrainConfig:
    """A copy of a named preset, with ``changes`` applied (see :meth:`TrainConfig.replace`).

    ``auto`` is the preset :func:`resolve_preset` picks for this machine. A new ``iterations``
    first scales the preset's schedule steps in proportion
    (:func:`scale_schedule`); schedule settings in ``changes`` then override the scaled ones.
    """
    name = resolve_preset(name, str(changes.get("device", "auto")))
    if name not in presets:
        raise RADAError(
            f"unknown training preset {name!r}; choose one of {AUTO_PRESET}, {', '.join(presets)}"
        )
    config = presets[name]
    changes = dict(changes)
    if "iterations" in changes:
        config = scale_schedule(config, int(changes.pop("iterations")))
    return config.replace(**changes)
