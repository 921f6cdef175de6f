"""`vae-study bench`: the study's speed, measured against this machine's own limit in one run.

- peak: the best dense matmul rate in fp32 and bf16 (GFLOP/s; square products up to 2048, smaller
  where one already takes 50 ms); the train stage's precision's peak is the ceiling every training
  figure is divided by (fp32's on a CPU without native bf16, where bf16 is emulated), measured in
  the same run so a busy shared machine still gives a fair ratio;
- train: one optimizer step of every rung at its params.yaml size (images/s; GFLOP/s from
  torch's FLOP counter: convolutions and matmuls, forward and backward, counted dense as
  executed, so a masked convolution's zeroed taps count too), in the precision the train
  stage uses, and the deepest PixelCNN again under torch.compile and with 5x5 kernels (the
  same layers with more arithmetic per byte moved);
- step_breakdown (CPU): where the deepest PixelCNN's step goes (torch.profiler): time inside the
  convolution kernels and their GFLOP/s (the ceiling the whole step could reach), the rest,
  and what one elementwise pass over a layer's activations costs (the memory-bound part);
- evaluate: decoder evaluations per second inside the IW estimator, for the mlp, the deepest
  conditional PixelCNN and the deepest conditional gated PixelCNN; and the bf16 IW NLL against
  fp32 on trained checkpoints;
- peer (with --peer-dir): the gated decoder's step beside jxhe/vae-lagging-encoder's, and
  ours again under torch.compile (`stages.peer`);
- mlp_full_eval: the mlp rung's IW estimate at K = 5000 on all 10,000 test images, timed;
- peak resident memory after each part.

Prints a table and writes the figures as JSON (reports/bench.json by default).
"""

from __future__ import annotations

import dataclasses
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import typer
from torch.utils.flop_counter import FlopCounterMode

from stages import peer
from stages.checkpoint import load_model
from stages.data import Split, load_splits
from stages.estimators import iw_log_likelihood, iw_over_split
from stages.fsutil import write_json
from stages.layout import Layout
from stages.options import PARAMS, ROOT
from stages.model.registry import IMAGE_SHAPE
from stages.params import StudyParams
from stages.runtime import Precision, generator, resolve_device, resolve_precision
from stages.model import build_model


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 2) -> float:
    """The fastest of `repeats` timed calls (torch.utils.benchmark), after `warmup` untimed ones."""
    return peer.round_robin({"fn": fn}, rounds=repeats, warmup=warmup)["fn"]


def matmul_size(seconds_at: Callable[[int], float], min_seconds: float = 0.05, n_min: int = 256,
                n_max: int = 2048) -> int:
    """The side n of the peak's square matmul: doubled from n_min until one product takes
    min_seconds, at most n_max. Large enough to run near the peak where a dtype has a native
    kernel (n_max on every CPU measured), small where it has none: bf16 on an AVX2-only CPU runs
    at about 1 GFLOP/s, where a 2048 product takes 14 s and the peak would take minutes."""
    n = n_min
    while n < n_max and seconds_at(n) < min_seconds:
        n *= 2
    return n


def matmul_peak_gflops(dtype: torch.dtype) -> float:
    def product(n: int) -> Callable[[], torch.Tensor]:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)  # (n, n) each
        return lambda: a @ b

    n = matmul_size(lambda n: best_seconds(product(n), repeats=1, warmup=1))
    return 2 * n**3 / best_seconds(product(n), repeats=10, warmup=3) / 1e9


def images(splits: dict[str, Split] | None, n: int, split: str = "train") -> torch.Tensor:
    if splits is not None and len(splits[split]) >= n:
        return splits[split].images(slice(0, n), generator(0))
    return torch.bernoulli(torch.full((n, *IMAGE_SHAPE), 0.13), generator=generator(0))


def train_step_rate(model, x: torch.Tensor, precision: Precision, compile_decoder: bool = False,
                    breakdown: bool = False):
    """(seconds per step, FLOPs per step, breakdown or None) of one Adam step on batch x."""
    model = precision.model(model).train()
    if compile_decoder:
        model.decoder.log_prob = torch.compile(model.decoder.log_prob)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = precision.batch(x)

    def step():
        with precision.autocast():
            loss = -model.elbo_terms(x).elbo.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # compile (if asked) outside the FLOP count and the timing
    with FlopCounterMode(display=False) as counter:
        step()
    seconds = best_seconds(step, repeats=5, warmup=1)  # also the warm-up of the profiled steps
    if not breakdown:
        return seconds, counter.get_total_flops(), None
    conv_flops = sum(n for op, n in counter.get_flop_counts().get("Global", {}).items()
                     if "convolution" in str(op))
    return seconds, counter.get_total_flops(), convolution_share(step, conv_flops)


def convolution_share(step: Callable[[], Any], conv_flops: int, steps: int = 3) -> dict[str, float]:
    """Split `steps` profiled CPU training steps into time inside convolution ops and the rest.

    Self CPU times, so nothing is counted twice (CPU only: on CUDA the ops return before their
    kernels run). The convolutions' GFLOP/s is their FLOPs over their own time: the rate the
    whole step would reach if everything else (activations, bias and residual adds,
    optimizer) were free.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    times = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}  # ms per step
    conv_ms = sum(t for name, t in times.items() if "convolution" in name)
    return {"profiled_step_ms": sum(times.values()), "convolution_ms": conv_ms,
            "other_ms": sum(times.values()) - conv_ms,
            "convolution_gflops": conv_flops / (conv_ms / 1e3) / 1e9 if conv_ms else float("nan")}


def elementwise_pass(shape: tuple[int, ...], precision: Precision) -> dict[str, float]:
    """One ReLU over an activation tensor of `shape`: ms and GB/s (read + write)."""
    dtype = precision.dtype or torch.float32
    a = precision.batch(torch.randn(shape, device=precision.device).to(dtype))
    seconds = best_seconds(lambda: torch.relu(a), repeats=10)
    return {"shape": list(shape), "dtype": str(dtype).removeprefix("torch."), "ms": seconds * 1e3,
            "gb_per_s": 2 * a.numel() * a.element_size() / seconds / 1e9}


def throughput(label: str, n_images: int, seconds: float, flops: int, peak: float) -> dict[str, float]:
    """One training-step figure as images/s and GFLOP/s, with its ratio to the matmul peak of the
    precision it ran in; printed."""
    gflops = flops / seconds / 1e9
    row = {"images_per_s": n_images / seconds, "gflop_per_step": flops / 1e9, "gflops": gflops,
           "ratio_to_peak": gflops / peak}
    print(f"train {label:<16} {row['images_per_s']:8.0f} img/s {gflops:7.0f} GFLOP/s "
          f"({row['ratio_to_peak']:.0%} of peak)")
    return row


def breakdown_row(rung: str, seconds: float, parts: dict[str, float], peak: float,
                  memory_pass: dict[str, Any]) -> dict[str, Any]:
    """The deepest PixelCNN's step split into convolutions and the rest; printed."""
    share = parts["convolution_ms"] / parts["profiled_step_ms"]
    row = {"rung": rung, "step_ms": seconds * 1e3, **parts, "convolution_share": share,
           "convolution_ratio_to_peak": parts["convolution_gflops"] / peak,
           "elementwise_pass": memory_pass}
    print(f"step of {rung}: {share:.0%} in convolutions at {parts['convolution_gflops']:.0f} GFLOP/s "
          f"({row['convolution_ratio_to_peak']:.0%} of peak), {parts['other_ms']:.1f} of "
          f"{parts['profiled_step_ms']:.1f} ms (profiled) elsewhere; one ReLU over a "
          f"{tuple(memory_pass['shape'])} {memory_pass['dtype']} activation {memory_pass['ms']:.2f} ms "
          f"({memory_pass['gb_per_s']:.0f} GB/s)")
    return row


def eval_rate(model, x: torch.Tensor, k: int, chunk: int, precision: Precision) -> float:
    """Decoder evaluations per second (image-sample pairs) inside the IW estimator."""
    model = precision.model(model).eval()
    x = precision.batch(x)

    def run():
        with precision.autocast():
            iw_log_likelihood(model, x, k, chunk, generator(0, precision.device))

    return len(x) * k / best_seconds(run, repeats=2, warmup=1)


def iw_nll(model, test: Split, k: int, chunk: int, precision: Precision, batch: int = 100) -> float:
    model = precision.model(model).eval()
    total = 0.0
    for est in iw_over_split(model, test, precision, batch, k, chunk, generator(0, precision.device)):
        total += float(-est.log_px.double().sum())
    return total / len(test)


def deepest(params: StudyParams, family: str) -> str | None:
    """The conditional rung of `family` with the most layers (None if the ladder has none)."""
    rungs = [n for n, r in params.decoders.items() if r.family == family and r.decoder.conditional]
    return max(rungs, key=lambda n: params.decoders[n].decoder.n_layers) if rungs else None


def run(params: StudyParams, layout: Layout, out: Path, full_mlp_eval: bool = True,
        peer_dir: Path | None = None) -> dict[str, Any]:
    device = resolve_device()
    train_precision = resolve_precision(params.train.precision, device)
    eval_precision = resolve_precision(params.evaluate.precision, device)
    splits = load_splits(layout.binarized) if layout.binarized.exists() else None
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "device": str(device), "torch": torch.__version__,
                    "train_precision": train_precision.name, "eval_precision": eval_precision.name,
                    "data": "MNIST" if splits is not None else "random binary images"},
    }
    peak = {"fp32": matmul_peak_gflops(torch.float32), "bf16": matmul_peak_gflops(torch.bfloat16)}
    result["peak_gflops"] = peak
    print(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    train_peak = peak[train_precision.name]  # the ceiling of the train stage's precision

    deepest_pixelcnn, deepest_gated = deepest(params, "pixelcnn"), deepest(params, "gated_pixelcnn")

    batch = images(splits, params.train.batch_size)
    train_rows = {}
    for name, rung in params.decoders.items():
        seconds, flops, parts = train_step_rate(build_model(rung, params.encoder), batch, train_precision,
                                                breakdown=name == deepest_pixelcnn and device.type == "cpu")
        train_rows[name] = {"family": rung.family,
                            **throughput(name, len(batch), seconds, flops, train_peak)}
        if parts is not None:
            activation = (len(batch), rung.decoder.channels, *IMAGE_SHAPE[1:])
            result["step_breakdown"] = breakdown_row(name, seconds, parts, train_peak,
                                                     elementwise_pass(activation, train_precision))
    result["train"] = train_rows
    result["peak_rss_mib_after_train"] = peak_rss_mib()

    if deepest_pixelcnn is not None:  # the same rung compiled, and with 5x5 kernels (more work per byte)
        rung = params.rung(deepest_pixelcnn)
        wide = dataclasses.replace(rung, decoder=dataclasses.replace(rung.decoder, kernel_size=5))
        for label, variant, compiled in (("torch.compile", rung, True), ("kernel_size 5", wide, False)):
            seconds, flops, _ = train_step_rate(build_model(variant, params.encoder), batch,
                                                train_precision, compile_decoder=compiled)
            result.setdefault("train_variants", {})[f"{deepest_pixelcnn}, {label}"] = throughput(
                f"{deepest_pixelcnn}, {label}", len(batch), seconds, flops, train_peak)
    result["peer"] = peer.compare(peer_dir, params.train.batch_size, params.encoder.latent_dim,
                                  train_precision, resolve_precision("fp32", device))

    test_batch = images(splits, params.evaluate.batch_size, "test")
    result["evaluate"] = {}
    for name in [n for n in ("mlp", deepest_pixelcnn, deepest_gated) if n in params.decoders]:
        model = build_model(params.rung(name), params.encoder)
        rate = eval_rate(model, test_batch, params.evaluate.k, params.evaluate.chunk_size, eval_precision)
        entry = {"decoder_evals_per_s": rate}
        checkpoint = layout.model(name, params.seeds[0])
        if splits is not None and checkpoint.exists():  # bf16 against fp32 on the trained model
            test = splits["test"].head(200)
            nll = {p: iw_nll(load_model(checkpoint)[0], test, 100, params.evaluate.chunk_size,
                             resolve_precision(p, device)) for p in ("fp32", "bf16")}
            entry.update(nll_iw_fp32_nats=nll["fp32"], nll_iw_bf16_nats=nll["bf16"],
                         bf16_minus_fp32_nats=nll["bf16"] - nll["fp32"])
        result["evaluate"][name] = entry
        print(f"evaluate {name:<13} {rate:10.0f} decoder evaluations/s"
              + (f", bf16 - fp32 NLL_IW {entry['bf16_minus_fp32_nats']:+.4f} nats" if "bf16_minus_fp32_nats" in entry else ""))
    result["peak_rss_mib_after_evaluate"] = peak_rss_mib()

    if full_mlp_eval and "mlp" in params.decoders and splits is not None:
        checkpoint = layout.model("mlp", params.seeds[0])
        model = load_model(checkpoint)[0] if checkpoint.exists() else build_model(params.rung("mlp"), params.encoder)
        t0 = time.perf_counter()
        nll = iw_nll(model, splits["test"], 5000, max(params.evaluate.chunk_size, 5000), eval_precision)
        seconds = time.perf_counter() - t0
        result["mlp_full_eval"] = {"k": 5000, "n_test": len(splits["test"]), "seconds": seconds,
                                   "nll_iw_nats": nll, "peak_rss_mib": peak_rss_mib()}
        print(f"mlp at K=5000 on {len(splits['test'])} test images: {seconds:.0f} s "
              f"(NLL_IW {nll:.2f} nats), peak memory {peak_rss_mib():.0f} MiB")
    write_json(out, result)
    print(f"wrote {out}")
    return result


def command(params: Path = PARAMS, root: Path = ROOT,
            out: Path = typer.Option(Path("reports/bench.json"), help="where to write the figures"),
            full_mlp_eval: bool = typer.Option(True, "--full-mlp-eval/--quick",
                                               help="also time the mlp at K=5000 on all test images"),
            peer_dir: Path | None = typer.Option(None, "--peer-dir", help="a copy of jxhe/vae-lagging-encoder "
                                                 "(the folder holding modules/): time its gated PixelCNN "
                                                 "decoder beside ours (skipped without it)")) -> None:
    """Measure speed against this machine's matmul peak (a benchmark, not a test)."""
    from stages.errors import OutputError
    from stages.fsutil import ensure_writable_dir
    from stages.params import load_params
    from stages.runtime import keep_freed_memory

    if out.is_dir():  # checked before the benchmark, not after it
        raise OutputError(f"--out {out} is a folder; give the file to write, e.g. {out / 'bench.json'}")
    ensure_writable_dir(out.parent)
    keep_freed_memory()
    run(load_params(params), Layout(root), out, full_mlp_eval, peer_dir)
