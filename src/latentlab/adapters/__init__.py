"""Parameter-efficient fine-tuning: adapters that wrap a frozen network's layers, injected by name.

base.py: the interface every adapter implements; inject.py: adapters in a model; lora.py: LoRA; dora.py: DoRA;
lycoris.py: LyCORIS's weight-built updates, loha.py: LoHa, lokr.py: LoKr."""

from .base import AdapterLayer
from .dora import DoRALayer, add_dora
from .inject import add_adapter, adapter_layers, adapters_of, target_modules
from .loha import LoHaLayer, add_loha
from .lokr import LoKrLayer, add_lokr
from .lora import (DEFAULT_ADAPTER, TEXT_ENCODER, UNET_ATTENTION, UNET_CONVOLUTIONS, LoRALayer, add_lora,
                   load_lora_state_dict, lora_alphas, lora_layers, lora_parameters, lora_state_dict, merge_lora,
                   remove_lora, set_lora_scale, unmerge_lora)

__all__ = ["DEFAULT_ADAPTER", "TEXT_ENCODER", "UNET_ATTENTION", "UNET_CONVOLUTIONS", "AdapterLayer", "DoRALayer",
           "LoHaLayer", "LoKrLayer", "LoRALayer", "add_adapter", "add_dora", "add_loha", "add_lokr",
           "adapter_layers", "adapters_of", "add_lora", "load_lora_state_dict", "lora_alphas", "lora_layers",
           "lora_parameters", "lora_state_dict", "merge_lora", "remove_lora", "set_lora_scale", "target_modules",
           "unmerge_lora"]
