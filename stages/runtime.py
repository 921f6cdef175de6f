"""Where and how the numbers are computed: device, precision, seeds.

Device: `auto` picks CUDA when present, else the CPU; the environment variable
VAE_STUDY_DEVICE (cpu, cuda, cuda:N) overrides it. It is not a param, so a model trained on a
GPU is reused from the shared cache by collaborators on CPUs.

Precision: `auto` runs the convolutions and matmuls in bf16 (autocast, channels_last) on
CPUs with native bf16 (AMX / AVX512-BF16) and on CUDA, and in fp32 elsewhere. Likelihood
terms are always reduced in fp32: decoders cast logits to fp32 before the Bernoulli
log-probability, and sums over pixels, KL terms and logsumexp run in fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stages.errors import StudyError

DEVICE_ENV = "VAE_STUDY_DEVICE"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def keep_freed_memory() -> bool:
    """Stop glibc from handing freed tensor memory back to the kernel after every batch.

    By default glibc serves blocks above a (dynamic) threshold with mmap and trims the heap
    top on free, so the next batch's tensors are page-faulted and zeroed again: evaluating
    the pixelcnn_1 rung spent 30 of its 34 seconds in the kernel. Keeping blocks up to 1 GiB
    on the heap and never trimming it takes that to 16 seconds (and speeds up training);
    memory stays at its peak, which a batch job does not mind. No-op off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    ok = mallopt(M_MMAP_THRESHOLD, ctypes.c_int(1 << 30)) or mallopt(M_MMAP_THRESHOLD, ctypes.c_int(32 << 20))
    return bool(ok and mallopt(M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1)))


def resolve_device(name: str | None = None) -> torch.device:
    name = name or os.environ.get(DEVICE_ENV, "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StudyError(f"{DEVICE_ENV}={name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise StudyError(f"{DEVICE_ENV}={name!r}, but no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise StudyError(f"{DEVICE_ENV}={name!r}: only cpu and cuda are supported")
    return device


def cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(cpu, c, lambda: False)() for c in checks)


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # None: plain fp32

    @property
    def name(self) -> str:
        return "fp32" if self.dtype is None else "bf16"

    @property
    def channels_last(self) -> bool:
        return self.dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def model(self, module: nn.Module) -> nn.Module:
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        return module

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def resolve_precision(setting: str, device: torch.device) -> Precision:
    if setting == "fp32":
        return Precision(device, None)
    if setting == "bf16":
        return Precision(device, torch.bfloat16)
    if device.type == "cuda":
        return Precision(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else None)
    return Precision(device, torch.bfloat16 if cpu_has_native_bf16() else None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1
