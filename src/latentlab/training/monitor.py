"""Watching a run: TensorBoard scalars and images, a sample grid every N steps, and `latentlab plot RUN`.

The CSV log (training/loop.py, `log.csv`) is always written. TensorBoard event files go to
`OUT/tensorboard/` when the `tensorboard` package is installed (`pip install latentlab[tensorboard]`).
Sample grids are drawn from the EMA weights with fixed prompts and seeds, so grids of different
steps show the same noise, and written to `OUT/samples/step-NNNNNN.png`; sampling draws from
generators of its own, so it changes nothing in the run it watches.
"""

from __future__ import annotations

import csv
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import LatentlabError
from .loop import truncate_log

SAMPLE_STEPS, SAMPLE_GUIDANCE = 25, 4.0


class TensorBoard:
    """A SummaryWriter in OUT/tensorboard when the package is there; else nothing, said once."""

    def __init__(self, out: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("latentlab: TensorBoard logging is off (pip install tensorboard to turn it on); log.csv has "
                  "the same figures")
            return
        self.writer = SummaryWriter(str(out / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def image(self, step: int, name: str, image) -> None:
        """A PIL image."""
        if self.writer is not None:
            import numpy as np

            self.writer.add_image(name, np.asarray(image), step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def sample_grid(pipe, prompts: list[str], path: Path, *, steps: int = SAMPLE_STEPS, guidance: float = SAMPLE_GUIDANCE):
    """One image per prompt (seeds 0, 1, ...) from `pipe`, as a grid PNG at `path`; returns the grid."""
    from ..images import image_grid, to_pil

    training = {m: m.training for m in (pipe.text_encoder, pipe.unet)}
    for module in training:
        module.eval()
    images = to_pil(pipe.sample(prompts, steps=steps, guidance=guidance, seed=0))
    for module, mode in training.items():
        module.train(mode)
    grid = image_grid(images, columns=min(8, len(images)), scale=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


class MetricsLog:
    """OUT/metrics.csv: step, training minutes (wall time since this process started the run, less the time
    spent measuring) and the measured values, one row per evaluation; a resumed run (`first_step` > 0)
    appends, less the rows a killed run wrote after its checkpoint."""

    def __init__(self, path: Path, first_step: int = 0):
        self.path, self.append = path, first_step > 0 and path.is_file()
        if self.append:
            truncate_log(path, first_step)
        self.start, self.paused_seconds = time.monotonic(), 0.0

    @contextmanager
    def paused(self):
        """A block whose time does not count as training time."""
        start = time.monotonic()
        yield
        self.paused_seconds += time.monotonic() - start

    def write(self, step: int, values: dict[str, float]) -> None:
        minutes = (time.monotonic() - self.start - self.paused_seconds) / 60
        row = {"step": step, "train_minutes": f"{minutes:.3f}", **{k: f"{v:.6f}" for k, v in values.items()}}
        with open(self.path, "a" if self.append else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if not self.append:
                writer.writeheader()
            writer.writerow(row)
        self.append = True


# ------------------------------------------------------------------ latentlab plot RUN


def read_columns(path: Path) -> dict[str, list[float]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_run(run: str | Path, out: str | Path | None = None) -> Path:
    """Curves of a run's CSV logs (log.csv, and metrics.csv where the run wrote one) against the step,
    one panel per column, to a PNG (default RUN/curves.png)."""
    run = Path(run)
    logs = [p for p in (run / "log.csv", run / "metrics.csv") if p.is_file()]
    if not logs:
        raise LatentlabError(f"{run} has no log.csv; give the --out folder of a latentlab training run")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LatentlabError("latentlab plot needs matplotlib: pip install latentlab[plot]") from None
    panels = [(log, name, values) for log in logs for name, values in read_columns(log).items()
              if name not in ("step", "elapsed_s")]
    columns = read_columns(logs[0])
    if not columns.get("step"):
        raise LatentlabError(f"{logs[0]} holds no rows yet")
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (log, name, values) in zip(axes[:, 0], panels):
        steps = read_columns(log)["step"]
        ax.plot(steps, values, lw=1.2)
        ax.set_ylabel(name)
        if name.endswith("loss") and min(values) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(run.name)
    fig.tight_layout()
    out = Path(out) if out is not None else run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
