"""Heads that sit on a pooled sentence vector (EMS: Mao, Chu and Kurohashi 2022).

- `XtrHead`: cross-lingual token reconstruction. From a sentence vector s and a target language
  l it predicts a distribution over the vocabulary (the bag of tokens of s's translation):
      logits = W_dec · LN(Dropout(swish(W1 [Dropout(LN(LangEmb[l])) ; s])))
  The decoder is its own [H, V] matrix, or the encoder's word embeddings (`tied_decoder`,
  passed in as a function because they live in the encoder's parameter tree).
- `ProjectionHead`: g = Linear-ReLU-Linear, the space the contrastive loss compares in.

Every parameter carries logical axis names so the trainer's rules shard it like the encoder's.
The names follow the MLM head's pattern: a [D, H] kernel is ("mlp", "embed") and the decoder
("embed", "vocab"), so no kernel maps two of its dimensions to the same mesh axis.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _partitioned(init: Callable, axes: tuple) -> Callable:
  return nn.with_logical_partitioning(init, axes)


class XtrHead(nn.Module):
  """Target-language-conditioned bag-of-tokens predictor; returns float32 logits [R, V]."""
  vocab_size: int
  hidden_dim: int                 # width of W1's output (tied decoder: the encoder's hidden size)
  num_languages: int = 0
  lang_dim: int = 128
  use_lang_emb: bool = True
  tied_decoder: bool = False
  dropout_rate: float = 0.0
  lang_dropout_rate: float = 0.0  # on LN(LangEmb[l]), as the reference's BertLaEmbedding
  layer_norm_eps: float = 1e-5
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _layer_norm(self, axis_name: str, name: str) -> nn.LayerNorm:
    # float32 statistics: the output feeds a softmax over the whole vocabulary.
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=jnp.float32,
                        param_dtype=self.param_dtype, name=name,
                        scale_init=_partitioned(nn.initializers.ones, (axis_name,)),
                        bias_init=_partitioned(nn.initializers.zeros, (axis_name,)))

  @nn.compact
  def __call__(self, sentence: jax.Array, target_lang: jax.Array, *,
               decoder: Callable[[jax.Array], jax.Array] | None = None,
               deterministic: bool = True) -> jax.Array:
    """sentence [R, D], target_lang int [R]; decoder = h [R, D] -> logits [R, V] when tied."""
    kernel_init = nn.initializers.normal(self.initializer_range)
    features = sentence
    if self.use_lang_emb:
      if self.num_languages <= 0:
        raise ValueError("XtrHead: use_lang_emb needs num_languages > 0 (the configured "
                         "data.languages); set use_lang_emb=False to drop the language embedding")
      table = nn.Embed(self.num_languages, self.lang_dim, dtype=jnp.float32,
                       param_dtype=self.param_dtype, name="language_embeddings",
                       embedding_init=_partitioned(kernel_init, ("languages", "embed")))
      lang = self._layer_norm("embed", "language_layer_norm")(table(target_lang))
      lang = nn.Dropout(self.lang_dropout_rate)(lang, deterministic=deterministic)
      features = jnp.concatenate([lang.astype(sentence.dtype), sentence], axis=-1)
    hidden = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="dense",
                      kernel_init=_partitioned(kernel_init, ("mlp", "embed")),
                      bias_init=_partitioned(nn.initializers.zeros, ("embed",)))(features)
    hidden = nn.swish(hidden)
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=deterministic)
    hidden = self._layer_norm("embed", "layer_norm")(hidden)
    if self.tied_decoder:
      if decoder is None:
        raise ValueError("XtrHead(tied_decoder=True) needs decoder= (the encoder's word "
                         "embeddings as a function h -> h @ E^T)")
      return decoder(hidden).astype(jnp.float32)
    # No output bias, as the reference code (its bias line is commented out).
    logits = nn.Dense(self.vocab_size, use_bias=False, dtype=jnp.float32,
                      param_dtype=self.param_dtype, name="decoder",
                      kernel_init=_partitioned(kernel_init, ("embed", "vocab")))(hidden)
    return logits.astype(jnp.float32)


class ProjectionHead(nn.Module):
  """g(s) = W2 ReLU(W1 s + b1) + b2: the contrastive loss's space (not the exported embedding)."""
  hidden_dim: int
  features: int = 128
  initializer_range: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, sentence: jax.Array) -> jax.Array:
    kernel_init = nn.initializers.normal(self.initializer_range)
    hidden = nn.Dense(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="dense",
                      kernel_init=_partitioned(kernel_init, ("embed", "mlp")),
                      bias_init=_partitioned(nn.initializers.zeros, ("mlp",)))(sentence)
    hidden = nn.relu(hidden)
    out = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="output",
                   kernel_init=_partitioned(kernel_init, ("mlp", "embed")),
                   bias_init=_partitioned(nn.initializers.zeros, ("embed",)))(hidden)
    return out.astype(jnp.float32)
