"""Exported encoders: export_model writes a folder, load_pretrained reads it back."""
from xlm_jax.export.export import Pretrained, export_model, load_pretrained

__all__ = ["Pretrained", "export_model", "load_pretrained"]
