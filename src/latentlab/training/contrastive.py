"""Training the contrastive image-text encoder (models/contrastive.py) with CLIP's symmetric InfoNCE loss
(Radford et al. 2021; van den Oord et al. 2018):

    L = 1/2 [ CE(logits, targets) + CE(logits^T, targets^T) ],    logits = exp(s) i t^T  over a batch,

each image's row a softmax over the batch's captions and each caption's over its images. CLIP's target is the
diagonal: image k goes with caption k alone. Here the worlds have few distinct captions (Fashion-MNIST has ten,
and the shapes world repeats its short ones), so a batch often holds the same caption twice; pushing an image
away from a copy of its own caption teaches nothing true. Targets are therefore spread evenly over every entry
whose caption equals the row's (the diagonal, when all captions differ).

With `hard_negatives`, each shapes-world caption also brings a negative: its own words in its own template
bound wrongly (two objects' colours, shapes or sizes exchanged, or the two objects' order in their relation; a
single object's colour changed), as NegCLIP does (Yuksekgonul et al. 2023). The negatives join the captions each
image is scored against, with no target: an encoder that only knows which words and objects are present
cannot tell them from the right caption, and the loss makes it learn the binding.

Each step takes `batch_size` examples, shared evenly among the named data sets (the shapes world, Fashion-MNIST,
a folder of captioned images): set k's examples step * share onwards. No random draw, so the checkpoint (the
weights, the optimiser, the step) is all a step reads and a resumed run ends as an uninterrupted one. The run
writes out/ as a contrastive model folder (contrastive_model.py): the encoder and the tokenizer fitted on the
data sets' captions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import fast
from ..contrastive_model import ContrastiveModel
from ..data.shapes import COLOURS, Scene, _article
from ..data.sources import caption_corpus_of, open_dataset
from ..errors import LatentlabError
from ..evaluation.contrastive import equal_pairs
from ..io.checkpoint import remove_stale_temporaries
from ..models.contrastive import ContrastiveConfig, ContrastiveEncoder
from ..models.text_encoder import TextEncoderConfig
from ..models.tokenizer import Tokenizer
from ..models.vit import ViTConfig
from .loop import FiniteCheck, adamw, autocast, check_numbers, learning_rate, setup, train
from .state import Checkpointed, data_identity, load_module, prefixed


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
    hard_negatives: bool = False  # score each image against wrongly bound shapes captions too (see the doc)
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
    same = equal_pairs(captions).float()
    return same / same.sum(dim=1, keepdim=True)


def contrastive_loss(logits: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """The symmetric InfoNCE loss of the module's doc; `targets` symmetric, rows summing to 1; `negatives` (B, N):
    each image's logits with N more captions that are wrong for every image, in the image -> text half only."""
    rows = logits if negatives is None else torch.cat([logits, negatives], dim=1)
    targets_rows = F.pad(targets, (0, rows.shape[1] - targets.shape[1]))
    return (F.cross_entropy(rows, targets_rows) + F.cross_entropy(logits.T, targets.T)) / 2


def negative_caption(text: str, scene: Scene, rng: random.Random) -> str:
    """The caption of `scene` bound wrongly, in its own template and words: of two objects, their colours,
    shapes or sizes exchanged, or the objects exchanged in their relation (each kind they differ in, chosen at
    random); of one object, its colour changed. Articles follow the words they now stand before."""
    words = text.split(" ")
    bare = [w.strip(",.") for w in words]

    def exchange(i: int, j: int) -> None:
        words[i], words[j] = words[i].replace(bare[i], bare[j]), words[j].replace(bare[j], bare[i])

    if len(scene.objects) == 1:
        colour = scene.objects[0].colour
        k = bare.index(colour)
        words[k] = words[k].replace(colour, rng.choice([c for c in COLOURS if c != colour]))
    else:
        a, b = scene.objects
        kind = rng.choice([k for k in ("colour", "shape", "size") if getattr(a, k) != getattr(b, k)] + ["order"])
        if kind in ("colour", "shape"):
            exchange(bare.index(getattr(a, kind)), bare.index(getattr(b, kind)))
        else:  # the phrases "size colour shape" of the two objects, in order
            first, second = (bare.index(o.colour) - 1 for o in (a, b))
            if kind == "size":
                exchange(first, second)
            else:
                words[first:first + 3], words[second:second + 3] = words[second:second + 3], words[first:first + 3]
    for k in range(len(words) - 1):  # "a orange" -> "an orange"
        if words[k] in ("a", "an"):
            words[k] = _article(words[k + 1])
    return " ".join(words)


def with_negatives(scenes: list[Scene], captions: list[str], key: str) -> list[str]:
    """Each caption's hard negative (`negative_caption`), the choices drawn from `key` and the example's index."""
    return [negative_caption(text, scene, random.Random(f"{key}/{i}"))
            for i, (scene, text) in enumerate(zip(scenes, captions))]


def shares(batch_size: int, sets: int) -> list[int]:
    """`batch_size` split among `sets` data sets as evenly as whole examples allow."""
    return [batch_size // sets + (k < batch_size % sets) for k in range(sets)]


class ContrastiveTrainer(Checkpointed):
    """One run. `run()` trains to the end (or until stopped) and writes the model folder to out/."""

    resumable_changes = RESUMABLE_CHANGES

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

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed("encoder", self.encoder.state_dict())

    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        load_module(self.encoder, "encoder", tensors, path)

    # ------------------------------------------------------------------ one step

    def batch(self, step: int) -> tuple[torch.Tensor, list[str], list[str]]:
        """The step's images (B, 3, H, W), captions and (with `hard_negatives`) negative captions, each data set's
        share in turn."""
        images, captions, negatives = [], [], []
        for k, (data, n) in enumerate(zip(self.data, shares(self.config.batch_size, len(self.data)))):
            pixels, texts, labels = data.batch(step * n, n, self.device)
            if self.config.hard_negatives and all(isinstance(x, Scene) for x in labels):
                negatives += with_negatives(labels, texts, f"{self.config.seed}/{step}/{k}")
            images.append(pixels)
            captions += texts
        return torch.cat(images), captions, negatives

    def train_step(self, step: int) -> torch.Tensor:
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        images, captions, negatives = self.batch(step)
        ids, mask = (t.to(self.device) for t in self.tokenizer(captions + negatives))
        with autocast(self.device):
            logits = self.encoder(images, ids, mask).float()
        B = len(captions)
        loss = contrastive_loss(logits[:, :B], same_caption_targets(captions).to(self.device),
                                logits[:, B:] if negatives else None)
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
