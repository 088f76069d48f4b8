import pytest
import torch

from latentlab.diffusion import DiffusionConfig, predict_x0, q_posterior, q_sample


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
