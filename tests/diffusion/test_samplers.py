import pytest
import torch

from latentlab.diffusion import (SAMPLERS, DiffusionConfig, alpha_bar_at, classifier_free_guidance, ddim, ddpm,
                                 dpmpp_2m, euler, get_sampler, heun, karras_sigmas, keep_known, make_denoiser,
                                 prediction_target, sampler_options, start_level, timesteps_for)

MU, S = 1.5, 0.5  # data distribution of the oracle: x_0 ~ N(MU, S^2) in every dimension


def oracle(alphas_cumprod, prediction="eps", v=None):
    """The exact network for Gaussian data, E[target | x_t], at any (fractional) timestep: what a perfect
    network learns. `v`, if given, is appended as a constant learned-variance output."""
    def model(x_t, t):
        a = alpha_bar_at(t, alphas_cumprod).view(-1, *[1] * (x_t.dim() - 1)).to(x_t.dtype)
        x_0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x_t - a.sqrt() * MU)
        eps = (x_t - a.sqrt() * x_0) / (1 - a).sqrt()
        out = prediction_target(x_0, eps, a, prediction)
        return out if v is None else torch.cat([out, torch.full_like(out, v)], dim=1)
    return make_denoiser(model, prediction)


def noise(n=20_000, seed=0):
    """x_T, standardised to mean 0 and variance 1, so the exact flow maps it to mean MU and spread S."""
    x = torch.randn(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return (x - x.mean()) / x.std() if n > 1 else x


@pytest.fixture(params=["linear", "cosine"])
def alphas_cumprod(request):
    return DiffusionConfig(schedule=request.param, timesteps=1000).alphas_cumprod()


def test_timesteps_for():
    assert timesteps_for(1000, 1000) == list(range(999, -1, -1))
    assert timesteps_for(1000, 5) == [999, 749, 500, 250, 0]
    assert timesteps_for(1000, 5, "leading") == [800, 600, 400, 200, 0]
    assert timesteps_for(1000, 5, "trailing") == [999, 799, 599, 399, 199]
    assert timesteps_for(10, 1) == [9]
    with pytest.raises(ValueError, match="between 1 and the 10"):
        timesteps_for(10, 11)
    with pytest.raises(ValueError, match="accepted: linspace, leading, trailing"):
        timesteps_for(10, 2, "even")
    assert timesteps_for(1000, 3, [999, 400, 0]) == [999, 400, 0]  # any subset of the training levels
    for bad in ([999, 400], [400, 999, 0], [1000, 400, 0], [999, 400, -1]):
        with pytest.raises(ValueError, match="a custom grid must be 3 decreasing"):
            timesteps_for(1000, 3, bad)


def test_a_custom_grid_is_the_grid():
    ac = DiffusionConfig(schedule="linear").alphas_cumprod()
    seen = []
    denoise = oracle(ac)
    ddim(lambda x, t, a: seen.append(int(t[0])) or denoise(x, t, a), noise(4), ac, 4, spacing=[900, 333, 50, 2])
    assert seen == [900, 333, 50, 2]


def test_karras_sigmas_span_the_schedule(alphas_cumprod):
    sigmas = karras_sigmas(alphas_cumprod, 10)
    a = alphas_cumprod
    assert len(sigmas) == 11 and sigmas[-1] == 0 and (sigmas[:-1] > sigmas[1:]).all()
    assert sigmas[0].item() == pytest.approx(((1 - a[-1]) / a[-1]).sqrt().item())
    assert sigmas[-2].item() == pytest.approx(((1 - a[0]) / a[0]).sqrt().item())


CONVERGED = [(ddim, 250, {}), (ddpm, 1000, {}), (ddpm, 1000, {"variance": "large"}), (euler, 500, {}),
             (heun, 100, {}), (dpmpp_2m, 50, {})]


@pytest.mark.parametrize("sampler, steps, options", CONVERGED)
def test_samplers_recover_the_data_distribution(alphas_cumprod, sampler, steps, options):
    """From pure noise, with the exact denoiser and enough steps, samples have the data's mean and spread."""
    x_0 = sampler(oracle(alphas_cumprod), noise(), alphas_cumprod, steps, generator=torch.Generator().manual_seed(1),
                  **options)
    assert x_0.mean().item() == pytest.approx(MU, abs=0.03)
    assert x_0.std().item() == pytest.approx(S, abs=0.02)


@pytest.mark.parametrize("sampler", [ddim, ddpm, euler, heun, dpmpp_2m])
def test_fewer_steps_cost_accuracy_smoothly(sampler):
    """The error in the samples' spread shrinks as the sampler takes more steps."""
    alphas_cumprod = DiffusionConfig(schedule="linear").alphas_cumprod()
    errors = [abs(sampler(oracle(alphas_cumprod), noise(), alphas_cumprod, n,
                          generator=torch.Generator().manual_seed(1)).std().item() - S) for n in (5, 20, 200)]
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("sampler", [ddim, ddpm, euler, heun, dpmpp_2m])
def test_every_parameterisation_samples_the_same(alphas_cumprod, sampler):
    """eps, x_0 and v are the same network written three ways: the samplers cannot tell them apart."""
    x_T = noise(64)
    runs = [sampler(oracle(alphas_cumprod, p), x_T, alphas_cumprod, 10, generator=torch.Generator().manual_seed(3))
            for p in ("eps", "x0", "v")]
    assert torch.allclose(runs[0], runs[1], atol=1e-8) and torch.allclose(runs[0], runs[2], atol=1e-8)


def test_ddpm_is_ddim_with_eta_one(alphas_cumprod):
    denoise = oracle(alphas_cumprod)
    x_T = noise(64)
    a = ddpm(denoise, x_T, alphas_cumprod, 50, generator=torch.Generator().manual_seed(5))
    b = ddim(denoise, x_T, alphas_cumprod, 50, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("v, fixed", [(-1.0, "small"), (1.0, "large")])
def test_learned_variance_spans_small_to_large(alphas_cumprod, v, fixed):
    """frac = (v + 1) / 2 interpolates log beta tilde (v = -1) and log beta (v = 1)."""
    x_T = noise(64)
    learned = ddpm(oracle(alphas_cumprod, v=v), x_T, alphas_cumprod, 20, variance="learned",
                   generator=torch.Generator().manual_seed(5))
    want = ddpm(oracle(alphas_cumprod), x_T, alphas_cumprod, 20, variance=fixed,
                generator=torch.Generator().manual_seed(5))
    assert torch.allclose(learned, want, atol=1e-10)


def test_learned_variance_needs_a_variance_output(alphas_cumprod):
    with pytest.raises(ValueError, match="learned variance"):
        ddpm(oracle(alphas_cumprod), noise(4), alphas_cumprod, 3, variance="learned")


@pytest.mark.parametrize("sampler", [ddim, dpmpp_2m, euler, heun])
def test_zero_terminal_snr_removes_the_bias_of_a_noisy_last_level(sampler):
    """Stable Diffusion's schedule leaves signal in x_T (alpha_bar_T = 0.0047), which samplers starting from
    N(0, I) miss: the mean is off (Lin et al. 2024). Rescaled to alpha_bar_T = 0, with v-prediction, every
    step stays finite and the mean is right."""
    options = {} if sampler in (euler, heun) else {"spacing": "trailing"}
    sd = DiffusionConfig(schedule="scaled_linear").alphas_cumprod()
    biased = sampler(oracle(sd), noise(), sd, 100, **options)
    zero_snr = DiffusionConfig(schedule="scaled_linear", prediction="v", zero_terminal_snr=True).alphas_cumprod()
    assert zero_snr[-1] == 0
    x_0 = sampler(oracle(zero_snr, "v"), noise(), zero_snr, 100, **options)
    assert torch.isfinite(x_0).all()
    assert abs(biased.mean().item() - MU) > 0.04
    assert x_0.mean().item() == pytest.approx(MU, abs=0.01) and x_0.std().item() == pytest.approx(S, abs=0.03)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampling_is_deterministic_for_a_seed(alphas_cumprod, name):
    sampler = get_sampler(name)
    runs = [sampler(oracle(alphas_cumprod), noise(8), alphas_cumprod, 30, generator=torch.Generator().manual_seed(2))
            for _ in range(2)]
    assert torch.equal(*runs)


@pytest.mark.parametrize("name, calls", [("ddpm", 7), ("ddim", 7), ("euler", 7), ("heun", 13), ("dpmpp_2m", 7)])
def test_network_calls_and_callbacks(alphas_cumprod, name, calls):
    seen, called = [], []
    denoise = oracle(alphas_cumprod)
    get_sampler(name)(lambda x, t, a: called.append(1) or denoise(x, t, a), torch.zeros(2, 1, dtype=torch.float64),
                      alphas_cumprod, 7, callback=lambda i, n: seen.append((i, n)))
    assert seen == [(i, 7) for i in range(7)] and len(called) == calls


def test_sampler_names_and_options():
    with pytest.raises(ValueError, match="accepted: ddpm, ddim, euler, heun, dpmpp_2m"):
        get_sampler("lms")
    assert sampler_options("ddpm", variance="large", eta=None) == {"variance": "large"}
    with pytest.raises(ValueError, match="sampler 'euler' takes no option 'eta'"):
        sampler_options("euler", eta=0.5)


def test_classifier_free_guidance_combines_the_two_predictions():
    def model(x, t, context, mask):  # "noise" prediction = the context's first value, per example
        return x * 0 + context[:, :1, :1].view(-1, 1)
    cond, uncond = torch.full((2, 1, 1), 3.0), torch.full((2, 1, 1), 1.0)
    mask = torch.ones(2, 1, dtype=torch.bool)
    x, t = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    for scale, want in [(0.0, 1.0), (1.0, 3.0), (4.0, 1.0 + 4.0 * 2.0)]:
        out = classifier_free_guidance(model, cond, mask, uncond, mask, scale)(x, t)
        assert torch.allclose(out, torch.full_like(out, want))


def test_guidance_leaves_the_learned_variance_to_the_conditional_half():
    def model(x, t, context, mask):  # channel 0: the prediction; channel 1: the variance output
        value = context[:, :1, :1].view(-1, 1)
        return torch.cat([value, -value / 4], dim=1)
    cond, uncond = torch.full((2, 1, 1), 3.0), torch.full((2, 1, 1), 1.0)
    mask = torch.ones(2, 1, dtype=torch.bool)
    out = classifier_free_guidance(model, cond, mask, uncond, mask, 4.0)(torch.zeros(2, 1), torch.zeros(2))
    assert torch.allclose(out[:, 0], torch.full((2,), 9.0)) and torch.allclose(out[:, 1], torch.full((2,), -0.75))


@pytest.mark.parametrize("name, options", [("ddim", {}), ("ddim", {"spacing": "trailing"}), ("euler", {}),
                                           ("heun", {})])
def test_a_sampler_started_part_way_continues_its_own_trajectory(alphas_cumprod, name, options):
    """start=k from the state the whole run had reached after k steps ends where the whole run ends, and the
    level it expects there is start_level's."""
    denoise, seen = oracle(alphas_cumprod), []

    def recording(x, t, a):
        seen.append((x.clone(), a))
        return denoise(x, t, a)

    sampler, x_T = get_sampler(name), noise(8)
    whole = sampler(recording, x_T, alphas_cumprod, 6, **options)
    per_step = seen[::2] if name == "heun" else seen  # heun calls the network twice a step
    x_k, a_k = per_step[2]  # the network sees x_t (euler's and heun's state is x_t / sqrt(alpha_bar)): what they take
    part = sampler(denoise, x_k, alphas_cumprod, 6, start=2, **options)
    torch.testing.assert_close(part, whole, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(start_level(name, alphas_cumprod, 6, 2, **options).double(), a_k.double().reshape(()),
                               atol=1e-12, rtol=1e-9)


def test_start_is_checked_and_not_a_user_option():
    ac = DiffusionConfig(schedule="linear").alphas_cumprod()
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match="start must be a whole number from 0 to 3"):
            ddim(oracle(ac), noise(2), ac, 4, start=bad)
    with pytest.raises(ValueError, match="takes no option 'start'"):
        sampler_options("ddim", start=1)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_keeping_the_known_region_ends_on_it_with_every_sampler(alphas_cumprod, name):
    """keep_known replaces the x_0 estimate where the mask is 0: every sampler's last step lands on the known
    values there, and the rest is drawn as before."""
    x_T = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    known = torch.full_like(x_T, -0.7)
    m = torch.zeros(4, 1, 3, 3, dtype=torch.float64)
    m[..., 1:] = 1
    out = get_sampler(name)(keep_known(oracle(alphas_cumprod), known, m), x_T, alphas_cumprod, 8,
                            generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out[..., :1], known[..., :1], atol=1e-6, rtol=0)
    assert (out[..., 1:] - known[..., 1:]).abs().min() > 1e-3
