"""Tests of the Alpha-CLIP/CLIP dual encoder, its checkpoint loading, preprocessing and caches.

No network and no pretrained weights: the tests write tiny checkpoints in the official OpenAI
key layout (ViT width 64, 2 layers, patch 16, image 64) and load them back.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from RADALib.alpha_clip import (
    TextSpec,
    VisionSpec,
    build_text_tower,
    build_vision_tower,
    convert_alpha_clip_state_dict,
    infer_text_spec,
    infer_vision_spec,
    load_alpha_clip_visual,
    load_clip_text,
)
from RADALib.encoders import (
    ALPHA_MEAN,
    ALPHA_STD,
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_PROMPT,
    EmbeddingCache,
    EncoderConfig,
    RegionAwareDualEncoder,
    preprocess_mask,
    preprocess_slice,
)
from RADALib.errors import InputError
from RADALib.weights import WEIGHTS, WeightsEntry, default_weights_dir, resolve_checkpoint

TINY_V = VisionSpec(width=64, layers=2, heads=1, patch_size=16, image_size=64, output_dim=32)
TINY_T = TextSpec(width=64, layers=2, heads=1, context_length=77, vocab_size=49408, output_dim=32)


# ------------------------------------------------------------------------------ helpers


def official_visual_sd(
    seed: int = 3, style: str = "linear", prefix: str = "", dtype=torch.float32
) -> dict:
    """A tiny Alpha-CLIP visual state dict in the official OpenAI layout."""
    tower = build_vision_tower(TINY_V, seed=seed)
    with torch.no_grad():
        torch.manual_seed(seed + 100)
        tower.conv1_alpha.weight.normal_(0, 0.2)  # Alpha-CLIP's trained alpha conv is non-zero
        for p in tower.parameters():  # make biases / norms non-trivial too
            p.add_(0.01 * torch.randn_like(p))
    out = {}
    for key, value in tower.state_dict().items():
        if style == "linear":
            key = key.replace("attn.in_proj_weight", "attn.in_proj.weight").replace(
                "attn.in_proj_bias", "attn.in_proj.bias"
            )
        out[prefix + key] = value.clone().to(dtype)
    return out


def official_text_sd(seed: int = 5) -> dict:
    """A tiny whole-CLIP state dict (visual + text + logit_scale), OpenAI layout."""
    text = build_text_tower(TINY_T, seed=seed)
    sd = {k: v.clone() for k, v in text.state_dict().items()}
    sd.update({"visual." + k: v for k, v in official_visual_sd(seed, style="mha").items()})
    sd["logit_scale"] = torch.tensor(4.6052)
    return sd


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


def region(shape=(40, 48), box=(slice(10, 25), slice(12, 30)), seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 30.0, size=shape).astype(np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[box] = 1
    return image, mask


def run_visual(model, image: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    x = preprocess_slice(image, TINY_V.image_size)[None]
    a = preprocess_mask(mask, TINY_V.image_size)[None]
    with torch.no_grad():
        return model(x, a)[0]


@pytest.fixture()
def tiny_files(tmp_path: Path) -> tuple[Path, Path]:
    vision = save(official_visual_sd(), tmp_path / "alpha_tiny.pth")
    text = save(official_text_sd(), tmp_path / "clip_tiny.pt")
    return vision, text


# ------------------------------------------------------------------------------ Alpha-CLIP loading


@pytest.mark.parametrize(
    "style,prefix,dtype,wrapper",
    [
        ("linear", "", torch.float32, None),
        ("linear", "visual.", torch.float16, "state_dict"),
        ("mha", "visual.", torch.float32, "model"),
        ("mha", "", torch.float16, None),
        ("linear", "module.visual.", torch.float32, None),
    ],
)
def test_official_layout_loads_strictly(tmp_path, style, prefix, dtype, wrapper):
    sd = official_visual_sd(style=style, prefix=prefix, dtype=dtype)
    path = save({wrapper: sd, "epoch": 8} if wrapper else sd, tmp_path / "ck.pth")
    model = load_alpha_clip_visual(path)
    assert model.spec == TINY_V
    loaded = model.state_dict()
    assert len(loaded) == len(sd)  # every key of the checkpoint became a parameter
    for key, value in sd.items():
        k = (
            key[len(prefix) :]
            .replace("in_proj.weight", "in_proj_weight")
            .replace("in_proj.bias", "in_proj_bias")
        )
        assert loaded[k].dtype == torch.float32
        assert torch.equal(loaded[k], value.float()), k
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_conversion_renames_in_proj_only():
    sd = official_visual_sd(style="linear", prefix="visual.")
    sd["token_embedding.weight"] = torch.zeros(3, 3)  # a text key beside the visual ones
    out = convert_alpha_clip_state_dict(sd)
    assert "transformer.resblocks.1.attn.in_proj_weight" in out
    assert "transformer.resblocks.1.attn.in_proj_bias" in out
    assert not any("in_proj." in k for k in out)
    assert "token_embedding.weight" not in out and not any(k.startswith("visual.") for k in out)
    assert {
        "conv1.weight",
        "conv1_alpha.weight",
        "class_embedding",
        "proj",
        "ln_post.weight",
    } <= set(out)


def test_loaded_model_reproduces_saved_tower_and_mask_matters(tmp_path):
    reference = build_vision_tower(TINY_V, seed=3)
    sd = official_visual_sd(seed=3, style="mha")
    reference.load_state_dict(sd)
    reference.eval()
    model = load_alpha_clip_visual(
        save(official_visual_sd(seed=3, style="linear"), tmp_path / "a.pth")
    )
    image, mask = region()
    out = run_visual(model, image, mask)
    assert torch.allclose(out, run_visual(reference, image, mask), atol=1e-6)
    assert out.shape == (TINY_V.output_dim,)
    _, other_mask = region(box=(slice(0, 8), slice(30, 46)))
    assert not torch.allclose(out, run_visual(model, image, other_mask), atol=1e-4)
    assert not torch.allclose(
        out, run_visual(model, image + np.linspace(0, 50, 48, dtype=np.float32), mask), atol=1e-4
    )


def test_zero_alpha_conv_is_plain_clip_vit():
    """With conv1_alpha = 0 the mask is ignored and the output is open_clip's CLIP ViT output."""
    from open_clip.transformer import VisionTransformer

    tower = build_vision_tower(TINY_V, seed=7).eval()
    with torch.no_grad():
        tower.conv1_alpha.weight.zero_()
    image, mask = region()
    a = run_visual(tower, image, mask)
    b = run_visual(tower, image, np.ones_like(mask))
    assert torch.allclose(a, b, atol=1e-6)
    plain = VisionTransformer(
        image_size=64,
        patch_size=16,
        width=64,
        layers=2,
        heads=1,
        mlp_ratio=4.0,
        output_dim=32,
        act_layer=type(tower.transformer.resblocks[0].mlp.gelu),
    ).eval()
    plain.load_state_dict(
        {k: v for k, v in tower.state_dict().items() if k != "conv1_alpha.weight"}
    )
    with torch.no_grad():
        c = plain(preprocess_slice(image, 64)[None])[0]
    assert torch.allclose(a, c, atol=1e-5)


def test_infers_real_architectures_from_shapes():
    def fake(width, layers, patch, image, out):
        grid = image // patch
        sd = {
            "conv1.weight": torch.empty(width, 3, patch, patch, device="meta"),
            "positional_embedding": torch.empty(grid * grid + 1, width, device="meta"),
            "proj": torch.empty(width, out, device="meta"),
        }
        for i in range(layers):
            sd[f"transformer.resblocks.{i}.mlp.c_fc.weight"] = torch.empty(
                4 * width, width, device="meta"
            )
        return sd

    assert infer_vision_spec(fake(768, 12, 16, 224, 512)) == VisionSpec(
        768, 12, 12, 16, 224, 512, 4.0
    )
    assert infer_vision_spec(fake(1024, 24, 14, 224, 768)) == VisionSpec(
        1024, 24, 16, 14, 224, 768, 4.0
    )
    assert infer_vision_spec(fake(1024, 24, 14, 336, 768)).image_size == 336


def test_missing_key_wrong_shape_and_bad_files_raise_input_error(tmp_path):
    sd = official_visual_sd(prefix="visual.")
    del sd["visual.transformer.resblocks.1.ln_2.bias"]
    path = save(sd, tmp_path / "missing.pth")
    with pytest.raises(InputError, match="missing keys transformer.resblocks.1.ln_2.bias") as err:
        load_alpha_clip_visual(path)
    assert str(path) in str(err.value)

    sd = official_visual_sd()
    del sd["conv1_alpha.weight"]  # a plain CLIP visual tower is not an Alpha-CLIP one
    with pytest.raises(InputError, match="conv1_alpha"):
        load_alpha_clip_visual(save(sd, tmp_path / "plain.pth"))

    sd = official_visual_sd()
    sd["transformer.resblocks.0.mlp.c_proj.bias"] = torch.zeros(65)
    path = save(sd, tmp_path / "shape.pth")
    with pytest.raises(InputError, match="wrong shapes") as err:
        load_alpha_clip_visual(path)
    assert "shape.pth" in str(err.value)

    sd = official_visual_sd()
    sd["transformer.resblocks.0.attn.lora_A"] = torch.zeros(4, 64)
    with pytest.raises(InputError, match="unexpected keys"):
        load_alpha_clip_visual(save(sd, tmp_path / "extra.pth"))

    good = save(official_visual_sd(), tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated") as err:
        load_alpha_clip_visual(truncated)
    assert "truncated.pth" in str(err.value)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(InputError, match="garbage.pth"):
        load_alpha_clip_visual(garbage)
    with pytest.raises(InputError, match="not found"):
        load_alpha_clip_visual(tmp_path / "absent.pth")


# ------------------------------------------------------------------------------ text tower


def test_text_checkpoint_whole_clip_and_torchscript(tmp_path):
    sd = official_text_sd()
    model = load_clip_text(save(sd, tmp_path / "clip.pt"))
    assert infer_text_spec(model.state_dict()) == TINY_T
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key

    # OpenAI publishes TorchScript archives: they load too (weights_only cannot read them).
    reference = build_text_tower(TINY_T, seed=5).eval()
    tokens = torch.zeros(1, 77, dtype=torch.long)
    tokens[0, :3] = torch.tensor([49406, 320, 49407])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(reference, tokens)
        torch.jit.save(traced, str(tmp_path / "clip_jit.pt"))
    jit_model = load_clip_text(tmp_path / "clip_jit.pt")
    with torch.no_grad():
        assert torch.allclose(jit_model(tokens), reference(tokens), atol=1e-6)


def test_tokenizer_matches_open_clip_offline(tiny_files, tmp_path):
    import open_clip

    vision, text = tiny_files
    enc = RegionAwareDualEncoder.from_config(
        EncoderConfig(
            vision_checkpoint=str(vision), text_checkpoint=str(text), cache_dir=str(tmp_path)
        )
    )
    prompt = DEFAULT_PROMPT.format(cls="left atrium")
    assert prompt == "An image containing the left atrium, with the rest being background"
    assert enc.prompt("left atrium") == prompt
    assert torch.equal(enc.tokenizer([prompt]), open_clip.get_tokenizer("ViT-B-16")([prompt]))


# ------------------------------------------------------------------------------ preprocessing


def test_preprocessing_values_constant_image_and_mask():
    image = np.full((32, 32), 7.5, dtype=np.float32)
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, :16] = True
    rgb = preprocess_slice(image, 64)
    assert rgb.shape == (3, 64, 64) and rgb.dtype == torch.float32
    for c in range(3):  # a constant slice is black: (0 - mean) / std
        assert torch.allclose(rgb[c], torch.full((64, 64), -CLIP_MEAN[c] / CLIP_STD[c]), atol=1e-6)
    alpha = preprocess_mask(mask, 64, transpose=False)
    assert alpha.shape == (1, 64, 64)
    fg, bg = (1 - ALPHA_MEAN) / ALPHA_STD, (0 - ALPHA_MEAN) / ALPHA_STD
    assert fg == pytest.approx(1.923, abs=1e-3) and bg == pytest.approx(-1.923, abs=1e-3)
    assert torch.allclose(alpha[0, :, :30], torch.full((64, 30), fg))
    assert torch.allclose(alpha[0, :, 34:], torch.full((64, 30), bg))
    assert alpha.min() >= bg - 1e-6 and alpha.max() <= fg + 1e-6  # bilinear edges stay in range


def test_preprocessing_minmax_range_and_orientation():
    image = np.tile(
        np.linspace(-1000, 3000, 64, dtype=np.float32)[:, None], (1, 64)
    )  # varies along x
    rgb = preprocess_slice(image, 64)  # transpose: x runs horizontally
    lo = torch.tensor([-m / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    hi = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(rgb[:, 5, 0], lo, atol=1e-6) and torch.allclose(
        rgb[:, 5, -1], hi, atol=1e-6
    )
    assert torch.allclose(rgb[:, 0, :], rgb[:, -1, :])  # constant down the columns
    rgb_t = preprocess_slice(image, 64, transpose=False)
    assert torch.allclose(rgb_t[:, 0, 5], lo, atol=1e-6)
    with pytest.raises(InputError, match="NaN"):
        preprocess_slice(np.array([[0.0, np.nan]]), 64)
    with pytest.raises(InputError, match="2D"):
        preprocess_slice(np.zeros((4, 4, 4)), 64)


def test_non_square_slice_is_padded_not_cropped():
    image = np.full((32, 16), 10.0, dtype=np.float32)  # x=32, y=16
    image[0, 0] = 0.0
    mask = np.ones((32, 16), dtype=np.uint8)
    rgb = preprocess_slice(image, 64)
    alpha = preprocess_mask(mask, 64)
    assert rgb.shape == (3, 64, 64) and alpha.shape == (1, 64, 64)
    black = -CLIP_MEAN[0] / CLIP_STD[0]
    # transposed: 16 rows x 32 columns, centred in a 32x32 square -> 8 padded rows above and below
    assert torch.allclose(rgb[0, :14], torch.full((14, 64), black), atol=1e-5)
    assert torch.allclose(rgb[0, 50:], torch.full((14, 64), black), atol=1e-5)
    assert rgb[0, 24:40, 8:56].mean() > 1.5  # the slice itself is bright and kept whole
    assert torch.allclose(alpha[0, :14], torch.full((14, 64), -ALPHA_MEAN / ALPHA_STD))
    assert torch.allclose(alpha[0, 18:46], torch.full((28, 64), (1 - ALPHA_MEAN) / ALPHA_STD))


# ------------------------------------------------------------------------------ dual encoder


def test_random_weights_warn_and_vit_b16_text_shape(tmp_path, caplog):
    cfg = EncoderConfig(arch="ViT-B-16", cache_dir=str(tmp_path / "empty"), seed=11)
    with caplog.at_level(logging.WARNING, logger="RADALib.encoders"):
        enc = RegionAwareDualEncoder.from_config(cfg)
    assert (
        "encoder weights not found: running with RANDOM Alpha-CLIP/CLIP weights; results will not match the paper"
        in caplog.text
    )
    assert (
        f"(put clip_b16_grit1m_fultune_8xe.pth, ViT-B-16.pt in {tmp_path / 'empty'} to use them)"
        in caplog.text
    )
    assert enc.pretrained == {"vision": False, "text": False}
    ident = enc.identity()
    assert (
        ident["pretrained"] == {"vision": False, "text": False}
        and ident["vision"]["sha256"] is None
    )
    assert ident["vision"]["spec"]["width"] == 768 and ident["vision"]["spec"]["patch_size"] == 16
    assert not any(p.requires_grad for p in enc.vision.parameters())
    assert not any(p.requires_grad for p in enc.text.parameters())
    assert not enc.vision.training and not enc.text.training
    prompts = [enc.prompt("left atrium"), enc.prompt("kidney tumour")]
    a = enc.encode_text(prompts)
    assert a.shape == (2, 512) and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert np.array_equal(a, enc.encode_text(prompts))
    assert not np.allclose(a[0], a[1])
    # (the 224 px vision forward of this random ViT-B/16 is timed outside the tests; the tiny
    # towers above exercise the same code)


def test_random_towers_are_seeded():
    def params(module):
        return torch.cat([p.flatten() for p in module.parameters()])

    assert torch.equal(
        params(build_text_tower(TINY_T, seed=4)), params(build_text_tower(TINY_T, seed=4))
    )
    assert not torch.equal(
        params(build_text_tower(TINY_T, seed=4)), params(build_text_tower(TINY_T, seed=5))
    )
    assert torch.equal(
        params(build_vision_tower(TINY_V, seed=4)), params(build_vision_tower(TINY_V, seed=4))
    )
    state = torch.get_rng_state()
    build_vision_tower(TINY_V, seed=9)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_dual_encoder_with_checkpoints(tiny_files, tmp_path):
    vision, text = tiny_files
    enc = RegionAwareDualEncoder.from_config(
        EncoderConfig(
            vision_checkpoint=str(vision),
            text_checkpoint=str(text),
            cache_dir=str(tmp_path),
            batch_size=2,
        )
    )
    assert enc.pretrained == {"vision": True, "text": True}
    ident = enc.identity()
    assert (
        ident["vision"]["checkpoint"] == "alpha_tiny.pth"
        and ident["text"]["checkpoint"] == "clip_tiny.pt"
    )
    assert ident["vision"]["sha256"] == hashlib.sha256(vision.read_bytes()).hexdigest()
    assert ident["text"]["sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()
    regions = [region(seed=i, box=(slice(2 * i, 20 + i), slice(5, 30))) for i in range(3)]
    slices, masks = [r[0] for r in regions], [r[1] for r in regions]
    batched = enc.encode_regions(slices, masks)
    assert batched.shape == (3, 32)
    for i in range(3):
        assert np.allclose(batched[i], enc.encode_regions([slices[i]], [masks[i]])[0], atol=1e-5)
    moved = masks[0].copy()
    moved[:, :] = 0
    moved[30:38, 30:46] = 1
    assert not np.allclose(batched[0], enc.encode_regions([slices[0]], [moved])[0], atol=1e-4)
    assert enc.encode_text(["a", "b", "c"]).shape == (3, 32)
    with pytest.raises(InputError, match="differs"):
        enc.encode_regions([slices[0]], [moved[:10]])


def test_mismatched_towers_and_explicit_missing_checkpoint(tiny_files, tmp_path):
    vision, _ = tiny_files
    wide = build_text_tower(TextSpec(width=64, layers=1, heads=1, output_dim=48), seed=1)
    text48 = save(wide.state_dict(), tmp_path / "text48.pt")
    with pytest.raises(InputError, match="embedding size"):  # vision 32-d, text 48-d
        RegionAwareDualEncoder.from_config(
            EncoderConfig(
                vision_checkpoint=str(vision), text_checkpoint=str(text48), cache_dir=str(tmp_path)
            )
        )
    with pytest.raises(InputError, match="not found"):
        RegionAwareDualEncoder.from_config(
            EncoderConfig(vision_checkpoint=str(tmp_path / "nope.pth"), cache_dir=str(tmp_path))
        )


# ------------------------------------------------------------------------------ embedding cache


class CountingEncoder:
    def __init__(self, seed_ident: str = "x") -> None:
        self.region_calls = 0
        self.text_calls = 0
        self.ident = {"arch": "fake", "id": seed_ident}

    def identity(self):
        return self.ident

    def encode_regions(self, slices, masks):
        self.region_calls += 1
        return np.stack(
            [
                np.array([s.mean(), m.sum(), s.std()], dtype=np.float32)
                for s, m in zip(slices, masks)
            ]
        )

    def encode_text(self, prompts):
        self.text_calls += 1
        return np.stack([np.array([len(p), 1.0, 2.0], dtype=np.float32) for p in prompts])


def test_cache_reuses_embeddings_and_keys_follow_inputs(tmp_path):
    cache = EmbeddingCache(tmp_path / "emb")
    enc = CountingEncoder()
    (s1, m1), (s2, m2) = region(seed=1), region(seed=2)
    first = cache.regions(enc, [s1, s2], [m1, m2])
    assert enc.region_calls == 1 and first.shape == (2, 3)
    second = cache.regions(enc, [s1, s2], [m1, m2])
    assert enc.region_calls == 1 and np.array_equal(first, second)
    m1b = m1.copy()
    m1b[0, 0] = 1
    ident = enc.identity()
    assert cache.region_key(ident, s1, m1) != cache.region_key(ident, s1, m1b)
    assert cache.region_key(ident, s1, m1) != cache.region_key({"arch": "other"}, s1, m1)
    assert cache.region_key(ident, s1, m1) != cache.region_key(ident, s1, m1.astype(bool))
    third = cache.regions(enc, [s1, s1], [m1, m1b])
    assert enc.region_calls == 2 and np.array_equal(third[0], first[0])
    t1 = cache.texts(enc, ["left atrium", "kidney"])
    t2 = cache.texts(enc, ["kidney", "left atrium"])
    assert enc.text_calls == 1 and np.array_equal(t1[::-1], t2)
    assert cache.text_key(ident, "a") != cache.text_key(ident, "b")
    files = list((tmp_path / "emb").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    assert len([f for f in files if f.suffix == ".npy"]) == 5


def test_cache_with_real_encoder(tiny_files, tmp_path):
    vision, text = tiny_files
    enc = RegionAwareDualEncoder.from_config(
        EncoderConfig(
            vision_checkpoint=str(vision), text_checkpoint=str(text), cache_dir=str(tmp_path)
        )
    )
    cache = EmbeddingCache(tmp_path / "emb")
    s, m = region()
    a = cache.regions(enc, [s], [m])
    assert np.array_equal(a, enc.encode_regions([s], [m]))
    assert np.array_equal(cache.regions(enc, [s], [m]), a) and cache.hits == 1


# ------------------------------------------------------------------------------ weights registry


def test_registry_names_and_default_weights_dir(tmp_path):
    assert {"alpha-clip-vit-b16", "alpha-clip-vit-l14", "clip-vit-b16-text"} <= set(WEIGHTS)
    assert WEIGHTS["alpha-clip-vit-b16"].filename == "clip_b16_grit1m_fultune_8xe.pth"
    for entry in WEIGHTS.values():
        assert entry.sha256 is None or len(entry.sha256) == 64
    assert (
        default_weights_dir({"RADA_CACHE_DIR": str(tmp_path)}) == tmp_path / "weights"
    )  # as `rada --cache-dir`
    assert default_weights_dir({}) == Path.home() / ".cache" / "rada" / "weights"


def test_resolve_local_path_and_missing_known_name(tmp_path):
    f = save({"a": torch.zeros(1)}, tmp_path / "mine.pth")
    assert resolve_checkpoint(str(f), tmp_path / "cache", allow_download=False) == f
    with pytest.raises(InputError) as err:
        resolve_checkpoint("alpha-clip-vit-b16", tmp_path / "cache", allow_download=False)
    message = str(err.value)
    assert "clip_b16_grit1m_fultune_8xe.pth" in message
    assert str(tmp_path / "cache" / "clip_b16_grit1m_fultune_8xe.pth") in message
    assert "drive.google.com" in message
    with pytest.raises(InputError, match="known weights name"):
        resolve_checkpoint("no-such-model", tmp_path, allow_download=False)
    with pytest.raises(InputError, match="not found"):
        resolve_checkpoint(str(tmp_path / "absent.pth"), tmp_path, allow_download=False)
    # a cached file is used without downloading
    (tmp_path / "cache").mkdir()
    cached = save({"a": torch.zeros(1)}, tmp_path / "cache" / "clip_b16_grit1m_fultune_8xe.pth")
    assert (
        resolve_checkpoint("alpha-clip-vit-b16", tmp_path / "cache", allow_download=False) == cached
    )


def _entry(url: str, sha256: str | None) -> dict[str, WeightsEntry]:
    return {
        "tiny": WeightsEntry(
            "tiny",
            "tiny.pth",
            url,
            sha256,
            "alpha-clip-visual",
            "ViT-B-16",
            "https://example.org/tiny",
        )
    }


def test_download_file_url_with_checksum(tmp_path):
    source = save(official_visual_sd(), tmp_path / "src.pth")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = resolve_checkpoint(
        "tiny", cache, allow_download=True, registry=_entry(source.as_uri(), digest)
    )
    assert path == cache / "tiny.pth" and path.read_bytes() == source.read_bytes()
    assert load_alpha_clip_visual(path).spec == TINY_V
    assert sorted(p.name for p in cache.iterdir()) == ["tiny.pth"]


def test_download_with_unknown_checksum_records_it(tmp_path, caplog):
    source = save({"w": torch.ones(2)}, tmp_path / "src.pth")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="RADALib.weights"):
        path = resolve_checkpoint(
            "tiny", tmp_path / "c", allow_download=True, registry=_entry(source.as_uri(), None)
        )
    assert digest in caplog.text
    assert (tmp_path / "c" / "tiny.pth.sha256").read_text().split()[0] == digest
    assert path.is_file()


def test_fake_downloader_wrong_checksum_or_html_leaves_nothing(tmp_path):
    calls = []

    def fake(url: str, destination: Path) -> None:
        calls.append(url)
        destination.write_bytes(b"PK\x03\x04 some bytes that are not the expected file")

    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="SHA256"):
        resolve_checkpoint(
            "tiny",
            cache,
            allow_download=True,
            downloader=fake,
            registry=_entry("https://x/t", "0" * 64),
        )
    assert calls == ["https://x/t"] and list(cache.iterdir()) == []

    def html(url: str, destination: Path) -> None:
        destination.write_bytes(b"<!DOCTYPE html><html>virus scan warning</html>")

    with pytest.raises(InputError, match="did not return a checkpoint"):
        resolve_checkpoint(
            "tiny",
            cache,
            allow_download=True,
            downloader=html,
            registry=_entry("https://x/t", None),
        )
    assert list(cache.iterdir()) == []

    def broken(url: str, destination: Path) -> None:
        destination.write_bytes(b"partial")
        raise OSError("connection reset")

    with pytest.raises(InputError, match="connection reset"):
        resolve_checkpoint(
            "tiny",
            cache,
            allow_download=True,
            downloader=broken,
            registry=_entry("https://x/t", None),
        )
    assert list(cache.iterdir()) == []
