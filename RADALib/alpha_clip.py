"""Alpha-CLIP vision tower and CLIP text tower, with loaders for the official checkpoints.

The vision tower is open_clip's :class:`~open_clip.transformer.VisionTransformer` plus
``conv1_alpha``: a patch-embedding convolution with one input channel and no bias, whose output
is added to the RGB patch embedding ``conv1(image)`` before the class token and the positional
embedding are added (Alpha-CLIP, Sun et al. 2023). Everything else is OpenAI CLIP's ViT:
QuickGELU activations, ``ln_pre``, pre-norm residual blocks, ``ln_post`` on the class token and
the ``proj`` matrix, so the output is CLIP's (unnormalised) image feature.

The text tower is open_clip's :class:`~open_clip.transformer.TextTransformer` with QuickGELU,
whose parameter names are those of OpenAI CLIP's text side (``token_embedding.weight``,
``positional_embedding``, ``transformer.resblocks.N.*``, ``ln_final.*``, ``text_projection``).

Checkpoint layouts read here:

* Alpha-CLIP visual checkpoints (``clip_b16_grit1m_fultune_8xe.pth`` and friends): the visual
  tower only, in OpenAI key layout, the attention in-projection stored as
  ``attn.in_proj.weight`` / ``attn.in_proj.bias`` (an ``nn.Linear``); ``attn.in_proj_weight`` /
  ``attn.in_proj_bias`` (``nn.MultiheadAttention``) are accepted too. Keys may carry a prefix
  (``visual.``, ``module.``, ...) and the dict may be wrapped (``{"state_dict": ...}``,
  ``{"model": ...}``). See :func:`convert_alpha_clip_state_dict`.
* OpenAI CLIP checkpoints for the text tower: the TorchScript archives OpenAI publishes
  (``ViT-B-16.pt``), or plain state dicts of a whole CLIP model in OpenAI / open_clip layout
  (both name the text parameters alike), or a text-only state dict.

Architectures are inferred from tensor shapes; the number of attention heads is not visible in
shapes and follows OpenAI's rule ``heads = width // 64`` (ViT-B/16 vision 12, text 8; ViT-L/14
vision 16, text 12).

Everything is loaded with ``map_location="cpu"`` and ``weights_only=True`` (TorchScript archives
through ``torch.jit.load``, which runs no pickled Python) and cast to float32, so fp16
checkpoints load on a CPU-only machine.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer, VisionTransformer
from torch import nn

from .errors import InputError

HEAD_WIDTH = 64
"""OpenAI CLIP's attention head width: ``heads = width // 64`` for both towers."""

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "weights")
_TEXT_EXTRA_KEYS = (
    "logit_scale",
    "logit_bias",
    "input_resolution",
    "context_length",
    "vocab_size",
    "attn_mask",
)
_RESBLOCK_RE = re.compile(r"^transformer\.resblocks\.(\d+)\.")


# --------------------------------------------------------------------------------------------
# Architecture specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionSpec:
    """Shape of an Alpha-CLIP ViT: token width, depth, heads, patch and image size, output dim."""

    width: int = 768
    layers: int = 12
    heads: int = 12
    patch_size: int = 16
    image_size: int = 224
    output_dim: int = 512
    mlp_ratio: float = 4.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for identities and bundles."""
        return asdict(self)


@dataclass(frozen=True)
class TextSpec:
    """Shape of a CLIP text transformer."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    output_dim: int = 512
    mlp_ratio: float = 4.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict, for identities and bundles."""
        return asdict(self)


def specs_for_arch(arch: str) -> tuple[VisionSpec, TextSpec]:
    """Vision and text specs of an open_clip architecture name (``"ViT-B-16"``, ``"ViT-L-14"``...)."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise InputError("arch", f"unknown CLIP architecture {arch!r} (try ViT-B-16 or ViT-L-14)")
    v, t, dim = cfg["vision_cfg"], cfg["text_cfg"], int(cfg["embed_dim"])
    if not isinstance(v.get("layers"), int) or v.get("timm_model_name") or t.get("hf_model_name"):
        raise InputError("arch", f"{arch!r} is not an OpenAI-style ViT CLIP")
    vw = int(v.get("width", 768))
    image_size = v.get("image_size", 224)
    image_size = int(image_size if isinstance(image_size, int) else image_size[0])
    vision = VisionSpec(
        width=vw,
        layers=int(v["layers"]),
        heads=vw // int(v.get("head_width", HEAD_WIDTH)),
        patch_size=int(v.get("patch_size", 16)),
        image_size=image_size,
        output_dim=dim,
        mlp_ratio=float(v.get("mlp_ratio", 4.0)),
    )
    text = TextSpec(
        width=int(t.get("width", 512)),
        layers=int(t.get("layers", 12)),
        heads=int(t.get("heads", 8)),
        context_length=int(t.get("context_length", 77)),
        vocab_size=int(t.get("vocab_size", 49408)),
        output_dim=dim,
        mlp_ratio=float(t.get("mlp_ratio", 4.0)),
    )
    return vision, text


# --------------------------------------------------------------------------------------------
# Towers
# --------------------------------------------------------------------------------------------


class AlphaCLIPVisionTransformer(VisionTransformer):
    """open_clip's ViT with Alpha-CLIP's alpha patch embedding (``conv1_alpha``).

    ``forward(image (B,3,S,S), alpha (B,1,S,S)) -> (B, output_dim)``: CLIP's projected image
    feature, not normalised. ``image`` is CLIP-normalised RGB, ``alpha`` the mask normalised
    with (0.5, 0.26) (foreground about +1.92, background about -1.92).
    """

    def __init__(self, spec: VisionSpec) -> None:
        super().__init__(
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            width=spec.width,
            layers=spec.layers,
            heads=spec.heads,
            mlp_ratio=spec.mlp_ratio,
            output_dim=spec.output_dim,
            act_layer=QuickGELU,
            norm_layer=LayerNorm,
        )
        self.spec = spec
        self.conv1_alpha = nn.Conv2d(
            in_channels=1,
            out_channels=spec.width,
            kernel_size=spec.patch_size,
            stride=spec.patch_size,
            bias=False,
        )

    def forward(self, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Projected class-token feature of ``image`` seen through ``alpha``."""
        size = self.spec.image_size
        if image.ndim != 4 or image.shape[1:] != (3, size, size):
            raise ValueError(f"image must be (B, 3, {size}, {size}), got {tuple(image.shape)}")
        if alpha.shape != (image.shape[0], 1, size, size):
            raise ValueError(
                f"alpha must be ({image.shape[0]}, 1, {size}, {size}), got {tuple(alpha.shape)}"
            )
        dtype = self.conv1.weight.dtype
        x = self.conv1(image.to(dtype)) + self.conv1_alpha(alpha.to(dtype))  # (B, width, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.patch_dropout(x)
        x = self.ln_pre(x)
        x = self.transformer(x)  # batch-first in open_clip >= 2.24
        pooled = self.ln_post(x[:, 0])
        if self.proj is not None:
            pooled = pooled @ self.proj
        return pooled


def build_vision_tower(spec: VisionSpec, seed: int | None = None) -> AlphaCLIPVisionTransformer:
    """A vision tower with fresh weights; ``seed`` makes them reproducible (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return AlphaCLIPVisionTransformer(spec)


def build_text_tower(spec: TextSpec, seed: int | None = None) -> TextTransformer:
    """An OpenAI-style CLIP text transformer (QuickGELU, causal mask, argmax/EOT pooling)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return TextTransformer(
            context_length=spec.context_length,
            vocab_size=spec.vocab_size,
            width=spec.width,
            heads=spec.heads,
            layers=spec.layers,
            mlp_ratio=spec.mlp_ratio,
            output_dim=spec.output_dim,
            act_layer=QuickGELU,
            norm_layer=LayerNorm,
        )


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad=False`` on every parameter; returns ``module``."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# --------------------------------------------------------------------------------------------
# Reading checkpoint files
# --------------------------------------------------------------------------------------------


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _unwrap(obj: Any) -> Any:
    """Follow ``{"state_dict": {...}}``-style wrappers down to the tensor dict."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, on CPU, unwrapped from any ``{"state_dict": ...}`` dict.

    Raises :class:`InputError` naming the file when it is missing, truncated, corrupt, holds
    pickled objects other than tensors, or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found")
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj: Any = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise InputError(
            path,
            f"cannot be read as a PyTorch checkpoint (truncated, corrupt, or holding objects "
            f"other than tensors): {type(exc).__name__}: {first}",
        ) from exc
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping):
        raise InputError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise InputError(path, "holds no tensors")
    return sd


def _strip_to(sd: Mapping[str, torch.Tensor], anchor: str) -> dict[str, torch.Tensor]:
    """Keep the keys sharing the prefix in front of ``anchor`` (shortest such prefix), stripped."""
    prefixes = sorted((k[: -len(anchor)] for k in sd if k.endswith(anchor)), key=len)
    if not prefixes:
        return dict(sd)
    prefix = prefixes[0]
    if prefix and not prefix.endswith("."):
        return dict(sd)
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _to_float32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32) if t.is_floating_point() else t.detach()


def convert_alpha_clip_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An Alpha-CLIP visual state dict in OpenAI layout -> :class:`AlphaCLIPVisionTransformer` keys.

    Rules: (1) keep only the keys under the prefix in front of ``conv1.weight`` (``visual.``,
    ``module.visual.``, ... or none), stripped; (2) ``attn.in_proj.weight`` ->
    ``attn.in_proj_weight`` and ``attn.in_proj.bias`` -> ``attn.in_proj_bias`` (Alpha-CLIP's
    ``nn.Linear`` in-projection holds q, k, v stacked on the output axis, as
    ``nn.MultiheadAttention`` does); (3) every other name is the same in both layouts
    (``conv1``, ``conv1_alpha``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
    ``transformer.resblocks.N.{ln_1,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}``, ``ln_post``,
    ``proj``); (4) floating tensors become float32. Unknown keys are kept, so a strict load
    reports them.
    """
    sd = _strip_to(sd, "conv1.weight")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(".attn.in_proj.weight"):
            key = key[: -len("in_proj.weight")] + "in_proj_weight"
        elif key.endswith(".attn.in_proj.bias"):
            key = key[: -len("in_proj.bias")] + "in_proj_bias"
        out[key] = _to_float32(value)
    return out


def convert_clip_text_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The text tower of an OpenAI/open_clip CLIP state dict, as :class:`TextTransformer` keys.

    Keeps the keys under the prefix in front of ``token_embedding.weight``, drops the visual
    tower (``visual.*``) and model-level entries (``logit_scale``, ``input_resolution``, ...),
    and casts to float32. Names are otherwise identical in the two layouts.
    """
    sd = _strip_to(sd, "token_embedding.weight")
    return {
        k: _to_float32(v)
        for k, v in sd.items()
        if not k.startswith("visual.") and k not in _TEXT_EXTRA_KEYS
    }


def _layer_count(sd: Mapping[str, torch.Tensor]) -> int:
    idx = [int(m.group(1)) for k in sd if (m := _RESBLOCK_RE.match(k))]
    return max(idx) + 1 if idx else 0


def _need(sd: Mapping[str, torch.Tensor], source: Path | str, *keys: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise InputError(
            source, f"not an Alpha-CLIP/CLIP ViT checkpoint: missing keys {', '.join(missing)}"
        )


def infer_vision_spec(
    sd: Mapping[str, torch.Tensor], source: Path | str = "checkpoint"
) -> VisionSpec:
    """Width, depth, patch, image size and output dim of a converted visual state dict."""
    _need(
        sd,
        source,
        "conv1.weight",
        "positional_embedding",
        "proj",
        "transformer.resblocks.0.mlp.c_fc.weight",
    )
    width, _, patch, _ = sd["conv1.weight"].shape
    grid = round((sd["positional_embedding"].shape[0] - 1) ** 0.5)
    if grid * grid + 1 != sd["positional_embedding"].shape[0]:
        raise InputError(source, "positional_embedding does not describe a square patch grid")
    return VisionSpec(
        width=int(width),
        layers=_layer_count(sd),
        heads=max(1, int(width) // HEAD_WIDTH),
        patch_size=int(patch),
        image_size=int(grid * patch),
        output_dim=int(sd["proj"].shape[1]),
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / int(width),
    )


def infer_text_spec(sd: Mapping[str, torch.Tensor], source: Path | str = "checkpoint") -> TextSpec:
    """Width, depth, context, vocabulary and output dim of a converted text state dict."""
    _need(
        sd,
        source,
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        "transformer.resblocks.0.mlp.c_fc.weight",
    )
    vocab, width = sd["token_embedding.weight"].shape
    return TextSpec(
        width=int(width),
        layers=_layer_count(sd),
        heads=max(1, int(width) // HEAD_WIDTH),
        context_length=int(sd["positional_embedding"].shape[0]),
        vocab_size=int(vocab),
        output_dim=int(sd["text_projection"].shape[1]),
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / int(width),
    )


def _short(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """``load_state_dict(strict=True)``, with any mismatch reported as an :class:`InputError`."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(
        f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(sd) & set(expected)
        if sd[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes {_short(wrong, 3)}")
        raise InputError(source, "checkpoint does not match the model: " + "; ".join(parts))
    model.load_state_dict(dict(sd), strict=True)


def load_alpha_clip_visual(path: str | Path) -> AlphaCLIPVisionTransformer:
    """An Alpha-CLIP vision tower built to the checkpoint's shapes and loaded strictly (float32)."""
    sd = convert_alpha_clip_state_dict(read_state_dict(path))
    _need(sd, path, "conv1_alpha.weight")
    model = build_vision_tower(infer_vision_spec(sd, path), seed=0)
    load_strict(model, sd, path)
    return freeze(model)


def load_clip_text(path: str | Path) -> TextTransformer:
    """A CLIP text tower built to the checkpoint's shapes and loaded strictly (float32)."""
    sd = convert_clip_text_state_dict(read_state_dict(path))
    model = build_text_tower(infer_text_spec(sd, path), seed=0)
    load_strict(model, sd, path)
    return freeze(model)


def text_spec_of(model: TextTransformer) -> TextSpec:
    """The :class:`TextSpec` a text tower was built from."""
    return TextSpec(
        width=int(model.width),
        layers=len(model.transformer.resblocks),
        heads=int(model.heads),
        context_length=int(model.context_length),
        vocab_size=int(model.vocab_size),
        output_dim=int(model.output_dim),
        mlp_ratio=model.transformer.resblocks[0].mlp.c_fc.out_features / int(model.width),
    )
