"""The estimators against exact answers: closed-form likelihoods, constructed encoders."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stages.estimators import (MIXTURE_CHUNK_ELEMENTS, active_units, iw_log_likelihood, k_checkpoints,
                               log_mixture_density, mi_cap, mixture_chunk, mutual_information)
from stages.model import VAE, EncoderConfig, GaussianEncoder, build_decoder
from stages.model.factorized import LinearDecoder
from stages.model.pixelcnn import PixelCNNDecoder
from stages.model.vae import log_normal
from stages.probe import probe_accuracy, sampled_probe_accuracy


def encoder_with_fixed_posterior(latent_dim: int, mu: float, logvar: float) -> GaussianEncoder:
    """q(z|x) = N(mu, exp(logvar)) for every x: the last layer outputs only its bias."""
    enc = GaussianEncoder(EncoderConfig(latent_dim=latent_dim, hidden=(8,)))
    last = enc.net[-1]
    nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.copy_(torch.tensor([mu] * latent_dim + [logvar] * latent_dim))
    return enc


def one_dim_model(mu: float = 0.0, logvar: float = 0.0) -> VAE:
    """A binary latent-variable model with a 1-D latent: 24 pixels depend on z, linearly."""
    torch.manual_seed(0)
    dec = build_decoder("linear", LinearDecoder.Config(), 1)
    with torch.no_grad():
        dec.net.weight.zero_()
        dec.net.weight[:24, 0] = torch.linspace(-1.5, 1.5, 24)
        dec.net.bias.copy_(torch.randn(784) * 2)
    return VAE(encoder_with_fixed_posterior(1, mu, logvar), dec).eval()


def exact_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int N(z; 0, 1) p(x|z) dz by quadrature on a fine grid.  x: (B,...) -> (B,)"""
    z = torch.linspace(-9, 9, 36001, dtype=torch.float64)  # (G,)
    dz = float(z[1] - z[0])
    with torch.no_grad():
        logits = model.decoder.logits_z(z[:, None].float()).flatten(1).double()  # (G,784)
    xs = x.flatten(1).double()  # (B,784)
    log_px_z = xs @ logits.T - torch.nn.functional.softplus(logits).sum(1)  # (B,G)
    log_prior = -0.5 * (math.log(2 * math.pi) + z**2)  # (G,)
    return torch.logsumexp(log_px_z + log_prior, dim=1) + math.log(dz)


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.4), generator=g)


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_k_checkpoints_are_nested_powers_of_ten():
    assert k_checkpoints(1) == [1]
    assert k_checkpoints(200) == [1, 10, 100, 200]
    assert k_checkpoints(1000) == [1, 10, 100, 1000]


def test_iw_estimate_is_exact_when_decoder_ignores_z_and_the_encoder_is_the_prior():
    torch.manual_seed(0)
    dec = build_decoder("pixelcnn", PixelCNNDecoder.Config(n_layers=2, channels=4, conditional=False), 3)
    model = VAE(encoder_with_fixed_posterior(3, 0.0, 0.0), dec).eval()
    x = images(4)
    with torch.no_grad():
        exact = dec.log_prob(x, torch.zeros(4, 3))  # log p(x), the same for every z
    est = iw_log_likelihood(model, x, 100, 7, g(), k_checkpoints(100))
    for k, value in est.log_px_at.items():
        torch.testing.assert_close(value, exact, rtol=0, atol=2e-4, msg=f"K={k}")
    torch.testing.assert_close(est.log_px, exact, rtol=0, atol=2e-4)


def test_iw_estimate_matches_exact_likelihood():
    model = one_dim_model(mu=0.3, logvar=math.log(0.6))
    x = images(3)
    exact = exact_log_px(model, x)
    est = iw_log_likelihood(model, x, 20000, 4000, g(), [1, 20000])
    assert torch.all((est.log_px.double() - exact).abs() < 0.01), (est.log_px, exact)
    elbo = est.mean_log_px_z - est.kl_per_dim.sum(1)  # (B,)
    assert torch.all(elbo.double() < exact - 0.05)  # the ELBO is below log p(x) ...
    assert torch.all(elbo < est.log_px)  # ... and below the IW estimate


def test_iw_estimate_is_below_log_px_on_average_and_rises_with_k():
    model = one_dim_model(mu=1.0, logvar=math.log(0.3))  # a poor proposal: the bound is loose
    x = images(1).repeat(400, 1, 1, 1)  # 400 independent estimates for one image
    exact = float(exact_log_px(model, x[:1]))
    est = iw_log_likelihood(model, x, 1000, 4000, g(), [1, 10, 100, 1000])
    means = [float(est.log_px_at[k].double().mean()) for k in (1, 10, 100, 1000)]
    assert means[0] < means[1] < means[2] < means[3] <= exact + 0.01
    assert means[1] < exact - 0.1  # a small-K estimate is clearly biased low
    elbo = float((est.mean_log_px_z - est.kl_per_dim.sum(1)).double().mean())
    assert elbo < means[1]


def test_k_equal_1_matches_the_elbo_in_expectation():
    model = one_dim_model(mu=0.5, logvar=math.log(0.5))
    x = images(1).repeat(4000, 1, 1, 1)
    est = iw_log_likelihood(model, x, 1, 4000, g())
    one_sample = est.log_px.double()  # (4000,) independent one-sample estimates
    elbo_est = iw_log_likelihood(model, x[:1], 50000, 10000, g(1))
    elbo = float(elbo_est.mean_log_px_z - elbo_est.kl_per_dim.sum(1))  # accurate E_q + exact KL
    stderr = float(one_sample.std() / math.sqrt(len(one_sample)))
    assert abs(float(one_sample.mean()) - elbo) < 4 * stderr + 0.01


def test_the_encoder_runs_once_per_image_and_chunks_bound_the_decoder_batch():
    model = one_dim_model()
    encoder_rows, decoder_pairs = [], []
    model.encoder.register_forward_hook(lambda m, inp, out: encoder_rows.append(inp[0].shape[0]))
    original = model.decoder.log_prob_k

    def recording(x, z):
        decoder_pairs.append(z.shape[0] * z.shape[1])
        return original(x, z)

    model.decoder.log_prob_k = recording
    iw_log_likelihood(model, images(10), 5000, 64, g())
    assert sum(encoder_rows) == 10
    assert max(decoder_pairs) <= 64 and sum(decoder_pairs) == 10 * 5000


def test_a_decoder_that_ignores_z_is_scored_once_per_image_with_the_chunked_paths_estimate():
    """The decoder alone is run once per image, whatever K, and gives the estimate (every K')
    of the same decoder made conditional with z's pathway zeroed, which the chunked path scores
    sample by sample: the same draws, the same log_w."""
    torch.manual_seed(0)
    config = PixelCNNDecoder.Config(n_layers=2, channels=4)
    conditional = build_decoder("pixelcnn", config, 3)
    with torch.no_grad():
        for p in conditional.z_path.parameters():
            p.zero_()
    alone = build_decoder("pixelcnn", PixelCNNDecoder.Config(n_layers=2, channels=4, conditional=False), 3)
    missing = alone.load_state_dict(conditional.state_dict(), strict=False)
    assert not missing.missing_keys and all(k.startswith("z_path") for k in missing.unexpected_keys)
    encoder = encoder_with_fixed_posterior(3, 0.4, math.log(0.5))
    x, k, chunk = images(6), 200, 12  # 2 samples per image per decoder call
    estimates, head_calls = {}, {}
    for name, dec in (("conditional", conditional), ("alone", alone)):
        calls = []
        dec.head.register_forward_hook(lambda m, inp, out, calls=calls: calls.append(out.shape[0]))
        model = VAE(encoder, dec).eval()
        assert model.decoder.uses_z == (name == "conditional")
        estimates[name] = iw_log_likelihood(model, x, k, chunk, g(3), k_checkpoints(k))
        head_calls[name] = calls
    assert head_calls["alone"] == [6]  # one pass over the batch, not one per chunk of samples
    assert sum(head_calls["conditional"]) == 6 * k
    for kk in k_checkpoints(k):
        torch.testing.assert_close(estimates["alone"].log_px_at[kk], estimates["conditional"].log_px_at[kk],
                                   rtol=0, atol=1e-4, msg=f"K'={kk}")
    torch.testing.assert_close(estimates["alone"].log_px, estimates["conditional"].log_px, rtol=0, atol=1e-4)
    torch.testing.assert_close(estimates["alone"].mean_log_px_z, estimates["conditional"].mean_log_px_z,
                               rtol=0, atol=1e-4)


def test_chunk_smaller_than_the_batch_still_bounds_memory():
    model = one_dim_model()
    est = iw_log_likelihood(model, images(10), 3, 4, g())
    assert est.log_px.shape == (10,) and torch.isfinite(est.log_px).all()


@pytest.mark.parametrize("k, chunk", [(0, 10), (5, 0)])
def test_bad_k_or_chunk_is_refused(k, chunk):
    with pytest.raises(ValueError):
        iw_log_likelihood(one_dim_model(), images(2), k, chunk, g())


def test_aggregate_posterior_density_matches_the_direct_mixture():
    torch.manual_seed(0)
    mu, logvar = torch.randn(50, 3), torch.randn(50, 3) * 0.5 - 3  # narrow posteriors
    z = torch.randn(20, 3)
    direct = torch.logsumexp(log_normal(z[:, None], mu[None], logvar[None]), dim=1) - math.log(50)
    torch.testing.assert_close(log_mixture_density(z, mu, logvar, chunk=7).float(), direct,
                               rtol=1e-5, atol=1e-3)


def test_aggregate_posterior_of_fifty_thousand_posteriors_is_chunked_to_a_bounded_matrix():
    m = 50_000
    assert mixture_chunk(m) * m * 8 <= 256 * 2**20  # one (chunk, M) fp64 matrix: <= 256 MiB
    assert mixture_chunk(m) * m <= MIXTURE_CHUNK_ELEMENTS < (mixture_chunk(m) + 1) * m
    assert mixture_chunk(10**9) == 1  # never zero rows
    torch.manual_seed(0)
    mu, logvar = torch.randn(m, 2), torch.randn(m, 2) * 0.3 - 1
    z = torch.randn(3 * mixture_chunk(m) + 5, 2)  # four chunks of the default size
    got = log_mixture_density(z, mu, logvar).float()  # (S,)
    for rows in (slice(0, 3), slice(-3, None)):  # the first and the last chunk, against the direct sum
        direct = torch.logsumexp(log_normal(z[rows, None].double(), mu[None].double(),
                                            logvar[None].double()), dim=1) - math.log(m)
        torch.testing.assert_close(got[rows].double(), direct, rtol=1e-6, atol=1e-5)


def test_mutual_information_never_exceeds_its_cap_log_m():
    """20 well-separated, narrow posteriors: I_q(x; z) ~ 8 * 0.5 * log(25 / e^-6) >> log 20,
    but a mixture of M = 20 can tell at most 20 images apart."""
    torch.manual_seed(0)
    mu, logvar = torch.randn(20, 8) * 5, torch.full((20, 8), -6.0)
    kl = float((0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean())
    assert kl > 10 * mi_cap(20)  # the first term alone is far above the cap
    for seed in range(20):
        mi = mutual_information(mu, logvar, 50, g(seed))
        assert mi <= mi_cap(20) + 1e-9, (seed, mi)
        assert mi > mi_cap(20) - 1e-3  # and saturates it: the posteriors do not overlap
    big = torch.cat([mu, torch.randn(180, 8) * 5])  # the same 20 images inside a mixture of 200
    mi = mutual_information(mu, logvar, 50, g(), (big, torch.full((200, 8), -6.0)))
    assert mi_cap(20) + 1 < mi <= mi_cap(200) + 1e-9
    assert mi_cap(200) == pytest.approx(math.log(200))


def test_mutual_information_is_between_zero_and_kl():
    torch.manual_seed(0)
    mu, logvar = torch.randn(2000, 4) * 1.5, torch.full((2000, 4), -2.0)
    kl = float((0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean())
    mi = mutual_information(mu, logvar, 10, g())
    assert 0.5 < mi < kl
    assert mi <= math.log(2000) + 1e-6  # no estimate over N images can exceed log N


def test_mutual_information_is_zero_when_the_encoder_ignores_x():
    mu, logvar = torch.full((2000, 4), 0.7), torch.full((2000, 4), -1.0)  # q(z|x) = q(z)
    assert abs(mutual_information(mu, logvar, 10, g())) < 0.05


def test_mutual_information_of_a_collapsed_posterior_is_zero_without_sampling_noise():
    mu, logvar = torch.zeros(500, 8), torch.zeros(500, 8)  # q(z|x) = p(z) for every x
    assert abs(mutual_information(mu, logvar, 10, g())) < 1e-5


def test_active_units_are_counted_by_the_variance_of_posterior_means():
    torch.manual_seed(0)
    scales = torch.tensor([0.0, 0.05, 0.2, 1.0])  # variances 0, 0.0025, 0.04, 1
    mu = torch.randn(20000, 4) * scales + 3.0
    n, variance = active_units(mu, 0.01)
    assert n == 2
    torch.testing.assert_close(variance, scales**2, rtol=0.05, atol=1e-4)


def test_probe_accuracy_is_high_for_informative_codes_and_chance_for_noise():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (3000,))
    means = torch.randn(10, 8) * 3
    informative = means[labels] + torch.randn(3000, 8)
    noise = torch.randn(3000, 8)
    assert probe_accuracy(informative[:2000], labels[:2000], informative[2000:], labels[2000:]) > 0.9
    assert probe_accuracy(noise[:2000], labels[:2000], noise[2000:], labels[2000:]) < 0.2


def test_probe_on_sampled_z_is_at_chance_when_the_means_carry_information_but_the_noise_drowns_it():
    """q(z|x) = N(0.02 * code(y) + jitter, I): the means separate the digits, z ~ q(z|x) does not."""
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (3000,))
    codes = torch.randn(10, 8) * 3
    mu = 0.02 * (codes[labels] + 0.1 * torch.randn(3000, 8))  # (N,8): informative, but tiny
    logvar = torch.zeros(3000, 8)  # posterior std 1, ~50 times the spread of the means
    tr, te = slice(0, 2000), slice(2000, None)
    assert probe_accuracy(mu[tr], labels[tr], mu[te], labels[te]) > 0.9  # what the old metric saw
    sampled = sampled_probe_accuracy(mu[tr], logvar[tr], labels[tr], mu[te], logvar[te], labels[te],
                                     g(1), g(2))
    assert sampled < 0.2


def test_probe_on_sampled_z_sees_the_digit_when_the_posterior_is_narrow():
    torch.manual_seed(0)
    labels = torch.randint(0, 10, (3000,))
    mu = (torch.randn(10, 8) * 3)[labels]  # (N,8)
    logvar = torch.full((3000, 8), math.log(0.25))  # std 0.5: z still codes the digit
    tr, te = slice(0, 2000), slice(2000, None)
    accuracy = sampled_probe_accuracy(mu[tr], logvar[tr], labels[tr], mu[te], logvar[te], labels[te],
                                      g(1), g(2))
    assert accuracy > 0.9
    again = sampled_probe_accuracy(mu[tr], logvar[tr], labels[tr], mu[te], logvar[te], labels[te],
                                   g(1), g(2))
    assert again == accuracy  # seeded draws: the same accuracy every time
