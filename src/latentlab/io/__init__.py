"""Files: safetensors weights and JSON configs, written atomically."""

from .checkpoint import atomic_write, load_component, read_config, read_json, save_component

__all__ = ["atomic_write", "load_component", "read_config", "read_json", "save_component"]
