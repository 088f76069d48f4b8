"""What the commands write: --out checked before any work starts, and reports and images that, where the
disk refuses them, end in one line saying what was kept."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from ..errors import LatentlabError


def check_out(path, *, folder: bool) -> None:
    """Refuse an output that cannot be written, before any work: a file where a folder goes or the other
    way round, a file on the way to it, or a folder this user cannot write in. Nothing is created."""
    path = Path(path)
    if "\0" in str(path):
        raise LatentlabError(f"--out {str(path)!r} holds a NUL character, which no file name may")
    try:
        if path.exists() and path.is_dir() != folder:
            raise LatentlabError(f"--out {path} is a {'file' if folder else 'folder'}; give the path of a "
                                 f"{'folder' if folder else 'file'} to write")
        parent = path if folder else path.parent
        existing = next(p for p in (parent, *parent.parents) if p.exists())
        if not existing.is_dir():
            raise LatentlabError(f"--out {path} is under {existing}, which is a file, not a folder")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:  # a name too long, a folder this user cannot write in
        where = f" ({e.filename})" if e.filename and e.filename != str(path) else ""
        raise LatentlabError(f"cannot write --out {path}: {e.strerror or e}{where}") from None


def check_resume(args) -> None:
    """--resume needs the run's checkpoint in --out; say so before any work starts."""
    if args.resume and not (Path(args.out) / "checkpoint.safetensors").is_file():
        raise LatentlabError(f"--resume: {Path(args.out) / 'checkpoint.safetensors'} does not exist; start the run "
                             "without --resume")


def report_run(result: dict, out, saved: str) -> None:
    """A training run's JSON report on stdout; where a signal stopped it, first a line on stderr saying what was
    saved in `out` and how to continue. Under torchrun only the main process reports (`result["main"]`)."""
    if not result.pop("main", True):
        return
    if result["interrupted"]:
        print(f"stopped by {result['signal']} after step {result['steps']}; {saved} saved in {out}; run the "
              "same command with --resume to continue", file=sys.stderr)
    print(json.dumps(result))


def write_report(path, report) -> None:
    """The JSON report to `path`; where that fails, to stdout before the error, so the work is not lost."""
    from ..io import atomic_write  # here, not above: tests replace it with a full disk

    text = json.dumps(report, indent=2) + "\n"
    try:
        atomic_write(path, text)
    except OSError as e:
        print(text, end="")
        raise LatentlabError(f"cannot write {path}: {e.strerror or e}; the report is printed on standard "
                             "output") from None


def save_png(image, path: Path, written: int) -> None:
    """`image` to `path`; a failure says that the `written` images before it are kept."""
    try:
        image.save(path)
    except OSError as e:
        raise LatentlabError(f"cannot write {path}: {e.strerror or e}; the {written} images before it are in "
                             f"{path.parent}") from None


def save_edits(out: Path, sources: dict, drawn: list, scale: int) -> None:
    """An editing command's PNGs: its inputs as the model read them (`sources`, by file name: source.png,
    mask.png), each image drawn (000.png, 001.png, ...) and grid.png of them all, inputs first."""
    from ..images import image_grid

    out.mkdir(parents=True, exist_ok=True)
    for k, (name, image) in enumerate(sources.items()):
        save_png(image, out / name, k)
    for i, image in enumerate(drawn):
        save_png(image, out / f"{i:03d}.png", len(sources) + i)
    save_png(image_grid([*sources.values(), *drawn], scale=scale), out / "grid.png", len(sources) + len(drawn))
