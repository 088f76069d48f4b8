import math

import pytest
import torch

from latentlab.diffusion import DiffusionConfig, SCHEDULES, cosine_betas, linear_betas, make_betas


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
    with pytest.raises(ValueError, match="accepted: linear, cosine"):
        make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="accepted"):
        DiffusionConfig(schedule="quadratic")
    with pytest.raises(ValueError, match="accepted: eps"):
        DiffusionConfig(prediction="velocity")
