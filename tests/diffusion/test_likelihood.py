import math

import pytest
import torch

from latentlab.diffusion import (DiffusionConfig, Denoised, discretized_gaussian_log_likelihood,
                                 gaussian_log_likelihood, make_denoiser, nll_bits, normal_kl, prior_bits, vlb_terms)

from latentlab.diffusion.likelihood import training_log_variances

from .test_samplers import MU, S


def kl_by_hand(m1, v1, m2, v2):
    return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def test_vlb_terms_by_hand():
    """A two-step process, one scalar, a learned variance: both terms of the bound, computed by hand."""
    ac = torch.tensor([0.9, 0.45], dtype=torch.float64)
    x_0, x_t, x0_hat, v = 0.3, -0.4, 0.2, 0.5
    frac = (v + 1) / 2
    beta_tilde = 0.5 * (1 - 0.9) / (1 - 0.45)  # the posterior variance of step t = 1 (beta_2 = 0.5)

    def posterior_mean(x0, a, a_prev):
        beta = 1 - a / a_prev
        return (math.sqrt(a_prev) * beta * x0 + math.sqrt(1 - beta) * (1 - a_prev) * x_t) / (1 - a)

    # t = 1: KL between the posterior and p, variance exp(frac log beta + (1 - frac) log beta tilde)
    var_p = math.exp(frac * math.log(0.5) + (1 - frac) * math.log(beta_tilde))
    want_1 = kl_by_hand(posterior_mean(x_0, 0.45, 0.9), beta_tilde, posterior_mean(x0_hat, 0.45, 0.9), var_p)
    # t = 0: the decoder -log N(x_0; x0_hat, var), beta tilde clipped to that of t = 1
    var_0 = math.exp(frac * math.log(0.1) + (1 - frac) * math.log(beta_tilde))
    want_0 = 0.5 * math.log(2 * math.pi * var_0) + (x_0 - x0_hat) ** 2 / (2 * var_0)

    one = lambda value: torch.tensor([[value]], dtype=torch.float64)
    denoised = Denoised(one(x0_hat), one(0.0), one(v))
    for t, want in [(1, want_1), (0, want_0)]:
        got = vlb_terms(denoised, one(x_0), one(x_t), torch.tensor([t]), ac, variance="learned")
        assert got.item() == pytest.approx(want / math.log(2), rel=1e-10)


def test_prior_term_by_hand():
    ac = torch.tensor([0.9, 0.01], dtype=torch.float64)
    got = prior_bits(torch.tensor([[2.0]], dtype=torch.float64), ac)
    assert got.item() == pytest.approx(kl_by_hand(0.1 * 2.0, 0.99, 0.0, 1.0) / math.log(2), rel=1e-10)


def test_normal_kl_and_gaussian_likelihood():
    assert normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0)).item() == 0
    got = normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(-0.2), torch.tensor(0.5)).item()
    assert got == pytest.approx(kl_by_hand(0.3, math.exp(-1), -0.2, math.exp(0.5)), rel=1e-6)
    got = gaussian_log_likelihood(torch.tensor(1.0), torch.tensor(0.5), torch.tensor(math.log(2.0))).item()
    assert got == pytest.approx(-0.5 * math.log(2 * math.pi * 4) - 0.25**2 / 2, rel=1e-6)


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    for mean, log_scale in [(0.0, -3.0), (0.99, -5.0), (-1.2, 0.0), (0.3, -8.0)]:
        p = discretized_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=torch.float64),
                                                torch.tensor(log_scale, dtype=torch.float64)).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    # one middle bin by hand: Phi((x + 1/255 - m) / s) - Phi((x - 1/255 - m) / s)
    cdf = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))
    x, m, s = levels[140].item(), 0.05, 0.02
    want = math.log(cdf((x + 1 / 255 - m) / s) - cdf((x - 1 / 255 - m) / s))
    got = discretized_gaussian_log_likelihood(torch.tensor(x, dtype=torch.float64), torch.tensor(m, dtype=torch.float64),
                                              torch.tensor(math.log(s), dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-9)


def optimal_network(ac):
    """The exact network for Gaussian data N(MU, S^2), with the variance output set to the optimal reverse
    variance, beta tilde + (posterior-mean coefficient of x_0)^2 Var(x_0 | x_t) (Bao et al. 2022)."""
    log_beta, log_beta_tilde = training_log_variances(ac)

    def model(x_t, t):
        a = ac[t].view(-1, 1)
        a_prev = torch.where(t > 0, ac[(t - 1).clamp(min=0)], torch.ones_like(ac[t])).view(-1, 1)
        x_0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x_t - a.sqrt() * MU)
        eps = (x_t - a.sqrt() * x_0) / (1 - a).sqrt()
        beta = 1 - a / a_prev
        var_x0 = S**2 * (1 - a) / (a * S**2 + 1 - a)
        coef = a_prev.sqrt() * beta / (1 - a)
        best = torch.where(t.view(-1, 1) > 0, beta * (1 - a_prev) / (1 - a) + coef**2 * var_x0, var_x0)
        lo, hi = log_beta_tilde[t].view(-1, 1), log_beta[t].view(-1, 1)
        v = 2 * (best.log() - lo) / (hi - lo) - 1
        return torch.cat([eps, v.expand_as(eps)], dim=1)
    return model


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_bound_is_tight_with_the_optimal_variance(schedule):
    """Gaussian data, the exact mean: with the optimal variance the bound meets the true -log p(x_0); the
    fixed variances leave a gap, beta tilde (small) the widest, as Improved DDPM found."""
    ac = DiffusionConfig(schedule=schedule, timesteps=1000).alphas_cumprod()
    x_0 = MU + S * torch.randn(1000, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    true_bits = -gaussian_log_likelihood(x_0, torch.tensor(MU), torch.tensor(math.log(S))).mean(1) / math.log(2)
    network = optimal_network(ac)
    gap = {}
    for variance in ("learned", "large", "small"):
        model = network if variance == "learned" else (lambda x, t: network(x, t)[:, :64])
        bound = nll_bits(make_denoiser(model), x_0, ac, variance=variance, generator=torch.Generator().manual_seed(1))
        gap[variance] = (bound["total"] - true_bits).mean().item()
        assert bound["terms"].shape == (1000,) and (bound["terms"][1:] >= 0).all()
    assert abs(gap["learned"]) < 0.01
    assert gap["learned"] + 0.05 < gap["large"] < gap["small"]


def test_bits_per_dim_refuses_a_seed_the_generator_would_wrap(tiny_pipeline):
    from latentlab.errors import LatentlabError
    from latentlab.evaluation import bits_per_dim

    with pytest.raises(LatentlabError, match="seeds from 0 to 4294967295"):
        bits_per_dim(tiny_pipeline, images=2, seed=2**32 - 1)
