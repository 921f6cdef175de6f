"""A linear probe: how much digit identity the posterior means carry.

Multinomial logistic regression on standardized posterior means E_q[z|x], fitted on training
images and scored on test images. Near 10 % (chance over ten digits) when z carries nothing
about x, as for a collapsed posterior; well above it when the latent codes the digit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    mean, std, w, b = fit_linear_probe(train_features, train_labels)
    logits = ((test_features.double() - mean) / std) @ w + b  # (N,10)
    return float((logits.argmax(1) == test_labels).double().mean())
