"""Group normalisation followed, optionally, by SiLU: the step before nearly every convolution of the
U-Net and the autoencoder.

`group_norm_act(x, norm, silu)` computes `silu(norm(x))` (or `norm(x)`) with the weights of an
`nn.GroupNorm`, so modules keep their standard parameters and checkpoint keys.

GroupNorm (Wu & He 2018) splits the C channels into G groups of C_g = C / G channels and normalises
each (sample, group) over its N = H * W * C_g elements:

    y = gamma_c * (x - mu_bg) / sqrt(sigma2_bg + eps) + beta_c,    then SiLU: y * sigmoid(y).

On CUDA, PyTorch's kernel only reads NCHW: given a channels-last (NHWC) tensor it copies to NCHW and
back, which costs more than the normalisation itself (about 10 ms per U-Net step at batch 16 on an
H100), while NCHW activations make cuDNN's convolutions transpose instead. For channels-last CUDA
tensors at inference, this module therefore runs its own Triton kernels on NHWC memory.

Layout. In NHWC memory each pixel p = h * W + w holds its C channels contiguously, so the data of
group g is H * W rows of C_g contiguous elements, C apart. A program's tile is a 3-D block
[BLOCK_P pixels, BLOCK_G groups, BLOCK_CG channels] (BLOCK_CG = C_g rounded up to a power of two and
masked, as C_g = 10, 20, 30, ... in Stable Diffusion); in the split mode BLOCK_G adjacent groups make
each pixel's row a contiguous run of BLOCK_G * C_g >= 128 elements, so loads coalesce.

Algorithm. Statistics accumulate in float32 with Chan et al.'s (1979) parallel update of the mean
and M2 (sum of squared deviations): each tile's mean and M2 are exact two-pass values over the
registers, merged into the running pair, so no E[x^2] - E[x]^2 cancellation when |mean| >> std.
Two modes, chosen per shape by `_plan` from H100 measurements (benchmarks/group_norm.py):

* "split" (groups of more than 256 pixels): two launches. `_gn_stats_kernel` runs on a grid of
  (group block, pixel chunk, sample), each program writing (mean, M2) of its chunk to a small
  float32 buffer; `_gn_apply_kernel`, on a grid of (group block, pixel chunk, sample), merges the
  S partials of its groups, mu = sum_s n_s mu_s / N and M2 = sum_s (M2_s + n_s (mu_s - mu)^2), then
  normalises its chunk. Cutting the pixels into chunks fills the GPU also at batch 2 (B * G = 64
  groups for 132 SMs). x is read twice, from DRAM where it exceeds the L2 cache.
* "fused" (small groups: 16x16 and 8x8 latents): one launch, one program per (group, sample) makes
  both passes, the second from L2. Cheaper at these sizes, and half the launch overhead.

Only inference runs here (no backward kernel): with autograd recording, on CPU, for NCHW tensors,
other dtypes, under torch.compile (Inductor makes its own kernels) or without Triton,
`group_norm_act` uses `F.group_norm` (+ `F.silu`). Set
`USE_TRITON = False` to force that path (benchmarks compare both).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from . import activation_memory
from .precision import to_autocast_dtype

try:  # Triton ships with CUDA builds of torch; it is not a dependency of latentlab.
    import triton
    import triton.language as tl
except Exception:  # ImportError on CPU builds; anything else means a broken install: fall back too
    triton = tl = None

USE_TRITON = True
"""Use the Triton kernels where they apply; False forces F.group_norm (for comparisons)."""

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_ROW = 128  # contiguous channels per pixel in a tile: BLOCK_G * C_g >= MIN_ROW, for coalesced loads
TILE = 4096  # elements per tile (BLOCK_P * BLOCK_G * BLOCK_CG)
MAX_SPLITS = 64  # pixel chunks per group in the statistics kernel, at most
FUSED_MAX_PIXELS = 256  # the fused kernel for groups of at most this many pixels (if enough groups)


def group_norm_act(x: torch.Tensor, norm: nn.GroupNorm, silu: bool = True) -> torch.Tensor:
    """silu(norm(x)), or norm(x) when `silu` is False, for x of shape (B, C, H, W)."""
    if uses_triton(x, norm):
        return group_norm_act_triton(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu)
    if activation_memory.lean(x, norm.weight, norm.bias):  # training: save x alone, recompute the rest
        return activation_memory.group_norm_act(x, norm, silu)
    h = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)  # float32 under autocast
    return F.silu(to_autocast_dtype(h)) if silu else h  # SiLU and the convolution after it in autocast's dtype


def uses_triton(x: torch.Tensor, norm: nn.GroupNorm) -> bool:
    """Whether `group_norm_act(x, norm)` runs the Triton kernels: channels-last CUDA tensors of a
    supported dtype at inference (no gradient to record), with Triton installed."""
    if not (USE_TRITON and triton is not None and x.is_cuda and x.dim() == 4 and x.dtype in TRITON_DTYPES):
        return False
    if torch.compiler.is_compiling():  # under torch.compile, Inductor generates its own kernels
        return False
    # A tensor with H = W = 1 (or C = 1) is both NCHW and NHWC: F.group_norm reads it without a copy.
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    params = [p for p in (norm.weight, norm.bias) if p is not None]
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return False
    return all(p.device == x.device for p in params)


# ---------------------------------------------------------------------------------------------------
# Launch


def group_norm_act_triton(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          eps: float, silu: bool = True, mode: str = "auto", **config) -> torch.Tensor:
    """silu(group_norm(x)) for a channels-last 4-D CUDA tensor x, by the Triton kernels; channels-last
    output of x's dtype. `mode` is "fused", "split" or "auto"; `config` overrides `_plan`'s choices."""
    B, C, H, W = x.shape
    if C % groups:
        raise ValueError(f"{C} channels do not split into {groups} groups")
    plan = _plan(B, C, groups, H * W, _num_sms(x.device), mode, **config)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    w = weight if weight is not None else x  # any pointer: never read without HAS_WEIGHT
    b = bias if bias is not None else x
    flags = dict(HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, SILU=silu, num_warps=plan.num_warps)
    if plan.mode == "fused":
        _gn_fused_kernel[plan.stats_grid](x, y, w, b, H * W, C, groups, eps, **plan.blocks, **flags)
        return y
    S = plan.stats_grid[1]
    part = torch.empty(B * groups * S * 2, device=x.device, dtype=torch.float32)
    _gn_stats_kernel[plan.stats_grid](x, part, H * W, C, groups, plan.pix_per_split, **plan.blocks,
                                      num_warps=plan.num_warps)
    _gn_apply_kernel[plan.apply_grid](x, y, w, b, part, H * W, C, groups, eps, plan.pix_per_split, S,
                                      plan.pix_per_chunk, **plan.blocks, BLOCK_S=triton.next_power_of_2(S), **flags)
    return y


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132


class _Plan(NamedTuple):
    mode: str  # "fused" or "split"
    blocks: dict  # the kernels' CG, BLOCK_P, BLOCK_G, BLOCK_CG
    num_warps: int
    stats_grid: tuple  # fused: (G / BLOCK_G, B); split: (G / BLOCK_G, S, B)
    apply_grid: tuple = ()  # split: (G / BLOCK_G, A, B)
    pix_per_split: int = 0  # pixels of each of the S chunks of the statistics
    pix_per_chunk: int = 0  # pixels of each of the A chunks of the normalisation


@functools.lru_cache(maxsize=1024)
def _plan(B: int, C: int, G: int, HW: int, num_sms: int, mode: str = "auto", *, BLOCK_G: int | None = None,
          tile: int = TILE, num_warps: int = 4, waves: float = 1.0) -> _Plan:
    """Mode, block sizes and grids of a launch (cached: Python's time matters at these sizes).

    "auto" is "fused" for groups of <= FUSED_MAX_PIXELS pixels when there are groups enough to fill
    the GPU or each is small, else "split". Tiles hold `tile` elements; the fused kernel takes one
    group per program (for parallelism), the split kernels enough groups for pixel rows of >= MIN_ROW
    contiguous channels, with the pixels cut into chunks so that about 4 * waves programs per SM
    compute statistics and 8 * waves normalise."""
    CG = C // G
    if mode == "auto":
        small = HW <= FUSED_MAX_PIXELS and (B * G >= 2 * num_sms or HW * CG <= 8192)
        mode = "fused" if small else "split"
    BLOCK_CG = triton.next_power_of_2(CG)
    if BLOCK_G is None:
        BLOCK_G = 1 if mode == "fused" else min(triton.next_power_of_2(G), triton.next_power_of_2(-(-MIN_ROW // CG)))
    BLOCK_P = max(1, tile // (BLOCK_G * BLOCK_CG))
    blocks = dict(CG=CG, BLOCK_P=BLOCK_P, BLOCK_G=BLOCK_G, BLOCK_CG=BLOCK_CG)
    n_gblk, n_pblk = triton.cdiv(G, BLOCK_G), triton.cdiv(HW, BLOCK_P)
    if mode == "fused":
        return _Plan(mode, blocks, num_warps, stats_grid=(n_gblk, B))
    S = max(1, min(MAX_SPLITS, n_pblk, round(4 * waves * num_sms / (B * n_gblk))))
    pps = triton.cdiv(n_pblk, S) * BLOCK_P  # a whole number of tiles per chunk
    A = max(1, min(n_pblk, round(8 * waves * num_sms / (B * n_gblk))))
    ppa = triton.cdiv(n_pblk, A) * BLOCK_P
    return _Plan(mode, blocks, num_warps, stats_grid=(n_gblk, triton.cdiv(HW, pps), B),
                 apply_grid=(n_gblk, triton.cdiv(HW, ppa), B), pix_per_split=pps, pix_per_chunk=ppa)


# ---------------------------------------------------------------------------------------------------
# Kernels. Names: B samples, C channels, G groups of CG channels, HW pixels; a program's groups are
# g0 .. g0 + BLOCK_G - 1; "mean" and "m2" are per group, shape [BLOCK_G]; the split mode's partial
# statistics are float32 (B, G, S, 2): (mean, M2) of each group over each of S chunks of pixels.


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


@_jit
def _group_channels(g0, G, CG: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Channel index c = g * CG + k of a [BLOCK_G, BLOCK_CG] block of groups, and its mask."""
    g = g0 + tl.arange(0, BLOCK_G)
    k = tl.arange(0, BLOCK_CG)
    c = g[:, None] * CG + k[None, :]
    return c, (g[:, None] < G) & (k[None, :] < CG)


@_jit
def _load_tile(x_base, p0, p_end, C, c, c_mask, BLOCK_P: tl.constexpr):
    """The [BLOCK_P, BLOCK_G, BLOCK_CG] tile of pixels p0 .. p0 + BLOCK_P - 1 (< p_end), in float32,
    zero where masked; its offsets and mask."""
    p = p0 + tl.arange(0, BLOCK_P)
    offs = p[:, None, None] * C + c[None, :, :]
    mask = (p < p_end)[:, None, None] & c_mask[None, :, :]
    return tl.load(x_base + offs, mask=mask, other=0.0).to(tl.float32), offs, mask


@_jit
def _moments(x_base, p_start, p_end, C, c, c_mask, CG: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
    """Mean and M2 of each group over pixels p_start .. p_end - 1: per tile by two passes over the
    registers, merged across tiles by Chan et al.'s update."""
    mean = tl.zeros([BLOCK_G], tl.float32)
    m2 = tl.zeros([BLOCK_G], tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        xs, offs, mask = _load_tile(x_base, p0, p_end, C, c, c_mask, BLOCK_P)
        n_a = (p0 - p_start) * 1.0 * CG  # elements merged so far, per group (float32)
        n_b = tl.minimum(p_end - p0, BLOCK_P) * 1.0 * CG  # elements in this tile
        mean_b = tl.sum(tl.sum(xs, axis=2), axis=0) / n_b
        d = tl.where(mask, xs - mean_b[None, :, None], 0.0)
        m2_b = tl.sum(tl.sum(d * d, axis=2), axis=0)
        n = n_a + n_b
        delta = mean_b - mean
        mean += delta * (n_b / n)
        m2 += m2_b + delta * delta * (n_a * (n_b / n))
    return mean, m2


@_jit
def _scale_shift(w_ptr, b_ptr, c, c_mask, mean, rstd, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Per channel [BLOCK_G, BLOCK_CG]: a = gamma * rstd and shift = beta - mean * a, so y = x * a + shift."""
    a = tl.broadcast_to(rstd[:, None], c.shape)
    if HAS_WEIGHT:
        a = a * tl.load(w_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    shift = -mean[:, None] * a
    if HAS_BIAS:
        shift += tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    return a, shift


@_jit
def _normalize_chunk(x_base, y_base, p_start, p_end, C, c, c_mask, a, shift, BLOCK_P: tl.constexpr,
                     SILU: tl.constexpr):
    """y = x * a + shift (then SiLU) for pixels p_start .. p_end - 1, stored in y's dtype."""
    for p0 in range(p_start, p_end, BLOCK_P):
        xs, offs, mask = _load_tile(x_base, p0, p_end, C, c, c_mask, BLOCK_P)
        y = xs * a[None, :, :] + shift[None, :, :]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_base + offs, y.to(y_base.dtype.element_ty), mask=mask)


@_jit
def _gn_fused_kernel(x_ptr, y_ptr, w_ptr, b_ptr, HW, C, G, eps, CG: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                     HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Grid (G / BLOCK_G, B): statistics over all pixels, then the normalisation (a second read)."""
    g0 = tl.program_id(0) * BLOCK_G
    base = tl.program_id(1).to(tl.int64) * HW * C
    c, c_mask = _group_channels(g0, G, CG, BLOCK_G, BLOCK_CG)
    mean, m2 = _moments(x_ptr + base, 0, HW, C, c, c_mask, CG, BLOCK_P, BLOCK_G)
    rstd = tl.rsqrt(m2 / (HW * CG) + eps)
    a, shift = _scale_shift(w_ptr, b_ptr, c, c_mask, mean, rstd, HAS_WEIGHT, HAS_BIAS)
    _normalize_chunk(x_ptr + base, y_ptr + base, 0, HW, C, c, c_mask, a, shift, BLOCK_P, SILU)


@_jit
def _gn_stats_kernel(x_ptr, part_ptr, HW, C, G, pix_per_split, CG: tl.constexpr, BLOCK_P: tl.constexpr,
                     BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr):
    """Grid (G / BLOCK_G, S, B): (mean, M2) of chunk s of sample b's groups to part[b, g, s, :]."""
    g0 = tl.program_id(0) * BLOCK_G
    s = tl.program_id(1)
    S = tl.num_programs(1)
    b = tl.program_id(2)
    c, c_mask = _group_channels(g0, G, CG, BLOCK_G, BLOCK_CG)
    p_start = s * pix_per_split
    p_end = tl.minimum(p_start + pix_per_split, HW)
    mean, m2 = _moments(x_ptr + b.to(tl.int64) * HW * C, p_start, p_end, C, c, c_mask, CG, BLOCK_P, BLOCK_G)
    g = g0 + tl.arange(0, BLOCK_G)
    offs = ((b * G + g) * S + s) * 2
    tl.store(part_ptr + offs, mean, mask=g < G)
    tl.store(part_ptr + offs + 1, m2, mask=g < G)


@_jit
def _gn_apply_kernel(x_ptr, y_ptr, w_ptr, b_ptr, part_ptr, HW, C, G, eps, pix_per_split, S, pix_per_chunk,
                     CG: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_CG: tl.constexpr,
                     BLOCK_S: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr):
    """Grid (G / BLOCK_G, A, B): merge the S partials of sample b's groups, mu = sum_s n_s mu_s / N and
    M2 = sum_s M2_s + n_s (mu_s - mu)^2, then normalise chunk a of the pixels."""
    g0 = tl.program_id(0) * BLOCK_G
    p_start = tl.program_id(1) * pix_per_chunk
    b = tl.program_id(2)
    g = g0 + tl.arange(0, BLOCK_G)
    s = tl.arange(0, BLOCK_S)
    mask = (g < G)[:, None] & (s < S)[None, :]
    offs = ((b * G + g)[:, None] * S + s[None, :]) * 2
    mean_s = tl.load(part_ptr + offs, mask=mask, other=0.0)
    m2_s = tl.load(part_ptr + offs + 1, mask=mask, other=0.0)
    n_s = tl.where(s < S, (tl.minimum(s * pix_per_split + pix_per_split, HW) - s * pix_per_split) * CG, 0)
    n_s = n_s.to(tl.float32)[None, :]
    mean = tl.sum(n_s * mean_s, axis=1) / (HW * CG)
    d = mean_s - mean[:, None]
    m2 = tl.sum(m2_s + n_s * d * d, axis=1)
    rstd = tl.rsqrt(m2 / (HW * CG) + eps)
    c, c_mask = _group_channels(g0, G, CG, BLOCK_G, BLOCK_CG)
    a, shift = _scale_shift(w_ptr, b_ptr, c, c_mask, mean, rstd, HAS_WEIGHT, HAS_BIAS)
    base = b.to(tl.int64) * HW * C
    p_end = tl.minimum(p_start + pix_per_chunk, HW)
    _normalize_chunk(x_ptr + base, y_ptr + base, p_start, p_end, C, c, c_mask, a, shift, BLOCK_P, SILU)
