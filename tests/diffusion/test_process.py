import pytest
import torch

from latentlab.diffusion import (PREDICTIONS, DiffusionConfig, alpha_bar_at, predict_x0, prediction_target, q_posterior,
                                 q_sample, sigma_to_t, sigmas_of, snr, x0_and_eps)


@pytest.fixture(params=["linear", "cosine"])
def alphas_cumprod(request):
    return DiffusionConfig(schedule=request.param, timesteps=200).alphas_cumprod()


def test_closed_form_equals_the_chain_of_one_step_transitions(alphas_cumprod):
    """q(x_t|x_0) from composing q(x_s|x_{s-1}) = N(sqrt(1-beta_s) x_{s-1}, beta_s): mean and variance."""
    betas = 1 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    scale, variance = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t, beta in enumerate(betas):
        scale, variance = (1 - beta).sqrt() * scale, (1 - beta) * variance + beta
        assert scale.item() == pytest.approx(alphas_cumprod[t].sqrt().item(), rel=1e-9)
        assert variance.item() == pytest.approx(1 - alphas_cumprod[t].item(), rel=1e-9)


def test_q_sample_moments(alphas_cumprod):
    x_0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    t = torch.full((200_000,), 60)
    x_t = q_sample(x_0, t, torch.randn(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
                   alphas_cumprod)
    a = alphas_cumprod[60].item()
    assert x_t.mean().item() == pytest.approx(0.7 * a**0.5, abs=5e-3)
    assert x_t.var().item() == pytest.approx(1 - a, rel=1e-2)


def test_predict_x0_inverts_q_sample(alphas_cumprod):
    x_0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 199])
    x_t = q_sample(x_0, t, eps, alphas_cumprod)
    a = alphas_cumprod[t].view(-1, 1)
    assert torch.allclose(predict_x0(x_t, eps, a), x_0, atol=1e-6)


@pytest.mark.parametrize("t, t_prev", [(1, 0), (50, 49), (150, 100), (199, 0)])
def test_posterior_is_bayes_rule(alphas_cumprod, t, t_prev):
    """q(x_prev | x_t, x_0) by conditioning the joint Gaussian, against eq. 7."""
    a, a_prev = alphas_cumprod[t], alphas_cumprod[t_prev]
    alpha = a / a_prev  # the (respaced) one-step signal coefficient squared
    x_0, x_t = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-1.2, dtype=torch.float64)
    # prior x_prev ~ N(sqrt(a_prev) x_0, 1 - a_prev); likelihood x_t | x_prev ~ N(sqrt(alpha) x_prev, 1 - alpha)
    precision = 1 / (1 - a_prev) + alpha / (1 - alpha)
    mean = (a_prev.sqrt() * x_0 / (1 - a_prev) + alpha.sqrt() * x_t / (1 - alpha)) / precision
    got_mean, got_var = q_posterior(x_0, x_t, a, a_prev)
    assert got_mean.item() == pytest.approx(mean.item(), rel=1e-9)
    assert got_var.item() == pytest.approx((1 / precision).item(), rel=1e-9)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_each_parameterisation_converts_back_to_x0_and_eps(alphas_cumprod, prediction):
    """target(x_0, eps) read back as a network output gives (x_0, eps) again: the three are one model."""
    x_0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 199])
    a = alphas_cumprod[t].view(-1, 1)
    x_t = q_sample(x_0, t, eps, alphas_cumprod)
    got_x0, got_eps = x0_and_eps(prediction_target(x_0, eps, a, prediction), x_t, a, prediction)
    assert torch.allclose(got_x0, x_0, atol=1e-8) and torch.allclose(got_eps, eps, atol=1e-8)


def test_v_is_the_velocity_of_salimans_and_ho(alphas_cumprod):
    """With alpha = cos(phi), sigma = sin(phi): x_t = cos(phi) x_0 + sin(phi) eps and v = dx_t / dphi."""
    x_0, eps = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a = alphas_cumprod[80]
    phi = torch.atan2((1 - a).sqrt(), a.sqrt())
    v = prediction_target(x_0, eps, a, "v")
    assert torch.allclose(v, -torch.sin(phi) * x_0 + torch.cos(phi) * eps, atol=1e-12)
    assert torch.allclose(snr(a), a / (1 - a))


def test_fractional_timesteps_interpolate_log_sigma(alphas_cumprod):
    t = torch.tensor([0.0, 3.0, 10.25, 150.5, 199.0], dtype=torch.float64)
    a = alpha_bar_at(t, alphas_cumprod)
    assert torch.allclose(a[[0, 1, 4]], alphas_cumprod[[0, 3, 199]], rtol=1e-12)  # exact at integers
    assert torch.allclose(sigma_to_t(((1 - a) / a).sqrt(), alphas_cumprod), t, atol=1e-9)  # the inverse
    log_sigma = sigmas_of(alphas_cumprod).log()
    assert ((1 - a[2]) / a[2]).sqrt().log().item() == pytest.approx((0.75 * log_sigma[10] + 0.25 * log_sigma[11]).item())
