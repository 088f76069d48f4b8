"""U-Net inference at Stable Diffusion 1.5's configuration: latentlab against diffusers, side by side.

One denoising step (64x64x4 latents, 77 text tokens of width 768), bf16, the same random weights in
both (diffusers' state dict loaded into ours unchanged), batch 2 (one image with guidance) and 16,
eager and under torch.compile. Also measured in the same process: the card's bf16 matrix-product rate
(an 8192^3 matmul), against which the achieved TFLOP/s are set.

    python benchmarks/unet_inference.py --out records/unet-inference                   # everything
    python benchmarks/unet_inference.py --out DIR --only eager                         # eager rows only
    python benchmarks/unet_inference.py --out DIR --table-only                         # redraw the table

Each run writes results-<part>.json in --out; the table (table.md) is drawn from all of them.
Needs a CUDA GPU and diffusers (a test-only dependency of latentlab).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from timing import seconds_per_call  # benchmarks/timing.py, beside this script

from latentlab import fast
from latentlab.fast.cuda_graph import CUDAGraphed

DTYPE = torch.bfloat16



def matmul_peak() -> float:
    """The card's bf16 matrix-product rate, TFLOP/s, on an 8192^3 product."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=DTYPE) for _ in range(2))
    s = seconds_per_call(lambda: a @ b, n=50, warm=10)
    return 2 * 8192**3 / s / 1e12


def build():
    """diffusers' SD 1.5 U-Net with random weights, and ours with the same weights; both bf16 on the GPU."""
    from diffusers import UNet2DConditionModel

    from latentlab.models import UNet, UNetConfig

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).to("cuda", DTYPE).eval()
    with torch.device("meta"):
        ours = UNet(UNetConfig.stable_diffusion_1())
    ours.load_state_dict(theirs.state_dict(), assign=True)
    fast.install(ours)  # the speed wing, as the pipeline runs it
    return theirs, ours.eval()


def inputs(batch: int, channels_last: bool = False):
    g = torch.Generator(device="cuda").manual_seed(batch)
    x = torch.randn(batch, 4, 64, 64, device="cuda", dtype=DTYPE, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    context = torch.randn(batch, 77, 768, device="cuda", dtype=DTYPE, generator=g)
    return x, torch.full((batch,), 500, device="cuda"), context


def flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def variants(theirs, ours, compiled: bool):
    """name -> (network (x, t, context) -> output, wants channels-last inputs, capture as a CUDA graph)."""
    import copy

    def diffusers_call(m):
        return lambda x, t, c: m(x, t, c).sample

    ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    if compiled:
        return {"diffusers": (diffusers_call(torch.compile(theirs)), False, False),
                "latentlab": (torch.compile(ours), False, False),
                "latentlab, channels-last": (torch.compile(ours_cl), True, False)}
    theirs_cl = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    return {"diffusers": (diffusers_call(theirs), False, False),
            "diffusers, channels-last": (diffusers_call(theirs_cl), True, False),
            "latentlab": (ours, False, False),
            "latentlab, channels-last": (ours_cl, True, False),
            "diffusers, CUDA graph": (diffusers_call(theirs), False, True),
            "latentlab, CUDA graph": (ours, False, True),
            "latentlab, channels-last, CUDA graph": (ours_cl, True, True)}


def profile(network, x, t, c, path: Path) -> None:
    """The kernels that take the time, for one call (torch.profiler, sorted by CUDA time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        network(x, t, c)
        torch.cuda.synchronize()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))


def check_same_output(theirs, ours) -> float:
    """Largest difference between the two networks' bf16 outputs, relative to the output's largest value."""
    x, t, c = inputs(2)
    with torch.no_grad():
        want, got = theirs(x, t, c).sample.float(), ours(x, t, c).float()
    return ((got - want).abs().max() / want.abs().max()).item()


def run(part: str, batches: list[int], out: Path, profile_batch: int | None) -> dict:
    theirs, ours = build()
    result = {"part": part, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "python": platform.python_version(), "peak_tflops": matmul_peak(),
              "relative_difference": check_same_output(theirs, ours), "rows": []}
    import diffusers
    result["diffusers"] = diffusers.__version__
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    with torch.no_grad():
        tflop = {batch: flops(lambda: ours(*inputs(batch))) / 1e12 for batch in batches}
        for name, (network, channels_last, graphed) in variants(theirs, ours, part == "compiled").items():
            for batch in batches:
                x, t, c = inputs(batch, channels_last)
                start = time.perf_counter()
                call = CUDAGraphed(network) if graphed else network
                call(x, t, c)  # the first call compiles
                torch.cuda.synchronize()
                first = time.perf_counter() - start
                seconds = seconds_per_call(lambda: call(x, t, c), n=20, warm=5)
                row = {"network": name, "mode": part, "batch": batch, "steps_per_s": 1 / seconds,
                       "first_call_s": first, "tflop_per_step": tflop[batch]}
                row["tflops"] = row["tflop_per_step"] * row["steps_per_s"]
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
                if batch == profile_batch and not graphed:
                    profile(network, x, t, c, out / f"profile-{part}-{name.replace(', ', '-').replace(' ', '-')}.txt")
    return result


def table(out: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("results-*.json"))]
    lines = []
    for r in results:
        lines.append(f"{r['part']}: {r['device']}, torch {r['torch']}, diffusers {r['diffusers']}; measured bf16 "
                     f"matmul rate {r['peak_tflops']:.0f} TFLOP/s; outputs differ by {r['relative_difference']:.1e} "
                     "of their largest value\n")
    lines += ["| mode | batch | network | steps/s | vs diffusers | TFLOP/s | % of matmul rate |", "|" + " --- |" * 7]
    for r in results:
        base = {row["batch"]: row["steps_per_s"] for row in r["rows"] if row["network"] == "diffusers"}
        for row in r["rows"]:
            ratio = row["steps_per_s"] / base[row["batch"]] if row["batch"] in base else float("nan")
            lines.append(f"| {row['mode']} | {row['batch']} | {row['network']} | {row['steps_per_s']:.1f} | "
                         f"{ratio:.2f}x | {row['tflops']:.0f} | {100 * row['tflops'] / r['peak_tflops']:.0f}% |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=["eager", "compiled"], action="append", help="default: both")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--profile", type=int, metavar="BATCH", help="also write each eager network's kernel profile")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        if not torch.cuda.is_available():
            raise SystemExit("this benchmark needs a CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        for part in args.only or ["eager", "compiled"]:
            result = run(part, args.batches, args.out, args.profile)
            (args.out / f"results-{part}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(args.out))


if __name__ == "__main__":
    main()
