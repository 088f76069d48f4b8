"""A small classifier of the class-labelled sets (Fashion-MNIST, MNIST) that the project trains itself,
and what it measures of a text-to-image model: class accuracy of class-prompted samples, and the
Frechet distance between its features of samples and of the test set.

No pretrained image network is to be had offline (Inception's weights download at run time), so the
features are this classifier's penultimate layer, as Heusel et al. (2017) used Inception's: a
distance on them is comparable between models on the same set, not with published FIDs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io import load_component, save_component
from ..io.checkpoint import remove_stale_temporaries
from .frechet import frechet_distance


@dataclass
class ClassifierConfig:
    classes: int = 10
    channels: tuple[int, ...] = (32, 64, 128)  # one block of two 3x3 convolutions per width, then pooling
    features: int = 128  # width of the penultimate layer, the Frechet distance's features
    dropout: float = 0.3

    def __post_init__(self):
        self.channels = tuple(self.channels)


class Classifier(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] -> logits (B, classes); `features` gives the penultimate layer."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        blocks, width = [], 3
        for channels in config.channels:
            blocks += [nn.Conv2d(width, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU(),
                       nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(8, channels), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = channels
        self.body = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, config.features), nn.ReLU())
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.features, config.classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(F.adaptive_avg_pool2d(self.body(x), 4))  # a 4x4 grid keeps where things are

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def train_classifier(data, test, out: str | Path, *, epochs: int = 8, batch_size: int = 256, lr: float = 2e-3,
                     device: torch.device | str = "cpu", seed: int = 0, config: ClassifierConfig | None = None,
                     log=print) -> dict:
    """Train on `data` (a class-labelled set), with random 2-pixel shifts, and save to `out`; returns the
    test accuracy. AdamW with a cosine learning rate over `epochs` passes."""
    remove_stale_temporaries(out)  # what an earlier, killed run left; nothing is being written yet
    torch.manual_seed(seed)
    model = Classifier(config or ClassifierConfig()).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * (len(data) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.15)
    shifts = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    for step in range(steps):
        images, _, labels = data.batch(step * batch_size, batch_size, device)
        dx, dy = torch.randint(-2, 3, (2,), generator=shifts).tolist()
        images = torch.roll(images, (dy, dx), dims=(2, 3))
        loss = F.cross_entropy(model(images), torch.tensor(labels, device=device), label_smoothing=0.05)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % (steps // epochs) == 0:
            log(f"epoch {(step + 1) // (steps // epochs)}: loss {loss.item():.3f}, "
                f"test accuracy {accuracy(model, test, device):.4f}")
    model.eval()
    save_component(out, model)
    return {"test_accuracy": accuracy(model, test, device), "minutes": (time.monotonic() - start) / 60}


def shipped_classifier(data: str) -> Path:
    """The classifier that ships in the package for a class-labelled set."""
    from importlib import resources

    from ..errors import LatentlabError

    path = Path(str(resources.files("latentlab") / "weights" / f"{data}-classifier"))
    if not (path / "model.safetensors").is_file():
        raise LatentlabError(f"no classifier ships for {data}; train one with `latentlab train-classifier --data "
                             f"{data} --out DIR` and pass --classifier DIR")
    return path


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    return load_component(path, Classifier, ClassifierConfig).to(device).eval()


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted classes (N,), features (N, D)) of images (N, 3, H, W) in [-1, 1]."""
    model.eval()
    device = next(model.parameters()).device
    classes, features = [], []
    for i in range(0, len(images), batch):
        f = model.features(images[i:i + batch].to(device).float())
        features.append(f.cpu()), classes.append(model.head(f).argmax(1).cpu())
    return torch.cat(classes), torch.cat(features)


def accuracy(model: Classifier, data, device, n: int | None = None) -> float:
    n = n or len(data)
    images, _, labels = data.batch(0, n, device)
    return (predict(model, images)[0] == torch.tensor(labels)).float().mean().item()


@torch.no_grad()
def class_fidelity(pipe, classifier: Classifier, test, *, per_class: int = 100, steps: int = 50,
                   guidance: float = 4.0, sampler: str = "ddim", seed: int = 1234, batch_size: int = 250,
                   **sampler_options) -> dict:
    """Generate `per_class` images for each class's caption; the classifier's accuracy on them (does the
    image show the class asked for?) and the Frechet distance between its features of the samples and
    of the whole `test` set (are they like real images?). The floor: the distance from as many test images
    as samples to the rest of the test set."""
    classes = len(test.class_captions)
    prompts = [test.class_captions[k] for k in range(classes) for _ in range(per_class)]
    targets = torch.tensor([k for k in range(classes) for _ in range(per_class)])
    samples = torch.cat([pipe.sample(prompts[i:i + batch_size], steps=steps, guidance=guidance, seed=seed + i,
                                     sampler=sampler, **sampler_options).cpu()
                         for i in range(0, len(prompts), batch_size)])
    predicted, features = predict(classifier, samples)
    real_images, _, _ = test.batch(0, len(test))
    _, real = predict(classifier, real_images)
    n = len(samples) if len(real) >= 2 * len(samples) else len(real) // 2
    per_class_accuracy = [(predicted[targets == k] == k).float().mean().item() for k in range(classes)]
    return {"images": len(prompts), "steps": steps, "guidance": guidance, "sampler": sampler, "seed": seed,
            "class_accuracy": (predicted == targets).float().mean().item(),
            "per_class_accuracy": per_class_accuracy,
            "frechet_distance": frechet_distance(features, real),
            "frechet_floor": frechet_distance(real[:n], real[n:])}  # as many real images in place of the samples
