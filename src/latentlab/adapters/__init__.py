"""Parameter-efficient fine-tuning: adapters that wrap a frozen network's layers, injected by name.

base.py: the interface every adapter implements; inject.py: adapters in a model; lora.py: LoRA."""

from .base import AdapterLayer
from .inject import adapter_layers, adapters_of, target_modules
from .lora import (DEFAULT_ADAPTER, TEXT_ENCODER, UNET_ATTENTION, UNET_CONVOLUTIONS, LoRALayer, add_lora,
                   load_lora_state_dict, lora_alphas, lora_layers, lora_parameters, lora_state_dict, merge_lora,
                   remove_lora, set_lora_scale, unmerge_lora)

__all__ = ["DEFAULT_ADAPTER", "TEXT_ENCODER", "UNET_ATTENTION", "UNET_CONVOLUTIONS", "AdapterLayer", "LoRALayer",
           "adapter_layers", "adapters_of", "add_lora", "load_lora_state_dict", "lora_alphas", "lora_layers",
           "lora_parameters", "lora_state_dict", "merge_lora", "remove_lora", "set_lora_scale", "target_modules",
           "unmerge_lora"]
