"""Files: safetensors weights and JSON configs, written atomically; other libraries' layouts translated."""

from .checkpoint import (atomic_write, build, load_component, load_weights, read_config, read_json, read_safetensors,
                         read_save_id, save_component)

__all__ = ["atomic_write", "build", "load_component", "load_weights", "read_config", "read_json", "read_safetensors",
           "read_save_id", "save_component"]
