"""Training the contrastive image-text encoder (models/contrastive.py) with CLIP's symmetric InfoNCE loss
(Radford et al. 2021; van den Oord et al. 2018):

    L = 1/2 [ CE(logits, targets) + CE(logits^T, targets^T) ],    logits = exp(s) i t^T  over a batch,

each image's row a softmax over the batch's captions and each caption's over its images. CLIP's target is the
diagonal: image k goes with caption k alone. Here the worlds have few distinct captions (Fashion-MNIST has ten,
and the shapes world repeats its short ones), so a batch often holds the same caption twice; pushing an image
away from a copy of its own caption teaches nothing true. Targets are therefore spread evenly over every entry
whose caption equals the row's (the diagonal, when all captions differ).

Each step takes `batch_size` examples, shared evenly among the named data sets (the shapes world, Fashion-MNIST,
a folder of captioned images): set k's examples step * share onwards. No random draw, so the checkpoint (the
weights, the optimiser, the step) is all a step reads and a resumed run ends as an uninterrupted one. The run
writes out/ as a contrastive model folder (contrastive_model.py): the encoder and the tokenizer fitted on the
data sets' captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import fast
from ..contrastive_model import ContrastiveModel
from ..data.sources import caption_corpus_of, open_dataset
from ..errors import LatentlabError
from ..io.checkpoint import remove_stale_temporaries
from ..models.contrastive import ContrastiveConfig, ContrastiveEncoder
from ..models.text_encoder import TextEncoderConfig
from ..models.tokenizer import Tokenizer
from ..models.vit import ViTConfig
from .loop import FiniteCheck, adamw, autocast, check_numbers, learning_rate, setup, train
from .state import FILENAME, data_identity, load_module, load_trainer_state, prefixed, save_trainer_state


@dataclass
class ContrastiveTrainConfig:
    out: str  # the contrastive model folder to write, with checkpoint.safetensors and log.csv
    data: tuple[str, ...] = ("shapes", "fashion-mnist")  # data sets (sources.py names or folders), in every batch
    steps: int = 5_000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 256  # examples a step, over all the data sets
    lr: float = 5e-4
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    image_size: int = 32
    width: int = 192  # both towers' width
    layers: int = 4  # both towers' depth
    patch_size: int = 4
    embed_dim: int = 128
    vocab_size: int = 512
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    resume: bool = False

    def __post_init__(self):
        check_numbers(self)
        self.data = tuple(self.data)
        if not self.data:
            raise LatentlabError("name at least one data set to train on")
        if len(set(self.data)) < len(self.data):
            raise LatentlabError(f"a data set is named twice: {', '.join(self.data)}")
        if self.batch_size < 2 * len(self.data):
            raise LatentlabError(f"batch_size must give each data set at least 2 examples a step, got "
                                 f"{self.batch_size} for {len(self.data)} data sets")
        self.model_config()  # the architecture's own checks

    def model_config(self, vocab_size: int | None = None) -> ContrastiveConfig:
        head_dim = 64 if self.width % 64 == 0 else self.width
        return ContrastiveConfig(
            image=ViTConfig(image_size=self.image_size, patch_size=self.patch_size, width=self.width,
                            layers=self.layers, head_dim=head_dim),
            text=TextEncoderConfig(vocab_size=vocab_size or self.vocab_size, width=self.width, layers=self.layers,
                                   head_dim=head_dim),
            embed_dim=self.embed_dim)


# what may differ between a run and the run it resumes
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out")


def same_caption_targets(captions: list[str]) -> torch.Tensor:
    """(B, B) rows summing to 1: caption j is a right answer for image i when it equals caption i."""
    index = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([index[c] for c in captions])
    same = (ids[:, None] == ids[None, :]).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss of the module's doc; `targets` symmetric, rows summing to 1."""
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets.T)) / 2


def shares(batch_size: int, sets: int) -> list[int]:
    """`batch_size` split among `sets` data sets as evenly as whole examples allow."""
    return [batch_size // sets + (k < batch_size % sets) for k in range(sets)]


class ContrastiveTrainer:
    """One run. `run()` trains to the end (or until stopped) and writes the model folder to out/."""

    def __init__(self, config: ContrastiveTrainConfig):
        self.config = c = config
        self.device = device = setup(c.seed, c.device)
        remove_stale_temporaries(c.out)
        self.out = Path(c.out)
        self.data = [open_dataset(spec, image_size=c.image_size, seed=c.seed) for spec in c.data]
        corpus = [text for spec, data in zip(c.data, self.data) for text in caption_corpus_of(spec, data, seed=c.seed)]
        self.tokenizer = Tokenizer.fit(corpus, vocab_size=c.vocab_size)
        self.encoder = ContrastiveEncoder(c.model_config(self.tokenizer.vocab_size)).to(device).train()
        fast.install(self.encoder)
        self.identity = {f"data {spec}": data_identity(spec, data) for spec, data in zip(c.data, self.data)}
        self.params = list(self.encoder.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed("encoder", self.encoder.state_dict())

    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        load_module(self.encoder, "encoder", tensors, path)

    def save_checkpoint(self) -> None:
        self.finite.check(self.step)
        save_trainer_state(self)

    def load_checkpoint(self) -> None:
        load_trainer_state(self, RESUMABLE_CHANGES)

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        """The step's images (B, 3, H, W) and captions, each data set's share in turn."""
        parts = [data.batch(step * n, n, self.device)[:2] for data, n in zip(self.data, shares(self.config.batch_size,
                                                                                             len(self.data)))]
        return torch.cat([images for images, _ in parts]), [text for _, captions in parts for text in captions]

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        images, captions = self.batch(step)
        ids, mask = (t.to(self.device) for t in self.tokenizer(captions))
        with autocast(self.device):
            logits = self.encoder(images, ids, mask)
        loss = contrastive_loss(logits.float(), same_caption_targets(captions).to(self.device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        """Train to the end (or a stop signal), then write the checkpoint and the model folder."""
        loss, stop = train(self)
        ContrastiveModel(self.encoder.eval(), self.tokenizer).save(self.out)
        return {"steps": self.step, "loss": loss, "temperature": 1 / self.encoder.scale().item(),
                "interrupted": stop.requested, "signal": stop.signal_name}


def train_contrastive(config: ContrastiveTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a contrastive image-text encoder; returns the steps done, the
    last step's loss, the learned temperature, and whether a signal stopped the run."""
    return ContrastiveTrainer(config).run()
