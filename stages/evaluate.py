"""Stage `evaluate@<decoder>-<seed>`: log p(x) by importance weighting, and collapse metrics.

On a random subset of `n_test` test images, drawn with `evaluate.seed` alone (`test_subset`),
so every rung and every training seed is scored on the same images and per-image
differences can be paired: the K-sample IW estimate of -log p(x) with its standard error
and its convergence in K, the ELBO split into reconstruction and KL, the bound gap, the
mutual information I_q(x; z) with its cap log M (M posteriors in the aggregate q(z)),
active units, the linear-probe accuracy on sampled codes z ~ q(z|x) (see
`stages.estimators`, `stages.probe`), the KL per latent dimension, and reconstructions and
prior samples for the report.

Outputs: the metrics JSON, and in the eval folder k_curve.csv, latent_dims.csv,
per_image.csv (test_index into the full test split; per image the IW estimate log p^_K(x)
and the ELBO, whose means are -nll_iw_nats and -nll_elbo_nats; E_q[log p(x|z)], which for a
decoder without z is its exact log p(x); and log p(x) under independent pixels with the
training means, the decoder alone of a factorized rung), images.npz and info.json.

One evaluation's files are all new or all old: the eval folder is written whole in a temp folder
and swapped in, then the metrics; info.json carries the digest of the metrics it was written
with (`metrics_sha256`), so a metrics file from another evaluation is caught, and the digest of
the code that evaluated (`code_sha256`: every source file the command runs, its import closure,
which the evaluate stage in dvc.yaml lists as its deps), so a report never mixes runs scored by different code.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import typer

from stages import closure
from stages.checkpoint import load_model
from stages.data import Split, load_splits
from stages.errors import DataError
from stages.estimators import (active_units, independent_pixel_log_prob, iw_over_split, k_checkpoints, mi_cap,
                               mutual_information, posteriors)
from stages.fsutil import atomic_dir, ensure_writable_dir, write_csv, write_json, write_npz, write_text
from stages.layout import Layout
from stages.options import PARAMS, PROGRESS, ROOT, STUDY
from stages.model import VAE
from stages.model.registry import IMAGE_SHAPE
from stages.params import EvaluateConfig, StudyParams, load_run_params
from stages.probe import sampled_probe_accuracy
from stages.runtime import Precision, derive_seed, generator, resolve_device, resolve_precision

PROBE_STREAM, MI_STREAM, SAMPLE_STREAM, SUBSET_STREAM = 1, 2, 3, 4


@dataclass
class Evaluation:
    metrics: dict[str, float | int]
    k_curve: pd.DataFrame  # k, nll_iw_nats, nll_iw_stderr_nats
    per_dim: pd.DataFrame  # dim, kl_nats, posterior_mean_variance, active
    images: dict[str, np.ndarray]  # x, recon, recon_probs, samples, sample_probs: (n,28,28)
    info: dict[str, Any]
    per_image: pd.DataFrame  # test_index, log_px_iw_nats, elbo_nats, log_px_given_z_nats, log_px_independent_nats


def test_subset(n_total: int, n_test: int | None, seed: int) -> torch.Tensor:
    """Sorted indices (int64) of `n_test` of `n_total` test images, drawn uniformly without
    replacement from the evaluate seed alone; all of them when n_test is None.  -> (n_test,)"""
    if n_test is None:
        return torch.arange(n_total)
    if n_test > n_total:
        raise DataError(f"evaluate.n_test: {n_test}, but the test split has only {n_total} images")
    order = torch.randperm(n_total, generator=generator(derive_seed(seed, SUBSET_STREAM)))  # (n_total,)
    return order[:n_test].sort().values


def stderr(values: torch.Tensor) -> float:
    return float(values.double().std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else 0.0


@torch.no_grad()
def evaluate_model(model: VAE, test: Split, train: Split, config: EvaluateConfig,
                   precision: Precision, progress: bool = True) -> Evaluation:
    """Every metric of one trained model on the `test_subset` of the whole test split `test`."""
    t0 = time.perf_counter()
    test_index = test_subset(len(test), config.n_test, config.seed)  # (N,)
    test = test.subset(test_index)
    model = precision.model(model).eval()
    device = precision.device
    g_iw = generator(derive_seed(config.seed), device)
    points = k_checkpoints(config.k)
    log_px, log_px_at, log_px_z, kl_dim, mus, logvars = [], {kk: [] for kk in points}, [], [], [], []
    for est in iw_over_split(model, test, precision, config.batch_size, config.k, config.chunk_size, g_iw,
                             points, progress):
        log_px.append(est.log_px.cpu())
        for kk in points:
            log_px_at[kk].append(est.log_px_at[kk].cpu())
        log_px_z.append(est.mean_log_px_z.cpu())
        kl_dim.append(est.kl_per_dim.cpu())
        mus.append(est.mu.cpu())
        logvars.append(est.logvar.cpu())
    log_px_t, log_px_z_t = torch.cat(log_px), torch.cat(log_px_z)  # (N,)
    kl_dim_t, mu, logvar = torch.cat(kl_dim), torch.cat(mus), torch.cat(logvars)  # (N,D)
    kl = kl_dim_t.sum(1)  # (N,)
    elbo = log_px_z_t - kl  # (N,)

    n_active, mean_variance = active_units(mu, config.active_unit_threshold)
    probe_train = train.head(config.probe_train_size)  # None: every training image
    g_probe = generator(derive_seed(config.seed, PROBE_STREAM))  # dynamic pixels, then z draws
    mu_train, logvar_train = posteriors(model, probe_train, precision, 500, g_probe)  # (N_train,D)
    accuracy = sampled_probe_accuracy(mu_train, logvar_train, probe_train.labels, mu, logvar, test.labels,
                                      g_probe, generator(derive_seed(config.seed, PROBE_STREAM, 1)))
    mixture = (torch.cat([mu, mu_train]), torch.cat([logvar, logvar_train]))  # q(z): M = N + N_train
    mi = mutual_information(mu, logvar, config.mi_samples,
                            generator(derive_seed(config.seed, MI_STREAM)), mixture)
    images = show_images(model, test, config, precision)

    metrics = {
        "nll_iw_nats": float(-log_px_t.double().mean()),
        "nll_iw_stderr_nats": stderr(log_px_t),
        "iw_k": config.k,
        "n_test": len(test),
        "nll_elbo_nats": float(-elbo.double().mean()),
        "kl_nats": float(kl.double().mean()),
        "rec_nats": float(-log_px_z_t.double().mean()),
        "bound_gap_nats": float((log_px_t - elbo).double().mean()),
        "mi_nats": mi,
        "mi_cap_nats": mi_cap(len(mixture[0])),
        "active_units": n_active,
        "probe_accuracy": accuracy,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    k_curve = pd.DataFrame({
        "k": points,
        "nll_iw_nats": [float(-torch.cat(log_px_at[kk]).double().mean()) for kk in points],
        "nll_iw_stderr_nats": [stderr(torch.cat(log_px_at[kk])) for kk in points],
    })
    per_dim = pd.DataFrame({
        "dim": range(mu.shape[1]),
        "kl_nats": kl_dim_t.double().mean(0).numpy(),
        "posterior_mean_variance": mean_variance.numpy(),
        "active": (mean_variance > config.active_unit_threshold).numpy(),
    })
    per_image = pd.DataFrame({
        "test_index": test_index.numpy(),
        "log_px_iw_nats": log_px_t.double().numpy(),
        "elbo_nats": elbo.double().numpy(),
        "log_px_given_z_nats": log_px_z_t.double().numpy(),  # E_q log p(x|z); exact log p(x) without z
        "log_px_independent_nats": independent_pixel_log_prob(test.x, train.x).numpy(),
    })
    info = {"precision": precision.name, "device": str(device), "family": model.decoder.family,
            "uses_z": model.decoder.uses_z, "n_params": sum(p.numel() for p in model.parameters())}
    return Evaluation(metrics, k_curve, per_dim, images, info, per_image)


@torch.no_grad()
def show_images(model: VAE, test: Split, config: EvaluateConfig,
                precision: Precision) -> dict[str, np.ndarray]:
    """Reconstructions x ~ p(x | z = E_q[z|x]) of the first n_show digits of the scored test
    subset `test`, and samples x ~ p(x|z), z ~ p(z); each with the Bernoulli probabilities
    the pixels were drawn from."""
    g = generator(derive_seed(config.seed, SAMPLE_STREAM), precision.device)
    x = precision.batch(test.images(slice(0, config.n_show)))
    n = len(x)
    with precision.autocast():
        mu, _ = model.encoder(x)
        z = torch.cat([mu, torch.randn(mu.shape, generator=g, device=mu.device)])  # (2n,D)
        drawn, probs = model.decoder.sample(z, g)  # (2n,1,28,28) each

    def arr(t: torch.Tensor) -> np.ndarray:
        return t.float().reshape(-1, *IMAGE_SHAPE[1:]).cpu().numpy()

    return {"x": arr(x).astype(np.uint8), "recon": arr(drawn[:n]).astype(np.uint8),
            "recon_probs": arr(probs[:n]).astype(np.float16),
            "samples": arr(drawn[n:]).astype(np.uint8),
            "sample_probs": arr(probs[n:]).astype(np.float16)}


def code_sha256(package_dir: Path = closure.STAGES) -> str:
    """sha256 over the path and bytes of every file `vae-study evaluate` runs (its import
    closure, `stages.closure`: the code deps of the evaluate stage in dvc.yaml)."""
    return closure.code_sha256(closure.command_closure("evaluate", package_dir), package_dir)


def metrics_text(metrics: dict) -> str:
    """The metrics file's exact text: what info.json's metrics_sha256 is taken over."""
    return json.dumps(metrics, indent=2) + "\n"


def run(params: StudyParams, decoder: str, seed: int, layout: Layout, progress: bool = True) -> dict:
    """The stage: check checkpoint and outputs, evaluate, write every output atomically."""
    rung, config = params.rung(decoder), params.evaluate
    metrics_path, eval_dir = layout.metrics(decoder, seed), layout.eval_dir(decoder, seed)
    ensure_writable_dir(metrics_path.parent)
    ensure_writable_dir(eval_dir)
    model, _, state = load_model(layout.model(decoder, seed), rung, params.encoder)
    splits = load_splits(layout.binarized)
    n_test = len(test_subset(len(splits["test"]), config.n_test, config.seed))  # DataError if too many
    precision = resolve_precision(config.precision, resolve_device())
    print(f"evaluate {decoder} seed {seed}: K={config.k} on {n_test} random test images "
          f"(evaluate.seed {config.seed}), {precision.device} ({precision.name})", flush=True)
    result = evaluate_model(model, splits["test"], splits["train"], config, precision, progress)
    text = metrics_text(result.metrics)
    info = {**result.info, "seed": seed, "best_epoch": state["epoch"],
            "valid_elbo_nats": state["valid_elbo_nats"], "valid_kl_nats": state["valid_kl_nats"],
            "code_sha256": code_sha256(), "metrics_sha256": hashlib.sha256(text.encode()).hexdigest()}
    with atomic_dir(eval_dir) as tmp:  # the folder whole, then the metrics it belongs to
        write_csv(tmp / layout.k_curve(decoder, seed).name, result.k_curve)
        write_csv(tmp / layout.latent_dims(decoder, seed).name, result.per_dim)
        write_csv(tmp / layout.per_image(decoder, seed).name, result.per_image)
        write_npz(tmp / layout.eval_images(decoder, seed).name, result.images)
        write_json(tmp / layout.eval_info(decoder, seed).name, info)
    write_text(metrics_path, text)
    m = result.metrics
    print(f"{decoder} s{seed}: NLL_IW {m['nll_iw_nats']:.2f} +- {m['nll_iw_stderr_nats']:.2f}, "
          f"-ELBO {m['nll_elbo_nats']:.2f}, KL {m['kl_nats']:.2f}, MI {m['mi_nats']:.2f} "
          f"(cap {m['mi_cap_nats']:.2f}) nats, "
          f"AU {m['active_units']}, probe {m['probe_accuracy']:.3f} ({m['seconds']:.0f}s)")
    return result.metrics


def command(decoder: str = typer.Argument(..., help="a key of `decoders` in params.yaml"),
            seed: int = typer.Option(0, min=0, help="training seed of the model"),
            params: Path = PARAMS, root: Path = ROOT, study: str = STUDY,
            progress: bool = PROGRESS) -> None:
    """IW log-likelihood and collapse metrics of one trained rung on the test split."""
    from stages.runtime import keep_freed_memory

    keep_freed_memory()
    run(load_run_params(params, seed), decoder, seed, Layout(root, study), progress=progress)
