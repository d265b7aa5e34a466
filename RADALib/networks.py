"""Networks of RADA: the VNet backbone, the Adapter, the guidance MLP and the triple-view model.

Tensors are (B, C, X, Y, Z) with X, Y, Z = sagittal, coronal, axial. Equation numbers refer to
the RADA paper; the decisions it leaves open are in docs/method.md.

Architecture (UA-MT-style VNet, appendix A of the paper):

- encoder: 5 stages of 1/2/3/3/3 plain (non-residual) ``3x3x3 conv + norm + ReLU`` blocks with
  ``base * (1, 2, 4, 8, 16)`` channels, joined by ``kernel 2, stride 2`` convs (+ norm + ReLU);
- decoder: 4 ``kernel 2, stride 2`` transposed convs (+ norm + ReLU), each followed by a skip
  join and a stage of 3/3/2/1 conv blocks;
- skip join ``"add"`` (UA-MT's code, the default) or ``"concat"`` (the paper's appendix text):
  with ``"concat"`` the first conv of each decoder stage takes twice the channels;
- head: ``Dropout3d(p)`` on the last decoder map Z, then a 1x1x1 conv to the class logits.

The residual connections of the original VNet are *not* used (UA-MT's VNet uses plain conv
blocks; the ~9.45 M parameter count is that of the plain version).

Dropout is applied in train mode, or in eval mode when ``force_dropout=True`` (Monte Carlo
sampling for uncertainty without touching batch-norm running statistics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VIEWS: tuple[str, str, str] = ("sagittal", "coronal", "axial")
"""The three sub-networks of :class:`TripleViewModel`, in array-axis order (0, 1, 2)."""

Normalization = Literal["batchnorm", "instancenorm", "groupnorm", "none"]
Skip = Literal["add", "concat"]

_NORMALIZATIONS = ("batchnorm", "instancenorm", "groupnorm", "none")
_SKIPS = ("add", "concat")
ENCODER_STAGES: tuple[int, ...] = (1, 2, 3, 3, 3)
DECODER_STAGES: tuple[int, ...] = (3, 3, 2, 1)
DOWNSAMPLING = 16
"""Total downsampling factor of the encoder; every patch dimension must be a multiple of it."""


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm3d(channels)
    if kind == "instancenorm":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(min(16, channels), channels)
    return nn.Identity()


class ConvStage(nn.Sequential):
    """``n`` blocks of 3x3x3 conv + norm + ReLU; the first maps ``in_ch`` to ``out_ch``."""

    def __init__(self, n: int, in_ch: int, out_ch: int, normalization: str) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1),
                _norm(normalization, out_ch),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class Down(nn.Sequential):
    """Kernel-2 stride-2 conv + norm + ReLU (halves every spatial dimension)."""

    def __init__(self, in_ch: int, out_ch: int, normalization: str) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, 2, stride=2),
            _norm(normalization, out_ch),
            nn.ReLU(inplace=True),
        )


class Up(nn.Sequential):
    """Kernel-2 stride-2 transposed conv + norm + ReLU (doubles every spatial dimension)."""

    def __init__(self, in_ch: int, out_ch: int, normalization: str) -> None:
        super().__init__(
            nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2),
            _norm(normalization, out_ch),
            nn.ReLU(inplace=True),
        )


def check_patch_shape(x: Tensor, in_channels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, in_channels, X, Y, Z) with X, Y, Z divisible by 16."""
    shape = tuple(x.shape)
    if x.dim() != 5:
        raise ValueError(f"expected a 5D input (B, C, X, Y, Z), got shape {shape}")
    if shape[1] != in_channels:
        raise ValueError(f"expected {in_channels} input channel(s), got shape {shape}")
    bad = [n for n in shape[2:] if n % DOWNSAMPLING != 0 or n == 0]
    if bad:
        raise ValueError(
            f"input shape {shape}: every spatial dimension must be a positive multiple of "
            f"{DOWNSAMPLING} (the VNet halves it 4 times); {bad} is not"
        )


def exact_on_two_deep_maps(module: nn.Module, x: Tensor, scale: float = 1) -> Tensor:
    """``module(x)``; in fp32 instead of the CPU's bf16 autocast when ``x`` or the output (``x``'s
    extent times ``scale``: 0.5 down, 2 up) is 2 voxels deep along the first spatial axis. There oneDNN's bf16
    3-D convolution *backward* returns wrong (often NaN) weight and input gradients (every other
    extent checked, 1-6 along each axis, matches fp32; forward passes are right). A VNet meets
    such maps when its window's first axis is 16 or 32 (the maps halve it down to 1/16), so
    these layers run in fp32 and every other layer keeps bf16's speed."""
    depth = x.shape[2]
    if 2 in (depth, int(depth * scale)) and x.device.type == "cpu":
        if torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return module(x.float())
    return module(x)


class VNet(nn.Module):
    """UA-MT-style VNet (see the module docstring); ``forward(x)`` returns logits."""

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        base_filters: int = 16,
        normalization: Normalization = "batchnorm",
        dropout: bool = True,
        skip: Skip = "add",
        dropout_p: float = 0.5,
    ) -> None:
        super().__init__()
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}"
            )
        if skip not in _SKIPS:
            raise ValueError(f"skip must be one of {_SKIPS}, got {skip!r}")
        if base_filters < 1 or in_channels < 1 or n_classes < 1:
            raise ValueError("in_channels, n_classes and base_filters must be positive")
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_filters = base_filters
        self.skip = skip
        self.use_dropout = bool(dropout)
        self.dropout_p = float(dropout_p)
        ch = [base_filters * m for m in (1, 2, 4, 8, 16)]

        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for level, n in enumerate(ENCODER_STAGES):
            self.enc.append(
                ConvStage(n, in_channels if level == 0 else ch[level], ch[level], normalization)
            )
            if level < len(ch) - 1:
                self.down.append(Down(ch[level], ch[level + 1], normalization))

        factor = 2 if skip == "concat" else 1
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i, n in enumerate(DECODER_STAGES):
            level = len(ch) - 2 - i  # 3, 2, 1, 0
            self.up.append(Up(ch[level + 1], ch[level], normalization))
            self.dec.append(ConvStage(n, factor * ch[level], ch[level], normalization))

        self.out_conv = nn.Conv3d(base_filters, n_classes, 1)

    @property
    def bottleneck_channels(self) -> int:
        """Channels of the deepest encoder map (16 * base_filters)."""
        return 16 * self.base_filters

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features, shallow to deep; the last one is the bottleneck."""
        check_patch_shape(x, self.in_channels)
        features: list[Tensor] = []
        for level, stage in enumerate(self.enc):
            if level:
                x = exact_on_two_deep_maps(self.down[level - 1], features[-1], scale=0.5)
            x = exact_on_two_deep_maps(stage, x)
            features.append(x)
        return features

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """Last decoder feature map Z (``base_filters`` channels) from :meth:`encode`'s output."""
        if len(features) != len(ENCODER_STAGES):
            raise ValueError(
                f"expected {len(ENCODER_STAGES)} encoder features, got {len(features)}"
            )
        x = features[-1]
        for i, (up, stage) in enumerate(zip(self.up, self.dec)):
            skip = features[-2 - i]
            x = exact_on_two_deep_maps(up, x, scale=2)
            x = x + skip if self.skip == "add" else torch.cat([x, skip], dim=1)
            x = exact_on_two_deep_maps(stage, x)
        return x

    def apply_dropout(self, z: Tensor, force: bool = False) -> Tensor:
        """Dropout3d on Z: active in train mode, or always when ``force`` (MC sampling)."""
        if not self.use_dropout:
            return z
        return F.dropout3d(z, self.dropout_p, training=self.training or force)

    def forward(self, x: Tensor, *, force_dropout: bool = False) -> Tensor:
        """Class logits (B, n_classes, X, Y, Z)."""
        z = self.decode(self.encode(x))
        return self.out_conv(self.apply_dropout(z, force_dropout))


class Adapter(nn.Sequential):
    """Linear -> ReLU -> Linear -> ReLU; Era = Adapter(Et ⊕ Ev), eq. (3)."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 256) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
            nn.ReLU(),
        )
        self.in_dim = in_dim
        self.out_dim = out_dim


class GuidanceMLP(nn.Sequential):
    """Four 1x1x1 convs in -> 256 -> 128 -> 64 -> out with ReLU between; γ = MLP(Era ⊕ f_img), eq. (4).

    Input (B, in_channels, 1, 1, 1), output (B, out_channels, 1, 1, 1).
    """

    HIDDEN: tuple[int, int, int] = (256, 128, 64)

    def __init__(self, in_channels: int = 512, out_channels: int = 16) -> None:
        dims = [in_channels, *self.HIDDEN, out_channels]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Conv3d(dims[i], dims[i + 1], 1))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels


@dataclass
class NetworkConfig:
    """Settings of the triple-view model (paper / LA defaults); stored in the bundle manifest.

    ``region_dim`` is the width of Ev: the visual prompt is two slices (e.g. axial + axial for
    LA) whose Alpha-CLIP embeddings (512 each for ViT-B/16) are concatenated.
    """

    in_channels: int = 1
    n_classes: int = 2
    base_filters: int = 16
    skip: str = "add"
    dropout: bool = True
    text_dim: int = 512
    region_dim: int = 512 * 2
    era_dim: int = 256
    adapter_hidden_dim: int = 256
    normalization: str = "batchnorm"
    dropout_p: float = 0.5

    def __post_init__(self) -> None:
        if self.skip not in _SKIPS:
            raise ValueError(f"NetworkConfig.skip must be one of {_SKIPS}, got {self.skip!r}")
        if self.normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"NetworkConfig.normalization must be one of {_NORMALIZATIONS}, got {self.normalization!r}"
            )
        for name in ("in_channels", "n_classes", "base_filters", "era_dim", "adapter_hidden_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(
                    f"NetworkConfig.{name} must be positive, got {getattr(self, name)!r}"
                )
        for name in ("text_dim", "region_dim"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"NetworkConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.text_dim + self.region_dim < 1:
            raise ValueError("NetworkConfig: text_dim + region_dim must be positive")
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"NetworkConfig.dropout_p must be in [0, 1), got {self.dropout_p!r}")

    @property
    def guidance_in_channels(self) -> int:
        """Input width of the guidance MLP: era_dim + bottleneck channels (16 * base)."""
        return self.era_dim + 16 * self.base_filters

    def build(self) -> TripleViewModel:
        """A freshly initialised :class:`TripleViewModel`."""
        return TripleViewModel(self)

    def build_vnet(self) -> VNet:
        """A plain :class:`VNet` with these backbone settings."""
        return VNet(
            self.in_channels,
            self.n_classes,
            self.base_filters,
            self.normalization,  # type: ignore[arg-type]
            self.dropout,
            self.skip,
            self.dropout_p,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown network setting(s): {', '.join(unknown)}")
        return cls(**dict(data))


class GuidedVNet(nn.Module):
    """VNet whose head sees Z + γ, γ = MLP(Era ⊕ GAP(bottleneck)) (eqs. 4-5)."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        self.vnet = self.config.build_vnet()
        self.mlp = GuidanceMLP(self.config.guidance_in_channels, self.config.base_filters)

    @property
    def head(self) -> nn.Conv3d:
        """The 1x1x1 classification conv (shared with the backbone: Conv3D of eq. 5)."""
        return self.vnet.out_conv

    def gamma(self, era: Tensor, bottleneck: Tensor) -> Tensor:
        """γ (B, base, 1, 1, 1) from Era (B or 1, era_dim) and the bottleneck map."""
        b = bottleneck.shape[0]
        if era.dim() != 2 or era.shape[1] != self.config.era_dim or era.shape[0] not in (1, b):
            raise ValueError(
                f"era must be (B, {self.config.era_dim}) or (1, {self.config.era_dim}) "
                f"for a batch of {b}, got shape {tuple(era.shape)}"
            )
        f_img = bottleneck.mean(dim=(2, 3, 4))  # GAP
        era = era.to(f_img.dtype).expand(b, -1)
        fused = torch.cat([era, f_img], dim=1)[:, :, None, None, None]  # Era ⊕ f_img
        return self.mlp(fused)  # eq. (4)

    def forward(
        self, x: Tensor, era: Tensor | None = None, *, force_dropout: bool = False
    ) -> Tensor:
        """Logits (B, n_classes, X, Y, Z); ``era=None`` skips γ (the "no guidance" ablation)."""
        features = self.vnet.encode(x)
        z = self.vnet.apply_dropout(self.vnet.decode(features), force_dropout)
        if era is not None:
            z = z + self.gamma(era, features[-1])  # broadcast add, eq. (5)
        return self.head(z)  # eq. (5): P = Conv3D(Z ⊕ γ)


class TripleViewModel(nn.Module):
    """A shared Adapter and three :class:`GuidedVNet` (``sagittal``, ``coronal``, ``axial``)."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        self.adapter = Adapter(c.text_dim + c.region_dim, c.adapter_hidden_dim, c.era_dim)
        self.nets = nn.ModuleDict({view: GuidedVNet(c) for view in VIEWS})

    def _as_batch(self, emb: Tensor | None, dim: int, name: str) -> Tensor | None:
        if emb is None:
            return None
        if emb.dim() == 1:
            emb = emb[None]
        if emb.dim() != 2 or emb.shape[1] != dim:
            raise ValueError(f"{name} must be ({dim},) or (B, {dim}), got shape {tuple(emb.shape)}")
        return emb

    def embed(
        self, text_emb: Tensor | None, region_emb: Tensor | None, batch_size: int | None = None
    ) -> Tensor | None:
        """Era (B, era_dim) = Adapter(Et ⊕ Ev), eq. (3).

        A missing embedding is replaced by zeros of its width (text or region ablation), so the
        Adapter's input width never changes. Both missing: returns ``None`` (no guidance).
        A single embedding (1 row) is broadcast to the batch size of the other, or ``batch_size``.
        """
        c = self.config
        et = self._as_batch(text_emb, c.text_dim, "text_emb")
        ev = self._as_batch(region_emb, c.region_dim, "region_emb")
        if et is None and ev is None:
            return None
        sizes = {t.shape[0] for t in (et, ev) if t is not None} - {1}
        if batch_size is not None:
            sizes.add(batch_size)
        if len(sizes) > 1:
            raise ValueError(f"text_emb and region_emb batch sizes disagree: {sorted(sizes)}")
        b = sizes.pop() if sizes else 1
        ref = next(self.adapter.parameters())
        et = torch.zeros(b, c.text_dim, dtype=ref.dtype, device=ref.device) if et is None else et
        ev = torch.zeros(b, c.region_dim, dtype=ref.dtype, device=ref.device) if ev is None else ev
        fused = torch.cat([et.to(ref).expand(b, -1), ev.to(ref).expand(b, -1)], dim=1)  # Et ⊕ Ev
        return self.adapter(fused)  # eq. (3)

    def forward_view(
        self, view: str, x: Tensor, era: Tensor | None = None, *, force_dropout: bool = False
    ) -> Tensor:
        """Logits of one sub-network."""
        if view not in self.nets:
            raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
        return self.nets[view](x, era, force_dropout=force_dropout)

    def forward(
        self, x: Tensor, era: Tensor | None = None, *, force_dropout: bool = False
    ) -> dict[str, Tensor]:
        """Logits of the three sub-networks, keyed by view."""
        return {
            view: self.forward_view(view, x, era, force_dropout=force_dropout) for view in VIEWS
        }


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
