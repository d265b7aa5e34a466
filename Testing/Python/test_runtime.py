"""Runtime choices: bf16 autocast and channels-last on the devices that compute in bf16."""

from __future__ import annotations

import pytest
import torch

from RADALib.runtime import cpu_flags, native_bf16, setup_runtime
from RADALib.train_config import preset

CPU = torch.device("cpu")


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx512_bf16 avx2\n"
    )
    assert cpu_flags(str(info)) == {"fpu", "sse2", "avx512_bf16", "avx2"}


def test_cpu_flags_is_empty_without_the_file(tmp_path):
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_native_bf16_only_on_cpus_that_compute_in_bf16():
    assert native_bf16(CPU, frozenset({"avx512f", "avx512_bf16"}))
    assert native_bf16(CPU, frozenset({"amx_bf16", "amx_tile"}))
    # AVX-512 without its BF16 extension, or AVX2 only: bf16 would be emulated
    assert not native_bf16(CPU, frozenset({"avx512f", "avx512bw", "avx512vl"}))
    assert not native_bf16(CPU, frozenset({"avx2", "fma"}))
    assert not native_bf16(CPU, frozenset())


def test_auto_follows_the_cpu_and_explicit_settings_override_it(monkeypatch):
    import RADALib.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    auto = setup_runtime(preset("cpu", device="cpu"))
    assert auto.amp_dtype == torch.bfloat16 and auto.channels_last
    off = setup_runtime(preset("cpu", device="cpu", amp="off", channels_last="off"))
    assert off.amp_dtype is None and not off.channels_last

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    plain = setup_runtime(preset("cpu", device="cpu"))
    assert plain.amp_dtype is None and not plain.channels_last
    forced = setup_runtime(preset("cpu", device="cpu", amp="bf16", channels_last="on"))
    assert forced.amp_dtype == torch.bfloat16 and forced.channels_last


def test_cpu_bf16_is_chosen_for_every_window_where_the_cpu_computes_it(monkeypatch):
    import RADALib.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    for patch in ((32, 32, 32), (16, 64, 64), (48, 48, 32)):  # 2-deep maps are handled by the VNet
        auto = setup_runtime(preset("small", device="cpu", patch=patch))
        assert auto.amp_dtype == torch.bfloat16 and auto.channels_last


@pytest.mark.parametrize("depth", [16, 32, 48])
def test_a_vnet_in_cpu_bf16_runs_exactly_the_convolutions_that_meet_two_deep_maps_in_fp32(depth):
    """Where the CPU's bf16 convolution gradients are wrong (maps 2 voxels deep along the first
    axis, the test below), the VNet's convolutions run in fp32; every other one in bf16."""
    from RADALib.networks import VNet

    net = VNet(base_filters=2, dropout=False).train()
    seen = []

    def record(module, inputs, output):
        seen.append((inputs[0].shape[2], output.shape[2], output.dtype))

    for module in net.modules():
        if isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
            module.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(torch.randn(2, 1, depth, 16, 16))
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    two_deep = [dtype for d_in, d_out, dtype in seen if 2 in (d_in, d_out)]
    others = [dtype for d_in, d_out, dtype in seen if 2 not in (d_in, d_out)]
    assert set(others) == {torch.bfloat16}
    assert set(two_deep) == ({torch.float32} if depth in (16, 32) else set())
    # 32: down to 2, the 3 convs at 2, up from 2; 16: the same one level up, and down and up at 1
    assert len(two_deep) == {48: 0, 32: 1 + 3 + 1, 16: 1 + 3 + 1 + 1 + 3 + 1}[depth]


def _bf16_weight_gradient_error(depth: int) -> float:
    """A 3-D conv's weight gradient in CPU bf16 autocast against fp32 on the same bf16-rounded
    inputs (largest error relative to the largest gradient), for maps ``depth`` voxels deep."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for _ in range(4):
        x = torch.randn(4, 16, depth, 5, 4, generator=gen)
        w = (0.1 * torch.randn(16, 16, 3, 3, 3, generator=gen)).requires_grad_(True)
        g = torch.randn(4, 16, depth, 5, 4, generator=gen)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.nn.functional.conv3d(x, w, padding=1)
        (y.float() * g).sum().backward()
        ref_w = w.detach().bfloat16().float().requires_grad_(True)
        ref = torch.nn.functional.conv3d(x.bfloat16().float(), ref_w, padding=1)
        (ref * g.bfloat16().float()).sum().backward()
        error = (w.grad - ref_w.grad).abs().max() / ref_w.grad.abs().max()
        worst = max(worst, float(error) if torch.isfinite(error) else float("inf"))
    return worst


def _depth_two_bf16_weight_gradient_error() -> float:
    return _bf16_weight_gradient_error(2)


def test_the_cpu_bf16_bug_that_the_vnet_avoids_is_real_on_this_torch():
    """What :func:`RADALib.networks.exact_on_two_deep_maps` avoids, on this machine's torch.
    Skipped where the CPU has no native bf16, or where this torch has fixed it."""
    if not native_bf16(CPU):
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    assert _bf16_weight_gradient_error(3) < 0.05  # bf16 rounding only
    if _depth_two_bf16_weight_gradient_error() < 0.05:
        pytest.skip("this torch computes depth-2 bf16 gradients correctly: the guard is moot here")
