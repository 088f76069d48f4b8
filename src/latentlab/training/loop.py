"""What every training run shares: device and seed set-up, a time budget, progress and a CSV log."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import fast
from ..errors import LatentlabError
from ..io import atomic_write
from ..io.checkpoint import remove_stale_temporaries
from ..devices import resolve_device
from ..pipeline import Pipeline
from .distributed import close_world, init_world


def check_numbers(config) -> None:
    """Refuse a training config whose number settings (lr, weights of loss terms, probabilities...) are NaN or
    infinite (a run with one trains every weight to NaN), or whose seed the random generators would wrap."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise LatentlabError(f"{field.name} must be a finite number, got {value}")
    Pipeline.check_seed(config.seed)


def setup(seed: int, device: str) -> torch.device:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return resolve_device(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; full precision on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def adamw(params, lr: float, weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW; on CUDA its fused kernel, one launch per step for every parameter, where the default (foreach)
    launches several per parameter group and reads each parameter's step count on the host (LoRA trains
    hundreds of small tensors). Registered with the speed wing, whose compute copies its steps refresh."""
    return fast.track(torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda"))


def learning_rate(step: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base`, then constant."""
    return base * min(1.0, (step + 1) / max(1, warmup))


class Progress:
    """A progress bar over steps (or minutes, when a time budget ends the run first) and a CSV log.

    A resumed run (`first_step` > 0) appends to the log it continues, less the rows a killed run wrote after
    its checkpoint. Only the main process of a distributed run shows and writes anything (`enabled`)."""

    def __init__(self, out: Path, steps: int, minutes: float | None, batch_size: int, log_every: int = 50,
                 first_step: int = 0, enabled: bool = True):
        self.steps, self.batch_size, self.log_every = steps, batch_size, log_every
        self.first_step, self.enabled = first_step, enabled
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes
        self.start = time.monotonic()
        self.total, self.count = None, 0
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        append = first_step > 0 and path.is_file()
        if append:
            truncate_log(path, first_step)
        self.file = open(path, "a" if append else "w", newline="")
        self.csv = csv.writer(self.file)
        if not append:
            self.csv.writerow(["step", "loss", "samples_per_s", "elapsed_s"])
        self.bar = tqdm(total=steps, initial=first_step, desc="train", unit="step", dynamic_ncols=True)

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.deadline is not None and time.monotonic() >= self.deadline)

    def log(self, step: int, loss: torch.Tensor) -> dict | None:
        """Record a step's loss. It is read back (a device sync) only every `log_every` steps, so the
        GPU is not held up; the CSV row is the mean loss since the last row, and is returned when written."""
        if not self.enabled:
            return None
        self.total = loss.detach().float() if self.total is None else self.total + loss.detach().float()
        self.count += 1
        self.bar.update(1)
        if (step + 1) % self.log_every == 0 or step == self.first_step:
            mean = self.total.item() / self.count
            self.total, self.count = None, 0
            elapsed = time.monotonic() - self.start
            rate = (step + 1 - self.first_step) * self.batch_size / elapsed
            self.csv.writerow([step + 1, f"{mean:.6f}", f"{rate:.1f}", f"{elapsed:.1f}"])
            self.file.flush()
            self.bar.set_postfix(loss=f"{mean:.4f}", samples_s=f"{rate:.0f}")
            return {"loss": mean, "samples_per_s": rate}
        return None

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.file.close()


class StopSignals:
    """Within the block, SIGTERM and the first Ctrl-C (SIGINT) only ask the run to stop: `requested` turns
    True and the loop saves a checkpoint before it exits. A second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signal_name: str | None = None
        self.previous = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, number, frame):
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(number).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def run_steps(trainer, progress: Progress, stop: StopSignals, checkpoint_every: int):
    """The step loop every trainer runs: `for step in run_steps(...)` yields `trainer.step` until `progress`
    is done; the body trains that step and advances `trainer.step`. After each step comes the resumable
    checkpoint every `checkpoint_every` steps (`trainer.save_checkpoint()`), and a stop signal ends the loop
    (then `stop.requested`)."""
    while not progress.done(trainer.step):
        yield trainer.step
        if trainer.step % checkpoint_every == 0:
            trainer.save_checkpoint()
        if stop.requested:
            return


def train(trainer, *, main: bool = True) -> tuple[float | None, StopSignals]:
    """A trainer's run, for those whose step returns one loss (LoRA's and textual inversion's): resumed from its
    checkpoint when its config says so, its steps with a progress bar, a log and the finiteness check until
    done or stopped, then a checkpoint. `main`: this is the process that shows the bar and writes log.csv (under
    torchrun, rank 0). Returns (the last step's loss, this process's share, and the stop signals)."""
    c = trainer.config
    if c.resume:
        trainer.load_checkpoint()
    progress = Progress(trainer.out, c.steps, c.minutes, c.batch_size, first_step=trainer.step, enabled=main)
    loss = None
    with StopSignals() as stop:
        try:
            for step in run_steps(trainer, progress, stop, c.checkpoint_every):
                loss = trainer.train_step(step)
                progress.log(step, loss)
                trainer.step += 1
                trainer.finite.record(trainer.step, loss)
        finally:  # also when stopped by an error: the bar ends its line before the error is printed
            progress.close()
    trainer.save_checkpoint()
    return (None if loss is None else loss.item()), stop


def join_world(config):
    """The run's torchrun world (a world of one without torchrun), on the config's device and seed, and on its
    main process the temporary files a killed run left in `config.out` removed, before anything is written."""
    world = init_world(setup(config.seed, config.device))
    if world.main:  # the other processes write nothing
        remove_stale_temporaries(config.out)
    return world


def train_in_world(trainer, save) -> dict:
    """`train` for a trainer in a torchrun world (`trainer.world`; one process is a world of one): the last step's
    loss averaged over the global batch, then `save()` on the main process alone (what it returns, a dict or None,
    joins the report), then the world closed. Returns the run's report."""
    world = trainer.world
    loss, stop = train(trainer, main=world.main)  # one bar and one log.csv, from the main process
    if loss is not None:  # each process's share, averaged over the global batch
        loss = world.all_gather(torch.tensor([loss], device=trainer.device)).mean().item()
    saved = (save() or {}) if world.main else {}
    world.barrier()
    close_world(world)
    return {"steps": trainer.step, "loss": loss, "processes": world.size, "main": world.main, **saved,
            "interrupted": stop.requested, "signal": stop.signal_name}


def truncate_log(path: Path, last_step: int) -> None:
    """Drop the rows of a CSV log (its first column the step) after `last_step`, the step a run resumes from:
    a killed run logged them after its last checkpoint, and the resumed run logs those steps again. Rows that
    are not whole (a kill mid-write) go too. The file is rewritten atomically, only when a row goes."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [row for row in rows[1:] if len(row) == len(rows[0]) and _step(row[0]) <= last_step]
    if len(kept) < len(rows) or not _ends_with_newline(path):
        text = io.StringIO(newline="")
        csv.writer(text).writerows(kept)
        atomic_write(path, text.getvalue())


def _step(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return float("inf")


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return True
        f.seek(-1, 2)
        return f.read(1) == b"\n"


class FiniteCheck:
    """Stops a run whose loss or weights stopped being finite numbers (a learning rate too high, a bad
    setting) before any of it is saved: a LatentlabError that names the step, and the last good checkpoint
    stays as it is.

    Reading a value of the GPU back waits for the GPU, so a step only folds its loss into a record, kept on
    the device, of the first step whose loss was not finite (`record`: a few tiny kernels, no sync). `check`
    reads that record back together with whether every weight is finite: one sync. `record` checks every
    `every` steps (the logging steps, where Progress syncs anyway) and the trainers check right before
    every save (checkpoint, model folder, LoRA file), so a NaN that appears between two checks, in the loss
    or in the weights of the last update, is never written. Every process of a distributed run checks at the
    same steps and they decide together (`world`), so all stop, or none."""

    NEVER = 2 ** 62

    def __init__(self, params, device: torch.device, *, lr: float, checkpoint: Path, every: int = 50, world=None):
        self.params, self.lr, self.checkpoint, self.every, self.world = list(params), lr, checkpoint, every, world
        self.first_bad = torch.full((), self.NEVER, dtype=torch.long, device=device)

    def record(self, step: int, loss: torch.Tensor) -> None:
        """Note the loss of step `step` (counting from 1); check at every `every`-th step."""
        bad = ~torch.isfinite(loss.detach()).all()
        self.first_bad = torch.where(bad, self.first_bad.clamp(max=step), self.first_bad)
        if step % self.every == 0:
            self.check(step)

    def check(self, step: int) -> None:
        """Raise LatentlabError if a loss so far, or a weight now, is not finite."""
        weights_bad = torch.stack([~torch.isfinite(p.detach()).all() for p in self.params]
                                  or [torch.zeros((), dtype=torch.bool, device=self.first_bad.device)]).any()
        state = torch.stack([self.first_bad, weights_bad.long()]).view(1, 2)
        if self.world is not None:
            state = self.world.all_gather(state)
        first_bad, weights_bad = torch.stack([state[:, 0].min(), state[:, 1].max()]).tolist()
        if first_bad == self.NEVER and not weights_bad:
            return
        what = (f"the loss became NaN or infinite at step {first_bad}" if first_bad != self.NEVER
                else f"the weights became NaN or infinite by step {step}")
        raise LatentlabError(f"training stopped: {what}; nothing of it was saved, {self.checkpoint} (if any) "
                             f"still holds the last good state; lower the learning rate (lr {self.lr:g}) "
                             "or check the loss settings")


def read_log(path: str | Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
