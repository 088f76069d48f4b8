"""Key and config translation from other libraries' files (io/convert.py)."""

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from latentlab.io.convert import diffusion_config_from_diffusers, from_transformers_bert, from_transformers_clip_text

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


@pytest.mark.parametrize("scheduler, changes, want", [
    (PNDMScheduler, SD15, {"schedule": "scaled_linear", "prediction": "eps"}),  # SD 1.5's own
    (DDIMScheduler, {**SD15, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
     {"schedule": "scaled_linear", "prediction": "v", "zero_terminal_snr": True}),
    (DPMSolverMultistepScheduler, {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample"},
     {"schedule": "cosine", "prediction": "x0"}),
    (DDIMScheduler, {}, {"schedule": "linear"}),
])
def test_diffusers_scheduler_configs_give_the_same_schedule(scheduler, changes, want):
    """The config diffusers writes, read back: same fields, and the same alphas_cumprod as diffusers builds."""
    theirs = scheduler(**changes)
    config = diffusion_config_from_diffusers(dict(theirs.config))
    assert all(getattr(config, k) == v for k, v in want.items())
    assert torch.allclose(config.alphas_cumprod().float(), theirs.alphas_cumprod, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"beta_schedule": "sigmoid"}, "accepted: linear, scaled_linear, squaredcos_cap_v2"),
    ({**SD15, "beta_end": 0.02}, "accepted: 0.00085 to 0.012"),
    ({"prediction_type": "flow"}, "accepted: epsilon, sample, v_prediction"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas is not supported"),
])
def test_schedules_we_cannot_reproduce_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        diffusion_config_from_diffusers(changes)


def test_state_dict_translation():
    clip = from_transformers_clip_text({"embeddings.position_ids": torch.zeros(1), "final_layer_norm.weight": torch.ones(1),
                                        "text_model.embeddings.position_ids": torch.zeros(1)})
    assert list(clip) == ["text_model.final_layer_norm.weight"]
    bert = from_transformers_bert({"embeddings.position_ids": torch.zeros(1), "pooler.dense.weight": torch.ones(1),
                                   "encoder.layer.0.output.dense.bias": torch.ones(1)})
    assert list(bert) == ["encoder.layer.0.output.dense.bias"]


@pytest.mark.parametrize("changes, message", [
    ({**SD15, "a_future_setting": 1}, "a_future_setting"),
    ({**SD15, "_class_name": "FlowMatchEulerDiscreteScheduler"}, "FlowMatchEulerDiscreteScheduler"),
    ({**SD15, "_class_name": "EDMEulerScheduler"}, "EDMEulerScheduler"),
    ({**SD15, "use_flow_sigmas": True}, "use_flow_sigmas"),
    ({**SD15, "timestep_type": "continuous"}, "timestep_type"),
    ({**SD15, "num_train_timesteps": "1000"}, "num_train_timesteps"),
    ({**SD15, "beta_start": None}, "beta_start"),
    ({**SD15, "rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr"),
])
def test_scheduler_settings_we_do_not_understand_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        diffusion_config_from_diffusers(changes)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                                  "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
                                  "UniPCMultistepScheduler", "HeunDiscreteScheduler", "LCMScheduler"])
def test_every_ddpm_family_scheduler_config_is_read(name):
    """What each of diffusers' schedulers of the DDPM family writes (its sampling settings ignored)."""
    import diffusers

    scheduler = getattr(diffusers, name)(**SD15)
    config = diffusion_config_from_diffusers({"_class_name": name, **scheduler.config})
    assert (config.schedule, config.timesteps) == ("scaled_linear", 1000)
