"""Fine-tuning heads on the XLM-R encoder: sentence classification and word tagging.

    TaskModel(encoder_config, num_labels, kind="classify" | "tag")
        params = {"encoder": <the pretrained Encoder's tree, as in Model>, "head": {...}}

- `ClassificationHead` is Hugging Face's RobertaClassificationHead (what XTREME fine-tunes for
  XNLI and PAWS-X): the last layer at <s> -> dropout -> dense(D) -> tanh -> dropout ->
  out_proj(num_labels).
- `TaggingHead` is XLMRobertaForTokenClassification's: dropout -> dense(num_labels) on every
  token; the loss reads only each word's first piece (XTREME's run_tag.py).

The encoder subtree has exactly the names of `Model`'s "encoder", so pretrained weights plug
in as they are; the MLM head is not part of a TaskModel (fine-tuning does not train it, and
AdamW's weight decay would otherwise still move it). Kernels carry logical axis names like the
encoder's; the label axis is small and replicated (None).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models.encoder import Encoder
from xlm_jax.models.encoder_config import DTYPES, EncoderConfig

HEAD_KINDS = ("classify", "tag")


def _dense(config: EncoderConfig, features: int, kernel_axes: tuple, bias_axes: tuple,
           name: str, dtype=None) -> nn.Dense:
  return nn.Dense(features, dtype=dtype or DTYPES[config.dtype],
                  param_dtype=DTYPES[config.param_dtype], name=name,
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.normal(config.initializer_range), kernel_axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros, bias_axes))


class ClassificationHead(nn.Module):
  """RobertaClassificationHead: float32 logits [B, num_labels] from hidden [B, L, D] at <s>."""
  config: EncoderConfig
  num_labels: int
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, hidden: jax.Array, deterministic: bool = True) -> jax.Array:
    x = hidden[:, 0]  # <s>: XLM-R has no pooler trained for the task, so the head has its own
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    # [D, D] kernel named as the MLM head's dense, so no two dimensions share a mesh axis.
    x = _dense(self.config, self.config.hidden_size, ("mlp", "embed"), ("embed",), "dense")(x)
    x = jnp.tanh(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    logits = _dense(self.config, self.num_labels, ("embed", None), (None,), "out_proj",
                    dtype=jnp.float32)(x)
    return logits.astype(jnp.float32)


class TaggingHead(nn.Module):
  """Token classification: float32 logits [B, L, num_labels]."""
  config: EncoderConfig
  num_labels: int
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, hidden: jax.Array, deterministic: bool = True) -> jax.Array:
    x = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    logits = _dense(self.config, self.num_labels, ("embed", None), (None,), "classifier",
                    dtype=jnp.float32)(x)
    return logits.astype(jnp.float32)


class TaskModel(nn.Module):
  """The encoder and one task head: logits [B, C] (classify) or [B, L, C] (tag)."""
  config: EncoderConfig
  num_labels: int
  kind: str = "classify"
  head_dropout_rate: float = 0.1

  def setup(self):
    if self.kind not in HEAD_KINDS:
      raise ValueError(f"TaskModel kind must be one of {HEAD_KINDS}, got {self.kind!r}")
    if self.num_labels < 1:
      raise ValueError(f"TaskModel needs num_labels >= 1, got {self.num_labels}")
    self.encoder = Encoder(self.config)
    head = ClassificationHead if self.kind == "classify" else TaggingHead
    self.head = head(self.config, self.num_labels, self.head_dropout_rate)

  def __call__(self, input_ids, *, lang_ids=None, deterministic: bool = True) -> jax.Array:
    hidden = self.encoder(input_ids, lang_ids=lang_ids, deterministic=deterministic)
    return self.head(hidden, deterministic=deterministic)
