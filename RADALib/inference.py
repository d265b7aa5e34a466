"""Inference: sliding window over a volume, the three view networks' softmax averaged, argmax.

How a new volume is segmented (paper section 3; docs/method.md, Inference):

1. the image is z-scored over the whole volume (as in training) and, when the bundle's training
   spacing differs from the volume's, resampled into it (:mod:`RADALib.resampling`);
2. Era = Adapter(Et ⊕ Ev) is computed once: Et is the text embedding stored in the bundle, and
   Ev is the bundle's *mean* region embedding over the training cohort's annotated slices (one
   mean per visual-prompt plane, concatenated), unless the caller passes the new volume's own
   region embedding (a region prompt at test time, when it carries sparse annotations:
   :mod:`RADALib.region_prompt`);
3. windows of ``patch`` voxels are taken at start positions ``0, s, 2s, ...`` per axis, the last
   one moved back to end exactly at the border (as UA-MT's ``test_single_case``); a volume
   smaller than the patch is padded (centred) and cropped back. The padding value is the
   volume's minimum after z-scoring, as the training crops are padded (``data.py``: a
   background-like value; UA-MT pads with 0, which looks like average tissue);
4. each window goes through the three networks; their softmax are averaged (the ensemble);
5. overlapping windows are averaged with **uniform** weights (sum of probabilities divided by
   the number of windows covering the voxel), the paper's choice; probabilities computed at the
   training spacing are resampled back onto the volume's own grid, class by class; then argmax
   (the label map and probabilities lie on the input's grid and are written with its header);
6. (not in the paper, and only where the bundle or the caller asks for it) steps 3-5 run on the
   volume (at the training spacing) and on its three mirror images in the (x, y) plane, and
   their probabilities are averaged before the argmax (:mod:`RADALib.mirroring`);
7. (not in the paper) each class the bundle marks as one region (it was one connected region
   in the training cohort's pseudo-labels) keeps only its largest connected component
   (:mod:`RADALib.postprocessing`); ``largest_component=True``/``False`` overrides that for
   every class. The paper's figures are the plain argmax: benchmarks pass ``False``.

Stride presets (for the paper patch 112x112x80): ``"dense"`` = (18, 18, 4), the evaluation
protocol of UA-MT/DeSCO/SGTC/RADA, and ``"fast"`` = the patch itself, i.e. the fewest windows
that cover the volume (neighbouring windows still overlap where the volume is not a multiple of
the patch, because the last window is moved back to the border). Both are clamped to the patch.
For an LA volume (183x140x88) dense is 45 windows and fast 8; a half-patch stride (12 windows)
was no closer to dense than fast in a random-weight comparison, so it is not a preset. Use
``"dense"`` to reproduce the paper's numbers; ``"fast"`` is the default for interactive use.
``"whole"`` is not a stride: each network runs once over the whole volume and γ is taken per
``fast`` window from that window's part of the bottleneck (:func:`whole_volume_inference`), so
it runs fewer network passes than ``fast``. How close it comes to ``dense`` needs a well
trained model to judge; the comparisons made so far, and the timings of every mode, are in
``Testing/Benchmarks/RESULTS.md``.

Cost: each window runs three VNets (about 240 GFLOP at base 16 and 112x112x80). On CPU they run
in the channels-last-3d layout, which oneDNN runs faster than the default layout.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .atomic import check_output_folder
from .bundle import Bundle, load_bundle
from .data import normalize_intensity
from .errors import InputError
from .events import Progress
from .mirroring import mirror_averaged_probabilities
from .networks import DOWNSAMPLING, TripleViewModel
from .paths import LABEL_SUFFIX, PROBABILITY_SUFFIX
from .postprocessing import keep_largest_component
from .region_prompt import prompt_source
from .resampling import resample_array, resample_probabilities, resampled_shape, same_spacing
from .volume import Oblique, Volume, file_suffix, read_volume, write_like

PAPER_PATCH: tuple[int, int, int] = (112, 112, 80)
"""The LA training/inference patch of the paper (x, y, z)."""

STRIDE_PRESETS: dict[str, Callable[[tuple[int, int, int]], tuple[int, int, int]]] = {
    "dense": lambda patch: tuple(min(s, p) for s, p in zip((18, 18, 4), patch)),  # type: ignore[dict-item]
    "fast": lambda patch: tuple(patch),  # type: ignore[dict-item]
}
"""Stride presets as functions of the patch: ``dense`` (paper protocol) and ``fast``."""

WHOLE = "whole"
"""Not a stride: one pass of each network over the whole volume (:func:`whole_volume_inference`)."""

INFERENCE_MODES: tuple[str, ...] = (*STRIDE_PRESETS, WHOLE)
"""What ``stride`` may name: the stride presets, or ``"whole"``."""

MAX_WHOLE_VOXELS = 8_000_000
"""Above this many (padded) voxels ``"whole"`` falls back to ``"fast"`` windows: a whole pass
holds each network's feature maps for the whole volume, so its memory grows with the volume;
this bound keeps a pass with the paper network within an ordinary workstation's memory (the
memory measured on an LA volume: ``Testing/Benchmarks/RESULTS.md``)."""

DEFAULT_STRIDE = "fast"
"""The stride used when neither the caller nor the bundle names one."""


# ----------------------------------------------------------------------------- windows


def resolve_stride(
    stride: str | Sequence[int] | None, patch: Sequence[int]
) -> tuple[int, int, int]:
    """A stride tuple from a preset name (``"dense"``, ``"fast"``) or three integers."""
    patch = _triple(patch, "patch")
    if stride is None:
        stride = DEFAULT_STRIDE
    if isinstance(stride, str):
        if stride == WHOLE:
            raise ValueError(
                f"{WHOLE!r} is not a stride: it runs no sliding windows (predict_volume takes it)"
            )
        if stride not in STRIDE_PRESETS:
            raise ValueError(
                f"unknown stride preset {stride!r}; use one of {sorted(INFERENCE_MODES)} or three integers"
            )
        return STRIDE_PRESETS[stride](patch)
    return _triple(stride, "stride")


def _triple(values: Sequence[int] | int, name: str) -> tuple[int, int, int]:
    if isinstance(values, int):
        values = (values,) * 3
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three integers, got {values!r}") from None
    if len(out) != 3 or any(int(v) != v for v in values):
        raise ValueError(f"{name} must be three integers, got {values!r}")
    return out  # type: ignore[return-value]


def check_stride(patch: Sequence[int], stride: Sequence[int]) -> None:
    """``ValueError`` unless every patch size is >= 1 and 1 <= stride <= patch on every axis."""
    patch, stride = _triple(patch, "patch"), _triple(stride, "stride")
    if any(p < 1 for p in patch):
        raise ValueError(f"patch {patch}: every size must be at least 1")
    bad = [f"axis {a}: {s}" for a, (s, p) in enumerate(zip(stride, patch)) if not 1 <= s <= p]
    if bad:
        raise ValueError(
            f"stride {stride} must satisfy 1 <= stride <= patch {patch} on every axis "
            f"(a stride larger than the patch would leave gaps); invalid: {', '.join(bad)}"
        )


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Start positions along one axis: 0, stride, 2*stride, ..., and the last at ``size - patch``.

    ``size`` must be >= ``patch`` (pad first). The number of windows is
    ``ceil((size - patch) / stride) + 1``; only the last start is moved back so that the last
    window ends exactly at the border.
    """
    if size < patch:
        raise ValueError(f"axis of {size} voxels is smaller than the patch ({patch}); pad it first")
    if not 1 <= stride <= patch:
        raise ValueError(f"stride {stride} must be between 1 and the patch size {patch}")
    count = math.ceil((size - patch) / stride) + 1
    return [min(i * stride, size - patch) for i in range(count)]


def window_grid(
    shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]
) -> list[list[int]]:
    """:func:`window_starts` for each of the three axes."""
    return [window_starts(int(n), int(p), int(s)) for n, p, s in zip(shape, patch, stride)]


def _coverage(size: int, patch: int, starts: Sequence[int]) -> np.ndarray:
    counts = np.zeros(size, np.float32)
    for start in starts:
        counts[start : start + patch] += 1
    return counts


def _padding(shape: Sequence[int], patch: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) per axis so each axis reaches at least the patch size (centred)."""
    out = []
    for n, p in zip(shape, patch):
        missing = max(0, int(p) - int(n))
        out.append((missing // 2, missing - missing // 2))
    return out


def _pad(image: Tensor, pads: Sequence[tuple[int, int]], value: float) -> Tensor:
    """``image`` (B, C, X, Y, Z) padded by (before, after) voxels per spatial axis with ``value``."""
    if not any(before or after for before, after in pads):
        return image
    flat = [v for before_after in reversed(pads) for v in before_after]  # F.pad: last axis first
    return F.pad(image, flat, mode="constant", value=float(value))


def _windows(
    grid: Sequence[Sequence[int]], padded: Sequence[int], patch: Sequence[int], device: torch.device
) -> tuple[list[tuple[int, int, int]], Tensor]:
    """The windows' corners and, per voxel, how many windows cover it."""
    corners = [(x, y, z) for x in grid[0] for y in grid[1] for z in grid[2]]
    counts = [
        torch.from_numpy(_coverage(n, p, starts)) for n, p, starts in zip(padded, patch, grid)
    ]
    coverage = counts[0][:, None, None] * counts[1][None, :, None] * counts[2][None, None, :]
    return corners, coverage.to(device)


def sliding_window_inference(
    image: Tensor,
    predictor: Callable[[Tensor], Tensor],
    patch: Sequence[int],
    stride: Sequence[int] | str,
    batch_size: int = 1,
    progress: Progress | None = None,
    pad_value: float = 0.0,
    message: str = "",
) -> Tensor:
    """Probabilities (K, X, Y, Z) of ``image`` (1, C, X, Y, Z) by overlapping windows.

    ``predictor`` maps a batch (B, C, *patch) to probabilities (B, K, *patch). Windows start at
    :func:`window_starts` along each axis and are run ``batch_size`` at a time. Overlaps are
    averaged with uniform weights: the sum of the windows' probabilities divided by the number of
    windows covering each voxel (every voxel is covered at least once). Axes shorter than the
    patch are padded with ``pad_value`` (centred) and the result is cropped back, so the output
    always has the input's spatial shape. The result is float32 on ``image``'s device.
    ``progress`` gets stage ``"inference"`` with one step per window.
    """
    if image.dim() != 5 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, X, Y, Z), got shape {tuple(image.shape)}")
    patch = _triple(patch, "patch")
    stride = resolve_stride(stride, patch)
    check_stride(patch, stride)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape = tuple(int(n) for n in image.shape[2:])
    pads = _padding(shape, patch)
    image = _pad(image, pads, pad_value)
    padded = tuple(int(n) for n in image.shape[2:])
    grid = window_grid(padded, patch, stride)
    corners, coverage = _windows(grid, padded, patch, image.device)

    if progress is not None:
        progress.start("inference", len(corners), message or f"{len(corners)} windows of {patch}")
    total: Tensor | None = None
    done = 0
    for batch in _chunks(corners, batch_size):
        windows = torch.cat([image[(slice(None), slice(None), *_box(c, patch))] for c in batch])
        probabilities = predictor(windows)
        _check_window_output(probabilities, windows, patch)
        if total is None:
            total = torch.zeros(
                (probabilities.shape[1], *padded), dtype=torch.float32, device=image.device
            )
        for corner, window in zip(batch, probabilities):
            total[(slice(None), *_box(corner, patch))] += window.to(total.dtype)
        done += len(batch)
        if progress is not None:
            progress.update(done, message)
    assert total is not None
    total /= coverage
    return _crop(total, pads, shape)


def _box(corner: Sequence[int], patch: Sequence[int]) -> tuple[slice, slice, slice]:
    """The spatial slices of the window of size ``patch`` starting at ``corner``."""
    return tuple(slice(c, c + p) for c, p in zip(corner, patch))  # type: ignore[return-value]


def _check_window_output(probabilities: Tensor, windows: Tensor, patch: Sequence[int]) -> None:
    """``ValueError`` unless the predictor returned (B, K, *patch) for the B ``windows``."""
    expected = (windows.shape[0], patch[0], patch[1], patch[2])
    if probabilities.dim() != 5 or (probabilities.shape[0], *probabilities.shape[2:]) != expected:
        raise ValueError(
            f"predictor returned shape {tuple(probabilities.shape)} for windows {tuple(windows.shape)}; "
            f"expected (B, K, {patch[0]}, {patch[1]}, {patch[2]})"
        )


def _crop(volume: Tensor, pads: Sequence[tuple[int, int]], shape: Sequence[int]) -> Tensor:
    """``volume`` (K, X, Y, Z) without the padding ``pads`` (before, after): back to ``shape``."""
    (x0, _), (y0, _), (z0, _) = pads
    return volume[:, x0 : x0 + shape[0], y0 : y0 + shape[1], z0 : z0 + shape[2]].contiguous()


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def whole_volume_inference(
    model: TripleViewModel,
    image: Tensor,
    era: Tensor | None,
    patch: Sequence[int],
    pad_value: float = 0.0,
    progress: Progress | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """Probabilities (K, X, Y, Z) of ``image`` (1, 1, X, Y, Z) from one pass of each view
    network over the whole volume, padded (centred, ``pad_value``) to a multiple of 16 and at
    least ``patch``.

    γ is a per-window quantity (eq. 4: GAP over a patch's bottleneck). Since the head is a
    1x1x1 conv, Conv3D(Z ⊕ γ) = Conv3D(Z) + W·γ (eq. 5): each network's decoder map Z is
    computed once for the volume, and for each window of the ``fast`` grid (the fewest
    patch-sized windows that cover it, all starting on the bottleneck's grid) γ is computed from
    that window's part of the bottleneck and its W·γ added to the window's logits. Softmax per
    window, averaged over the windows that cover a voxel and over the three networks, as
    :func:`sliding_window_inference` does. Z itself sees the whole volume instead of one
    window with zero padding at its borders. With a volume of exactly one patch it is the
    windowed inference.
    """
    if image.dim() != 5 or image.shape[:2] != (1, 1):
        raise ValueError(f"image must be (1, 1, X, Y, Z), got shape {tuple(image.shape)}")
    patch = _triple(patch, "patch")
    if any(p < DOWNSAMPLING or p % DOWNSAMPLING for p in patch):
        raise ValueError(f"patch {patch}: every size must be a positive multiple of {DOWNSAMPLING}")
    shape = tuple(int(n) for n in image.shape[2:])
    padded = _whole_shape(shape, patch)
    pads = [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(shape, padded)]
    image = _pad(image, pads, pad_value).contiguous(memory_format=memory_format)
    corners, coverage = _windows(window_grid(padded, patch, patch), padded, patch, image.device)

    model.eval()
    nets = list(model.nets.values())
    if progress is not None:
        progress.start(
            "inference", len(nets), f"whole volume {padded}, {len(corners)} prompt window(s)"
        )
    total: Tensor | None = None
    with torch.inference_mode():
        for done, net in enumerate(nets, start=1):
            with autocast():
                features = net.vnet.encode(image)
                logits = net.head(net.vnet.decode(features)).float()[0]  # Conv3D(Z) + b
            if total is None:
                total = torch.zeros(
                    (logits.shape[0], *padded), dtype=torch.float32, device=image.device
                )
            if era is None:  # no guidance: the windows would all see the same logits
                total += torch.softmax(logits, dim=0) * coverage
            else:
                _add_prompted_windows(
                    total, net, era, features[-1], logits, corners, patch, autocast
                )
            del features, logits
            if progress is not None:
                progress.update(done)
        assert total is not None
        total /= coverage * len(nets)
        return _crop(total, pads, shape)


def _add_prompted_windows(
    total: Tensor,
    net: torch.nn.Module,
    era: Tensor,
    bottleneck: Tensor,
    logits: Tensor,
    corners: Sequence[tuple[int, int, int]],
    patch: Sequence[int],
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """Add to ``total`` each window's softmax of ``logits`` + W·γ, γ from its part of
    ``bottleneck`` (eqs. 4-5)."""
    for corner in corners:
        window = (slice(None), *_box(corner, patch))
        part = tuple(
            slice(c // DOWNSAMPLING, (c + p) // DOWNSAMPLING) for c, p in zip(corner, patch)
        )
        with autocast():
            gamma = net.gamma(era, bottleneck[(slice(None), slice(None), *part)])  # eq. (4)
            shift = F.conv3d(gamma, net.head.weight).float()[0]  # W·γ, (K, 1, 1, 1)
        total[window] += torch.softmax(logits[window] + shift, dim=0)  # eq. (5)


def _whole_shape(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """The padded shape of a ``"whole"`` pass: a multiple of the VNet's downsampling, >= patch."""
    return tuple(
        max(int(p), DOWNSAMPLING * math.ceil(int(n) / DOWNSAMPLING)) for n, p in zip(shape, patch)
    )


def whole_volume_voxels(shape: Sequence[int], patch: Sequence[int]) -> int:
    """Voxels of the padded volume a ``"whole"`` pass works on."""
    return math.prod(_whole_shape(shape, patch))


# ----------------------------------------------------------------------------- the ensemble


def ensemble_probabilities(model: TripleViewModel, x: Tensor, era: Tensor | None) -> Tensor:
    """Mean over the three view networks of softmax(logits) (B, K, ...), in float32.

    Puts ``model`` in eval mode (batch-norm running statistics, no dropout) and runs without
    gradients.
    """
    model.eval()
    with torch.inference_mode():
        logits = model(x, era)
        total = None
        for view_logits in logits.values():
            p = torch.softmax(view_logits.float(), dim=1)
            total = p if total is None else total + p
        assert total is not None
        return total / len(logits)


# ----------------------------------------------------------------------------- one volume


@dataclass
class Prediction:
    """``label`` (x, y, z) uint8 class map; ``probabilities`` (K, x, y, z) float32 or None."""

    label: np.ndarray
    probabilities: np.ndarray | None = None
    largest_component: tuple[int, ...] = ()
    """The classes whose largest connected component alone was kept."""


def bundle_patch(bundle: Bundle, patch: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``patch``, else the bundle's inference patch, else :data:`PAPER_PATCH`; checked."""
    value = patch if patch is not None else bundle.inference_settings.get("patch") or PAPER_PATCH
    out = _triple(value, "patch")
    bad = [p for p in out if p < DOWNSAMPLING or p % DOWNSAMPLING]
    if bad:
        raise ValueError(
            f"patch {out}: every size must be a positive multiple of {DOWNSAMPLING} (the VNet halves it 4 times)"
        )
    return out


def memory_format_for(device: torch.device) -> torch.memory_format:
    """channels-last-3d on CPU (oneDNN's preferred layout), the default layout elsewhere."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def prepare_model(model: TripleViewModel, device: torch.device) -> TripleViewModel:
    """``model`` in eval mode on ``device``, in :func:`memory_format_for` layout (in place)."""
    return model.eval().to(device).to(memory_format=memory_format_for(device))


def predict_volume(
    bundle: Bundle,
    volume: Volume,
    patch: Sequence[int] | None = None,
    stride: str | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    region_embedding: np.ndarray | None = None,
    batch_size: int = 1,
    amp: bool | None = None,
    return_probabilities: bool = False,
    progress: Progress | None = None,
    largest_component: bool | None = None,
    mirror: bool | None = None,
) -> Prediction:
    """Segment one volume with a bundle (see the module docstring for the steps).

    ``patch`` / ``stride`` default to the bundle's ``inference`` settings, then to
    :data:`PAPER_PATCH` and :data:`DEFAULT_STRIDE`; ``stride`` may be a preset name.
    ``region_embedding`` (the volume's own Ev, ``region_dim`` values) replaces the bundle's
    mean. ``amp`` (default: on for CUDA) runs the networks under bfloat16 autocast on CUDA; it
    has no effect on CPU. Probabilities are returned when ``return_probabilities``.
    ``largest_component`` (see :func:`largest_component_classes`) keeps only the largest
    connected component of those classes in the label map; the probabilities stay as predicted.
    ``mirror`` (default: the bundle's ``inference.mirror``, else off) averages the
    probabilities over the volume's mirror images in the (x, y) plane
    (:mod:`RADALib.mirroring`; four passes).
    """
    device = torch.device(device)
    _check_normalization(bundle)
    patch = bundle_patch(bundle, patch)
    training_spacing = bundle.spacing
    network_shape = (
        resampled_shape(volume.shape, volume.spacing, training_spacing)
        if training_spacing is not None
        else volume.shape
    )
    asked = stride
    stride = _inference_stride(bundle, network_shape, patch, stride, progress)
    if device.type == "cpu" and asked is None and progress is not None:
        _suggest_faster_stride(network_shape, patch, stride, progress)
    _check_model_inputs(bundle)
    region = _region_embedding(bundle, region_embedding)
    model = prepare_model(bundle.model, device)
    era = _era(model, bundle.text_embedding, region, device)
    network = functools.partial(
        _volume_probabilities,
        model,
        era,
        patch,
        stride,
        batch_size,
        progress,
        _autocast(device, amp),
        memory_format_for(device),
    )
    if bundle_mirror(bundle, mirror):
        network = functools.partial(mirror_averaged_probabilities, network)
    normalized = normalize_intensity(volume.array)  # as in training
    with torch.inference_mode():
        probabilities = probabilities_on_grid(network, normalized, volume.spacing, training_spacing)
        label = probabilities.argmax(dim=0).to(torch.uint8).cpu().numpy()
        kept = (
            probabilities.cpu().numpy().astype(np.float32, copy=False)
            if return_probabilities
            else None
        )
    post = largest_component_classes(bundle, largest_component)
    if post:
        label = keep_largest_component(label, post)
    return Prediction(label=label, probabilities=kept, largest_component=tuple(post))


def bundle_mirror(bundle: Bundle, mirror: bool | None = None) -> bool:
    """``mirror``, else the bundle's ``inference.mirror`` (a bundle that names none: off)."""
    if mirror is not None:
        return bool(mirror)
    return bool(bundle.inference_settings.get("mirror", False))  # checked by load_bundle


def probabilities_on_grid(
    network: Callable[[np.ndarray], Tensor],
    image: np.ndarray,
    spacing: Sequence[float],
    training_spacing: Sequence[float] | None,
) -> Tensor:
    """``network``'s probabilities (K, X, Y, Z) for ``image`` on ``image``'s own grid.

    With a ``training_spacing`` other than the image's ``spacing``, the image is resampled into
    it (:func:`~RADALib.resampling.resample_array`), ``network`` runs there, and its
    probabilities are resampled back onto the image's grid, class by class (take the argmax
    afterwards); otherwise ``network`` runs on ``image`` as it is.
    """
    if training_spacing is None or same_spacing(spacing, training_spacing):
        return network(image)
    probabilities = network(resample_array(image, spacing, training_spacing))
    back = resample_probabilities(
        probabilities.float().cpu().numpy(), training_spacing, spacing, image.shape
    )
    return torch.from_numpy(back).to(probabilities.device)


def _volume_probabilities(
    model: TripleViewModel,
    era: Tensor | None,
    patch: tuple[int, int, int],
    stride: str | tuple[int, int, int],
    batch_size: int,
    progress: Progress | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    memory_format: torch.memory_format,
    normalized: np.ndarray,
) -> Tensor:
    """The ensemble's probabilities (K, X, Y, Z) of a z-scored volume: one pass per network
    (``stride`` :data:`WHOLE`) or sliding windows, padded with the volume's minimum."""
    device = next(model.parameters()).device
    image = torch.from_numpy(normalized)[None, None].to(device)
    pad_value = float(normalized.min())
    if stride == WHOLE:
        return whole_volume_inference(
            model, image, era, patch, pad_value, progress, autocast, memory_format
        )
    predictor = _ensemble_predictor(model, era, autocast, memory_format)
    return sliding_window_inference(
        image, predictor, patch, stride, batch_size, progress, pad_value=pad_value
    )


def _check_normalization(bundle: Bundle) -> None:
    """``InputError`` unless the bundle's images were normalized the way this RADA does."""
    normalization = bundle.manifest.get("normalization", "zscore")
    if normalization != "zscore":
        raise InputError(
            bundle.folder,
            f"unknown intensity normalization {normalization!r} (this RADA knows 'zscore')",
        )


def _inference_stride(
    bundle: Bundle,
    shape: Sequence[int],
    patch: tuple[int, int, int],
    stride: str | Sequence[int] | None,
    progress: Progress | None,
) -> str | tuple[int, int, int]:
    """:data:`WHOLE`, or the checked stride: ``stride``, else the bundle's, else the default.

    ``"whole"`` on a volume above :data:`MAX_WHOLE_VOXELS` falls back to the ``"fast"`` windows.
    """
    stride = stride if stride is not None else bundle.inference_settings.get("stride")
    if stride == WHOLE:
        if whole_volume_voxels(shape, patch) <= MAX_WHOLE_VOXELS:
            return WHOLE
        if progress is not None:
            progress.message(
                f"the volume {tuple(shape)} is too large for one pass; using the 'fast' windows"
            )
        stride = "fast"
    stride = resolve_stride(stride, patch)
    check_stride(patch, stride)
    return stride


def n_windows(shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]) -> int:
    """How many sliding windows cover ``shape`` (padded up to ``patch``) at ``stride``."""
    grid = window_grid([max(int(n), int(p)) for n, p in zip(shape, patch)], patch, stride)
    return math.prod(len(starts) for starts in grid)


def _suggest_faster_stride(
    shape: Sequence[int],
    patch: tuple[int, int, int],
    stride: str | tuple[int, int, int],
    progress: Progress,
) -> None:
    """On a CPU, say when the bundle's stride runs many times the windows of ``fast``."""
    if stride == WHOLE:
        return
    windows = n_windows(shape, patch, stride)
    fast = n_windows(shape, patch, resolve_stride("fast", patch))
    if windows >= 4 * fast:
        progress.message(
            f"the model's stride runs {windows} windows per volume, 'fast' {fast}: on a CPU "
            "--stride fast (the panel's Stride: fast) is many times quicker, for a little less accuracy"
        )


def _check_model_inputs(bundle: Bundle) -> None:
    """``InputError`` unless the model takes one input channel and its classes fit a uint8 map."""
    config = bundle.config
    if config.in_channels != 1:
        raise InputError(
            bundle.folder,
            f"the model expects {config.in_channels} input channels; RADA volumes have 1",
        )
    if config.n_classes > 256:
        raise InputError(bundle.folder, f"{config.n_classes} classes do not fit a uint8 label map")


def _region_embedding(bundle: Bundle, region_embedding: np.ndarray | None) -> np.ndarray | None:
    """Ev for inference: the volume's own region embedding if given, else the bundle's mean."""
    region = (
        bundle.region_embedding_mean
        if region_embedding is None
        else np.asarray(region_embedding, np.float32).ravel()
    )
    if region is not None and region.size != bundle.config.region_dim:
        raise InputError(
            "region_embedding",
            f"has {region.size} values; this model expects {bundle.config.region_dim}",
        )
    return region


def _era(
    model: TripleViewModel,
    text_embedding: np.ndarray | None,
    region: np.ndarray | None,
    device: torch.device,
) -> Tensor | None:
    """Era = Adapter(Et ⊕ Ev), computed once for the whole volume."""
    with torch.inference_mode():
        text = None if text_embedding is None else torch.as_tensor(text_embedding, device=device)
        ev = None if region is None else torch.as_tensor(region, device=device)
        return model.embed(text, ev)


def _autocast(
    device: torch.device, amp: bool | None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the context the networks run in: bfloat16 autocast on CUDA when ``amp``
    (default: on for CUDA), else nothing."""
    use_amp = (device.type == "cuda") if amp is None else bool(amp) and device.type == "cuda"
    if use_amp:
        return functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _ensemble_predictor(
    model: TripleViewModel,
    era: Tensor | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    memory_format: torch.memory_format,
) -> Callable[[Tensor], Tensor]:
    """The windows' predictor for :func:`sliding_window_inference`: the ensemble's probabilities."""

    def predictor(windows: Tensor) -> Tensor:
        windows = windows.contiguous(memory_format=memory_format)
        with autocast():
            return ensemble_probabilities(model, windows, era)

    return predictor


def largest_component_classes(bundle: Bundle, largest_component: bool | None = None) -> list[int]:
    """Classes to keep only the largest component of: the bundle's recommendation (``None``),
    every class (``True``) or none (``False``)."""
    if largest_component is None:
        return bundle.largest_component_classes
    return list(range(1, bundle.config.n_classes)) if largest_component else []


def describe_largest_component(bundle: Bundle, largest_component: bool | None = None) -> str:
    """One line for the log: which classes are post-processed, and on whose say."""
    names = [
        bundle.class_names.get(c, str(c))
        for c in largest_component_classes(bundle, largest_component)
    ]
    if largest_component is None:
        if not names and bundle.inference_settings.get("largest_component") is None:
            return (
                "every connected region kept (the model records no recommendation; "
                "--largest-component keeps the largest)"
            )
        if not names:
            return "every connected region kept (the structure was not one region in the model's pseudo-labels)"
        return (
            f"largest connected component of {', '.join(names)} kept (the model's recommendation)"
        )
    return (
        f"largest connected component of {', '.join(names)} kept (asked)"
        if names
        else "every connected region kept (asked)"
    )


# ----------------------------------------------------------------------------- files


def case_name(path: str | os.PathLike[str]) -> str:
    """The file name without its format suffix (``.nii.gz`` kept whole)."""
    name = Path(path).name
    suffix = file_suffix(path)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def output_paths(
    image: str | os.PathLike[str], out_dir: str | os.PathLike[str], case: str | None = None
) -> tuple[Path, Path]:
    """(label map, probability map) paths written for ``image`` in ``out_dir``, named for
    ``case`` (a cohort's case id) or else for the image file (:func:`case_name`)."""
    case = case or case_name(image)
    out_dir = Path(out_dir)
    return out_dir / f"{case}{LABEL_SUFFIX}.nrrd", out_dir / f"{case}{PROBABILITY_SUFFIX}.nrrd"


def predict_files(
    bundle_folder: str | os.PathLike[str] | Bundle,
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    patch: Sequence[int] | None = None,
    stride: str | Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    region_embedding: np.ndarray | Sequence[np.ndarray | None] | None = None,
    batch_size: int = 1,
    amp: bool | None = None,
    write_probabilities: bool = False,
    progress: Progress | None = None,
    oblique: Oblique = "refuse",
    largest_component: bool | None = None,
    mirror: bool | None = None,
    case_ids: Sequence[str | None] | None = None,
) -> list[Path]:
    """Segment image files; writes ``<case>_rada.nrrd`` per input into ``out_dir``.

    ``<case>`` is the input's entry in ``case_ids`` (a cohort's case ids: LA2018 names every
    image ``mri_norm2.h5``) or, where there is none, the image's file name without its suffix.

    Each label map (uint8) carries its input's header (size, spacing, origin, direction) via
    :func:`~RADALib.volume.write_like`, which writes to a temporary name and renames, so an
    existing output is never replaced by a half-written file. With ``write_probabilities``,
    ``<case>_rada_probabilities.nrrd`` holds the foreground probability (float32) for a
    two-class model; with more classes one file per foreground class,
    ``<case>_rada_probabilities_<k>.nrrd``. Returns the label map paths, in input order.

    ``region_embedding``: one array for every input, or a list with one entry per input (the
    volume's own Ev from :func:`~RADALib.region_prompt.region_embedding_for`, or None for the
    bundle's stored mean). Each case's progress message says which prompt it got.
    ``largest_component``, ``mirror``: see :func:`predict_volume`.
    """
    out_dir = check_output_folder(out_dir)  # before any work; made with the first label map
    bundle = bundle_folder if isinstance(bundle_folder, Bundle) else load_bundle(bundle_folder)
    inputs = [Path(p) for p in inputs]
    regions = _regions_per_input(region_embedding, len(inputs))
    names = list(case_ids) if case_ids is not None else [None] * len(inputs)
    if len(names) != len(inputs):
        raise ValueError(f"{len(names)} case ids for {len(inputs)} inputs")
    names = [name or case_name(path) for name, path in zip(names, inputs)]
    _check_case_names(inputs, names)
    if progress is not None:
        progress.enter("inference")
        progress.message(describe_largest_component(bundle, largest_component))
    written: list[Path] = []
    for i, path in enumerate(inputs):
        if progress is not None:
            source = prompt_source(bundle, regions[i])
            progress.message(
                f"case {i + 1}/{len(inputs)}: {path.name} (region prompt: {source})",
                region_prompt=source,
            )
        volume = read_volume(path, "image", oblique=oblique)
        result = predict_volume(
            bundle,
            volume,
            patch=patch,
            stride=stride,
            device=device,
            region_embedding=regions[i],
            batch_size=batch_size,
            amp=amp,
            return_probabilities=write_probabilities,
            progress=progress,
            largest_component=largest_component,
            mirror=mirror,
        )
        label_path, probability_path = output_paths(path, out_dir, names[i])
        write_like(volume, result.label, label_path)
        if write_probabilities and result.probabilities is not None:
            _write_probabilities(volume, result.probabilities, probability_path)
        written.append(label_path)
    return written


def _regions_per_input(
    region_embedding: np.ndarray | Sequence[np.ndarray | None] | None, n_inputs: int
) -> list[np.ndarray | None]:
    """One region embedding (or None) per input: the same for all, or the list's own."""
    if region_embedding is None or isinstance(region_embedding, np.ndarray):
        return [region_embedding] * n_inputs
    regions = list(region_embedding)
    if len(regions) != n_inputs:
        raise InputError("region_embedding", f"has {len(regions)} entries for {n_inputs} inputs")
    return regions


def _check_case_names(inputs: Sequence[Path], names: Sequence[str]) -> None:
    """``InputError`` if two inputs share a case name (their outputs would overwrite each other)."""
    seen: dict[str, Path] = {}
    for path, case in zip(inputs, names):
        if case in seen:
            raise InputError(
                path,
                f"has the same case name '{case}' as {seen[case]}; their outputs would collide",
            )
        seen[case] = path


def _write_probabilities(volume: Volume, probabilities: np.ndarray, path: Path) -> None:
    """The foreground probability at ``path`` (two classes), else one file per foreground class
    ``k`` named ``<path's stem>_<k>.nrrd``."""
    k = probabilities.shape[0]
    if k == 2:
        write_like(volume, np.ascontiguousarray(probabilities[1], np.float32), path)
        return
    for c in range(1, k):
        target = path.with_name(f"{path.stem}_{c}.nrrd")
        write_like(volume, np.ascontiguousarray(probabilities[c], np.float32), target)
