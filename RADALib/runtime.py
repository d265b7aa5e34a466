"""Where and how a training process runs: device, CPU threads, backend flags, AMP and memory
layout, and the process group under ``torchrun`` (DistributedDataParallel's helpers included).

:func:`setup_runtime` turns a :class:`~RADALib.train_config.TrainConfig`'s runtime settings
into a :class:`Runtime`; :func:`release_runtime` undoes what it opened. Under ``torchrun``
(WORLD_SIZE > 1) the process group uses nccl on CUDA and gloo on the CPU; rank 0 is the one
that writes files, and :func:`broadcast_buffers` gives every rank its batch-norm statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import RADAError
from .train_config import TrainConfig


@dataclass
class Runtime:
    """Where and how this process trains: device, rank among ``world`` processes, AMP dtype
    (``None``: fp32) and channels-last-3d layout (see :func:`setup_runtime`)."""

    device: torch.device
    rank: int
    world: int
    owns_group: bool
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int) -> torch.device:
    """The torch device for a device setting ("auto", "cpu", "cuda", "cuda:1"); a bare "cuda"
    takes the process's local rank. Raises :class:`RADAError` when CUDA is asked for but absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RADAError(
                f"device {name!r} asked for, but no CUDA GPU is available (use --device cpu)"
            )
        if device.index is None:
            device = torch.device(
                "cuda", local_rank if torch.cuda.device_count() > local_rank else 0
            )
        torch.cuda.set_device(device)
    return device


NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU features (as Linux's /proc/cpuinfo names them) that compute in bfloat16 natively."""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where there is no such file)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device, flags: frozenset[str] | None = None) -> bool:
    """Whether ``device`` trains faster in bf16 autocast and channels-last-3d than in fp32: a
    CUDA GPU with bf16, or an x86 CPU with AVX-512 BF16 or AMX (``flags``: the CPU's, read from
    /proc/cpuinfo when ``None``). Elsewhere (older x86, ARM, macOS, Windows) bf16 would be
    emulated, so training stays in fp32 there. (The few layers where the CPU's bf16 gradients
    are wrong run in fp32: :func:`RADALib.networks.exact_on_two_deep_maps`.)"""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(set(NATIVE_BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))


def setup_runtime(config: TrainConfig) -> Runtime:
    """Resolve ``config``'s device, AMP and channels-last choices, join the process group under
    ``torchrun`` (WORLD_SIZE > 1) and set the backend flags (cuDNN autotuning, TF32, determinism,
    CPU threads)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = resolve_device(config.device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    native = native_bf16(device)
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and native)
    cl = config.channels_last == "on" or (
        config.channels_last == "auto" and (device.type == "cuda" or native)
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.backends.cudnn.deterministic = bool(config.deterministic)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    return Runtime(device, rank, world, owns, torch.bfloat16 if use_bf16 else None, cl)


def release_runtime(runtime: Runtime) -> None:
    """Leave the process group if :func:`setup_runtime` opened it (under ``torchrun``)."""
    if runtime.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def gather_objects(obj: Any, runtime: Runtime) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if not runtime.distributed:
        return [obj]
    import torch.distributed as dist

    items: list[Any] = [None] * runtime.world
    dist.all_gather_object(items, obj)
    return items


def broadcast_buffers(model: nn.Module, runtime: Runtime) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics)."""
    if not runtime.distributed:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the GPU running out of memory."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(error, oom)) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )
