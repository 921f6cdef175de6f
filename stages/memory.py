"""Whether a rung's training step fits this machine's memory, told before any work.

A rung too large for the machine does not always fail with an allocation error that can be
caught: under Linux's memory overcommit the allocations succeed and the kernel's OOM killer
ends the process with SIGKILL, with no message at all. So the train command first estimates
what one training step holds at its peak and refuses a rung whose estimate exceeds the memory
available, naming the estimate and what to lower.

The estimate is computed, not guessed: the model is built of fake tensors (torch's
FakeTensorMode: shapes and dtypes without storage, so a rung of any size costs nothing to
build) and one forward pass of the ELBO at `train.batch_size`, under the training step's bf16
autocast, runs with autograd's saved-tensor hooks counting the bytes of every tensor kept for
the backward pass. Weights count 18 bytes each: fp32 value, gradient and Adam's two moments,
and a bf16 copy under autocast. The step's peak also holds what the count leaves out (the
backward pass's transient gradients, the allocator's retained blocks): measured on the study's
rungs (pixelcnn_8 at batch 64 and 256, gated_5 at 64), the peak resident growth of a step was
1.8-2.6 times the counted bytes, so the saved tensors count ACTIVATION_FACTOR = 3 times. The
check refuses what cannot fit; it does not predict the resident size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stages.errors import StudyError
from stages.model.registry import IMAGE_SHAPE
from stages.model.vae import VAE
from stages.params import EncoderConfig, Rung

BYTES_PER_WEIGHT = 4 + 4 + 8 + 2  # fp32 value, gradient, Adam's m and v, bf16 autocast copy
ACTIVATION_FACTOR = 3  # peak resident growth / saved-tensor bytes, measured 1.8-2.6
GIB = 1 << 30


def training_step_bytes(rung: Rung, encoder: EncoderConfig, batch_size: int, bf16: bool = True) -> int:
    """An estimate, erring high, of the bytes one training step of `rung` holds at its peak."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from stages.model import build_model

    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with FakeTensorMode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model: VAE = build_model(rung, encoder)  # fake CPU tensors: shapes, no storage
        weights = sum(p.numel() for p in model.parameters()) * BYTES_PER_WEIGHT
        x = torch.zeros(batch_size, *IMAGE_SHAPE)  # (B,1,28,28)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            terms = model.elbo_terms(x, None)
            -(terms.log_px_z - terms.kl).mean()  # every tensor the backward pass would keep
    return weights + ACTIVATION_FACTOR * saved


def available_bytes() -> int | None:
    """Memory this process can still use: MemAvailable, capped by a cgroup v2 limit; None where
    neither can be read (not Linux)."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def check_training_fits(rung: Rung, encoder: EncoderConfig, batch_size: int, bf16: bool,
                        available: int | None = None) -> None:
    """Refuse, before any work, a rung whose training step (on the CPU, in bf16 or fp32) cannot
    fit the memory available."""
    available = available_bytes() if available is None else available
    if available is None:
        return
    need = training_step_bytes(rung, encoder, batch_size, bf16)
    if need > available:
        raise StudyError(
            f"decoders.{rung.name}: one training step at batch_size {batch_size} needs about "
            f"{need / GIB:.1f} GiB (an estimate erring high), but {available / GIB:.1f} GiB of "
            "memory is available: lower the rung's channels or n_layers, or train.batch_size")
