import math

import pytest
import torch

from latentlab.diffusion import (DiffusionConfig, SCHEDULES, cosine_betas, linear_betas, make_betas,
                                 scaled_linear_betas)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [10, 1000])
def test_betas_are_valid_probabilities(name, T):
    betas = make_betas(name, T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert (betas > 0).all() and (betas < 1).all()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()  # noise only grows


def test_linear_matches_ho_et_al():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)


def test_cosine_follows_its_alpha_bar():
    T, s = 1000, 0.008
    alphas_cumprod = torch.cumprod(1 - cosine_betas(T, s), 0)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (1, 100, 500, 900):
        assert alphas_cumprod[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-9)


def test_unknown_schedule_names_the_accepted_ones():
    with pytest.raises(ValueError, match="accepted: linear, scaled_linear, cosine"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="accepted"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ValueError, match="accepted: eps, x0, v"):
        DiffusionConfig(prediction="velocity")


def test_scaled_linear_is_stable_diffusions():
    betas = scaled_linear_betas(1000)
    assert betas[0].item() == pytest.approx(0.00085) and betas[-1].item() == pytest.approx(0.012)
    assert torch.allclose(betas.sqrt().diff(), betas.sqrt().diff()[0].expand(999))  # linear in sqrt(beta)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_zero_terminal_snr(name):
    """Lin et al. (2024): alpha_bar_T becomes 0, alpha_bar_1 is kept, the betas stay probabilities."""
    before = torch.cumprod(1 - make_betas(name, 1000), 0)
    betas = make_betas(name, 1000, zero_terminal_snr=True)
    after = torch.cumprod(1 - betas, 0)
    assert after[-1] == 0 and betas[-1] == 1
    assert after[0].item() == pytest.approx(before[0].item(), rel=1e-12)
    assert (betas > 0).all() and (betas <= 1).all() and (after[1:] < after[:-1]).all()


def test_zero_snr_needs_a_target_that_survives_it():
    with pytest.raises(ValueError, match="use prediction 'v' or 'x0'"):
        DiffusionConfig(zero_terminal_snr=True)
    assert DiffusionConfig(zero_terminal_snr=True, prediction="v").alphas_cumprod()[-1] == 0


DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedules_match_diffusers(name, zero_snr):
    """The same schedule as diffusers' schedulers, which keep it in float32: the betas, and sqrt(alpha_bar),
    the quantity zero-SNR rescaling works on (its betas near t = 0 are differences of nearly equal numbers)."""
    from diffusers import DDPMScheduler

    ends = {"beta_start": 0.00085, "beta_end": 0.012} if name == "scaled_linear" else {}
    theirs = DDPMScheduler(num_train_timesteps=1000, beta_schedule=DIFFUSERS_NAMES[name],
                           rescale_betas_zero_snr=zero_snr, **ends).betas
    ours = make_betas(name, 1000, zero_terminal_snr=zero_snr)
    if not zero_snr:
        assert torch.allclose(ours.float(), theirs, rtol=1e-5, atol=1e-7)
    sqrt_ab = lambda betas: torch.cumprod(1 - betas.double(), 0).sqrt()
    assert torch.allclose(sqrt_ab(ours), sqrt_ab(theirs), atol=2e-6)
