"""Training checkpoints: the file (written atomically), the random-number state it carries so a
resumed run draws the same batches and noise as an uninterrupted one, and the check that a
checkpoint was made with the settings of the run that resumes it.

A checkpoint is a dict with ``format`` = :data:`CHECKPOINT_FORMAT`, the run's ``config``, the
``iteration`` it completed, the ``model`` and ``optimizer`` states, ``world_size``, one
:func:`rng_state` per rank in ``ranks``, the metrics ``history`` and the training ``seconds``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .atomic import RecordingWriter, replacing
from .errors import RADAError
from .train_config import TrainConfig

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "rada-train-checkpoint/1"

# settings that change how a run goes but not what it computes: they may differ on resume
RUNTIME_ONLY_SETTINGS = frozenset(
    {
        "device",
        "checkpoint_every",
        "validate_every",
        "log_every",
        "prefetch",
        "compile",
        "amp",
        "channels_last",
        "deterministic",
        "threads",
        "inference_stride",  # written to the bundle only
        "inference_mirror",  # written to the bundle only
        "time_budget",  # a resumed run keeps the iterations its checkpoint was sized to
    }
)

_ANY = object()
# settings added after checkpoints were first written: a checkpoint that does not record one was
# made by an earlier RADA, before the setting existed, so it ran with what is now its default;
# "spacing" is not compared (such a run trained on each volume's own grid)
ADDED_SETTINGS: dict[str, Any] = {
    "spacing": _ANY,
    "spacing_factor": 1.0,
    "fit_patch": False,
    "fit_spacing": False,
    "training_region": "batch",
    "intensity_augment": 0.0,
    "intensity_contrast": 0.25,
    "intensity_shift": 0.3,
    "scale_augment": 0.0,
    "scale_range": 0.25,
}


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> Path:
    """``torch.save`` into a temporary file, then rename: the old file stays whole until then.

    A write that fails (a full disk) is an ``InputError`` naming ``path``."""
    path = Path(path)
    with replacing(path) as temporary, open(temporary, "wb") as handle:
        writer = RecordingWriter(handle)
        try:
            torch.save(dict(payload), writer)  # type: ignore[arg-type]
        except RuntimeError:
            if writer.error is not None:  # torch reports a failed write as a RuntimeError
                raise writer.error from None
            raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training checkpoint (tensors on the CPU); raises :class:`RADAError` if unreadable."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise RADAError(
            f"{path}: cannot read the training checkpoint ({type(exc).__name__}: {exc}); "
            "delete it or train into a new folder"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise RADAError(f"{path}: not a RADA training checkpoint")
    return data


def check_compatible(saved: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    """Raise :class:`RADAError` when the checkpoint's settings ``saved`` differ from ``config``
    in anything but :data:`RUNTIME_ONLY_SETTINGS` (resuming would then mix two runs)."""
    current = config.to_dict()
    differ = sorted(
        k
        for k in set(saved) | set(current)
        if k not in RUNTIME_ONLY_SETTINGS
        and not (k not in saved and ADDED_SETTINGS.get(k) is _ANY)
        and saved.get(k, ADDED_SETTINGS.get(k)) != current.get(k)
    )
    if differ:
        raise RADAError(
            f"{path}: the checkpoint was made with other settings ({', '.join(differ)}); "
            "train into a new folder, or turn resuming off to start over"
        )


def rng_state(device: torch.device, sampler_state: dict) -> dict[str, Any]:
    """This process's random state: the batch sampler's, torch's CPU one and, on CUDA, the
    device's."""
    return {
        "sampler": sampler_state,
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(device: torch.device, state: Mapping[str, Any]) -> None:
    """Set torch's random state from :func:`rng_state` (the sampler restores its own part)."""
    torch.set_rng_state(state["torch_cpu"])
    if device.type == "cuda" and state.get("torch_cuda") is not None:
        torch.cuda.set_rng_state(state["torch_cuda"], device)
