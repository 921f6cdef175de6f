"""A linear probe: how much digit identity the latent variable z ~ q(z|x) carries.

Multinomial logistic regression on standardized sampled codes z = mu + sigma * eps,
eps ~ N(0, I), one reparameterized draw per image: fitted on training images and scored on
test images. Near 10 % (chance over ten digits) when z carries nothing about x, as for a
collapsed posterior; well above it when the latent codes the digit.

It is fitted on draws of z, not on the posterior means E_q[z|x]: the means can separate the
digits while the noise sigma that the decoder actually sees drowns them. Then the probe on
the means would report information that z does not have. By Fano's inequality any
classifier of the digit y from z errs with a probability P_e such that
    h(P_e) + P_e log 9 >= H(y) - I(y; z),   h the binary entropy, H(y) = log 10,
and I(y; z) <= I(x; z) (data processing), so a rung with I_q(x; z) = 0.5 nats allows at most
about 50 % accuracy and one with 0.96 nats about 68 %.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.model.vae import reparameterize


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int = 10,
                     weight_decay: float = 1e-3, max_iter: int = 200) -> tuple[torch.Tensor, ...]:
    """(mean, std, W, b) of an L2-regularized softmax regression.  features: (N,D) labels: (N,)"""
    x = features.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)  # (D,) each
    x = (x - mean) / std
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ w + b, labels) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return mean, std, w.detach(), b.detach()


def probe_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor,
                   test_features: torch.Tensor, test_labels: torch.Tensor) -> float:
    """Test accuracy of the probe fitted on (train_features, train_labels).  features: (N,D)"""
    mean, std, w, b = fit_linear_probe(train_features, train_labels)
    logits = ((test_features.double() - mean) / std) @ w + b  # (N,10)
    return float((logits.argmax(1) == test_labels).double().mean())


def sampled_probe_accuracy(mu_train: torch.Tensor, logvar_train: torch.Tensor, train_labels: torch.Tensor,
                           mu_test: torch.Tensor, logvar_test: torch.Tensor, test_labels: torch.Tensor,
                           train_generator: torch.Generator, test_generator: torch.Generator) -> float:
    """The probe on one draw z ~ q(z|x) = N(mu, exp(logvar)) per image.  mu, logvar: (N,D)

    The training and test draws come from separate generators, so the test codes do not
    depend on how many training images were drawn before them.
    """
    z_train = reparameterize(mu_train, logvar_train, generator=train_generator)  # (N_train,D)
    z_test = reparameterize(mu_test, logvar_test, generator=test_generator)  # (N_test,D)
    return probe_accuracy(z_train, train_labels, z_test, test_labels)
