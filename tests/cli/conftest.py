"""Fixtures of the command-line tests: a saved tiny model, and commands whose work must not start."""

import pytest


@pytest.fixture()
def model_dir(tiny_pipeline, tmp_path):
    tiny_pipeline.save(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture()
def no_work(monkeypatch):
    """Every command's work fails the test if it starts: output checks must come first."""
    import latentlab.data.latents
    import latentlab.data.sources
    import latentlab.evaluation
    import latentlab.evaluation.classifier
    import latentlab.training
    import latentlab.training.lora
    import latentlab.training.monitor
    from latentlab.pipeline import Pipeline

    def work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(Pipeline, "load", work)
    for module, name in [(latentlab.training, "train_vae"), (latentlab.training, "train_diffusion"),
                         (latentlab.training.lora, "train_lora"), (latentlab.data.latents, "cache_latents"),
                         (latentlab.data.sources, "open_dataset"), (latentlab.evaluation, "prompt_adherence"),
                         (latentlab.evaluation, "bits_per_dim"), (latentlab.training.monitor, "plot_run"),
                         (latentlab.evaluation.classifier, "train_classifier")]:
        monkeypatch.setattr(module, name, work)
