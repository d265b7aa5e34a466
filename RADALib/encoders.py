"""The frozen region-aware dual encoder: Alpha-CLIP (vision, slice + mask) and CLIP (text).

Pieces:

* Preprocessing (:func:`preprocess_slice`, :func:`preprocess_mask`), as Alpha-CLIP expects:
  a slice (float, any range) is min-max scaled to 0..255 and rounded to uint8, repeated to
  RGB, resized with PIL bicubic (as CLIP's preprocessing does), divided by 255 and normalised
  with CLIP's mean/std; its mask becomes 0/255 -> [0, 1], is resized **bilinearly**
  (antialiased, as torchvision's ``Resize`` on a tensor in Alpha-CLIP's README transform) and
  normalised with (0.5, 0.26): foreground +1.923, background -1.923, edges in between.
  A non-square slice is **padded to a square** (centred; the image with its minimum, which
  maps to 0, the mask with background) before resizing, so its aspect ratio is kept and no part
  of it is cropped away (CLIP's own centre crop could cut the foreground off). A constant slice
  becomes a black image. By default the slice is transposed first (``transpose=True``), so the
  array's axis 0 (x) runs horizontally and axis 1 (y) vertically, as a viewer shows it.
* The towers' checkpoints are found (and downloaded when allowed) by :mod:`RADALib.weights`.
* :class:`RegionAwareDualEncoder` (:meth:`~RegionAwareDualEncoder.from_config`,
  :meth:`~RegionAwareDualEncoder.encode_text`, :meth:`~RegionAwareDualEncoder.encode_regions`,
  :meth:`~RegionAwareDualEncoder.identity`). Without weights it runs seeded random towers and
  says so with a logged WARNING and ``pretrained == {"vision": False, "text": False}``.
  :class:`VisionRegionEncoder` is its Alpha-CLIP tower alone, rebuilt for a trained model's
  own region prompt (:mod:`RADALib.region_prompt`); both encode regions as
  :class:`FrozenVisionTower` does.
* :class:`EmbeddingCache`: .npy files keyed by SHA256 of (encoder identity, slice bytes, mask
  bytes) or (encoder identity, prompt), written atomically, so each cohort is encoded once.

Embeddings are CLIP's raw (unnormalised) features unless ``normalize=True`` is asked for.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .alpha_clip import (
    AlphaCLIPVisionTransformer,
    TextSpec,
    VisionSpec,
    build_text_tower,
    build_vision_tower,
    freeze,
    load_alpha_clip_visual,
    load_clip_text,
    specs_for_arch,
    text_spec_of,
)
from .atomic import ensure_writable_folder, replacing
from .checksums import sha256_file
from .errors import InputError
from .weights import (
    DEFAULT_WEIGHTS,
    WEIGHTS,
    Downloader,
    random_weights_warning,
    resolve_weights,
    weights_dir,
)

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ALPHA_MEAN = 0.5
ALPHA_STD = 0.26
DEFAULT_PROMPT = "An image containing the {cls}, with the rest being background"
PREPROCESS_VERSION = "rada-pre-1: minmax-uint8, pad-square, PIL-bicubic, mask-bilinear-aa"


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _as_2d(array: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2 or a.size == 0:
        raise InputError(what, f"must be a non-empty 2D array, got shape {a.shape}")
    return a


def pad_to_square(array: np.ndarray, value: float | int = 0) -> np.ndarray:
    """Centre ``array`` (2D) in a square of side max(H, W), filled with ``value``."""
    h, w = array.shape
    side = max(h, w)
    if h == w:
        return array
    out = np.full((side, side), value, dtype=array.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = array
    return out


def slice_to_uint8(slice2d: np.ndarray) -> np.ndarray:
    """Min-max scale a 2D slice (any range) to 0..255 and round to uint8; constant -> zeros."""
    a = _as_2d(slice2d, "slice").astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise InputError("slice", "contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def preprocess_slice(
    slice2d: np.ndarray, image_size: int = 224, transpose: bool = True
) -> torch.Tensor:
    """A slice as Alpha-CLIP's image input: (3, S, S) float32, CLIP-normalised RGB."""
    u8 = slice_to_uint8(slice2d)
    if transpose:
        u8 = u8.T
    u8 = pad_to_square(np.ascontiguousarray(u8), 0)
    rgb = Image.fromarray(u8).convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BICUBIC)
    t = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    return ((t - mean) / std).contiguous()


def preprocess_mask(
    mask2d: np.ndarray, image_size: int = 224, transpose: bool = True
) -> torch.Tensor:
    """A mask (nonzero = region) as Alpha-CLIP's alpha input: (1, S, S) float32.

    0/255 -> [0, 1] -> bilinear antialiased resize -> (x - 0.5) / 0.26.
    """
    m = _as_2d(mask2d, "mask")
    binary = (m != 0) if m.dtype != bool else m
    if transpose:
        binary = binary.T
    binary = pad_to_square(np.ascontiguousarray(binary), False)
    t = torch.from_numpy((binary.astype(np.uint8) * 255).astype(np.float32) / 255.0)[None, None]
    if t.shape[-2:] != (image_size, image_size):
        t = F.interpolate(
            t, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return ((t[0] - ALPHA_MEAN) / ALPHA_STD).contiguous()


# --------------------------------------------------------------------------------------------
# The dual encoder
# --------------------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """How to build the frozen dual encoder.

    ``vision_checkpoint`` / ``text_checkpoint``: a file path or a registry name; None means the
    architecture's default names (:data:`~RADALib.weights.DEFAULT_WEIGHTS`) if their files are
    in the weights folder, else random weights (with a warning). An explicit name or path that
    cannot be found is an error, never a silent fallback. ``cache_dir``: the weights folder
    (None: :func:`~RADALib.weights.default_weights_dir`). ``seed`` seeds random towers.
    ``transpose``: see :func:`preprocess_slice`.
    """

    arch: str = "ViT-B-16"
    vision_checkpoint: str | None = None
    text_checkpoint: str | None = None
    prompt_template: str = DEFAULT_PROMPT
    cache_dir: str | None = None
    allow_download: bool = False
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 16
    transpose: bool = True


@dataclass(frozen=True)
class WeightsInfo:
    """Where one tower's weights came from."""

    pretrained: bool
    file: str | None = None
    sha256: str | None = None
    registry_name: str | None = None


@dataclass
class _Loaded:
    model: torch.nn.Module
    info: WeightsInfo


class RegionEncoderLike(Protocol):
    """What :class:`EmbeddingCache` needs from an encoder."""

    def identity(self) -> dict[str, Any]: ...
    def encode_text(self, prompts: list[str]) -> np.ndarray: ...
    def encode_regions(self, slices: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray: ...


class FrozenVisionTower:
    """A frozen Alpha-CLIP tower (eval mode, no gradients) that encodes regions (eq. 2).

    What :class:`RegionAwareDualEncoder` and :class:`VisionRegionEncoder` share:
    ``encode_regions(slices, masks) -> (N, D)`` through :func:`encode_regions_with`.
    """

    def __init__(
        self,
        vision: AlphaCLIPVisionTransformer,
        *,
        transpose: bool = True,
        batch_size: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.vision = freeze(vision).to(self.device)
        self.transpose = transpose
        self.batch_size = max(1, int(batch_size))

    @property
    def embed_dim(self) -> int:
        """Size D of the embeddings."""
        return int(self.vision.spec.output_dim)

    def encode_regions(
        self, slices: Sequence[np.ndarray], masks: Sequence[np.ndarray], normalize: bool = False
    ) -> np.ndarray:
        """Alpha-CLIP features of each slice seen through its mask: (N, D) float32."""
        return encode_regions_with(
            self.vision,
            slices,
            masks,
            transpose=self.transpose,
            batch_size=self.batch_size,
            device=self.device,
            normalize=normalize,
        )


class VisionRegionEncoder(FrozenVisionTower):
    """The frozen Alpha-CLIP tower alone, reporting an identity recorded earlier (at training).

    ``encode_regions(slices, masks) -> (N, D)`` as :class:`RegionAwareDualEncoder`; rebuilt for a
    bundle by :func:`RADALib.region_prompt.encoder_for_bundle`.
    """

    def __init__(
        self,
        vision: AlphaCLIPVisionTransformer,
        identity: Mapping[str, Any],
        transpose: bool = True,
        batch_size: int = 16,
        device: str = "cpu",
    ) -> None:
        super().__init__(vision, transpose=bool(transpose), batch_size=batch_size, device=device)
        self._identity = copy.deepcopy(dict(identity))

    def identity(self) -> dict[str, Any]:
        """The recorded identity of the training encoder (the embedding cache's key)."""
        return copy.deepcopy(self._identity)


class RegionAwareDualEncoder(FrozenVisionTower):
    """Frozen Alpha-CLIP vision tower + CLIP text tower (eval mode, no gradients).

    ``encode_text(prompts) -> (N, D)``; ``encode_regions(slices, masks) -> (N, D)`` (float32
    numpy). ``pretrained`` says, per tower, whether real weights were loaded.
    """

    def __init__(
        self,
        vision: AlphaCLIPVisionTransformer,
        text: torch.nn.Module,
        *,
        arch: str = "ViT-B-16",
        vision_info: WeightsInfo = WeightsInfo(False),
        text_info: WeightsInfo = WeightsInfo(False),
        prompt_template: str = DEFAULT_PROMPT,
        device: str = "cpu",
        seed: int = 0,
        batch_size: int = 16,
        transpose: bool = True,
    ) -> None:
        import open_clip

        text_spec = text_spec_of(text)  # type: ignore[arg-type]
        if vision.spec.output_dim != text_spec.output_dim:
            raise InputError(
                "encoder",
                f"vision embedding size {vision.spec.output_dim} differs from text embedding size "
                f"{text_spec.output_dim}: the Alpha-CLIP and CLIP checkpoints belong to different architectures",
            )
        if text_spec.vocab_size != 49408:
            raise InputError(
                "encoder", f"text tower vocabulary {text_spec.vocab_size} is not CLIP's BPE (49408)"
            )
        super().__init__(vision, transpose=transpose, batch_size=batch_size, device=device)
        self.text = freeze(text).to(self.device)
        self.vision_spec: VisionSpec = vision.spec
        self.text_spec: TextSpec = text_spec
        self.arch = arch
        self.vision_info = vision_info
        self.text_info = text_info
        self.prompt_template = prompt_template
        self.seed = seed
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=text_spec.context_length
        )
        self.pretrained: dict[str, bool] = {
            "vision": vision_info.pretrained,
            "text": text_info.pretrained,
        }

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(
        cls, config: EncoderConfig, downloader: Downloader | None = None, warn: bool = True
    ) -> RegionAwareDualEncoder:
        """Resolve and load the checkpoints of ``config`` (random seeded towers where none).

        Random towers are logged as a warning unless ``warn`` is False (a caller that reports
        :func:`~RADALib.weights.random_weights_warning` itself, once, through its progress).
        """
        vision_spec, text_spec = specs_for_arch(config.arch)
        defaults = DEFAULT_WEIGHTS.get(config.arch, (None, None))
        cache_dir = weights_dir(config.cache_dir)

        def load(
            requested: str | None,
            default: str | None,
            loader: Callable[[Path], torch.nn.Module],
            build: Callable[[], torch.nn.Module],
        ) -> _Loaded:
            if requested is None and default is not None:
                target = cache_dir / WEIGHTS[default].filename
                if target.is_file() or config.allow_download:
                    requested = default
            if requested is None:
                return _Loaded(build(), WeightsInfo(False))
            path, entry, digest = resolve_weights(
                requested, cache_dir, config.allow_download, downloader, WEIGHTS
            )
            model = loader(path)
            info = WeightsInfo(
                True, str(path), digest or sha256_file(path), entry.name if entry else None
            )
            return _Loaded(model, info)

        vision = load(
            config.vision_checkpoint,
            defaults[0],
            load_alpha_clip_visual,
            lambda: build_vision_tower(vision_spec, seed=config.seed),
        )
        text = load(
            config.text_checkpoint,
            defaults[1],
            load_clip_text,
            lambda: build_text_tower(text_spec, seed=config.seed + 1),
        )
        random = {key: not t.info.pretrained for key, t in (("vision", vision), ("text", text))}
        if warn and any(random.values()):
            log.warning(random_weights_warning(random, config.arch, cache_dir))
        return cls(
            vision.model,  # type: ignore[arg-type]
            text.model,
            arch=config.arch,
            vision_info=vision.info,
            text_info=text.info,
            prompt_template=config.prompt_template,
            device=config.device,
            seed=config.seed,
            batch_size=config.batch_size,
            transpose=config.transpose,
        )

    # ---------------------------------------------------------------- identity

    def identity(self) -> dict[str, Any]:
        """What produced the embeddings: architecture, weights files and hashes, preprocessing.

        Stored in the model bundle and hashed into :class:`EmbeddingCache` keys.
        """

        def tower(info: WeightsInfo, spec: VisionSpec | TextSpec) -> dict[str, Any]:
            return {
                "pretrained": info.pretrained,
                "checkpoint": Path(info.file).name if info.file else None,
                "registry_name": info.registry_name,
                "sha256": info.sha256,
                "spec": spec.as_dict(),
                "seed": None if info.pretrained else self.seed,
            }

        return {
            "arch": self.arch,
            "vision": tower(self.vision_info, self.vision_spec),
            "text": tower(self.text_info, self.text_spec),
            "pretrained": dict(self.pretrained),
            "prompt_template": self.prompt_template,
            "preprocess": {
                "version": PREPROCESS_VERSION,
                "image_size": self.vision_spec.image_size,
                "transpose": self.transpose,
            },
        }

    # ---------------------------------------------------------------- encoding

    def prompt(self, class_name: str) -> str:
        """The text prompt for one class name."""
        return self.prompt_template.format(cls=class_name)

    def encode_text(self, prompts: Sequence[str], normalize: bool = False) -> np.ndarray:
        """CLIP text features of ``prompts``: (N, D) float32."""
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        tokens = self.tokenizer(prompts).to(self.device)
        with torch.inference_mode():
            out = torch.cat(
                [
                    self.text(tokens[i : i + self.batch_size])
                    for i in range(0, len(prompts), self.batch_size)
                ]
            )
            if normalize:
                out = F.normalize(out, dim=-1)
        return out.float().cpu().numpy()

    def preprocess(
        self, slice2d: np.ndarray, mask2d: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image (3,S,S), alpha (1,S,S)) for one slice and its mask (same 2D shape)."""
        s, m = np.asarray(slice2d), np.asarray(mask2d)
        if s.shape != m.shape:
            raise InputError("mask", f"shape {m.shape} differs from its slice's shape {s.shape}")
        size = self.vision_spec.image_size
        return preprocess_slice(s, size, self.transpose), preprocess_mask(m, size, self.transpose)


def encode_regions_with(
    vision: AlphaCLIPVisionTransformer,
    slices: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    transpose: bool = True,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    normalize: bool = False,
) -> np.ndarray:
    """Features of each slice seen through its mask by an Alpha-CLIP tower: (N, D) float32.

    The one place regions are encoded (:meth:`FrozenVisionTower.encode_regions`, for the dual
    encoder and the vision-only one alike), so both give the same numbers.
    """
    if len(slices) != len(masks):
        raise InputError("masks", f"{len(masks)} masks for {len(slices)} slices")
    size = vision.spec.image_size
    batch_size = max(1, int(batch_size))
    outs: list[torch.Tensor] = []
    for start in range(0, len(slices), batch_size):
        pairs = []
        for s, m in zip(slices[start : start + batch_size], masks[start : start + batch_size]):
            s, m = np.asarray(s), np.asarray(m)
            if s.shape != m.shape:
                raise InputError(
                    "mask", f"shape {m.shape} differs from its slice's shape {s.shape}"
                )
            pairs.append(
                (preprocess_slice(s, size, transpose), preprocess_mask(m, size, transpose))
            )
        images = torch.stack([p[0] for p in pairs]).to(device)
        alphas = torch.stack([p[1] for p in pairs]).to(device)
        with torch.inference_mode():
            out = vision(images, alphas)
            outs.append(F.normalize(out, dim=-1) if normalize else out)
    if not outs:
        return np.zeros((0, vision.spec.output_dim), dtype=np.float32)
    return torch.cat(outs).float().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Embedding cache
# --------------------------------------------------------------------------------------------


def _identity_bytes(identity: Mapping[str, Any]) -> bytes:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str).encode()


def _array_bytes(array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(np.asarray(array))
    return f"{a.dtype.str}{a.shape}".encode() + a.tobytes()


class EmbeddingCache:
    """Embeddings on disk as ``folder/<2 hex>/<sha256>.npy``, written atomically.

    Keys hash the encoder identity with the slice and mask bytes (dtype and shape included) or
    with the prompt text, so a changed mask, slice, prompt, checkpoint or preprocessing gives a
    new key. ``hits``/``misses`` count lookups.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    # keys
    @staticmethod
    def region_key(identity: Mapping[str, Any], slice2d: np.ndarray, mask2d: np.ndarray) -> str:
        """Key of one (slice, mask) region under an encoder identity."""
        h = hashlib.sha256(b"rada-region\0")
        for part in (_identity_bytes(identity), _array_bytes(slice2d), _array_bytes(mask2d)):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()

    @staticmethod
    def text_key(identity: Mapping[str, Any], prompt: str) -> str:
        """Key of one prompt under an encoder identity."""
        h = hashlib.sha256(b"rada-text\0")
        for part in (_identity_bytes(identity), prompt.encode("utf-8")):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()

    # storage
    def path(self, key: str) -> Path:
        """File that holds ``key``."""
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The stored array, or None (a missing or unreadable file is a miss)."""
        p = self.path(key)
        try:
            value = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: np.ndarray) -> Path:
        """Store ``value`` under ``key`` (temporary file, flushed, then renamed)."""
        p = self.path(key)
        ensure_writable_folder(p.parent)
        with replacing(p) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(value), allow_pickle=False)
        return p

    # encode through the cache
    def regions(
        self, encoder: RegionEncoderLike, slices: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> np.ndarray:
        """``encoder.encode_regions`` for the regions not cached yet; (N, D) for all."""
        if len(slices) != len(masks):
            raise InputError("masks", f"{len(masks)} masks for {len(slices)} slices")
        ident = encoder.identity()
        keys = [self.region_key(ident, s, m) for s, m in zip(slices, masks)]
        found = [self.get(k) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            fresh = encoder.encode_regions([slices[i] for i in todo], [masks[i] for i in todo])
            for i, row in zip(todo, fresh):
                self.put(keys[i], row)
                found[i] = np.asarray(row)
        return np.stack(found) if found else np.zeros((0, 0), dtype=np.float32)  # type: ignore[arg-type]

    def texts(self, encoder: RegionEncoderLike, prompts: Sequence[str]) -> np.ndarray:
        """``encoder.encode_text`` for the prompts not cached yet; (N, D) for all."""
        ident = encoder.identity()
        keys = [self.text_key(ident, p) for p in prompts]
        found = [self.get(k) for k in keys]
        todo = [i for i, v in enumerate(found) if v is None]
        if todo:
            fresh = encoder.encode_text([prompts[i] for i in todo])
            for i, row in zip(todo, fresh):
                self.put(keys[i], row)
                found[i] = np.asarray(row)
        return np.stack(found) if found else np.zeros((0, 0), dtype=np.float32)  # type: ignore[arg-type]


__all__ = [
    "ALPHA_MEAN",
    "ALPHA_STD",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_PROMPT",
    "EmbeddingCache",
    "EncoderConfig",
    "FrozenVisionTower",
    "RegionAwareDualEncoder",
    "VisionRegionEncoder",
    "WeightsInfo",
    "encode_regions_with",
    "pad_to_square",
    "preprocess_mask",
    "preprocess_slice",
    "slice_to_uint8",
]
