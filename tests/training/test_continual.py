"""C-LoRA's self-regularisation (training/continual.py) on the tiny U-Net."""

import pytest
import torch

from latentlab.adapters import add_lora
from latentlab.adapters.inject import adapter_layers, merge
from latentlab.errors import LatentlabError
from latentlab.models import UNet
from latentlab.training.continual import TARGETS, forgetting_penalty, past_updates, target_weights
from latentlab.training.presets import preset


def unet_after_one_task():
    """The tiny U-Net, its W_0 on K and V, and task 1's update (random) merged into it."""
    torch.manual_seed(0)
    unet = UNet(preset("tiny", "unet")).requires_grad_(False)
    initial = target_weights(unet)
    add_lora(unet, "task1", rank=2, alpha=4, targets=TARGETS)
    with torch.no_grad():
        for _, layer in adapter_layers(unet):
            layer.lora_B["task1"].weight.normal_(std=0.1)
    merge(unet, "task1")
    return unet, initial


def test_the_targets_are_the_cross_attentions_k_and_v_read_through_their_wrappers():
    unet, initial = unet_after_one_task()
    assert initial and all(name.endswith(("attn2.to_k", "attn2.to_v")) for name in initial)
    assert target_weights(unet).keys() == initial.keys()  # wrapped: read through .base


def test_past_updates_are_the_merged_tasks_updates():
    unet, initial = unet_after_one_task()
    past = past_updates(unet, initial)
    layers = dict(adapter_layers(unet))
    for name, p in past.items():
        torch.testing.assert_close(p, layers[name].delta_weight("task1"), rtol=1e-5, atol=1e-6)
        assert p.abs().sum() > 0


def test_the_penalty_is_the_squared_element_wise_product_of_the_past_and_the_new_update():
    unet, initial = unet_after_one_task()
    past = past_updates(unet, initial)
    add_lora(unet, "task2", rank=3, alpha=3, targets=TARGETS)
    with torch.no_grad():
        for _, layer in adapter_layers(unet):
            layer.lora_B["task2"].weight.normal_(std=0.1)
    expected = 0.0
    for name, layer in adapter_layers(unet):
        A, B = layer.lora_A["task2"].weight.double(), layer.lora_B["task2"].weight.double()
        expected += ((past[name].double() * (B @ A)) ** 2).sum().item()  # alpha / r = 1
    assert forgetting_penalty(unet, past, "task2").item() == pytest.approx(expected, rel=1e-5)


def test_the_first_task_is_not_penalised():
    unet = UNet(preset("tiny", "unet")).requires_grad_(False)
    initial = target_weights(unet)
    add_lora(unet, "task1", rank=2, targets=TARGETS)
    penalty = forgetting_penalty(unet, past_updates(unet, initial), "task1")
    penalty.backward()
    assert penalty.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for _, layer in adapter_layers(unet)
               for p in (layer.lora_A["task1"].weight, layer.lora_B["task1"].weight))


def test_the_new_update_is_free_where_the_past_left_the_weight_alone():
    """dL/dDelta W = 2 P^2 (.) Delta W: rows of K and V the earlier tasks never changed get no gradient in B."""
    unet, initial = unet_after_one_task()
    past = past_updates(unet, initial)
    for p in past.values():
        p[: p.shape[0] // 2] = 0  # the first half of each layer's outputs untouched by task 1
    add_lora(unet, "task2", rank=2, targets=TARGETS)
    with torch.no_grad():
        for _, layer in adapter_layers(unet):
            layer.lora_B["task2"].weight.normal_(std=0.1)
    forgetting_penalty(unet, past, "task2").backward()
    for _, layer in adapter_layers(unet):
        grad, half = layer.lora_B["task2"].weight.grad, layer.lora_B["task2"].weight.shape[0] // 2
        assert not grad[:half].any() and grad[half:].abs().sum() > 0


def test_another_models_weights_and_a_missing_adapter_are_refused():
    unet, initial = unet_after_one_task()
    other = UNet(preset("tiny", "unet"))
    other.down_blocks = other.down_blocks[:1]  # fewer cross-attentions
    with pytest.raises(LatentlabError, match="another model"):
        past_updates(other, initial)
    with pytest.raises(LatentlabError, match="no layer of the model holds adapter 'task9'"):
        forgetting_penalty(unet, past_updates(unet, initial), "task9")
