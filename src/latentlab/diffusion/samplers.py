"""Samplers: plain functions that turn pure noise x_T into x_0.

Every sampler has the signature
    sampler(denoise, x_T, alphas_cumprod, steps, *, generator=None, callback=None, **options) -> x_0
where `denoise(x_t, t, alpha_bar) -> Denoised` wraps the network (see `denoiser.py`; t may be
fractional), x_T ~ N(0, I), and `steps` is the length of the time grid the sampler walks, from the
noisiest level down to x_0. Each sampler builds its grid once and reads it; the step to x_0 is the
last. `start` skips the grid's first `start` steps: x_T is then x_t at the level the grid reaches there
(`start_level`), as image-to-image starts from a noised image (SDEdit, Meng et al. 2022).
`callback(i, steps)` is called after each step (progress bars). `generator` draws the noise that
ddpm and ddim (eta > 0) add at each step: one generator for the batch, or a list of one per image, so
that an image's draws do not depend on the other images beside it (as diffusers takes a list).

  ddpm      ancestral sampling (Ho et al. 2020, Alg. 2) of the respaced process, variance small, large or learned
  ddim      Song et al. (2021), eq. 12, with eta (0: deterministic; 1: DDPM with the small variance)
  euler     Karras et al. (2022), Alg. 1 (Euler) on their sigma schedule, eq. 5
  heun      Karras et al. (2022), Alg. 1 (Heun's second-order method): 2 * steps - 1 network calls
  dpmpp_2m  DPM-Solver++(2M), Lu et al. (2022), Alg. 2: second-order multistep in log-SNR, first order
            on the first and the last step; trailing timesteps by default
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch

from .denoiser import Denoised
from .process import sigma_to_t, sigmas_of
from .reverse import check_variance, grid_log_variances, p_mean_variance

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Denoised]
SPACINGS = ("linspace", "leading", "trailing")


# ------------------------------------------------------------------ time grids


def timesteps_for(T: int, steps: int, spacing: str | Sequence[int] = "linspace") -> list[int]:
    """`steps` training timesteps, noisiest first (Lin et al. 2024, table 2).

    linspace: evenly from T - 1 to 0, both ends included; leading: 0, T/steps, ... (never the noisiest
    level); trailing: T - 1, T - 1 - T/steps, ... (always the noisiest level). A sequence of `steps`
    decreasing timesteps is taken as the grid itself: any subset of the training levels.
    """
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and the {T} training steps, got {steps}")
    if not isinstance(spacing, str):
        grid = [int(t) for t in spacing]
        if len(grid) != steps or any(a <= b for a, b in zip(grid, grid[1:])) or not 0 <= grid[-1] <= grid[0] < T:
            raise ValueError(f"a custom grid must be {steps} decreasing timesteps from at most {T - 1} down to at "
                             f"least 0, got {grid}")
        return grid
    if spacing == "linspace":
        return [T - 1] if steps == 1 else [round(i * (T - 1) / (steps - 1)) for i in range(steps - 1, -1, -1)]
    if spacing == "leading":
        return [i * (T // steps) for i in range(steps - 1, -1, -1)]
    if spacing == "trailing":
        return [round(T - i * T / steps) - 1 for i in range(steps)]
    raise ValueError(f"unknown timestep spacing {spacing!r}; accepted: {', '.join(SPACINGS)}, or a list of timesteps")


def _levels(alphas_cumprod: torch.Tensor, timesteps: list[int], like: torch.Tensor):
    """alpha_bar at each visited step and at the step after it (1.0 after the last: x_0 itself)."""
    a = alphas_cumprod[timesteps].to(like.device, torch.float64)
    return a, torch.cat([a[1:], a.new_ones(1)])


def karras_sigmas(alphas_cumprod: torch.Tensor, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: `steps` noise levels sigma from the schedule's largest to its smallest,
    evenly spaced in sigma^(1/rho), then 0. sigma = sqrt((1 - alpha_bar) / alpha_bar): x_t / sqrt(alpha_bar)
    is x_0 plus noise of standard deviation sigma (see `process.sigmas_of`)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigma_min, sigma_max = sigmas_of(alphas_cumprod)[[0, -1]]
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _noise(like: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """N(0, I) shaped like `like`; from a list of generators, row i from generator i."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != like.shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}; give one per image")
        return torch.stack([_noise(row, g) for row, g in zip(like, generator)])
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def _check_start(start: int, steps: int) -> int:
    """`start` as an index into a grid of `steps` steps that leaves at least one to walk."""
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < steps:
        raise ValueError(f"start must be a whole number from 0 to {steps - 1} (the grid has {steps} steps), "
                         f"got {start!r}")
    return start


def _from(grid: list[int], start: int) -> list[int]:
    """The grid less its first `start` steps (at least one step stays)."""
    return grid[_check_start(start, len(grid)):]


def start_level(name: str, alphas_cumprod: torch.Tensor, steps: int, start: int, **options) -> torch.Tensor:
    """alpha_bar (float64) of the level sampler `name` walks from when it skips its grid's first `start` steps:
    the x_T it takes is then sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps. `options` (spacing) as it takes them."""
    if name in ("euler", "heun"):
        sigma = karras_sigmas(alphas_cumprod, steps)[_check_start(start, steps)]
        return 1 / (1 + sigma ** 2)
    spacing = options.get("spacing") or inspect.signature(get_sampler(name)).parameters["spacing"].default
    T = alphas_cumprod.shape[0]
    return alphas_cumprod[_from(timesteps_for(T, steps or T, spacing), start)[0]].double()


def _step_t(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)


# ------------------------------------------------------------------ samplers on the DDPM grid


@torch.no_grad()
def ddpm(denoise: Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int | None = None, *,
         variance: str = "small", spacing: str | Sequence[int] = "linspace", start: int = 0,
         generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Ancestral sampling of p(x_prev | x_t) (Ho et al. 2020, Alg. 2) on a grid of `steps` levels (all T
    by default): with fewer, the respaced process of Nichol & Dhariwal (2021, sec. 4). No noise is
    added on the last step."""
    check_variance(variance, learned=True)
    T = alphas_cumprod.shape[0]
    timesteps = _from(timesteps_for(T, steps or T, spacing), start)
    a, a_prev = _levels(alphas_cumprod, timesteps, x_T)
    log_beta, log_beta_tilde = grid_log_variances(a, a_prev)
    x = x_T
    for i, t in enumerate(timesteps):
        last = i == len(timesteps) - 1
        denoised = denoise(x, _step_t(t, x), a[i])
        mean, log_var = p_mean_variance(denoised, x.double(), a[i], a_prev[i], log_beta[i], log_beta_tilde[i],
                                        variance, last)
        x = mean if last else mean + (0.5 * log_var).exp() * _noise(x, generator).double()
        x = x.to(x_T.dtype)
        if callback is not None:
            callback(i, len(timesteps))
    return x


@torch.no_grad()
def ddim(denoise: Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 50, *,
         eta: float = 0.0, spacing: str | Sequence[int] = "linspace", start: int = 0,
         generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """DDIM, Song et al. (2021) eq. 12; eta = 0 is deterministic, eta = 1 is DDPM's posterior noise."""
    T = alphas_cumprod.shape[0]
    timesteps = _from(timesteps_for(T, steps, spacing), start)
    a, a_prev = _levels(alphas_cumprod, timesteps, x_T)
    x = x_T
    for i, t in enumerate(timesteps):
        # 1. predicted x_0 and eps
        x_0, eps, _ = denoise(x, _step_t(t, x), a[i])
        # 2. sigma_t, eq. 16
        sigma = eta * ((1 - a_prev[i]) / (1 - a[i]) * (1 - a[i] / a_prev[i])).sqrt()
        # 3. direction pointing to x_t, then the step
        x_prev = a_prev[i].sqrt() * x_0 + (1 - a_prev[i] - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_prev = x_prev + sigma * _noise(x, generator).double()
        x = x_prev.to(x_T.dtype)
        if callback is not None:
            callback(i, len(timesteps))
    return x


@torch.no_grad()
def dpmpp_2m(denoise: Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 20, *,
             spacing: str | Sequence[int] = "trailing", start: int = 0, generator: torch.Generator | None = None,
             callback=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, data prediction), with lambda = log(alpha_t / sigma_t),
    alpha_t = sqrt(alpha_bar), sigma_t = sqrt(1 - alpha_bar). Deterministic; `generator` is unused.

    The default grid is trailing: a linspace grid spends its last call at t = 0 and leaves the step
    before it a long one in lambda, which this multistep method extrapolates badly at few steps."""
    T = alphas_cumprod.shape[0]
    timesteps = _from(timesteps_for(T, steps, spacing), start)
    a, a_prev = _levels(alphas_cumprod, timesteps, x_T)
    alpha, sigma = a.sqrt(), (1 - a).sqrt()
    lam = alpha.log() - sigma.log()
    x, x0_prev = x_T.double(), None
    for i, t in enumerate(timesteps):
        x_0 = denoise(x.to(x_T.dtype), _step_t(t, x), a[i]).x_0
        if i == len(timesteps) - 1:  # the last step lands on x_0 itself (sigma = 0): first order
            x = x_0
        else:
            alpha_next, sigma_next = a_prev[i].sqrt(), (1 - a_prev[i]).sqrt()
            h = lam[i + 1] - lam[i]
            # exp(-h) = alpha_t sigma_next / (sigma_t alpha_next), formed without infinities at alpha_bar = 0
            decay = alpha[i] * sigma_next / (sigma[i] * alpha_next)
            d = x_0
            if x0_prev is not None:  # 2M: D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1} / h_i
                r = (lam[i] - lam[i - 1]) / h
                d = x_0 + (x_0 - x0_prev) / (2 * r)
            x = (sigma_next / sigma[i]) * x - alpha_next * (decay - 1) * d
        x0_prev = x_0
        if callback is not None:
            callback(i, len(timesteps))
    return x.to(x_T.dtype)


# ------------------------------------------------------------------ samplers on Karras sigmas


def _karras_start(denoise: Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int, start: int):
    """(sigmas, D, x): the Karras grid from its level `start` on; D(x, i) -> x_0 at its i-th level, for the
    variance-exploding state x = x_t / sqrt(alpha_bar) of Karras et al. (the network sees x_t and the
    fractional timestep of that sigma); and the starting state, x_T in those units."""
    sigmas = karras_sigmas(alphas_cumprod, steps)
    sigmas = sigmas[_check_start(start, steps):].to(x_T.device)
    timesteps = sigma_to_t(sigmas, alphas_cumprod).to(x_T.device)

    def D(x: torch.Tensor, i: int) -> torch.Tensor:
        alpha_bar = 1 / (1 + sigmas[i] ** 2)
        t = timesteps[i].expand(x.shape[0]).to(x_T.dtype)
        return denoise((x * alpha_bar.sqrt()).to(x_T.dtype), t, alpha_bar).x_0
    return sigmas, D, x_T.double() * (1 + sigmas[0] ** 2).sqrt()


@torch.no_grad()
def euler(denoise: Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 50, *,
          start: int = 0, generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Euler's method on the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022)."""
    sigmas, D, x = _karras_start(denoise, x_T, alphas_cumprod, steps, start)
    steps = len(sigmas) - 1
    for i in range(steps):
        d = (x - D(x, i)) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, steps)
    return x.to(x_T.dtype)


@torch.no_grad()
def heun(denoise: Denoise, x_T: torch.Tensor, alphas_cumprod: torch.Tensor, steps: int = 25, *,
         start: int = 0, generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """Heun's method (Karras et al. 2022, Alg. 1): an Euler step, then the trapezoidal correction,
    except on the last step to sigma = 0."""
    sigmas, D, x = _karras_start(denoise, x_T, alphas_cumprod, steps, start)
    steps = len(sigmas) - 1
    for i in range(steps):
        d = (x - D(x, i)) / sigmas[i]
        x_next = x + d * (sigmas[i + 1] - sigmas[i])
        if i + 1 < steps:  # sigma_{i+1} > 0: the trapezoidal correction
            d_next = (x_next - D(x_next, i + 1)) / sigmas[i + 1]
            x_next = x + (d + d_next) / 2 * (sigmas[i + 1] - sigmas[i])
        x = x_next
        if callback is not None:
            callback(i, steps)
    return x.to(x_T.dtype)


SAMPLERS = {"ddpm": ddpm, "ddim": ddim, "euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m}


def get_sampler(name: str):
    """The sampler called `name`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; accepted: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sampler_options(name: str, **options) -> dict:
    """The options (those not None) that sampler `name` takes; an option it does not take is an error."""
    sampler = get_sampler(name)
    accepted = [p.name for p in inspect.signature(sampler).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name not in ("generator", "callback", "start")]
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in accepted:
            raise ValueError(f"sampler {name!r} takes no option {key!r}; its options: {', '.join(accepted) or 'none'}")
    return given
