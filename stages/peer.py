"""`vae-study bench --peer-dir`: our gated PixelCNN decoder's training step beside a published one.

The peer is the gated PixelCNN decoder of jxhe/vae-lagging-encoder (He et al. 2019,
`modules/decoders/dec_pixelcnn.py`, MIT), imported from a folder the user names (nothing of it
is vendored here). Both are built with PixelVAE's MNIST geometry, a 7x7 first layer and 12 gated
layers of 5x5 at 32 channels, and timed as one decoder step with z given: log p(x|z) of a batch,
its gradient and an Adam update. The peer feeds z only at the input (a linear map to 4 feature
maps concatenated with the image), so it does about 10 % less work per image than ours, which
adds z to both stacks of every layer. Timed round-robin in one process (each case's best of
several rounds), so a busy machine slows every case alike, in the peer's precision as shipped
(fp32) and under the same bf16 autocast as ours. Ours is timed a third time with its log p(x|z)
under torch.compile, which the study's training does not use: the row says what compiled kernels
(the gates, casts and pads fused) would give on this machine, and its first step, the
compilation, is timed apart.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from stages.model import DECODERS, build_decoder
from stages.runtime import Precision

CHANNELS, LAYERS, KERNELS = 32, 13, [7] + [5] * 12


def load_peer(peer_dir: Path) -> type | None:
    """The peer's PixelCNNDecoder class from `peer_dir` (the folder holding `modules/`), or None."""
    if not (peer_dir / "modules" / "decoders" / "dec_pixelcnn.py").is_file():
        return None
    sys.path.insert(0, str(peer_dir))
    try:
        return importlib.import_module("modules.decoders.dec_pixelcnn").PixelCNNDecoder
    finally:
        sys.path.remove(str(peer_dir))


def _step(params, loss: Callable[[], torch.Tensor], autocast) -> Callable[[], None]:
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        with autocast():
            value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def ours(x: torch.Tensor, z: torch.Tensor, precision: Precision,
         compiled: bool = False) -> Callable[[], None]:
    """Our gated decoder's step; `compiled`: log p(x|z) under torch.compile (fixed shapes)."""
    config = DECODERS["gated_pixelcnn"].Config(n_layers=LAYERS, kernel_size=KERNELS[1],
                                               first_kernel_size=KERNELS[0], channels=CHANNELS)
    decoder = precision.model(build_decoder("gated_pixelcnn", config, z.shape[1])).train()
    xb = precision.batch(x)
    log_prob = torch.compile(decoder.log_prob, dynamic=False) if compiled else decoder.log_prob
    return _step(decoder.parameters(), lambda: -log_prob(xb, z).mean(), precision.autocast)


def compiled_step(x: torch.Tensor, z: torch.Tensor,
                  precision: Precision) -> tuple[Callable[[], None] | None, dict]:
    """Our compiled step, after its first call (the compilation, timed); None and the reason
    where torch.compile fails here (it needs a C++ compiler on a CPU)."""
    step = ours(x, z, precision, compiled=True)
    t0 = time.perf_counter()
    try:
        step()
    except Exception as error:  # noqa: BLE001 - any backend failure only drops this row
        reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
        print(f"torch.compile row skipped: {reason}")
        return None, {"skipped": reason}
    return step, {"first_step_s": time.perf_counter() - t0}


def theirs(cls: type, x: torch.Tensor, z: torch.Tensor, bf16: bool) -> Callable[[], None]:
    args = SimpleNamespace(img_size=[1, 28, 28], dec_layers=[CHANNELS] * LAYERS, nz=z.shape[1],
                           dec_kernel_size=KERNELS, latent_feature_map=4)
    decoder = cls(args).train()
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    return _step(decoder.parameters(), lambda: decoder.reconstruct_error(x, z[:, None]).mean(), autocast)


def seconds_once(fn: Callable[[], Any]) -> float:
    """One timed call of fn by torch.utils.benchmark, which synchronizes CUDA around it (a plain
    clock would time only the kernel launches on a GPU) and fixes torch's thread count."""
    from torch.utils.benchmark import Timer

    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).timeit(1).mean


def round_robin(steps: dict[str, Callable[[], None]], rounds: int = 5, warmup: int = 2) -> dict[str, float]:
    """Seconds per step of each case: the best of `rounds`, the cases interleaved."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            best[name] = min(best[name], seconds_once(step))
    return best


def compare(peer_dir: Path | None, batch: int, latent_dim: int, train_precision: Precision,
            fp32: Precision) -> dict[str, Any]:
    """images/s of ours (the train stage's precision, and fp32) and the peer's (fp32 as shipped,
    and bf16 autocast), with the two ratios; `skipped` with the reason where there is no peer."""
    cls = load_peer(peer_dir) if peer_dir is not None else None
    if cls is None:
        where = "no --peer-dir given" if peer_dir is None else f"no modules/decoders/dec_pixelcnn.py under {peer_dir}"
        print(f"peer comparison skipped: {where}")
        return {"skipped": where}
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(torch.full((batch, 1, 28, 28), 0.13), generator=g)  # (B,1,28,28)
    z = torch.randn(batch, latent_dim, generator=g)  # (B,D)
    steps = {f"ours, {train_precision.name}": ours(x, z, train_precision), "ours, fp32": ours(x, z, fp32),
             "peer, fp32 (as shipped)": theirs(cls, x, z, bf16=False),
             "peer, bf16 autocast": theirs(cls, x, z, bf16=True)}
    compiled, compilation = compiled_step(x, z, train_precision)
    mine_compiled = f"ours, {train_precision.name}, torch.compile (not used in training)"
    if compiled is not None:
        steps[mine_compiled] = compiled
    seconds = round_robin(steps, rounds=10)  # best of 10: the machine's own noise reaches 15 %
    rates = {name: batch / s for name, s in seconds.items()}
    mine = rates[f"ours, {train_precision.name}"]
    result = {"geometry": f"7x7 + 12 x 5x5, {CHANNELS} channels, batch {batch}, decoder step with z given",
              "images_per_s": rates,
              "ours_over_peer_as_shipped": mine / rates["peer, fp32 (as shipped)"],
              "ours_over_peer_same_precision": mine / rates["peer, bf16 autocast"],
              "ours_fp32_over_peer_fp32": rates["ours, fp32"] / rates["peer, fp32 (as shipped)"],
              "compilation": compilation}
    if compiled is not None:
        result["ours_compiled_over_peer_same_precision"] = rates[mine_compiled] / rates["peer, bf16 autocast"]
        result["ours_compiled_over_ours"] = rates[mine_compiled] / mine
    for name, rate in rates.items():
        print(f"gated decoder step {name:<52} {rate:8.0f} img/s")
    print(f"ours / peer as shipped {result['ours_over_peer_as_shipped']:.2f}x; at the same precision "
          f"{result['ours_over_peer_same_precision']:.2f}x; fp32 / fp32 {result['ours_fp32_over_peer_fp32']:.2f}x")
    if compiled is not None:
        print(f"compiled: {result['ours_compiled_over_ours']:.2f}x ours, "
              f"{result['ours_compiled_over_peer_same_precision']:.2f}x the peer at the same precision "
              f"(compilation and first step {compilation['first_step_s']:.0f} s)")
    return result
