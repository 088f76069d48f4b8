"""The server's queue: jobs run one at a time, in the order they came, on one worker thread, so the loaded model
serves every request and two tabs never draw on one network at once.

A job's state is what the page shows: queued (with how many jobs are ahead), running (step i of n, and a preview
of the image so far), then done (its grid), failed (one line saying why) or cancelled. `cancel` stops a queued job
at once and a running one within a step: the sampler's step callback raises `Cancelled`.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

ENDED = ("done", "failed", "cancelled")


class Cancelled(Exception):
    """Raised inside a running job's sampler when the job is cancelled."""


@dataclass
class Job:
    id: str
    kind: str  # generate, vary, upscale, img2img, inpaint
    params: dict
    state: str = "queued"  # queued, running, then one of ENDED
    step: int = 0
    steps: int = 0
    preview: bytes | None = None  # PNG of the current estimate, while running
    result: dict | None = None  # the grid written: {"id", "images"}
    error: str | None = None
    version: int = 0  # grows with every change, for the event stream
    cancelled: threading.Event = field(default_factory=threading.Event)

    def progress(self, step: int, steps: int) -> None:
        """The sampler's step callback: note the step; stop here if the job was cancelled."""
        if self.cancelled.is_set():
            raise Cancelled()
        self.step, self.steps = step + 1, steps
        self.version += 1

    def show(self, png: bytes) -> None:
        self.preview = png
        self.version += 1


class JobQueue:
    """Jobs in arrival order, run by `run(job) -> result` on one thread."""

    def __init__(self, run: Callable[[Job], dict]):
        self.run = run
        self.jobs: dict[str, Job] = {}
        self.waiting: list[Job] = []
        self.lock = threading.Condition()
        self.ids = itertools.count(1)
        self.worker = threading.Thread(target=self._work, name="latentlab-jobs", daemon=True)
        self.worker.start()

    def new_id(self) -> str:
        """A job's id, and its grid's folder name: the time, then a counter (ids sort as they were made)."""
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{next(self.ids):04d}"

    def submit(self, kind: str, params: dict) -> Job:
        with self.lock:
            job = Job(id=self.new_id(), kind=kind, params=params)
            self.jobs[job.id] = job
            self.waiting.append(job)
            self.lock.notify()
            return job

    def position(self, job: Job) -> int:
        """How many jobs run before this one starts (0: it is running or has ended)."""
        with self.lock:
            if job not in self.waiting:
                return 0
            running = any(j.state == "running" for j in self.jobs.values())
            return self.waiting.index(job) + running

    def cancel(self, job: Job) -> None:
        with self.lock:
            job.cancelled.set()
            if job in self.waiting:
                self.waiting.remove(job)
                self._end(job, "cancelled")

    def _end(self, job: Job, state: str, **fields) -> None:
        for name, value in fields.items():
            setattr(job, name, value)
        job.state, job.preview = state, None
        job.version += 1

    def _work(self) -> None:
        while True:
            with self.lock:
                while not self.waiting:
                    self.lock.wait()
                job = self.waiting.pop(0)
                job.state = "running"
                job.version += 1
            try:
                result = self.run(job)
            except Cancelled:
                self._end(job, "cancelled")
            except Exception as e:  # the job fails, the server goes on
                self._end(job, "failed", error=one_line(e))
            else:
                self._end(job, "done", result=result)


def one_line(error: Exception) -> str:
    """What a failed job shows on the page: the error's first line (the project's errors are one line)."""
    text = str(error).strip().splitlines()
    if "out of memory" in str(error).lower():
        return "out of memory: ask for fewer or smaller images, or fewer steps"
    return text[0] if text else type(error).__name__
