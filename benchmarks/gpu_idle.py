"""Where the GPU waits for the host in one eager training step of SD 1.5's U-Net (ours, batch 8, bf16).

An eager step is as fast as the slower of its two sides at each moment: while the host launches kernels
faster than the GPU runs them, the GPU is busy; where the host falls behind (Python, the autograd engine,
per-op dispatch), the GPU idles. This profiles a few steps and attributes each idle gap before a kernel to
the operation on the host that launched it: the outermost autograd node being evaluated in the backward
pass, or the outermost op in the forward pass (a custom node's forward is an op named after it). The
largest entries are where host time costs step time.

    python benchmarks/gpu_idle.py --out records/gpu-idle/lora [--mode lora|full] [--checkpointing]
        [--block-modules]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

import lora_training  # beside this script
from latentlab import fast
from latentlab.fast import frozen_transformer

PHASES = ("forward", "backward", "optimizer")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--block-modules", action="store_true", help="each transformer block's modules, no node")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frozen_transformer.ENABLED = not args.block_modules
    step, step_ms = training_step(args.mode, args.checkpointing)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    trace = args.out / "trace.json"
    prof.export_chrome_trace(str(trace))
    report = idle_report(json.loads(trace.read_text())["traceEvents"], args.steps)
    trace.unlink()  # hundreds of MB; the report is what is kept
    report.update(device=torch.cuda.get_device_name(), torch=torch.__version__, mode=args.mode,
                  checkpointing=args.checkpointing, block_modules=args.block_modules,
                  step_ms_unprofiled=round(step_ms, 1))
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


def training_step(mode: str, checkpointing: bool):
    """(one training step of ours as the LoRA benchmark builds it, its time in ms unprofiled)."""
    model, network = lora_training.our_unet(mode, checkpointing, None, False)
    optimizer = fast.track(torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True))
    g = torch.Generator(device="cuda").manual_seed(0)
    B = lora_training.B
    x = torch.randn(B, 4, 64, 64, device="cuda", generator=g)
    c = torch.randn(B, 77, 768, device="cuda", generator=g)
    t = torch.randint(0, 1000, (B,), device="cuda", generator=g)

    def step():
        with record_function("forward"), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.mse_loss(network(x, t, c).float(), x)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        step()
    torch.cuda.synchronize()
    return step, (time.perf_counter() - start) * 100


def idle_report(events: list[dict], steps: int) -> dict:
    """GPU busy and idle time per step, and the idle time before kernels by the host op that launched them."""
    kernels = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                     key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    ops = collections.defaultdict(list)  # thread -> its ops and annotations, by start
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation"):
            ops[e["tid"]].append(e)
    starts = {}
    for tid, thread_ops in ops.items():
        thread_ops.sort(key=lambda e: e["ts"])
        starts[tid] = [e["ts"] for e in thread_ops]
    phases = [e for thread_ops in ops.values() for e in thread_ops if e["name"] in PHASES]
    idle, counts, busy, end = collections.Counter(), collections.Counter(), 0.0, None
    for k in kernels:
        busy += k["dur"]
        if end is not None and k["ts"] > end:
            op = _launcher(launches.get(k["args"].get("correlation")), ops, starts, phases)
            idle[op] += k["ts"] - end
            counts[op] += 1
        end = max(end or 0.0, k["ts"] + k["dur"])
    span = (kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]) / 1e3 / steps
    return {"per_step_ms": {"span": round(span, 1), "gpu_busy": round(busy / 1e3 / steps, 1),
                            "gpu_idle": round(span - busy / 1e3 / steps, 1)},
            "kernels_per_step": len(kernels) // steps,
            "idle_ms_per_step_by_launching_op": [
                {"op": op, "idle_ms": round(ms / 1e3 / steps, 2), "gaps": counts[op] // steps}
                for op, ms in idle.most_common(30)]}


def _launcher(launch: dict | None, ops, starts, phases) -> str:
    """'phase: op' for a kernel's launch: the autograd node the engine was evaluating, or the outermost op."""
    if launch is None:
        return "(launch not recorded)"
    tid, ts = launch["tid"], launch["ts"]
    i = bisect.bisect_right(starts.get(tid, []), ts)
    around = [e for e in ops.get(tid, [])[max(0, i - 2000):i] if e["ts"] + e["dur"] >= ts and e["name"] not in PHASES]
    phase = next((p["name"] for p in phases if p["tid"] == tid and p["ts"] <= ts <= p["ts"] + p["dur"]), "engine")
    node = next((e["name"] for e in around if e["name"].startswith("autograd::engine")), None)
    return f"{phase}: {node or (around[0]['name'] if around else '?')}"


if __name__ == "__main__":
    main()
