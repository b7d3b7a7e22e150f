"""The XLM-R encoder, its MLM head, and attention-mask / position-id helpers."""
from xlm_jax.models.encoder import (Encoder, EncoderConfig, Model, count_params,
                                    flops_per_token)

__all__ = ["Encoder", "EncoderConfig", "Model", "count_params", "flops_per_token"]
