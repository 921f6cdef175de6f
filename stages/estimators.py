"""Estimators of log p(x) and of how much a VAE uses its latent variable.

- `iw_log_likelihood`: the K-sample importance-weighted estimate (Burda et al. 2016, Eq. 8)
      log p^_K(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,
  z_k ~ q(z|x). It is a stochastic lower bound, E[log p^_K(x)] <= log p(x), non-decreasing
  in K and exact as K -> infinity; K = 1 is the one-sample ELBO. The encoder runs once per
  image; samples are drawn and scored in chunks of at most `chunk_size` (image, sample)
  pairs with a running logsumexp, so memory does not grow with K; a decoder that ignores z is
  scored once per image, whatever K. Estimates at nested
  K' <= K (the first K' of the same draws) come for free.
- `mutual_information`: I_q(x; z) = E_x KL[q(z|x) || p(z)] - KL[q(z) || p(z)]
                                  = E_x E_{q(z|x)} [log q(z|x) - log q(z)]
  with the aggregate posterior q(z) = mean_m q(z|x_m) over a large set of M images (Hoffman &
  Johnson 2016; He et al. 2019), estimated by sampling z ~ q(z|x). When the scored images'
  posteriors are among the M components, q(z) >= q(z|x)/M, so every sample's
  log q(z|x) - log q(z) is at most log M and so is the estimate (`mi_cap`): a minibatch
  mixture would cap it at log(batch size). The evaluate stage uses the test images plus the
  probe's training images, and reports the cap beside the estimate.
- `independent_pixel_log_prob`: log p(x) under independent Bernoulli pixels with the training
  split's pixel means (add-one smoothed): the decoder alone of a factorized decoder, the
  likelihood a factorized VAE reaches when it ignores z.
- `active_units`: latent dimensions u with Cov_x(E_q[z_u]) above a threshold (Burda et al.
  2016, Sec. 5.2, threshold 0.01).

All reductions (logsumexp, sums over pixels and dimensions) run in fp32 or fp64.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from stages.data import Split
from stages.model.vae import (LOG_2PI, VAE, gaussian_kl_per_dim, log_normal, log_standard_normal,
                              reparameterize)
from stages.runtime import Precision


def k_checkpoints(k: int) -> list[int]:
    """1, 10, 100, ... below k, and k itself."""
    points, p = [], 1
    while p < k:
        points.append(p)
        p *= 10
    return points + [k]


@dataclass
class IWEstimate:
    log_px: torch.Tensor  # (B,) log p^_K(x), nats
    log_px_at: dict[int, torch.Tensor]  # K' -> (B,) the estimate from the first K' samples
    mean_log_px_z: torch.Tensor  # (B,) mean over the K samples of log p(x|z_k): -reconstruction
    kl_per_dim: torch.Tensor  # (B,D) analytic KL[q(z|x) || p(z)]
    mu: torch.Tensor  # (B,D) posterior means
    logvar: torch.Tensor  # (B,D)


@torch.no_grad()
def iw_log_likelihood(model: VAE, x: torch.Tensor, k: int, chunk_size: int,
                      generator: torch.Generator | None = None,
                      checkpoints: list[int] | None = None) -> IWEstimate:
    """The K-sample IW estimate for a batch of images.  x: (B,1,28,28)

    Run under the caller's autocast context; everything after the decoder's logits is fp32.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if x.shape[0] > chunk_size:  # even one sample per image would exceed the chunk
        parts = [iw_log_likelihood(model, part, k, chunk_size, generator, checkpoints)
                 for part in x.split(chunk_size)]
        return IWEstimate(
            torch.cat([p.log_px for p in parts]),
            {kk: torch.cat([p.log_px_at[kk] for p in parts]) for kk in parts[0].log_px_at},
            torch.cat([p.mean_log_px_z for p in parts]),
            torch.cat([p.kl_per_dim for p in parts]),
            torch.cat([p.mu for p in parts]), torch.cat([p.logvar for p in parts]))
    checkpoints = sorted(set(checkpoints or []))
    b = x.shape[0]
    mu, logvar = model.encoder(x)  # (B,D) fp32, once per image
    # A decoder that ignores z (the decoder alone) gives every z_k the same log p(x|z_k) = log p(x):
    # scored once per image, not once per sample; the draws and log_w are those of the chunked path.
    log_px_fixed = None if model.decoder.uses_z else model.decoder.log_prob(x, mu).float()  # (B,)
    per_chunk = max(1, chunk_size // b)  # samples per decoder call
    running = torch.full((b,), -math.inf, device=x.device)  # logsumexp of log_w so far
    sum_log_px_z = torch.zeros(b, device=x.device)
    at: dict[int, torch.Tensor] = {}
    done = 0
    while done < k:
        kc = min(per_chunk, k - done)
        z = reparameterize(mu, logvar, kc, generator)  # (B,kc,D)
        log_px_z = (model.decoder.log_prob_k(x, z).float() if log_px_fixed is None
                    else log_px_fixed[:, None].expand(b, kc))  # (B,kc)
        log_w = log_px_z + log_standard_normal(z) - log_normal(z, mu[:, None], logvar[:, None])
        cum = torch.logaddexp(running[:, None], torch.logcumsumexp(log_w, dim=1))  # (B,kc)
        for kk in checkpoints:
            if done < kk <= done + kc:
                at[kk] = cum[:, kk - done - 1] - math.log(kk)
        running = cum[:, -1]
        sum_log_px_z += log_px_z.sum(1)
        done += kc
    return IWEstimate(running - math.log(k), at, sum_log_px_z / k, gaussian_kl_per_dim(mu, logvar),
                      mu, logvar)


def iw_over_split(model: VAE, split: Split, precision: Precision, batch_size: int, k: int,
                  chunk_size: int, generator: torch.Generator | None = None,
                  checkpoints: list[int] | None = None, progress: bool = False) -> Iterator[IWEstimate]:
    """`iw_log_likelihood` of every image of a split, in order, one IWEstimate (on the device)
    per batch of `batch_size` images; the draws come from `generator`, batch after batch."""
    starts = range(0, len(split), batch_size)
    for start in tqdm(starts, desc=f"IW K={k}", disable=None if progress else True, mininterval=1.0,
                      leave=False):
        x = precision.batch(split.images(slice(start, start + batch_size)))
        with precision.autocast():
            estimate = iw_log_likelihood(model, x, k, chunk_size, generator, checkpoints)
        yield estimate


@torch.no_grad()
def posteriors(model: VAE, split: Split, precision: Precision, batch_size: int,
               g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z|x) = N(mu, exp(logvar)) for every image of a split, in eval mode (a dynamic split
    draws its pixels with `g`).  -> mu, logvar: (N,D) fp32 on the CPU"""
    model.eval()
    mus, logvars = [], []
    for start in range(0, len(split), batch_size):
        x = precision.batch(split.images(slice(start, start + batch_size), g))
        with precision.autocast():  # the encoder runs in fp32 all the same
            mu, logvar = model.encoder(x)
        mus.append(mu.float().cpu())
        logvars.append(logvar.float().cpu())
    return torch.cat(mus), torch.cat(logvars)


MIXTURE_CHUNK_ELEMENTS = 2**24  # entries of one (chunk, M) fp64 matrix: 128 MiB


def mixture_chunk(m: int) -> int:
    """Rows z per step so that the (chunk, M) fp64 matrices of log q(z) stay at 128 MiB each."""
    return max(1, MIXTURE_CHUNK_ELEMENTS // m)


@torch.no_grad()
def log_mixture_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                        chunk: int | None = None) -> torch.Tensor:
    """log q(z) = logsumexp_m log N(z; mu_m, var_m) - log M in fp64.  z: (S,D); mu, logvar: (M,D) -> (S,)

    The squared distances are expanded into fp64 matrix products, so cost is S*M*D
    multiply-adds without an (S,M,D) tensor, and memory is a few (chunk, M) matrices, the
    chunk of z rows chosen from M (`mixture_chunk`) unless given.
    """
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    m = mu.shape[0]
    inv_var = torch.exp(-logvar)  # (M,D)
    scaled_mu_t = (mu * inv_var).T  # (D,M)
    const = -0.5 * (mu.shape[1] * LOG_2PI + logvar.sum(1) + (mu.pow(2) * inv_var).sum(1))  # (M,)
    out = []
    for zc in z.split(chunk or mixture_chunk(m)):
        log_n = zc.pow(2) @ inv_var.T  # (S',M) sum_d z_d^2 / var_md
        log_n.addmm_(zc, scaled_mu_t, alpha=-2.0).mul_(-0.5).add_(const)  # (S',M) log N(z; mu_m, var_m)
        out.append(torch.logsumexp(log_n, dim=1) - math.log(m))  # (S',)
    return torch.cat(out)


def mi_cap(m: int) -> float:
    """log M: the most `mutual_information` can report with a mixture of M posteriors."""
    return math.log(m)


@torch.no_grad()
def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 10,
                       generator: torch.Generator | None = None,
                       mixture: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """I_q(x; z) = E_x E_{q(z|x)} [log q(z|x) - log q(z)] in nats, over the images whose
    posteriors are (mu, logvar) (N,D), with q(z) the mixture of the `mixture` posteriors
    (M,D) (default: the same N), which should include these N.

    Each image draws `n_samples` z ~ q(z|x). Every term is at most log M (q(z) >= q(z|x)/M),
    so the estimate never exceeds `mi_cap(M)`, and every term is exactly 0 when all
    posteriors are equal, so a collapsed posterior gives MI = 0 rather than noise.
    """
    n, d = mu.shape
    mix_mu, mix_logvar = mixture if mixture is not None else (mu, logvar)
    mu, logvar = mu.double(), logvar.double()
    z = reparameterize(mu, logvar, n_samples, generator)  # (N,S,D)
    log_q_z_x = log_normal(z, mu[:, None], logvar[:, None])  # (N,S) log q(z|x)
    log_q_z = log_mixture_density(z.reshape(n * n_samples, d), mix_mu, mix_logvar)  # (N*S,)
    return float((log_q_z_x.reshape(-1) - log_q_z).mean())


def independent_pixel_log_prob(x: torch.Tensor, train_x: torch.Tensor) -> torch.Tensor:
    """sum_i log Bernoulli(x_i | p_i), p_i = (sum_n x_ni + 1) / (N + 2) over the N training
    images (binary pixels, or intensities of a dynamic split: their mean is the same p_i).
    x: (B,1,28,28), train_x: (N,1,28,28) -> (B,) nats, fp64"""
    p = (train_x.double().sum(0) + 1) / (len(train_x) + 2)  # (1,28,28)
    x = x.double()
    return (x * p.log() + (1 - x) * (-p).log1p()).flatten(1).sum(1)  # (B,)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """(number of active units, Cov_x(E_q[z_u]) per unit).  mu: (N,D)"""
    variance = mu.double().var(0, unbiased=False)  # (D,)
    return int((variance > threshold).sum()), variance.float()
