"""The training objectives: the ELBO and the remedies of posterior collapse (stages.train).

Per minibatch (Kingma & Welling 2014, Eq. 3):

    loss = -E_x[log p(x|z)] + beta_t * sum_j max(lambda, E_x KL_j)

- the ELBO: beta_t = 1, lambda = 0;
- KL warm-up (Bowman et al. 2016): beta_t rises linearly from 0 to `beta` over `kl_warmup_steps`;
- free bits (Kingma et al. 2016, Eq. 15): each latent dimension's batch-mean KL counts at least
  lambda = `free_bits` nats;
- beta < 1 (the beta-VAE's weight, Higgins et al. 2017, below 1): the KL term weighs `beta`;
- aggressive inference-network training (He et al. 2019, "Lagging Inference Networks",
  Algorithm 1): before each decoder update, the encoder alone is updated on fresh minibatches
  until its loss stops falling (`encoder_inner_loop`: the mean loss of each block of
  `aggressive_check_every` steps must beat the block before, at most
  `aggressive_max_inner_steps` steps), then the decoder alone takes one step; at the end of each
  epoch the phase ends for good once I_q(x; z) on the validation images has not risen
  (`AggressivePhase`), and training goes on as plain ELBO steps.

The ELBO reported (train and valid) is always the true one: beta = 1, lambda = 0.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from stages.data import Split
from stages.estimators import mutual_information, posteriors
from stages.model import VAE
from stages.params import ObjectiveConfig
from stages.runtime import Precision

MI_SAMPLES = 5  # z draws per validation image for the phase's MI estimate


@dataclass
class Objective:
    """beta and lambda of the training loss at a global step."""

    warmup_steps: int
    free_bits: float
    beta_max: float = 1.0

    @classmethod
    def of(cls, config: ObjectiveConfig) -> Objective:
        return cls(config.kl_warmup_steps, config.free_bits, config.beta)

    def beta(self, step: int) -> float:
        ramp = 1.0 if self.warmup_steps == 0 else min(1.0, step / self.warmup_steps)
        return self.beta_max * ramp

    def kl_term(self, kl_per_dim: torch.Tensor) -> torch.Tensor:
        """sum_j max(lambda, mean_batch KL_j).  (B,D) -> ()"""
        per_dim = kl_per_dim.mean(0)  # (D,)
        if self.free_bits > 0:
            per_dim = per_dim.clamp(min=self.free_bits)
        return per_dim.sum()

    def loss(self, log_px_z: torch.Tensor, kl_per_dim: torch.Tensor, step: int) -> torch.Tensor:
        """The minibatch loss above.  log_px_z: (B,), kl_per_dim: (B,D) -> ()"""
        return -log_px_z.mean() + self.beta(step) * self.kl_term(kl_per_dim)


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """`module`'s parameters need no gradient inside (gradients still flow through it)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def step_only(model: VAE, part: torch.nn.Module, optimizer: torch.optim.Optimizer,
              loss: torch.Tensor) -> None:
    """One optimizer step on `part` (the encoder or the decoder) alone: the other part's
    gradients are dropped, and Adam skips parameters without one (its state stays as it was)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    keep = {id(p) for p in part.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.grad = None
    optimizer.step()


@dataclass
class StepContext:
    """What every training step of a run works with: the model and its optimizer, the loss,
    and where (`precision`) and on what (`train`, `batch_size` images a step) it trains."""

    model: VAE
    optimizer: torch.optim.Optimizer
    objective: Objective
    train: Split
    batch_size: int
    precision: Precision


def encoder_inner_loop(ctx: StepContext, config: ObjectiveConfig, step: int, g_cpu: torch.Generator,
                       g: torch.Generator) -> int:
    """He et al. 2019, Algorithm 1, inner loop: update the encoder alone on fresh minibatches
    (drawn with `g_cpu`) until the mean loss of a block of `aggressive_check_every` steps no
    longer beats the block before it, or `aggressive_max_inner_steps` steps. -> steps taken"""
    previous, block, taken = math.inf, 0.0, 0
    with frozen(ctx.model.decoder):  # its weights' gradients would be thrown away: not computed
        for taken in range(1, config.aggressive_max_inner_steps + 1):
            loss = _encoder_step(ctx, step, g_cpu, g)
            block += loss
            if taken % config.aggressive_check_every == 0:
                mean = block / config.aggressive_check_every
                if mean >= previous:
                    break
                previous, block = mean, 0.0
    return taken


def _encoder_step(ctx: StepContext, step: int, g_cpu: torch.Generator, g: torch.Generator) -> float:
    """One update of the encoder alone on a fresh minibatch; -> its loss."""
    index = torch.randint(len(ctx.train), (ctx.batch_size,), generator=g_cpu)  # (B,)
    x = ctx.precision.batch(ctx.train.images(index, g_cpu))
    with ctx.precision.autocast():
        t = ctx.model.elbo_terms(x, generator=g)
    loss = ctx.objective.loss(t.log_px_z, t.kl_per_dim, step)
    step_only(ctx.model, ctx.model.encoder, ctx.optimizer, loss)
    return float(loss.detach())


@torch.no_grad()
def valid_mi(model: VAE, valid: Split, precision: Precision, batch_size: int,
             g: torch.Generator) -> float:
    """I_q(x; z) over the validation images, q(z) their posteriors' mixture.  Nats."""
    mu, logvar = posteriors(model, valid, precision, batch_size, g)  # (N,D) each
    return mutual_information(mu, logvar, MI_SAMPLES, g)


@dataclass
class AggressivePhase:
    """Whether the aggressive phase is still on, and the validation MI it must beat."""

    on: bool
    best_mi: float = -math.inf

    def end_of_epoch(self, mi: float) -> None:
        """He et al. 2019: the phase ends once an epoch has not raised I_q(x; z)."""
        if self.on and not mi > self.best_mi:
            self.on = False
        self.best_mi = max(self.best_mi, mi)

    def plain(self) -> dict[str, float | bool]:
        return {"on": self.on, "best_mi": self.best_mi}
