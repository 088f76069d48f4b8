"""Latent caching: encode a data set once with the autoencoder, then train the denoiser from the shards.

Each example's posterior q(z | x) = N(mean, exp(logvar)) is stored (float16), not one sample of it,
so training still draws fresh latent noise every step, exactly as from images. A cache folder:

    latents.json                  {"format": "latentlab-latents", "version": 1, "count": N, "image_size": S,
                                   "vae": <its config>, "vae_sha256": <hash of its weights>, "shards": [...]}
    latents-00000.safetensors     mean, logvar (n, C, h, w); captions and labels in the header's metadata

The trainer refuses a cache made with another autoencoder than the run's (the weights' hash differs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from ..errors import CheckpointError
from ..io import atomic_write, read_json
from ..io.checkpoint import remove_stale_temporaries
from .dataset import CaptionedImages, FiniteDataset

FORMAT, VERSION = "latentlab-latents", 1
INDEX = "latents.json"


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of a module's weights (names, shapes and float32 values), to tell two autoencoders apart."""
    digest = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def cache_latents(data: CaptionedImages, vae, out: str | Path, *, count: int | None = None, batch: int = 256,
                  shard_size: int = 16_384, device: torch.device | str = "cpu") -> dict:
    """Encode examples 0 .. count - 1 of `data` (one epoch of a finite set) into shards in `out`."""
    out = Path(out)
    remove_stale_temporaries(out)  # what an earlier, killed run left; nothing is being written yet
    count = count if count is not None else len(data)
    shards, vae = [], vae.to(device).eval()
    bar = tqdm(total=count, desc="encoding", unit="image")
    for first in range(0, count, shard_size):
        means, logvars, captions, labels = [], [], [], []
        end = min(first + shard_size, count)
        for start in range(first, end, batch):
            images, batch_captions, batch_labels = data.batch(start, min(batch, end - start), device)
            q = vae.posterior(images)
            means.append(q.mean.half().cpu()), logvars.append(q.logvar.half().cpu())
            captions += batch_captions
            labels += [label if isinstance(label, (int, str)) else None for label in batch_labels]
            bar.update(len(batch_captions))
        name = f"latents-{len(shards):05d}.safetensors"
        meta = {"captions": json.dumps(captions), "labels": json.dumps(labels)}
        atomic_write(out / name, save_safetensors({"mean": torch.cat(means), "logvar": torch.cat(logvars)}, meta))
        shards.append(name)
    bar.close()
    index = {"format": FORMAT, "version": VERSION, "count": count, "image_size": data.image_size,
             "vae": dataclasses.asdict(vae.config), "vae_sha256": weights_sha256(vae), "shards": shards}
    atomic_write(out / INDEX, json.dumps(index, indent=2) + "\n")
    return index


def is_latent_cache(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


class LatentDataset(FiniteDataset):
    """A latent cache, in memory: `latent_batch(start, n, device)` -> (mean, logvar, captions, labels)."""

    is_latent = True

    def __init__(self, path: str | Path, *, seed: int = 0):
        path = Path(path)
        self.index = index = read_json(path / INDEX)
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise CheckpointError(f"{path / INDEX} is not a latentlab latent cache (format {FORMAT}, version {VERSION})")
        means, logvars, self.captions, self.labels = [], [], [], []
        for name in index["shards"]:
            try:
                with safe_open(str(path / name), framework="pt") as f:
                    means.append(f.get_tensor("mean")), logvars.append(f.get_tensor("logvar"))
                    meta = f.metadata()
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{path / name} is not a readable latent shard ({e})") from None
            self.captions += json.loads(meta["captions"])
            self.labels += json.loads(meta["labels"])
        self.mean, self.logvar = torch.cat(means), torch.cat(logvars)
        if len(self.mean) != index["count"] or len(self.captions) != index["count"]:
            raise CheckpointError(f"{path}: the shards hold {len(self.mean)} latents, the index says {index['count']}")
        super().__init__(index["count"], seed)
        self.image_size = index["image_size"]

    def check_vae(self, vae) -> None:
        """Refuse a cache that another autoencoder wrote: its latents would mean nothing to this run."""
        if weights_sha256(vae) != self.index["vae_sha256"]:
            raise CheckpointError("the latent cache was encoded by another autoencoder than this run's --vae; "
                                  "cache the data again with this one")

    def latent_batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        indices = self.indices(start, n)
        return (self.mean[indices].to(device).float(), self.logvar[indices].to(device).float(),
                [self.captions[i] for i in indices], [self.labels[i] for i in indices])

    def batch(self, start: int, n: int, device: torch.device | str = "cpu"):
        raise TypeError("a latent cache holds latents, not images: use latent_batch")
