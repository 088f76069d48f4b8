"""Training DALL-E 2's diffusion prior (models/prior.py, prior_model.py) on the shapes world.

Each step takes `batch_size` scenes of the training stream (step * batch_size onwards), embeds the images with
the frozen contrastive model (z_0 = sqrt(E) times the unit embedding) and reads the captions' token states with
its text tower; a caption is replaced by the empty one with probability `p_uncond` (for classifier-free
guidance); the loss is the image models' diffusion loss with x_0 prediction (unCLIP's), over vectors. The
captions dropped, the timesteps and the noise come from one generator that the checkpoint keeps, so a resumed
run ends as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import fast
from ..contrastive_model import SHIPPED_CONTRASTIVE_MODEL, ContrastiveModel
from ..data.shapes import ShapesDataset
from ..diffusion import DiffusionConfig, diffusion_loss
from ..errors import LatentlabError
from ..io.checkpoint import remove_stale_temporaries
from ..models.prior import DiffusionPrior, PriorConfig
from ..prior_model import PriorModel, text_states
from .loop import FiniteCheck, adamw, autocast, check_numbers, learning_rate, setup, train
from .state import Checkpointed, digest, load_module, prefixed


@dataclass
class PriorTrainConfig:
    out: str  # the prior folder to write, with checkpoint.safetensors and log.csv
    clip: str = SHIPPED_CONTRASTIVE_MODEL  # the contrastive model: a folder or the shipped name
    steps: int = 5_000
    minutes: float | None = None
    batch_size: int = 256
    lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.01
    p_uncond: float = 0.1  # the chance a caption is replaced by the empty one
    width: int = 256
    layers: int = 4
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    resume: bool = False

    def __post_init__(self):
        check_numbers(self)
        if not 0 <= self.p_uncond <= 1:
            raise LatentlabError(f"p_uncond is a probability, got {self.p_uncond}")
        self.model_config(128, 192)  # the architecture's own checks
        DiffusionConfig(schedule=self.schedule, prediction="x0")

    def model_config(self, embed_dim: int, context_dim: int) -> PriorConfig:
        head_dim = 64 if self.width % 64 == 0 else self.width
        return PriorConfig(embed_dim=embed_dim, context_dim=context_dim, width=self.width, layers=self.layers,
                           head_dim=head_dim)


RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out")


class PriorTrainer(Checkpointed):
    """One run. `run()` trains to the end (or until stopped) and writes the prior folder to out/."""

    resumable_changes = RESUMABLE_CHANGES

    def __init__(self, config: PriorTrainConfig):
        self.config = c = config
        self.device = device = setup(c.seed, c.device)
        remove_stale_temporaries(c.out)
        self.out = Path(c.out)
        self.clip = ContrastiveModel.load(c.clip, device=str(device))
        self.clip.encoder.requires_grad_(False)
        e = self.clip.encoder.config
        prior = DiffusionPrior(c.model_config(e.embed_dim, e.text.width)).to(device).train()
        self.model = PriorModel(prior, self.clip, DiffusionConfig(schedule=c.schedule, prediction="x0"), c.clip)
        fast.install(prior)
        self.alphas_cumprod = self.model.diffusion.alphas_cumprod().to(device)
        self.data = ShapesDataset(seed=c.seed, split="train", image_size=self.clip.image_size)
        self.identity = {"clip": digest(self.clip.encoder)}
        self.params = list(prior.parameters())
        self.optimizer = adamw(self.params, c.lr, c.weight_decay, device)
        self.noise = torch.Generator(device=device).manual_seed(c.seed)
        self.finite = FiniteCheck(self.params, device, lr=c.lr, checkpoint=self.checkpoint_path)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    def trained_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed("prior", self.model.prior.state_dict())

    def restore_tensors(self, tensors: dict[str, torch.Tensor], path: Path) -> None:
        load_module(self.model.prior, "prior", tensors, path)

    # ------------------------------------------------------------------ one step

    def train_step(self, step: int) -> torch.Tensor:
        c, model = self.config, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        images, captions, _ = self.data.batch(step * c.batch_size, c.batch_size, self.device)
        keep = torch.rand(len(captions), device=self.device, generator=self.noise) >= c.p_uncond
        captions = [text if k else "" for text, k in zip(captions, keep.tolist())]
        with torch.no_grad():
            z_0 = model.scale * self.clip.encoder.encode_image(images).float()
        context, mask = text_states(self.clip, captions)
        t = torch.randint(0, len(self.alphas_cumprod), (len(captions),), device=self.device, generator=self.noise)
        eps = torch.randn(z_0.shape, device=self.device, generator=self.noise)
        with autocast(self.device):
            loss = diffusion_loss(lambda z_t, t_: model.prior(z_t, t_, context, mask), z_0, self.alphas_cumprod,
                                  model.diffusion, t=t, eps=eps).loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        loss, stop = train(self)
        self.model.prior.eval()
        self.model.save(self.out)
        return {"steps": self.step, "loss": loss, "interrupted": stop.requested, "signal": stop.signal_name}


def train_prior(config: PriorTrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a diffusion prior; returns the steps done, the last step's
    loss, and whether a signal stopped the run."""
    return PriorTrainer(config).run()
