"""Samplers and step counts on the shapes models: prompt accuracy, a distance to real images, bits/dim.

For each model, each sampler (ddpm with the small, large and, where the model has one, learned
variance; ddim; euler; heun; dpmpp_2m) and each step count, generate images for `--prompts`
single-object test prompts and measure
  accuracy  the share the judge reads with every attribute right (shape, colour, size, position)
  FD        the Frechet distance between 8x8-pooled pixels of the samples and of 5,000 real renders
            of other test scenes (the floor: the same distance for real renders of the prompts' scenes)
and, per model, the variational bound in bits per dimension for each variance.

    python benchmarks/samplers.py --model shipped=default --model hybrid=runs/hybrid/model --out records/samplers
    python benchmarks/samplers.py ... --objects 2 --nll-images 0 --out records/samplers-two-objects

writes OUT/results.json (resumable: finished cells are kept), OUT/table.md and OUT/samplers.png.
`--plot-only` redraws the table and plot from OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from latentlab import Pipeline
from latentlab.data.judge import judge, score
from latentlab.data.shapes import ShapesDataset
from latentlab.evaluation import bits_per_dim, frechet_distance, pooled_pixels
from latentlab.io import atomic_write

STEPS = (4, 8, 16, 32, 100, 1000)
SAMPLERS = [("ddpm-small", "ddpm", {"variance": "small"}), ("ddpm-large", "ddpm", {"variance": "large"}),
            ("ddpm-learned", "ddpm", {"variance": "learned"}), ("ddim", "ddim", {}), ("euler", "euler", {}),
            ("heun", "heun", {}), ("dpmpp_2m", "dpmpp_2m", {})]


def _judge_all(pixels_and_scenes):
    torch.set_num_threads(1)
    pixels, scenes = pixels_and_scenes
    images = pixels.float() / 127.5 - 1
    return [score(scene, judge(image))["all"] for image, scene in zip(images, scenes)]


def accuracy(images: torch.Tensor, scenes: list, pool: ProcessPoolExecutor) -> float:
    pixels = ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    chunks = [(pixels[i:i + 50], scenes[i:i + 50]) for i in range(0, len(scenes), 50)]
    results = [ok for chunk in pool.map(_judge_all, chunks) for ok in chunk]
    return sum(results) / len(results)


def sweep(args) -> dict:
    out = Path(args.out)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"cells": {}, "nll": {}, "floor": None}
    p_two = float(args.objects == 2)
    data = ShapesDataset(seed=args.seed, split="test", p_two=p_two)
    real, captions, scenes = data.batch(0, args.prompts)
    reference, _, _ = ShapesDataset(seed=args.seed + 1, split="test", p_two=p_two).batch(0, 5000)
    real_features = pooled_pixels(reference)
    results["floor"] = frechet_distance(pooled_pixels(real), real_features)
    results["setup"] = {"prompts": args.prompts, "objects": args.objects, "guidance": args.guidance, "seed": args.seed, "device": args.device,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for spec in args.model:
            label, _, where = spec.partition("=")
            pipe = Pipeline.load(None if where in ("", "default") else where, device=args.device)
            for variance in ("small", "large", "learned"):
                key = f"{label}/{variance}"
                if args.nll_images == 0 or key in results["nll"] or (variance == "learned" and not pipe.diffusion.learned_variance):
                    continue
                start = time.time()
                report = bits_per_dim(pipe, images=args.nll_images, batch_size=500, variance=variance)
                results["nll"][key] = {**report["bits_per_dim"], "seconds": time.time() - start}
                print(key, json.dumps(results["nll"][key]), flush=True)
                atomic_write(path, json.dumps(results, indent=1))
            for name, sampler, options in SAMPLERS:
                if options.get("variance") == "learned" and not pipe.diffusion.learned_variance:
                    continue
                for steps in args.steps:
                    key = f"{label}/{name}/{steps}"
                    if key in results["cells"]:
                        continue
                    start = time.time()
                    images = torch.cat([pipe.sample(captions[i:i + args.batch_size], steps=steps, guidance=args.guidance,
                                                    seed=args.seed + i, sampler=sampler, **options)
                                        for i in range(0, args.prompts, args.batch_size)])
                    seconds = time.time() - start
                    cell = {"accuracy": accuracy(images, scenes, pool),
                            "fd": frechet_distance(pooled_pixels(images.cpu()), real_features),
                            "nfe": 2 * steps - 1 if sampler == "heun" else steps, "seconds": seconds}
                    results["cells"][key] = cell
                    print(key, json.dumps(cell), flush=True)
                    atomic_write(path, json.dumps(results, indent=1))
    return results


def _models(results: dict) -> list[str]:
    """Model labels in the order they were measured."""
    return list(dict.fromkeys(key.split("/")[0] for key in results["cells"]))


def table(results: dict) -> str:
    setup = results["setup"]
    kind = "two-object" if setup.get("objects", 1) == 2 else "single-object"
    lines = [f"Judge accuracy (all attributes right) / FD to real renders (floor {results['floor']:.3f}); "
             f"{setup['prompts']} {kind} prompts, guidance {setup['guidance']}, {setup['gpu']}.", ""]
    for model in _models(results):
        lines += [f"**{model}**", "", "| sampler | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
                  "| --- |" + " --- |" * len(STEPS)]
        for name, _, _ in SAMPLERS:
            cells = [results["cells"].get(f"{model}/{name}/{s}") for s in STEPS]
            if not any(cells):
                continue
            lines.append(f"| {name} | " + " | ".join(f"{c['accuracy']:.0%} / {c['fd']:.2f}" if c else "" for c in cells)
                         + " |")
        lines.append("")
    if not results["nll"]:
        return "\n".join(lines)
    lines += ["Bits per dimension (variational bound, test images):", "",
              "| model / variance | latent | pixel | pixel reconstruction term |", "| --- | --- | --- | --- |"]
    for key, bits in results["nll"].items():
        lines.append(f"| {key} | {bits['latent']:.3f} | {bits['pixel']:.3f} | {bits['pixel_reconstruction']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _models(results)
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False, sharex=True)
    for col, model in enumerate(models):
        for index, (name, _, _) in enumerate(SAMPLERS):
            cells = [(s, results["cells"].get(f"{model}/{name}/{s}")) for s in STEPS]
            cells = [(s, c) for s, c in cells if c]
            if not cells:
                continue
            steps = [s for s, _ in cells]
            style = {"marker": "o", "label": name, "color": f"C{index}"}
            axes[0][col].plot(steps, [100 * c["accuracy"] for _, c in cells], **style)
            axes[1][col].plot(steps, [c["fd"] for _, c in cells], **style)
        axes[0][col].set_title(model)
        axes[0][col].set_ylabel("judge accuracy, %")
        axes[1][col].set_ylabel("FD to real renders (8x8 pixels)")
        axes[1][col].axhline(results["floor"], color="grey", linestyle=":", label="real vs real")
        axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel("sampler steps")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", default=[], help="LABEL=PATH ('default': the shipped model)")
    parser.add_argument("--out", default="records/samplers")
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--objects", type=int, choices=(1, 2), default=1, help="objects per prompt")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--nll-images", type=int, default=1000, help="0: no bits/dim")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 1)))
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="step counts (default %(default)s)")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "results.json").read_text()) if args.plot_only else sweep(args)
    atomic_write(out / "table.md", table(results))
    plot(results, out / "samplers.png")
    print(f"wrote {out / 'table.md'} and {out / 'samplers.png'}")


if __name__ == "__main__":
    main()
