"""Data-parallel scaling of the whole training step (render, encode, text encoder, U-Net, DDP all-reduce,
AdamW, EMA) at the shipped shapes model's size, launched with torchrun on 1 and N GPUs.

    torchrun --nproc_per_node 1 benchmarks/ddp_scaling.py --out R/1gpu.json [--batch-per-gpu 256]
    torchrun --nproc_per_node 2 benchmarks/ddp_scaling.py --out R/2gpu.json
    python benchmarks/ddp_scaling.py --report R          # the table: samples/s and efficiency

Weak scaling: each process keeps the same share of the batch, so the global batch grows with the GPUs;
efficiency = samples/s on N GPUs / (N x samples/s on 1). `--weights FILE` also saves the U-Net after
the timed steps; with the same global batch (`--batch-global`), the trainer makes the same draws on any
number of processes, so 1- and N-GPU runs must end with the same weights up to the order of sums.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def measure(args) -> None:
    from safetensors.torch import save_file

    from latentlab.pipeline import default_model_path
    from latentlab.training.diffusion import DiffusionTrainConfig, DiffusionTrainer
    from latentlab.training.presets import preset

    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    batch = args.batch_global or args.batch_per_gpu * world
    with tempfile.TemporaryDirectory() as out:
        config = DiffusionTrainConfig(vae=str(default_model_path()), out=out, batch_size=batch, lr=4e-4,
                                      device=args.device, seed=0, unet=preset("default", "unet"),
                                      text=preset("default", "text"), channels_last=args.channels_last)
        trainer = DiffusionTrainer(config)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for step in range(args.warm):
            trainer.train_step(step)
        sync()
        start = time.perf_counter()
        for step in range(args.warm, args.warm + args.steps):
            loss = trainer.train_step(step)
        loss = float(loss)
        sync()
        seconds = time.perf_counter() - start
        if trainer.world.main:
            row = {"gpus": world, "global_batch": batch, "steps": args.steps, "seconds": seconds,
                   "samples_per_s": batch * args.steps / seconds, "loss": loss,
                   "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__}
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            if args.weights:
                save_file({k: v.float().contiguous() for k, v in trainer.unet.state_dict().items()}, args.weights)
        trainer.world.barrier()


def report(folder: Path) -> None:
    rows = sorted((json.loads(p.read_text()) for p in folder.glob("*gpu.json")), key=lambda r: r["gpus"])
    one = next(r for r in rows if r["gpus"] == 1)
    lines = [f"{one['device']}, torch {one['torch']}, shapes model (default preset), weak scaling\n",
             "| GPUs | global batch | samples/s | speed-up | efficiency |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        speedup = r["samples_per_s"] / one["samples_per_s"]
        lines.append(f"| {r['gpus']} | {r['global_batch']} | {r['samples_per_s']:.0f} | {speedup:.2f}x | "
                     f"{speedup / r['gpus']:.0%} |")
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="this launch's result (JSON)")
    parser.add_argument("--batch-per-gpu", type=int, default=256)
    parser.add_argument("--batch-global", type=int, default=0, help="fix the global batch instead")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warm", type=int, default=15)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--weights", default=None, help="save the U-Net's weights here after the run")
    parser.add_argument("--report", type=Path, default=None, help="write the table from the results in this folder")
    args = parser.parse_args()
    report(args.report) if args.report else measure(args)


if __name__ == "__main__":
    main()
