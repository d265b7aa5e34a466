"""A trained RADA model on disk: the *model bundle*.

A bundle is a folder holding two files:

- ``weights.safetensors``: the state dict of the :class:`~RADALib.networks.TripleViewModel`
  (floating tensors as float32; batch-norm counters stay int64), loadable on CPU;
- ``manifest.json``: everything else needed to use the weights without the training cohort::

    {"format": "rada-bundle", "format_version": 1, "created": ISO-8601 UTC, "rada_version": ...,
     "network": NetworkConfig.to_dict(),
     "classes": {"1": {"name": "left atrium", "color": [r, g, b] (0-1),
                       "terminology": {SNOMED CT category/type(/region) codes} or null}},
     "prompt": the text prompt, "visual_planes": ["axial", "axial"],
     "text_embedding": [512 floats], "region_embedding_mean": [region_dim floats],
     "encoder": {"identity": identity of the frozen encoders, "pretrained": {"vision": bool, "text": bool},
                 "files": {"vision": path, "text": path}, "region_mode": "alpha"},
     "normalization": "zscore", "inference": {"patch": [..], "stride": [..] or a preset name,
                                              "largest_component": {"classes": [1], "fractions": ...},
                                              "spacing": [x, y, z] mm, "mirror": bool},
     "training": {metrics, iterations, config...},
     "checksums": {"weights.safetensors": sha256 hex}}

``text_embedding`` is Et (the CLIP text embedding of the prompt) and ``region_embedding_mean``
is the mean Alpha-CLIP region embedding Ev over the training cohort's annotated slices, one
mean per visual-prompt plane position, concatenated in ``visual_planes`` order. Both are stored
so that inference never runs CLIP (see :mod:`RADALib.inference`); ``encoder`` lets inference
rebuild the same Alpha-CLIP tower for a new volume's own region prompt
(:mod:`RADALib.region_prompt`; ``files`` and ``region_mode`` are absent from older bundles).
``inference.largest_component`` names the classes that were one connected region in the
training cohort's pseudo-labels (:func:`~RADALib.postprocessing.recommend_largest_component`):
inference keeps only their largest component unless told otherwise (absent from older bundles:
nothing is post-processed). ``inference.spacing`` is the training spacing: inference resamples
each input into it and the probabilities back onto the input's grid (:mod:`RADALib.inference`;
absent from older bundles: every volume runs on its own grid). ``inference.mirror`` asks for the
probabilities averaged over the volume's mirror images (:mod:`RADALib.mirroring`; absent: off).

A bundle is written into a temporary sibling folder and renamed into place only when complete,
so an interrupted save never leaves a half bundle; an existing bundle of the same name is
replaced only after the new one is complete. Trained models live in
:func:`default_models_dir` (a user cache folder), never in the Slicer extension's folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .atomic import (
    ensure_writable_folder,
    fsync_path,
    incomplete_error,
    new_temporary_folder,
    write_error,
)
from .checksums import sha256_file
from .errors import InputError
from .model_store import (  # noqa: F401  (re-exported: the bundle's public names)
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    bundle_folder,
    default_models_dir,
    is_bundle,
    list_bundles,
    read_manifest,
)
from .networks import NetworkConfig, TripleViewModel
from .terminology import FALLBACK_COLORS, KNOWN_STRUCTURES, class_entry, normal_name  # noqa: F401

RESERVED_FIELDS = ("format", "format_version", "network", "checksums")
"""Manifest fields :func:`save_bundle` sets itself (they cannot be passed in)."""


def _classes_field(classes: Any, n_classes: int) -> dict[str, dict[str, Any]]:
    """Normalise ``{1: "name"}`` / ``{"1": {"name": ...}}`` / ``["name", ...]`` to manifest form."""
    if isinstance(classes, (list, tuple)):
        classes = {i + 1: c for i, c in enumerate(classes)}
    if not isinstance(classes, Mapping) or not classes:
        raise ValueError("manifest field 'classes' must map class numbers 1, 2, ... to names")
    out: dict[str, dict[str, Any]] = {}
    for key, value in classes.items():
        index = int(key)
        if isinstance(value, str):
            base = class_entry(value, index)
        else:
            given = dict(value)
            if not given.get("name"):
                raise ValueError(f"class {index} has no name")
            base = class_entry(given["name"], index)  # given fields override the table's
            base.update({k: v for k, v in given.items() if not (k == "color" and v is None)})
        color = base["color"]
        if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
            raise ValueError(f"class {index} colour must be three values in [0, 1], got {color!r}")
        base["color"] = [float(c) for c in color]
        out[str(index)] = base
    expected = [str(i) for i in range(1, n_classes)]
    if sorted(out, key=int) != expected:
        raise ValueError(
            f"the network has {n_classes} outputs (background + {n_classes - 1}), so 'classes' must "
            f"name classes {', '.join(expected)}; got {', '.join(sorted(out, key=int))}"
        )
    return {k: out[k] for k in expected}


# ----------------------------------------------------------------------------- the bundle


@dataclass
class Bundle:
    """A loaded model bundle: the model (eval mode) and what the manifest says about it."""

    folder: Path
    model: TripleViewModel
    manifest: dict[str, Any]
    classes: dict[int, dict[str, Any]]
    text_embedding: np.ndarray | None
    region_embedding_mean: np.ndarray | None
    config: NetworkConfig = field(default_factory=NetworkConfig)

    @property
    def class_names(self) -> dict[int, str]:
        """``{1: "left atrium", ...}`` (0 is background)."""
        return {k: v["name"] for k, v in self.classes.items()}

    @property
    def prompt(self) -> str | None:
        """The text prompt Et was computed from (None in a bundle without one)."""
        return self.manifest.get("prompt")

    @property
    def visual_planes(self) -> list[str]:
        """The planes of the region prompt Ev, in order (``["axial", "axial"]`` for LA)."""
        return list(self.manifest.get("visual_planes") or [])

    @property
    def inference_settings(self) -> dict[str, Any]:
        """The manifest's ``inference`` entry (``patch``, ``stride``), possibly empty."""
        return dict(self.manifest.get("inference") or {})

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """The training spacing (x, y, z) in mm every input is resampled into for the networks;
        ``None`` (a bundle from before training spacings): each volume's own grid."""
        value = self.inference_settings.get("spacing")
        return None if value is None else tuple(float(v) for v in value)  # type: ignore[return-value]

    @property
    def largest_component_classes(self) -> list[int]:
        """Classes whose largest connected component alone is kept by default (may be empty)."""
        record = self.inference_settings.get("largest_component") or {}
        return list(record.get("classes") or [])  # checked by load_bundle


def _jsonable(value: Any) -> Any:
    """numpy/torch values to plain JSON; non-finite floats become ``None``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()] if value.ndim else _jsonable(value.item())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _vector(value: Any, width: int, name: str) -> list[float] | None:
    if value is None:
        return None
    array = np.asarray(
        value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64
    ).ravel()
    if array.size != width:
        raise ValueError(
            f"manifest field {name!r} has {array.size} values; the network expects {width}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"manifest field {name!r} holds NaN or Inf")
    return [float(v) for v in array.astype(np.float32)]


def _state_dict(model: TripleViewModel) -> dict[str, torch.Tensor]:
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        state[key] = tensor.contiguous().clone()
    return state


def _fsync(path: Path) -> int:
    """Flush ``path`` to the disk (errors raised); returns its size."""
    return fsync_path(path)


def _os_error(exc: Exception) -> Exception:
    """safetensors reports a failed write as its own error ending in "(os error N)": that
    ``OSError``, else ``exc``."""
    match = re.search(r"os error (\d+)", str(exc))
    return OSError(int(match.group(1)), os.strerror(int(match.group(1)))) if match else exc


def save_bundle(
    folder: str | os.PathLike[str], model: TripleViewModel, manifest_fields: Mapping[str, Any]
) -> Path:
    """Write ``model`` and its manifest as the bundle ``folder``; returns the folder.

    ``manifest_fields`` holds everything but the fields set here (``format``,
    ``format_version``, ``network``, ``checksums``); ``classes`` (``{1: "left atrium"}`` or full
    entries) is required, colours and terminology are filled in for known structures.
    ``text_embedding`` / ``region_embedding_mean`` (arrays or lists) must match the network's
    ``text_dim`` / ``region_dim``. ``created`` and ``rada_version`` default to now / this RADA;
    ``normalization`` defaults to ``"zscore"``.

    Everything is written into a temporary sibling folder first; only a complete bundle is
    renamed into place. An existing bundle of the same name is moved aside, replaced, then
    deleted (a folder that is not a RADA bundle is never replaced: ``InputError``).
    """
    folder = Path(folder)
    reserved = sorted(set(manifest_fields) & set(RESERVED_FIELDS))
    if reserved:
        raise ValueError(f"manifest field(s) {', '.join(reserved)} are set by save_bundle itself")
    if "classes" not in manifest_fields:
        raise ValueError("manifest field 'classes' is required (e.g. {1: 'left atrium'})")
    config = model.config
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "rada_version": __version__,
        "network": config.to_dict(),
        "normalization": "zscore",
    }
    manifest.update({k: v for k, v in manifest_fields.items()})
    manifest["classes"] = _classes_field(manifest_fields["classes"], config.n_classes)
    manifest["text_embedding"] = _vector(
        manifest_fields.get("text_embedding"), config.text_dim, "text_embedding"
    )
    manifest["region_embedding_mean"] = _vector(
        manifest_fields.get("region_embedding_mean"), config.region_dim, "region_embedding_mean"
    )
    manifest = _jsonable(manifest)

    if folder.exists() and not folder.is_dir():
        raise InputError(folder, "exists and is not a folder; choose another bundle name")
    if folder.is_dir() and any(folder.iterdir()) and not is_bundle(folder):
        raise InputError(folder, "exists and is not a RADA model bundle; refusing to replace it")
    parent = folder.parent
    ensure_writable_folder(parent, folder.name)
    try:
        temporary = new_temporary_folder(folder)
    except OSError as exc:
        raise write_error(folder, exc) from None
    try:
        _write_files(temporary, model, manifest, folder)
        _move_into_place(temporary, folder)
    except OSError as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        raise write_error(folder, exc) from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return folder


def _write_files(
    temporary: Path, model: TripleViewModel, manifest: dict[str, Any], folder: Path
) -> None:
    """The weights, then the manifest with their checksum, into ``temporary``, each flushed to
    the disk; ``OSError`` when a write fails (a full disk too)."""
    from safetensors.torch import save_file

    weights = temporary / WEIGHTS_FILE
    try:
        save_file(
            _state_dict(model),
            str(weights),
            metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)},
        )
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a full disk, in safetensors' words
        raise _os_error(exc) from None
    if _fsync(weights) == 0:
        raise incomplete_error(folder / WEIGHTS_FILE)
    # safetensors makes its file private (0600); give it the umask's mode, as the folder has
    os.chmod(weights, stat.S_IMODE(temporary.stat().st_mode) & 0o666)
    manifest["checksums"] = {WEIGHTS_FILE: sha256_file(weights)}
    manifest_path = temporary / MANIFEST_FILE
    manifest_path.write_text(
        json.dumps(manifest, indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    _fsync(manifest_path)


def _move_into_place(complete: Path, folder: Path) -> None:
    """Rename the complete bundle onto ``folder``, replacing an old bundle only at the end."""
    if not folder.exists():
        os.replace(complete, folder)
        return
    # A non-empty folder cannot be atomically replaced by rename; move the old one aside first
    # (both renames are cheap and within one parent), then put the new one in its place.
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    aside.rmdir()
    os.replace(folder, aside)
    try:
        os.replace(complete, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(
            path, f"cannot be read as safetensors ({exc}); the bundle is corrupt"
        ) from None


def _check_state(path: Path, model: TripleViewModel, state: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            parts.append(f"{label}: {', '.join(keys[:3])}{more}")
    raise InputError(
        path,
        "weights do not match the network described in manifest.json (" + "; ".join(parts) + ")",
    )


def _embedding(manifest: Mapping[str, Any], key: str, width: int, path: Path) -> np.ndarray | None:
    value = manifest.get(key)
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float32).ravel()
    except (TypeError, ValueError):
        raise InputError(path, f"field {key!r} is not a list of numbers") from None
    if array.size != width:
        raise InputError(
            path, f"field {key!r} has {array.size} values; the network expects {width}"
        )
    return array


def _check_inference(manifest_path: Path, inference: Any, n_classes: int) -> None:
    """``InputError`` unless the manifest's ``inference`` entry holds a valid largest-component
    record, training spacing and mirror switch (each may be absent)."""
    record = inference.get("largest_component") if isinstance(inference, Mapping) else None
    if record is not None:
        kept = record.get("classes") if isinstance(record, Mapping) else None
        if not isinstance(kept, list) or not all(
            type(c) is int and 0 < c < n_classes for c in kept
        ):
            raise InputError(
                manifest_path,
                "field 'inference.largest_component' must hold a list 'classes' of "
                f"class numbers 1..{n_classes - 1}, got {str(record)[:80]}",
            )
    spacing = inference.get("spacing") if isinstance(inference, Mapping) else None
    if spacing is not None and not (
        isinstance(spacing, list)
        and len(spacing) == 3
        and all(type(s) in (int, float) and math.isfinite(s) and s > 0 for s in spacing)
    ):
        raise InputError(
            manifest_path,
            f"field 'inference.spacing' must be three positive sizes in mm, got {str(spacing)[:80]}",
        )
    mirror = inference.get("mirror") if isinstance(inference, Mapping) else None
    if mirror is not None and not isinstance(mirror, bool):
        raise InputError(
            manifest_path, f"field 'inference.mirror' must be true or false, got {str(mirror)[:80]}"
        )


def load_bundle(folder: str | os.PathLike[str], device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle: checks the manifest, the weights' checksum and the state dict's keys/shapes.

    The weights are read on CPU as float32, then the model (in eval mode) is moved to
    ``device``. Every refusal is an :class:`InputError` naming the file at fault.
    """
    folder = bundle_folder(folder)
    manifest = read_manifest(folder)
    manifest_path = folder / MANIFEST_FILE
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InputError(weights, f"missing: the bundle {folder} has no {WEIGHTS_FILE}")
    expected_sum = (manifest.get("checksums") or {}).get(WEIGHTS_FILE)
    if not expected_sum:
        raise InputError(
            manifest_path, f"has no checksum for {WEIGHTS_FILE}; the bundle is incomplete"
        )
    found_sum = sha256_file(weights)
    if found_sum != str(expected_sum).lower():
        raise InputError(
            weights,
            f"checksum mismatch (sha256 {found_sum[:12]}..., manifest says {str(expected_sum)[:12]}...): "
            "the file is corrupt or was changed after the bundle was saved",
        )
    try:
        config = NetworkConfig.from_dict(manifest.get("network") or {})
    except (TypeError, ValueError) as exc:
        raise InputError(manifest_path, f"invalid 'network' settings: {exc}") from None
    model = config.build()
    state = _load_state(weights)
    _check_state(weights, model, state)
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=True)
    model = model.float().eval().to(device)

    try:
        classes_raw = manifest.get("classes") or {}
        classes = {int(k): dict(v) for k, v in classes_raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise InputError(
            manifest_path, "field 'classes' must map class numbers to entries"
        ) from None
    if sorted(classes) != list(range(1, config.n_classes)):
        raise InputError(
            manifest_path,
            f"field 'classes' names classes {sorted(classes)}, but the network has {config.n_classes} outputs "
            f"(expected classes 1..{config.n_classes - 1})",
        )
    _check_inference(manifest_path, manifest.get("inference") or {}, config.n_classes)
    return Bundle(
        folder=folder,
        model=model,
        manifest=manifest,
        classes=dict(sorted(classes.items())),
        text_embedding=_embedding(manifest, "text_embedding", config.text_dim, manifest_path),
        region_embedding_mean=_embedding(
            manifest, "region_embedding_mean", config.region_dim, manifest_path
        ),
        config=config,
    )


def check_classes(bundle: Bundle, expected: Mapping[int, str]) -> None:
    """Raise :class:`InputError` unless ``bundle`` was trained for exactly the classes ``expected``.

    Names are compared case-insensitively ("Left Atrium" == "left_atrium"); background (0) is
    ignored.
    """
    want = {int(k): normal_name(v) for k, v in expected.items() if int(k) != 0}
    have = {k: normal_name(v) for k, v in bundle.class_names.items()}
    if want == have:
        return

    def describe(classes: Mapping[int, str]) -> str:
        return ", ".join(f"{k} '{v}'" for k, v in sorted(classes.items())) or "none"

    raise InputError(
        bundle.folder,
        f"this model was trained for classes {describe(bundle.class_names)}, but classes "
        f"{describe({int(k): v for k, v in expected.items() if int(k) != 0})} were asked for; "
        "train a model for these classes or choose another model",
    )
