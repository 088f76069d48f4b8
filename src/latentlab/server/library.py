"""What the server may read and write, and nothing else: the shipped models; the models folder's model folders and
Stable Diffusion files, and its lora/ folder's adapter files; the outputs folder, where every job writes a grid
(grid.py) and the history is read back from.

A request names a model, an adapter, a grid or a file by a name the server listed, never by a path: a name is
looked up in the listing, so `../` and absolute paths name nothing and are refused in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import LatentlabError
from ..grid import RECORD, Grid
from ..pipeline import SHIPPED_MODELS
from ..unclip_pipeline import SHIPPED_UNCLIP_MODEL

ADAPTERS = "lora"  # the models folder's subfolder of adapter files (LoRA and the other kinds)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a grid's id, a file's name


class Library:
    def __init__(self, models: str | Path, outputs: str | Path):
        self.models_dir, self.outputs = Path(models).resolve(), Path(outputs).resolve()
        self.outputs.mkdir(parents=True, exist_ok=True)

    def models(self) -> list[str]:
        """The shipped text-to-image models, then the models folder's model folders and .safetensors files."""
        found = []
        if self.models_dir.is_dir():
            for path in sorted(self.models_dir.iterdir()):
                if (path / "model_index.json").is_file() or (path.suffix == ".safetensors" and path.is_file()):
                    found.append(path.name)
        return [*SHIPPED_MODELS, SHIPPED_UNCLIP_MODEL, *found]

    def adapters(self) -> list[str]:
        folder = self.models_dir / ADAPTERS
        return sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []

    def model(self, name: str) -> str:
        """What `Pipeline.load` takes for a listed model: the shipped name, or the file's or folder's path."""
        if name not in self.models():
            raise LatentlabError(f"no model {name!r} here; the models are those /api/models lists: "
                                 f"{', '.join(self.models())}")
        return name if name in (*SHIPPED_MODELS, SHIPPED_UNCLIP_MODEL) else str(self.models_dir / name)

    def adapter(self, name: str) -> str:
        if name not in self.adapters():
            raise LatentlabError(f"no adapter file {name!r} here; put LoRA and adapter files in "
                                 f"{self.models_dir / ADAPTERS}")
        return str(self.models_dir / ADAPTERS / name)

    def folder(self, grid_id: str) -> Path:
        """Where a job with this id writes its grid."""
        if not isinstance(grid_id, str) or not NAME.match(grid_id):
            raise LatentlabError(f"{str(grid_id)[:60]!r} is not a grid id: letters, digits, '.', '_' and '-'")
        return self.outputs / grid_id

    def grid(self, grid_id: str) -> Grid:
        folder = self.folder(grid_id)
        if not (folder / RECORD).is_file():
            raise LatentlabError(f"no grid {grid_id!r} in the history")
        return Grid.load(folder)

    def file(self, grid_id: str, name: str) -> Path:
        """An image of a grid in the history."""
        if not NAME.match(name) or not name.endswith(".png"):
            raise LatentlabError(f"{name[:60]!r} is not an image of a grid")
        path = self.folder(grid_id) / name
        if not path.is_file():
            raise LatentlabError(f"no image {name!r} in grid {grid_id!r}")
        return path

    def history(self) -> list[dict]:
        """Every grid written here, newest first: its id, model, and images with their settings and origin (a
        grid.json that no longer reads is left out, not the whole history)."""
        entries = []
        for folder in sorted((p for p in self.outputs.iterdir() if (p / RECORD).is_file()), reverse=True):
            try:
                entries.append(entry(Grid.load(folder)))
            except LatentlabError:
                continue
        return entries


def entry(grid: Grid) -> dict:
    return {"id": grid.folder.name, "model": grid.model,
            "adapters": [[Path(path).name, scale] for path, scale in grid.adapters],
            "images": [{"file": i.file, "prompt": i.prompt, "seed": i.seed, "settings": i.settings,
                        "from": i.origin} for i in grid.images]}
