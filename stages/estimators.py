"""Estimators of log p(x) and of how much a VAE uses its latent variable.

- `iw_log_likelihood`: the K-sample importance-weighted estimate (Burda et al. 2016, Eq. 8)
      log p^_K(x) = logsumexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)] - log K,
  z_k ~ q(z|x). It is a stochastic lower bound, E[log p^_K(x)] <= log p(x), non-decreasing
  in K and exact as K -> infinity; K = 1 is the one-sample ELBO. The encoder runs once per
  image; samples are drawn and scored in chunks of at most `chunk_size` (image, sample)
  pairs with a running logsumexp, so memory does not grow with K. Estimates at nested
  K' <= K (the first K' of the same draws) come for free.
- `mutual_information`: I_q(x; z) = E_x KL[q(z|x) || p(z)] - KL[q(z) || p(z)], the first
  term in closed form, the second by sampling z ~ q(z) from the aggregate posterior
  q(z) = mean_m q(z|x_m)
  over a large set of images (Hoffman & Johnson 2016; He et al. 2019): a mixture of M
  posteriors caps the estimate at log M, so a minibatch mixture would cap it at log(batch
  size); the evaluate stage uses the test images plus the probe's training images.
- `active_units`: latent dimensions u with Cov_x(E_q[z_u]) above a threshold (Burda et al.
  2016, Sec. 5.2, threshold 0.01).

All reductions (logsumexp, sums over pixels and dimensions) run in fp32 or fp64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stages.model.vae import (LOG_2PI, VAE, gaussian_kl_per_dim, log_normal, log_standard_normal,
                              reparameterize)


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
    per_chunk = max(1, chunk_size // b)  # samples per decoder call
    running = torch.full((b,), -math.inf, device=x.device)  # logsumexp of log_w so far
    sum_log_px_z = torch.zeros(b, device=x.device)
    at: dict[int, torch.Tensor] = {}
    done = 0
    while done < k:
        kc = min(per_chunk, k - done)
        z = reparameterize(mu, logvar, kc, generator)  # (B,kc,D)
        log_px_z = model.decoder.log_prob_k(x, z).float()  # (B,kc)
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


@torch.no_grad()
def log_aggregate_posterior(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                            chunk: int = 4096) -> torch.Tensor:
    """log q(z) = logsumexp_m log N(z; mu_m, var_m) - log M, q(z) the mixture of M posteriors.

    z: (S,D); mu, logvar: (M,D) -> (S,). The squared distances are expanded into fp64
    matrix products, so cost is S*M*D multiply-adds without an (S,M,D) tensor.
    """
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    inv_var = torch.exp(-logvar)  # (M,D)
    const = -0.5 * (mu.shape[1] * LOG_2PI + logvar.sum(1) + (mu.pow(2) * inv_var).sum(1))  # (M,)
    out = []
    for zc in z.split(chunk):
        quad = zc.pow(2) @ inv_var.T - 2.0 * zc @ (mu * inv_var).T  # (S',M)
        out.append(torch.logsumexp(const - 0.5 * quad, dim=1) - math.log(mu.shape[0]))
    return torch.cat(out).float()


@torch.no_grad()
def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 10,
                       generator: torch.Generator | None = None,
                       mixture: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """I_q(x; z) = E_x KL[q(z|x) || p(z)] - KL[q(z) || p(z)] in nats, over the images whose
    posteriors are (mu, logvar) (N,D), with q(z) the mixture of the `mixture` posteriors
    (M,D) (default: the same N). The first term is exact; the second is a Monte Carlo mean of
    log q(z) - log p(z), z ~ q(z), whose noise vanishes as q(z) -> p(z), so a collapsed
    posterior gives MI ~ 0 rather than noise. The estimate cannot exceed log M."""
    n, d = mu.shape
    mix_mu, mix_logvar = mixture if mixture is not None else (mu, logvar)
    kl = gaussian_kl_per_dim(mu, logvar).sum(1)  # (N,) KL[q(z|x) || p(z)], exact
    z = reparameterize(mu, logvar, n_samples, generator).reshape(n * n_samples, d)  # (N*S,D)
    log_ratio = log_aggregate_posterior(z, mix_mu, mix_logvar) - log_standard_normal(z)  # (N*S,)
    return float(kl.double().mean() - log_ratio.double().mean())


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> tuple[int, torch.Tensor]:
    """(number of active units, Cov_x(E_q[z_u]) per unit).  mu: (N,D)"""
    variance = mu.double().var(0, unbiased=False)  # (D,)
    return int((variance > threshold).sum()), variance.float()
