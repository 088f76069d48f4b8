"""A contrastive image-text model as a user holds it: the encoder (models/contrastive.py) with its tokenizer,
stored as a folder and loaded by path or by a shipped name.

    model = ContrastiveModel.load()                     # the shipped one, trained on shapes and Fashion-MNIST
    model.similarity(images, ["a red circle", ...])     # cosine of each image with its prompt, in [-1, 1]
    model.encode_images(images), model.encode_prompts(prompts)   # unit embeddings (B, embed_dim)

A folder holds config.json and model.safetensors (the encoder) and tokenizer.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .devices import resolve_device
from .errors import CheckpointError
from .io.checkpoint import load_component, save_component
from .models.contrastive import ContrastiveConfig, ContrastiveEncoder
from .models.tokenizer import Tokenizer
from .pipeline import default_model_path

SHIPPED_CONTRASTIVE_MODEL = "shapes-clip"  # in the package's weights/
TOKENIZER = "tokenizer.json"


class ContrastiveModel:
    def __init__(self, encoder: ContrastiveEncoder, tokenizer: Tokenizer):
        self.encoder, self.tokenizer = encoder, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def image_size(self) -> int:
        return self.encoder.config.image.image_size

    @classmethod
    def load(cls, path: str | Path | None = None, *, device: str = "auto") -> "ContrastiveModel":
        """A model folder (as `latentlab train-clip` writes it), or None / the shipped name for the shipped one."""
        if path is None or (str(path) == SHIPPED_CONTRASTIVE_MODEL and not Path(path).exists()):
            path = default_model_path(SHIPPED_CONTRASTIVE_MODEL)
        path = Path(path)
        if not (path / TOKENIZER).is_file():
            raise CheckpointError(f"{path} is not a contrastive image-text model folder (no {TOKENIZER}); train one "
                                  f"with `latentlab train-clip`, or use the shipped {SHIPPED_CONTRASTIVE_MODEL!r}")
        encoder = load_component(path, ContrastiveEncoder, ContrastiveConfig).eval()
        return cls(encoder.to(resolve_device(device)), Tokenizer.load(path / TOKENIZER))

    def save(self, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_component(path, self.encoder, dtype=dtype)
        self.tokenizer.save(path / TOKENIZER)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> unit embeddings (B, embed_dim), float32 on the CPU."""
        return torch.cat([self.encoder.encode_image(images[s:s + batch_size].to(self.device).float()).float().cpu()
                          for s in range(0, len(images), batch_size)])

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Prompts -> unit embeddings (B, embed_dim), float32 on the CPU."""
        out = []
        for s in range(0, len(prompts), batch_size):
            ids, mask = self.tokenizer(list(prompts[s:s + batch_size]))
            out.append(self.encoder.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu())
        return torch.cat(out)

    def similarity(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """The cosine of each image's embedding with its own prompt's, (B,) in [-1, 1]: the CLIP score / 100."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images for {len(prompts)} prompts; give one prompt per image")
        return (self.encode_images(images) * self.encode_prompts(prompts)).sum(dim=1)
