"""What every training run shares: device and seed set-up, a time budget, progress and a CSV log."""

from __future__ import annotations

import csv
import random
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..pipeline import resolve_device


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
    hundreds of small tensors)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")


def learning_rate(step: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base`, then constant."""
    return base * min(1.0, (step + 1) / max(1, warmup))


class Progress:
    """A progress bar over steps (or minutes, when a time budget ends the run first) and a CSV log.

    A resumed run (`first_step` > 0) appends to the log it continues. Only the main process of a
    distributed run shows and writes anything (`enabled`)."""

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


def read_log(path: str | Path) -> list[dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
