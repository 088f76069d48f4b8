"""GroupNorm + SiLU at the Stable Diffusion U-Net's shapes, bfloat16, on one CUDA device.

    PYTHONPATH=src python benchmarks/group_norm.py [--batch 16 2] [--variants]

prints microseconds per call of
  nchw      F.group_norm + F.silu on an NCHW tensor (PyTorch's kernel, no copy)
  cl        the same on a channels-last tensor (PyTorch copies to NCHW and back)
  ours      group_norm_act on the channels-last tensor (the Triton kernels), launched eagerly
  graph     the same replayed from a CUDA graph: the GPU time without Python's launch overhead
and GB/s of `graph` counting 2 * numel * 2 bytes (one read of x, one write of y, in bf16). The
kernels read x twice, which this figure leaves out: the split mode's statistics and apply kernels
(the second read from DRAM where x exceeds L2), or the fused kernel's second pass (from L2). Each timing cycles through copies of the input
that together exceed the L2 cache where memory allows. The last row weights each shape by the number
of its normalisations in one U-Net step (SD 1.x: 61 group norms, resnet and attention).
`--variants` also times the kernels' modes and block sizes (CUDA graph; "e:" eager) to choose `_plan`'s rule.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from latentlab.fast import group_norm as gn

# (channels, height = width): count of group norms in one SD 1.x U-Net step (down, mid, up, out)
SHAPES = {(320, 64): 13, (640, 64): 2, (960, 64): 1, (320, 32): 1, (640, 32): 11, (960, 32): 1, (1280, 32): 1,
          (1920, 32): 1, (640, 16): 1, (1280, 16): 11, (1920, 16): 1, (2560, 16): 2, (1280, 8): 12,
          (2560, 8): 3}
GROUPS, EPS = 32, 1e-5
L2_BYTES = 50e6
VARIANTS = {"fused": dict(mode="fused"), "split": dict(mode="split"), "split 8k": dict(mode="split", tile=8192),
            "split w2": dict(mode="split", waves=2.0), "split w.5": dict(mode="split", waves=0.5)}
EAGER_VARIANTS = ("fused", "split")


def copies(x: torch.Tensor, count: int) -> list[torch.Tensor]:
    return [x.clone(memory_format=torch.preserve_format) for _ in range(count)]


def time_eager(fn, xs: list[torch.Tensor], calls: int) -> float:
    """Microseconds per call of fn over the inputs in turn, launched back to back."""
    for x in xs[:3]:
        fn(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for i in range(calls):
        fn(xs[i % len(xs)])
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls


def time_graph(fn, xs: list[torch.Tensor], replays: int) -> float:
    """Microseconds per call of fn replayed from a CUDA graph of one call per input."""
    for x in xs[:3]:
        fn(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for x in xs:
            fn(x)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (replays * len(xs))


def torch_group_norm_silu(norm):
    return lambda x: F.silu(F.group_norm(x, GROUPS, norm.weight, norm.bias, EPS))


def bench_shape(B: int, C: int, H: int, variants: bool) -> dict:
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(GROUPS, C, eps=EPS).cuda().to(torch.bfloat16).requires_grad_(False)
    x = (torch.randn(B, C, H, H, device="cuda") + 3.0).to(torch.bfloat16)
    count = max(1, min(32, math.ceil(2 * L2_BYTES / (x.numel() * 2))))
    nchw = copies(x.contiguous(), count)
    cl = copies(x.to(memory_format=torch.channels_last), count)
    calls = max(20, min(400, int(2e9 / (x.numel() * 2))))
    ours = lambda t: gn.group_norm_act(t, norm)  # noqa: E731
    assert gn.uses_triton(cl[0], norm)
    row = dict(nchw=time_eager(torch_group_norm_silu(norm), nchw, calls),
               cl=time_eager(torch_group_norm_silu(norm), cl, calls),
               ours=time_eager(ours, cl, calls), graph=time_graph(ours, cl, max(2, calls // count)))
    row["GB/s"] = 2 * x.numel() * 2 / row["graph"] / 1e3
    if variants:
        w, b = norm.weight, norm.bias
        for name, cfg in VARIANTS.items():
            fn = lambda t, cfg=cfg: gn.group_norm_act_triton(t, GROUPS, w, b, EPS, True, **cfg)  # noqa: E731
            row[name] = time_graph(fn, cl, max(2, calls // count))
            if name in EAGER_VARIANTS:
                row["e:" + name] = time_eager(fn, cl, calls)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 2])
    parser.add_argument("--variants", action="store_true", help="also time each mode and block size")
    args = parser.parse_args()
    sms = gn._num_sms(torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, {sms} SMs, torch {torch.__version__}, triton {gn.triton.__version__}, "
          f"bf16, G={GROUPS}, microseconds per call")
    with torch.no_grad():
        for B in args.batch:
            rows = {shape: bench_shape(B, *shape, args.variants) for shape in SHAPES}
            keys = list(next(iter(rows.values())))
            print(f"\nB={B}\n{'C':>5} {'HxW':>6} " + " ".join(f"{k:>11}" for k in keys) + f" {'cl/ours':>8} mode")
            for (C, H), row in rows.items():
                print(f"{C:>5} {H:>3}x{H:<2} " + " ".join(f"{v:11.1f}" for v in row.values())
                      + f" {row['cl'] / row['ours']:8.1f} {gn._plan(B, C, GROUPS, H * H, sms).mode}")
            step = {k: sum(SHAPES[s] * r[k] for s, r in rows.items()) / 1e3 for k in ("nchw", "cl", "ours", "graph")}
            print(f"U-Net step (ms, {sum(SHAPES.values())} norms): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in step.items()))


if __name__ == "__main__":
    main()
