"""Runtime choices: bf16 autocast and channels-last on the devices that compute in bf16."""

from __future__ import annotations

import pytest
import torch

from RADALib.errors import RADAError
from RADALib.runtime import cpu_bf16_patch_ok, cpu_flags, native_bf16, setup_runtime
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


def test_cpu_bf16_is_refused_for_windows_whose_maps_are_two_voxels_deep(monkeypatch):
    import RADALib.runtime as runtime

    assert not cpu_bf16_patch_ok((16, 64, 64)) and not cpu_bf16_patch_ok((32, 48, 48))
    assert cpu_bf16_patch_ok((48, 32, 32)) and cpu_bf16_patch_ok((80, 64, 16))
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    auto = setup_runtime(preset("small", device="cpu", patch=(32, 32, 32)))
    assert auto.amp_dtype is None and not auto.channels_last  # fp32: correct gradients
    with pytest.raises(RADAError, match="first axis"):
        setup_runtime(preset("small", device="cpu", patch=(32, 32, 32), amp="bf16"))


def test_the_refused_cpu_bf16_case_really_computes_wrong_gradients():
    """What :func:`cpu_bf16_patch_ok` guards against, on this machine's torch: a 3-D conv's weight
    gradient in bf16 autocast against fp32 on the same bf16-rounded inputs. Skipped where the
    CPU has no native bf16 (the guard is harmless there)."""
    if not native_bf16(CPU):
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX)")
    gen = torch.Generator().manual_seed(0)

    def weight_grad_error(depth: int) -> float:
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

    assert weight_grad_error(3) < 0.05  # bf16 rounding only
    if weight_grad_error(2) < 0.05:
        pytest.skip("this torch computes depth-2 bf16 gradients correctly: the guard is moot here")
