"""Tests of RADALib.networks (tiny volumes, channel base 4, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from RADALib.networks import (
    VIEWS,
    Adapter,
    GuidanceMLP,
    GuidedVNet,
    NetworkConfig,
    TripleViewModel,
    VNet,
    count_parameters,
)

SHAPE = (1, 1, 32, 16, 16)  # bottleneck 2x1x1: enough values for batch norm in train mode


def tiny_config(**kw) -> NetworkConfig:
    base = dict(base_filters=4, text_dim=8, region_dim=12, era_dim=16, adapter_hidden_dim=16)
    base.update(kw)
    return NetworkConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_vnet_parameter_count_matches_ua_mt():
    n = count_parameters(VNet())
    assert abs(n - 9.45e6) / 9.45e6 < 0.05, n


def test_concat_has_more_parameters_than_add():
    # concat doubles the input of each decoder stage's first conv
    assert count_parameters(VNet(base_filters=4, skip="concat")) > count_parameters(
        VNet(base_filters=4)
    )


@pytest.mark.parametrize("skip", ["add", "concat"])
@pytest.mark.parametrize("shape", [(1, 1, 32, 32, 16), (2, 1, 16, 32, 48)])
def test_vnet_shapes(skip, shape):
    net = VNet(base_filters=4, skip=skip, n_classes=3).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        feats = net.encode(x)
        z = net.decode(feats)
        out = net(x)
    assert [f.shape[1] for f in feats] == [4, 8, 16, 32, 64]
    assert tuple(feats[-1].shape[2:]) == tuple(n // 16 for n in shape[2:])
    assert tuple(z.shape) == (shape[0], 4, *shape[2:])
    assert tuple(out.shape) == (shape[0], 3, *shape[2:])


def test_add_and_concat_give_different_decoders():
    a = VNet(base_filters=4, skip="add")
    assert a.dec[0][0].in_channels == 32
    c = VNet(base_filters=4, skip="concat")
    assert c.dec[0][0].in_channels == 64
    assert c.dec[-1][0].in_channels == 8


@pytest.mark.parametrize("bad", [(1, 1, 32, 32, 20), (1, 1, 8, 32, 16)])
def test_indivisible_shape_is_a_clear_error(bad):
    net = VNet(base_filters=4)
    with pytest.raises(ValueError, match=r"\(" + ", ".join(map(str, bad)) + r"\)"):
        net(torch.randn(*bad))


def test_wrong_channels_or_rank_is_an_error():
    net = VNet(base_filters=4)
    with pytest.raises(ValueError, match="channel"):
        net(torch.randn(1, 2, 32, 32, 16))
    with pytest.raises(ValueError, match="5D"):
        net(torch.randn(1, 32, 32, 16))


def test_dropout_only_in_train_mode_or_when_forced():
    net = VNet(base_filters=4)
    x = torch.randn(*SHAPE)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
        assert torch.equal(a, b)
        running = net.enc[0][1].running_mean.clone()
        c, d = net(x, force_dropout=True), net(x, force_dropout=True)
    assert not torch.allclose(c, d)
    assert torch.equal(running, net.enc[0][1].running_mean)  # MC passes leave BN stats alone
    net.train()
    with torch.no_grad():
        assert not torch.allclose(net(x), net(x))


def test_no_dropout_flag_makes_train_mode_deterministic():
    net = VNet(base_filters=4, dropout=False).train()
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        assert torch.equal(net(x), net(x, force_dropout=True))


def test_adapter_and_mlp_layouts():
    ad = Adapter(20)
    assert [type(m).__name__ for m in ad] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert ad[0].in_features == 20 and ad[2].out_features == 256
    assert (ad(torch.randn(3, 20)) >= 0).all()
    mlp = GuidanceMLP()
    convs = [m for m in mlp if isinstance(m, torch.nn.Conv3d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [
        (512, 256),
        (256, 128),
        (128, 64),
        (64, 16),
    ]
    assert all(m.kernel_size == (1, 1, 1) for m in convs)
    assert not isinstance(mlp[-1], torch.nn.ReLU)  # γ may be negative
    out = mlp(torch.randn(2, 512, 1, 1, 1))
    assert out.shape == (2, 16, 1, 1, 1) and (out < 0).any()


def test_guidance_width_generalises_with_base():
    cfg = NetworkConfig()
    assert cfg.guidance_in_channels == 512
    g = GuidedVNet(tiny_config())
    assert g.mlp[0].in_channels == 16 + 64
    assert g.mlp[-1].out_channels == 4


@pytest.mark.parametrize("skip", ["add", "concat"])
def test_gradients_reach_adapter_mlp_and_vnet(skip):
    model = tiny_config(skip=skip).build().train()
    x = torch.randn(*SHAPE)
    era = model.embed(torch.randn(8), torch.randn(1, 12))
    outs = model(x, era)
    sum(o.square().mean() for o in outs.values()).backward()
    groups = {"adapter": model.adapter}
    for view in VIEWS:
        groups[f"{view}.mlp"] = model.nets[view].mlp
        groups[f"{view}.encoder"] = model.nets[view].vnet.enc
        groups[f"{view}.decoder"] = model.nets[view].vnet.dec
        groups[f"{view}.head"] = model.nets[view].head
    for name, module in groups.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"


def test_era_changes_the_output_and_none_skips_guidance():
    model = tiny_config().build().eval()
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        e1 = model.embed(torch.randn(8), torch.randn(1, 12))
        e2 = model.embed(torch.randn(8), torch.randn(1, 12))
        o1 = model.forward_view("axial", x, e1)
        o2 = model.forward_view("axial", x, e2)
        o_none = model.forward_view("axial", x, None)
        net = model.nets["axial"]
        plain = net.head(net.vnet.decode(net.vnet.encode(x)))
    assert not torch.allclose(o1, o2)
    assert not torch.allclose(o1, o_none)
    assert torch.allclose(o_none, plain)


def test_gamma_is_added_before_the_head():
    # eq. (5): logits = head(Z + γ), γ from Era and the pooled bottleneck
    net = GuidedVNet(tiny_config()).eval()
    x = torch.randn(*SHAPE)
    era = torch.randn(1, 16)
    with torch.no_grad():
        feats = net.vnet.encode(x)
        z = net.vnet.decode(feats)
        expected = net.head(z + net.gamma(era, feats[-1]))
        assert torch.allclose(net(x, era), expected, atol=1e-6)
        # dropout acts on Z only, γ is added after it
        torch.manual_seed(5)
        dropped = net(x, era, force_dropout=True)
        torch.manual_seed(5)
        manual = net.head(
            torch.nn.functional.dropout3d(z, 0.5, training=True) + net.gamma(era, feats[-1])
        )
        assert torch.allclose(dropped, manual, atol=1e-6)


def test_era_shape_is_checked():
    net = GuidedVNet(tiny_config())
    with pytest.raises(ValueError, match="era"):
        net(torch.randn(*SHAPE), torch.randn(1, 15))
    with pytest.raises(ValueError, match="era"):
        net(torch.randn(*SHAPE), torch.randn(3, 16))


def test_embed_ablations_keep_adapter_width():
    model = tiny_config().build()
    text, region = torch.randn(8), torch.randn(2, 12)
    with torch.no_grad():
        full = model.embed(text, region)
        no_text = model.embed(None, region)
        no_region = model.embed(text, None, batch_size=2)
        manual_no_text = model.adapter(torch.cat([torch.zeros(2, 8), region], dim=1))
        manual_no_region = model.adapter(torch.cat([text.expand(2, 8), torch.zeros(2, 12)], dim=1))
    assert full.shape == (2, 16) and no_text.shape == (2, 16) and no_region.shape == (2, 16)
    assert torch.allclose(no_text, manual_no_text)
    assert torch.allclose(no_region, manual_no_region)
    assert not torch.allclose(full, no_text)
    assert model.embed(None, None) is None
    with pytest.raises(ValueError, match="region_emb"):
        model.embed(text, torch.randn(2, 11))
    with pytest.raises(ValueError, match="batch"):
        model.embed(torch.randn(3, 8), torch.randn(2, 12))


def test_triple_view_model_structure_and_outputs():
    model = tiny_config().build().eval()
    assert list(model.nets.keys()) == list(VIEWS) == ["sagittal", "coronal", "axial"]
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        era = model.embed(torch.randn(8), torch.randn(12))
        outs = model(x, era)
    assert set(outs) == set(VIEWS)
    assert all(o.shape == (1, 2, *SHAPE[2:]) for o in outs.values())
    # independent initialisation: the three views disagree
    assert not torch.allclose(outs["sagittal"], outs["axial"])
    with pytest.raises(ValueError, match="view"):
        model.forward_view("oblique", x, era)
    # one adapter, shared
    assert sum(isinstance(m, Adapter) for m in model.modules()) == 1


def test_config_round_trip_and_validation():
    cfg = NetworkConfig(skip="concat", base_filters=8)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert NetworkConfig.from_dict(data) == cfg
    assert NetworkConfig().to_dict()["region_dim"] == 1024
    with pytest.raises(ValueError, match="bogus"):
        NetworkConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="skip"):
        NetworkConfig(skip="sum")
    assert isinstance(cfg.build(), TripleViewModel)
