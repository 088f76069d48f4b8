"""`latentlab plot`: a training run's loss and metric curves as a PNG (training/monitor.py)."""

from __future__ import annotations

from pathlib import Path

from .output import check_out


def add_parser(commands) -> None:
    p = commands.add_parser("plot", help="draw a training run's loss and metric curves to a PNG")
    p.add_argument("run", help="the --out folder of a training run")
    p.add_argument("--out", default=None, help="the PNG to write (default RUN/curves.png)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ..training.monitor import plot_run  # here, not above: tests replace it

    check_out(args.out or Path(args.run) / "curves.png", folder=False)
    print(f"wrote {plot_run(args.run, args.out)}")
