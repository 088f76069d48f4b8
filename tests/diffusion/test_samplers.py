import pytest
import torch

from latentlab.diffusion import DiffusionConfig, classifier_free_guidance, ddim, ddpm, get_sampler, timesteps_for

MU, S = 1.5, 0.5  # data distribution of the oracle: x_0 ~ N(MU, S^2) in every dimension


def oracle(alphas_cumprod):
    """The exact noise prediction E[eps | x_t] for Gaussian data: what a perfect network learns."""
    def denoiser(x_t, t):
        a = alphas_cumprod[t].view(-1, *[1] * (x_t.dim() - 1)).to(x_t.dtype)
        return (1 - a).sqrt() * (x_t - a.sqrt() * MU) / (a * S**2 + 1 - a)
    return denoiser


@pytest.fixture(params=["linear", "cosine"])
def alphas_cumprod(request):
    return DiffusionConfig(schedule=request.param, timesteps=1000).alphas_cumprod()


def test_timesteps_for():
    assert timesteps_for(1000, 1000) == list(range(999, -1, -1))
    assert timesteps_for(1000, 5) == [999, 749, 500, 250, 0]
    assert timesteps_for(10, 1) == [9]
    with pytest.raises(ValueError, match="between 1 and the 10"):
        timesteps_for(10, 11)


@pytest.mark.parametrize("sampler, steps", [(ddim, 250), (ddpm, 1000)])
def test_samplers_recover_the_data_distribution(alphas_cumprod, sampler, steps):
    """From pure noise, with the exact denoiser and enough steps, samples have the data's mean and spread."""
    x_T = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x_0 = sampler(oracle(alphas_cumprod), x_T, alphas_cumprod, steps, generator=torch.Generator().manual_seed(1))
    assert x_0.mean().item() == pytest.approx(MU, abs=0.03)
    assert x_0.std().item() == pytest.approx(S, abs=0.02)


@pytest.mark.parametrize("sampler", [ddim, ddpm])
def test_fewer_steps_cost_accuracy_smoothly(alphas_cumprod, sampler):
    """The error in the samples' spread shrinks as the sampler takes more steps."""
    x_T = torch.randn(20_000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = [abs(sampler(oracle(alphas_cumprod), x_T, alphas_cumprod, n,
                          generator=torch.Generator().manual_seed(1)).std().item() - S) for n in (10, 50, 1000)]
    assert errors[0] > errors[1] > errors[2]


def test_ddpm_is_ddim_with_eta_one(alphas_cumprod):
    denoiser = oracle(alphas_cumprod)
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = ddpm(denoiser, x_T, alphas_cumprod, 50, generator=torch.Generator().manual_seed(5))
    b = ddim(denoiser, x_T, alphas_cumprod, 50, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_sampling_is_deterministic_for_a_seed(alphas_cumprod, name):
    sampler = get_sampler(name)
    x_T = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    runs = [sampler(oracle(alphas_cumprod), x_T, alphas_cumprod, 30, generator=torch.Generator().manual_seed(2))
            for _ in range(2)]
    assert torch.equal(*runs)


def test_callback_sees_every_step(alphas_cumprod):
    seen = []
    ddim(oracle(alphas_cumprod), torch.zeros(2, 1, dtype=torch.float64), alphas_cumprod, 7,
         callback=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 7) for i in range(7)]


def test_unknown_sampler():
    with pytest.raises(ValueError, match="accepted: ddim, ddpm"):
        get_sampler("euler")


def test_classifier_free_guidance_combines_the_two_predictions():
    def model(x, t, context, mask):  # "noise" prediction = the context's first value, per example
        return x * 0 + context[:, :1, :1].view(-1, 1)
    cond, uncond = torch.full((2, 1, 1), 3.0), torch.full((2, 1, 1), 1.0)
    mask = torch.ones(2, 1, dtype=torch.bool)
    x, t = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    for scale, want in [(0.0, 1.0), (1.0, 3.0), (4.0, 1.0 + 4.0 * 2.0)]:
        out = classifier_free_guidance(model, cond, mask, uncond, mask, scale)(x, t)
        assert torch.allclose(out, torch.full_like(out, want))
