"""The decoder families: interface, causality, exact sampling, and the fast K-sample paths."""

from __future__ import annotations

import pytest
import torch

from stages.model import DECODERS, build_decoder
from stages.model.autoregressive import GridSupport
from stages.model.pixelcnn import PixelCNNDecoder
from stages.model.vae import EncoderConfig, GaussianEncoder, gaussian_kl_per_dim

D = 3
SMALL = {
    "linear": {},
    "mlp": {"hidden": (16,)},
    "conv": {"channels": 4},
    "pixelcnn": {"n_layers": 2, "channels": 4},
    "gated_pixelcnn": {"n_layers": 3, "channels": 4},
}
AUTOREGRESSIVE = ("pixelcnn", "gated_pixelcnn")


def decoder(family: str, **options):
    torch.manual_seed(0)
    cls = DECODERS[family]
    return build_decoder(family, cls.Config(**{**SMALL[family], **options}), D).eval()


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, 1, 28, 28), 0.3), generator=g)


def test_every_registered_family_is_covered_here():
    assert set(DECODERS) == set(SMALL)


@pytest.mark.parametrize("family", sorted(SMALL))
def test_log_prob_has_shape_b_is_finite_and_at_most_zero(family):
    dec = decoder(family)
    x, z = binary_images(5), torch.randn(5, D)
    lp = dec.log_prob(x, z)
    assert lp.shape == (5,)
    assert torch.isfinite(lp).all() and (lp <= 0).all()


@pytest.mark.parametrize("family", sorted(SMALL))
def test_samples_are_binary_images_with_their_probabilities(family):
    dec = decoder(family)
    x, probs = dec.sample(torch.randn(3, D), torch.Generator().manual_seed(0))
    assert x.shape == probs.shape == (3, 1, 28, 28)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert ((probs >= 0) & (probs <= 1)).all()


@pytest.mark.parametrize("family, options", [(f, {}) for f in sorted(SMALL)]
                         + [(f, {"z_pathway": "bias"}) for f in AUTOREGRESSIVE])
def test_log_prob_k_equals_log_prob_for_each_sample(family, options):
    """The shared-work K-sample path must give exactly what K separate calls give."""
    dec = decoder(family, **options)
    x, z = binary_images(4), torch.randn(4, 5, D)  # (B,K,D)
    fast = dec.log_prob_k(x, z)  # (B,K)
    slow = torch.stack([dec.log_prob(x, z[:, k]) for k in range(5)], dim=1)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n_layers, gated, z_pathway",
                         [(1, False, "spatial"), (2, False, "spatial"), (4, False, "spatial"),
                          (3, True, "spatial"), (2, False, "bias")])
def test_pixelcnn_is_causal(n_layers, gated, z_pathway):
    """d logit_i / d x_j = 0 for every pixel j at or after i in raster order (eval mode)."""
    dec = decoder("pixelcnn", n_layers=n_layers, gated=gated, z_pathway=z_pathway)
    z = torch.randn(1, D)
    for i in (0, 1, 27, 28, 29, 400, 783):  # corners, row starts, the middle, the last pixel
        x = binary_images(1, seed=i).requires_grad_(True)
        dec.logits(x, z).flatten()[i].backward()
        grad = x.grad.flatten()  # (784,)
        assert torch.all(grad[i:] == 0), f"pixel {i} sees pixel {int(grad[i:].nonzero()[0]) + i}"
        if i >= 29:  # and it does see the past: the pixel above and the one to the left
            assert grad[i - 1] != 0 and grad[i - 28] != 0


def test_pixelcnn_receptive_field_grows_with_depth():
    def seen(n_layers: int) -> int:
        dec = decoder("pixelcnn", n_layers=n_layers)
        x = binary_images(1).requires_grad_(True)
        dec.logits(x, torch.randn(1, D)).flatten()[27 * 28 + 14].backward()  # bottom row
        return int((x.grad != 0).sum())

    assert seen(1) < seen(2) < seen(4)


def gradient_support(dec, pixel: int, draws: int = 6) -> torch.Tensor:
    """(784,) bool: the input pixels with a nonzero gradient of one logit, over a few draws of
    (x, z) so that a unit that happens to be off for one draw hides nothing."""
    seen = torch.zeros(784, dtype=torch.bool)
    for i in range(draws):
        x = binary_images(1, seed=i).requires_grad_(True)
        dec.logits(x, torch.randn(1, D)).flatten()[pixel].backward()
        seen |= x.grad.flatten() != 0
    return seen


@pytest.mark.parametrize("layers", [(3, 1), (5, 1), (7, 1), (7, 3), (3, 4)])
def test_receptive_field_counts_exactly_the_pixels_a_logit_depends_on(layers):
    """The power measure equals the pixels with a nonzero gradient, over a few draws of (x, z)
    so that a ReLU of the head that happens to be off for one draw hides nothing."""
    first, n_layers = layers
    dec = decoder("pixelcnn", n_layers=n_layers, first_kernel_size=first, gated=True)
    seen = gradient_support(dec, 27 * 28 + 14, draws=8)  # bottom row, centre
    assert int(seen.sum()) == dec.receptive_field
    assert decoder("conv").receptive_field == 0


def test_receptive_field_of_one_masked_layer_is_its_causal_window():
    assert [decoder("pixelcnn", n_layers=1, first_kernel_size=k).receptive_field
            for k in (3, 5, 7)] == [4, 12, 24]


@pytest.mark.parametrize("family", AUTOREGRESSIVE)
def test_spatial_pathway_lets_z_vary_across_pixels_and_the_bias_cannot(family):
    """On a blank canvas, a bias pathway gives every interior pixel the same logit whatever z;
    the spatial pathway gives z a map, so logits differ from pixel to pixel."""
    x, z = torch.zeros(1, 1, 28, 28), torch.randn(1, D)
    for pathway, varies in (("bias", False), ("spatial", True)):
        dec = decoder(family, n_layers=1, first_kernel_size=3, z_pathway=pathway, channels=16)
        with torch.no_grad():
            interior = dec.logits(x, z)[0, 0, 4:24, 4:24]  # away from padding effects
        assert bool(interior.std() > 1e-4) is varies, pathway


@pytest.mark.parametrize("family", AUTOREGRESSIVE)
def test_the_spatial_pathway_shares_the_conv_decoders_trunk(family):
    dec, conv = decoder(family), decoder("conv")
    assert type(dec.trunk) is type(conv.trunk)
    assert decoder(family, z_pathway="bias").trunk is None
    assert decoder(family, conditional=False).z_path is None


@pytest.mark.parametrize("family", AUTOREGRESSIVE)
def test_unconditional_pixelcnn_ignores_z(family):
    dec = decoder(family, conditional=False)
    x = binary_images(4)
    assert not dec.uses_z
    torch.testing.assert_close(dec.log_prob(x, torch.randn(4, D)), dec.log_prob(x, 10 * torch.randn(4, D)),
                               rtol=0, atol=0)
    assert decoder(family).uses_z


@pytest.mark.parametrize("family", AUTOREGRESSIVE)
def test_conditional_pixelcnn_uses_z(family):
    dec = decoder(family)
    x = binary_images(4)
    assert not torch.allclose(dec.log_prob(x, torch.zeros(4, D)), dec.log_prob(x, torch.ones(4, D)))


@pytest.mark.parametrize("family, z_pathway", [(f, p) for f in AUTOREGRESSIVE for p in ("spatial", "bias")])
def test_pixelcnn_sampling_is_exact_ancestral_sampling(family, z_pathway):
    """The probability recorded for each pixel is p(x_i = 1 | x_<i, z) of the full model."""
    dec = decoder(family, n_layers=3, z_pathway=z_pathway)
    z = torch.randn(2, D)
    x, probs = dec.sample(z, torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = torch.sigmoid(dec.logits(x, z))  # one pass over the finished images
    torch.testing.assert_close(probs, full, rtol=1e-5, atol=1e-6)
    lp = dec.log_prob(x, z)
    expected = torch.log(torch.where(x == 1, probs, 1 - probs)).flatten(1).sum(1)
    torch.testing.assert_close(lp, expected, rtol=1e-4, atol=1e-3)


def test_masked_weights_receive_no_gradient():
    dec = decoder("pixelcnn").train()
    dec.log_prob(binary_images(2), torch.randn(2, D)).sum().backward()
    conv = dec.input
    assert torch.all(conv.weight.grad[..., 3, 3:] == 0) and torch.all(conv.weight.grad[..., 4:, :] == 0)


def test_encoder_kl_matches_torch_distributions():
    enc = GaussianEncoder(EncoderConfig(latent_dim=D, hidden=(8,)))
    mu, logvar = enc(binary_images(3))
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar), torch.distributions.kl_divergence(q, p))


def test_pixelcnn_config_defaults_are_the_documented_architecture():
    config = PixelCNNDecoder.Config()
    assert (config.first_kernel_size, config.kernel_size) == (7, 3)
    assert config.z_pathway == "spatial"


EDGES = (0, 1, 27, 28, 29, 55, 56, 400, 419, 27 * 28, 783)  # corners, both edges, row starts, the middle


@pytest.mark.parametrize("n_layers, kernel_size, first_kernel_size",
                         [(1, 5, 7), (2, 5, 7), (3, 3, 5), (4, 5, 3)])
def test_gated_stack_sees_exactly_its_counted_support_at_every_position(n_layers, kernel_size,
                                                                        first_kernel_size):
    """Every pixel the stack geometry counts has a nonzero gradient, no other pixel has one, and
    nothing at or after the pixel itself is ever seen, at interior and edge positions."""
    dec = decoder("gated_pixelcnn", n_layers=n_layers, kernel_size=kernel_size,
                  first_kernel_size=first_kernel_size, channels=8)  # 8: no position whose head is all off
    counted = torch.from_numpy(dec.causal_support(GridSupport()).matrix)  # (784,784)
    for pixel in EDGES:
        seen = gradient_support(dec, pixel)
        assert not seen[pixel:].any(), f"pixel {pixel} sees a pixel at or after itself"
        assert torch.equal(seen, counted[pixel]), f"pixel {pixel}: {int(seen.sum())} seen, " \
                                                  f"{int(counted[pixel].sum())} counted"


def test_gated_stack_of_pixelvae_geometry_sees_the_whole_raster_past():
    """7x7 + 12 layers of 5x5: the last pixel's logit depends on all 783 earlier pixels (no blind
    spot), a pixel on the right edge sees the whole row above it, and the count says so."""
    dec = decoder("gated_pixelcnn", n_layers=13, kernel_size=5, first_kernel_size=7)
    for pixel in (783, 28 * 14 - 1, 28 * 20):
        seen = gradient_support(dec, pixel, draws=3)
        assert int(seen.sum()) == pixel and not seen[pixel:].any()
    assert dec.raster_share == 1.0
    assert dec.receptive_field == 27 + 27 * 55  # 27 left in the row, 27 rows of 55 above


def test_masked_stack_keeps_its_blind_spot_and_the_count_includes_the_edges():
    """The masked 3x3 stack misses pixels up and to the right; the grid count (clipped at the
    image edges) equals the gradient support at the edges too, and its share stays below 1."""
    dec = decoder("pixelcnn", n_layers=4, first_kernel_size=7, channels=8)
    counted = torch.from_numpy(dec.causal_support(GridSupport()).matrix)
    for pixel in EDGES:
        assert torch.equal(gradient_support(dec, pixel), counted[pixel]), pixel
    assert dec.raster_share < 0.5


def test_power_orders_the_gated_stack_above_the_masked_stack_it_outgrows():
    """The unbounded count keeps growing with depth where the 28x28 share saturates at 1."""
    counts = [decoder("gated_pixelcnn", n_layers=n, kernel_size=9).receptive_field for n in (3, 7, 8)]
    shares = [decoder("gated_pixelcnn", n_layers=n, kernel_size=9).raster_share for n in (3, 7, 8)]
    assert counts[0] < counts[1] < counts[2]
    assert shares[0] < shares[1] == shares[2] == 1.0
    assert decoder("pixelcnn", n_layers=8).receptive_field < counts[0]


def test_fused_1x1_add_matches_the_convolution_in_every_layout():
    from stages.model.autoregressive import conv1x1_add
    conv = torch.nn.Conv2d(6, 4, 1)
    acc, x = torch.randn(3, 4, 5, 7), torch.randn(3, 6, 5, 7)
    expected = acc + conv(x)
    cl = torch.channels_last
    for a, b in ((acc, x), (acc.contiguous(memory_format=cl), x.contiguous(memory_format=cl)),
                 (acc.contiguous(memory_format=cl), x[:, :, :5])):
        torch.testing.assert_close(conv1x1_add(a, b, conv), expected)
