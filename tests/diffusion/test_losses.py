import pytest
import torch

from latentlab.diffusion import DiffusionConfig, ImportanceSampler, diffusion_loss, loss_weight, prediction_target
from latentlab.diffusion.process import snr


@pytest.mark.parametrize("prediction, divisor", [("eps", lambda s: s), ("x0", lambda s: 1.0), ("v", lambda s: s + 1)])
def test_min_snr_weights_the_error_in_x0_by_min_snr_gamma(prediction, divisor):
    """Hang et al. (2023): whatever the target, the loss is min(SNR, gamma) times the squared error in x_0."""
    a = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.001], dtype=torch.float64)
    s = snr(a)
    w = loss_weight(a, prediction, "min_snr", gamma=5.0)
    assert torch.allclose(w * divisor(s), s.clamp(max=5.0))
    assert torch.equal(loss_weight(a, prediction, "uniform"), torch.ones_like(a))
    with pytest.raises(ValueError, match="accepted: uniform, min_snr"):
        loss_weight(a, prediction, "snr")


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
def test_diffusion_loss_is_the_weighted_error_on_the_target(prediction, weighting):
    ac = DiffusionConfig(schedule="linear", timesteps=100).alphas_cumprod()
    x_0 = torch.randn(6, 2, 3, 3)
    t = torch.tensor([0, 5, 20, 50, 80, 99])
    zero = lambda x_t, t: torch.zeros_like(x_t)
    loss = diffusion_loss(zero, x_0, ac, DiffusionConfig(prediction=prediction), t=t, weighting=weighting,
                          generator=torch.Generator().manual_seed(0))
    eps = torch.randn(x_0.shape, generator=torch.Generator().manual_seed(0))  # the same draw
    a = ac[t].float().view(-1, 1, 1, 1)
    target = prediction_target(x_0, eps, a, prediction)
    want = loss_weight(a.flatten(), prediction, weighting) * target.pow(2).mean((1, 2, 3))
    assert loss.vlb is None and torch.allclose(loss.loss, want, rtol=1e-5)


def test_hybrid_loss_trains_the_variance_through_the_bound_only():
    """L_hybrid = L_simple + lambda T L_t, with the bound's gradient stopped at the mean."""
    ac = DiffusionConfig(schedule="cosine", timesteps=50).alphas_cumprod()
    mean_bias = torch.zeros(1, requires_grad=True)
    var_bias = torch.zeros(1, requires_grad=True)
    model = lambda x_t, t: torch.cat([0.5 * x_t + mean_bias, torch.tanh(x_t) * 0 + var_bias], dim=1)
    x_0 = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    config = DiffusionConfig(schedule="cosine", timesteps=50, learned_variance=True)
    loss = diffusion_loss(model, x_0, ac, config, vlb_weight=1e-3, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(loss.loss, loss.mse + 1e-3 * 50 * loss.vlb)
    loss.vlb.sum().backward()
    assert mean_bias.grad.item() == 0 and var_bias.grad.item() != 0


def test_learned_variance_needs_the_variance_channels():
    ac = DiffusionConfig(timesteps=10).alphas_cumprod()
    with pytest.raises(ValueError, match="no variance channels"):
        diffusion_loss(lambda x, t: x, torch.zeros(2, 1), ac, DiffusionConfig(timesteps=10, learned_variance=True))


def test_importance_sampler():
    """Uniform until every t has its history, then p_t ~ sqrt(E[L_t^2]) with weights 1 / (T p_t)."""
    sampler = ImportanceSampler(4, history=2, uniform=0.0)
    assert torch.allclose(sampler.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    for _ in range(2):
        sampler.update(torch.tensor([0, 1, 2, 3]), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    p = sampler.probabilities()
    assert torch.allclose(p, torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64) / 8)
    t, weights = sampler.sample(10_000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(weights, (1 / (4 * p[t])).float())
    assert weights.mean().item() == pytest.approx(1.0, abs=0.05)  # E_p[1 / (T p)] = 1: unbiased
    state = sampler.state_dict()
    other = ImportanceSampler(4, history=2, uniform=0.0)
    other.load_state_dict(state)
    assert torch.equal(other.probabilities(), p)
