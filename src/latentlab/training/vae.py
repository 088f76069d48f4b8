"""Training the autoencoder: L1 reconstruction + beta * KL + an adversarial patch loss (Rombach et al. 2022,
after Esser et al. 2021's taming-transformers).

Until step `disc_start` the loss is L1(x, x_hat) + beta * KL / pixels. From then on a patch discriminator D
(models/discriminator.py) joins: the autoencoder also minimises lambda * L_G with L_G = -mean(D(x_hat)),
and D, with its own optimiser, the hinge loss mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))). lambda is
`disc_weight`, or with `adaptive_disc_weight` (taming's) disc_weight times
||grad_w L_rec|| / (||grad_w L_G|| + 1e-4), w the decoder's last layer: the adversarial gradient there is
kept at the size of the reconstruction's.

Logs, in `out`: log.csv (the autoencoder's total loss, via Progress) and metrics.csv, every `log_every`
steps, the terms of that step's batch: step, l1, kl, g_loss, d_loss, disc_weight, psnr_db (the adversarial
columns are nan before disc_start). Like the diffusion trainer, the run is resumable: out/checkpoint.safetensors
holds the autoencoder, the discriminator, both optimisers and every random generator, so `resume=True`
continues exactly; SIGTERM or Ctrl-C saves it and stops. The discriminator lives only there: the model
folder holds the autoencoder alone.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import fast
from ..data.dataset import CaptionedImages
from ..data.sources import open_dataset
from ..io import save_component
from ..io.checkpoint import remove_stale_temporaries
from ..models import AutoencoderKL, VAEConfig
from ..models.discriminator import PatchDiscriminator, PatchDiscriminatorConfig
from .loop import (FiniteCheck, Progress, StopSignals, autocast, check_numbers, learning_rate, run_steps, setup,
                   truncate_log)
from .state import (FILENAME, check_resumable, config_json, data_identity, load_module, load_optimizer, load_state,
                    meta_field, optimizer_state, prefixed, rng_state, save_state, saved_step, set_rng_state)


@dataclass
class VAETrainConfig:
    out: str  # folder for config.json + model.safetensors, log.csv, metrics.csv, checkpoint.safetensors
    steps: int = 4000
    minutes: float | None = None  # stop early when this much wall time has passed
    batch_size: int = 64
    lr: float = 2e-4
    warmup: int = 200
    kl_weight: float = 1e-3  # beta, on the KL summed over latents and divided by the pixel count
    data: str = "shapes"  # shapes | fashion-mnist | mnist | a folder (data/sources.py)
    image_size: int = 32
    seed: int = 0
    device: str = "auto"
    disc_start: int = 2000  # step at which the adversarial loss switches on (taming's disc_start)
    disc_weight: float = 0.1  # lambda of the adversarial term (times the adaptive factor); 0 turns it off.
    # taming's 0.5 comes with a perceptual loss; here, with L1 alone, 0.5 cost 17 dB on shapes and 0.1 cost 5
    adaptive_disc_weight: bool = True  # scale lambda by ||grad L_rec|| / ||grad L_G|| at the last decoder layer
    disc_lr: float | None = None  # the discriminator's learning rate; None: lr
    log_every: int = 50  # rows of log.csv and metrics.csv
    checkpoint_every: int = 500  # write the resumable checkpoint every N steps
    resume: bool = False  # continue from out/checkpoint.safetensors
    model: VAEConfig = field(default_factory=VAEConfig)
    discriminator: PatchDiscriminatorConfig = field(default_factory=PatchDiscriminatorConfig)

    def __post_init__(self):
        check_numbers(self)


# what may differ between a run and the run it resumes: how long it goes on, where it runs, and where its folder
# is (the checkpoint is in it). data compares by its contents (`identity`).
RESUMABLE_CHANGES = ("steps", "minutes", "resume", "device", "checkpoint_every", "out")
DISC_BETAS = (0.5, 0.9)  # the discriminator's AdamW betas (taming's)


# ------------------------------------------------------------------ losses and metrics


def psnr_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1], as a tensor (no device sync)."""
    mse = F.mse_loss((x.float().clamp(-1, 1) + 1) / 2, (y.float() + 1) / 2)
    return 10 * torch.log10(1 / mse)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1]."""
    return float(psnr_db(x, y))


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss on patch logits: mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))."""
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """The autoencoder's adversarial loss L_G = -mean(D(x_hat))."""
    return -fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """taming's lambda = disc_weight * ||grad_w L_rec|| / (||grad_w L_G|| + 1e-4), clamped to [0, 1e4] (before
    the factor) and detached; w is the decoder's last weight. Leaves the graph for the backward pass."""
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach() * disc_weight


@torch.no_grad()
def measure_scale_factor(vae: AutoencoderKL, data: CaptionedImages, n: int = 1024, batch: int = 256) -> float:
    """1 / std of sampled latents of `data`'s first n examples, so that the diffusion model sees unit-variance data."""
    device = next(vae.parameters()).device
    latents = [vae.posterior(data.batch(i, min(batch, n - i), device)[0]).sample() for i in range(0, n, batch)]
    return float(1 / torch.cat(latents).float().std())


@torch.no_grad()
def reconstruction_psnr(vae: AutoencoderKL, data: CaptionedImages, n: int = 256, batch: int = 64) -> float:
    """PSNR in dB of the posterior means' reconstructions of `data`'s first n examples (one MSE over all)."""
    device = next(vae.parameters()).device
    errors = []
    for i in range(0, n, batch):
        x = data.batch(i, min(batch, n - i), device)[0]
        errors.append(F.mse_loss((vae.decode(vae.encode(x, sample=False)).clamp(-1, 1) + 1) / 2, (x + 1) / 2,
                                 reduction="none").flatten(1).mean(1))
    return float(10 * torch.log10(1 / torch.cat(errors).mean()))


class TermsLog:
    """metrics.csv: every `every` steps (and at the first), the loss terms and PSNR of that step's batch.
    A resumed run appends to the file it continues, less the rows a killed run wrote after its checkpoint."""

    COLUMNS = ("step", "l1", "kl", "g_loss", "d_loss", "disc_weight", "psnr_db")

    def __init__(self, out: Path, every: int, first_step: int = 0):
        self.every, self.first_step = every, first_step
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.csv"
        append = first_step > 0 and path.is_file()
        if append:
            truncate_log(path, first_step)
        self.file = open(path, "a" if append else "w", newline="")
        self.csv = csv.writer(self.file)
        if not append:
            self.csv.writerow(self.COLUMNS)

    def log(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        if (step + 1) % self.every and step != self.first_step:
            return
        values = [f"{float(terms[k]):.6f}" if k in terms else "nan" for k in self.COLUMNS[1:]]
        self.csv.writerow([step + 1, *values])
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------ the run


class VAETrainer:
    """One training run. `run()` trains to the end (or until stopped) and writes the autoencoder's folder."""

    def __init__(self, config: VAETrainConfig):
        self.config = c = config
        remove_stale_temporaries(c.out)  # before anything is written
        self.device = device = setup(c.seed, c.device)
        self.out = Path(c.out)
        self.vae = AutoencoderKL(dataclasses.replace(c.model, scale_factor=1.0)).to(device)
        fast.install(self.vae)  # the speed wing: same maths, faster (fast/install.py)
        disc_config = dataclasses.replace(c.discriminator, in_channels=c.model.image_channels)
        self.discriminator = PatchDiscriminator(disc_config).to(device)
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=c.lr, weight_decay=0.0)
        disc_lr = c.lr if c.disc_lr is None else c.disc_lr
        self.disc_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=disc_lr, betas=DISC_BETAS,
                                                weight_decay=0.0)
        self.data = open_dataset(c.data, image_size=c.image_size, seed=c.seed, split="train")
        self.identity = {"data": data_identity(c.data, self.data)}
        self.noise = torch.Generator(device).manual_seed(c.seed)  # the posterior's samples
        self.finite = FiniteCheck([*self.vae.parameters(), *self.discriminator.parameters()], device, lr=c.lr,
                                  checkpoint=self.checkpoint_path, every=c.log_every)
        self.step = 0

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out / FILENAME

    def save_checkpoint(self) -> None:
        self.finite.check(self.step)
        tensors = {**prefixed("vae", self.vae.state_dict()),
                   **prefixed("discriminator", self.discriminator.state_dict())}
        meta = {"step": self.step, "config": config_json(self.config), "identity": self.identity}
        for name, optimizer in (("optimizer", self.optimizer), ("disc_optimizer", self.disc_optimizer)):
            optimizer_tensors, meta[name] = optimizer_state(optimizer, name)
            tensors.update(optimizer_tensors)
        random_tensors, meta["rng"] = rng_state({"noise": self.noise})
        tensors.update(random_tensors)
        save_state(self.checkpoint_path, tensors, meta)

    def load_checkpoint(self) -> None:
        path = self.checkpoint_path
        tensors, meta = load_state(path)
        step = saved_step(meta, path)
        check_resumable(meta, self.config, path, RESUMABLE_CHANGES, self.identity)
        load_module(self.vae, "vae", tensors, path)
        load_module(self.discriminator, "discriminator", tensors, path)
        for name, optimizer in (("optimizer", self.optimizer), ("disc_optimizer", self.disc_optimizer)):
            load_optimizer(optimizer, tensors, meta_field(meta, name, dict, path), path, name)
        set_rng_state(tensors, meta_field(meta, "rng", dict, path), {"noise": self.noise}, path)
        self.step = step

    # ------------------------------------------------------------------ one step

    def autoencoder_step(self, x: torch.Tensor, adversarial: bool):
        """One optimiser step of the autoencoder; returns (total loss, its terms, the reconstruction)."""
        c = self.config
        with autocast(self.device):
            x_hat, posterior = self.vae(x, self.noise)
            rec = F.l1_loss(x_hat.float(), x)
            kl = posterior.kl().float().mean() / x[0].numel()
            if adversarial:  # D is frozen here: L_G's gradient reaches the autoencoder only
                self.discriminator.requires_grad_(False)
                g_loss = generator_loss(self.discriminator(x_hat).float())
                self.discriminator.requires_grad_(True)
        loss = rec + c.kl_weight * kl
        terms = {"l1": rec, "kl": kl}
        if adversarial:
            weight = (adaptive_weight(rec, g_loss, self.vae.decoder.conv_out.weight, c.disc_weight)
                      if c.adaptive_disc_weight else torch.tensor(c.disc_weight, device=self.device))
            loss = loss + weight * g_loss
            terms.update(g_loss=g_loss, disc_weight=weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.optimizer.step()
        return loss.detach(), terms, x_hat.detach()

    def discriminator_step(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """One optimiser step of D on the hinge loss; real and reconstructed images in one batch (GroupNorm
        keeps them apart). Returns the loss."""
        with autocast(self.device):
            real, fake = self.discriminator(torch.cat([x, x_hat.to(x.dtype)])).float().chunk(2)
        loss = hinge_d_loss(real, fake)
        self.disc_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_optimizer.step()
        return loss.detach()

    def train_step(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Both networks' steps on batch `step`; returns (the autoencoder's loss, every term, detached)."""
        c = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, c.lr, c.warmup)
        x = self.data.batch(step * c.batch_size, c.batch_size, self.device)[0]
        adversarial = c.disc_weight > 0 and step >= c.disc_start
        loss, terms, x_hat = self.autoencoder_step(x, adversarial)
        if adversarial:
            terms["d_loss"] = self.discriminator_step(x, x_hat)
        terms["psnr_db"] = psnr_db(x_hat, x)
        return loss, {k: v.detach() for k, v in terms.items()}

    # ------------------------------------------------------------------ the run

    def run(self) -> dict:
        c = self.config
        if c.resume:
            self.load_checkpoint()
        progress = Progress(self.out, c.steps, c.minutes, c.batch_size, log_every=c.log_every, first_step=self.step)
        metrics = TermsLog(self.out, c.log_every, first_step=self.step)
        with StopSignals() as stop:
            try:
                for step in run_steps(self, progress, stop, c.checkpoint_every):
                    loss, terms = self.train_step(step)
                    progress.log(step, loss)
                    metrics.log(step, terms)
                    self.step += 1
                    self.finite.record(self.step, loss + terms.get("d_loss", 0))
            finally:  # also when stopped by an error: the bar ends its line before the error is printed
                progress.close()
                metrics.close()
        self.save_checkpoint()
        return {"steps": self.step, **self.finish(), "interrupted": stop.requested}

    def finish(self) -> dict[str, float]:
        """Measure the latent scale factor on the training data, save the autoencoder, and score it on the
        data set's test split."""
        c = self.config
        self.vae.eval()
        self.vae.config.scale_factor = measure_scale_factor(self.vae, self.data)
        save_component(self.out, self.vae)
        test = open_dataset(c.data, image_size=c.image_size, seed=c.seed, split="test")
        return {"psnr_db": reconstruction_psnr(self.vae, test), "scale_factor": self.vae.config.scale_factor}


def train_vae(config: VAETrainConfig) -> dict:
    """Train (or, with `config.resume`, continue) a run, set the latent scale factor, save; returns {"steps",
    "psnr_db" (on the data set's test split), "scale_factor", "interrupted"}."""
    return VAETrainer(config).run()
