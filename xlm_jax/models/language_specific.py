"""Language-specific parameters routed per token (Conneau, Wu et al. 2020, "Emerging
Cross-lingual Structure in Pretrained Language Models").

Every module here holds one copy of its parameters per language, stacked on a leading axis
with the logical name "languages", under the same parameter names as its shared counterpart
(`embedding`, `kernel`, `bias`, `scale`), so copy `l` of a tree is `tree[..][l]`. Each token
uses the copy of its own language (`lang_ids`, the same shape as the token axes), which also
routes the two languages of a TLM row separately.

Routing by masking, not by sorting. A dense projection is computed as one matmul whose
contraction runs over (language, input features): the input is spread into a
`[..., languages, in]` array that is zero except in the token's own language slot. That costs
`num_languages` times the FLOPs of the shared projection and `num_languages` times its input
activation, and it is exact: the other copies see zeros, so their gradient from that token is
exactly zero. A grouped matmul (`lax.ragged_dot`) would need 1x FLOPs, but it needs the tokens
sorted by language across the whole batch, which under data-parallel sharding gathers every
token onto every device, and on CPU it lowers to this same masked product anyway. The masked
form is a plain `dot_general`, so it shards by the same logical-axis rules as the shared layer.

Per-token biases and LayerNorm parameters are picked from their [languages, features] tables by
a one-hot matmul rather than a gather (`select_by_language`): 2 * num_languages FLOPs per value.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LANGUAGES = "languages"  # logical axis name of the per-language copies


def language_one_hot(lang_ids: jax.Array, num_languages: int, dtype) -> jax.Array:
  """`[*lang_ids.shape, num_languages]` 0/1 routing weights (a token's own language is 1)."""
  return (lang_ids[..., None] == jnp.arange(num_languages, dtype=lang_ids.dtype)).astype(dtype)


def select_by_language(table: jax.Array, weights: jax.Array) -> jax.Array:
  """`table [languages, *features]` -> `[*tokens, *features]`, each token's own row.

  `weights` are language_one_hot routing weights. A matmul and not a gather: GSPMD gathers rows
  from a table whose feature axis is sharded over "fsdp" into a [tokens, features] result it
  then replicates on every device (the batch is on "fsdp" too), while it partitions a dot like
  any FSDP weight. HIGHEST precision keeps the selected values exact on TPU/GPU.
  """
  return jax.lax.dot_general(weights.astype(table.dtype), table,
                             (((weights.ndim - 1,), (0,)), ((), ())),
                             precision=jax.lax.Precision.HIGHEST)


def _spread_by_language(x: jax.Array, weights: jax.Array, num_feature_axes: int) -> jax.Array:
  """x `[*tokens, *features]` -> `[*tokens, languages, *features]`, zero outside the token's
  own language slot (weights: language_one_hot)."""
  weights = weights.astype(x.dtype).reshape(weights.shape + (1,) * num_feature_axes)
  return weights * jnp.expand_dims(x, weights.ndim - 1 - num_feature_axes)


class LanguageDense(nn.Module):
  """DenseGeneral over the trailing `num_input_axes` axes of x, one kernel and bias per language.

  kernel `[languages, *in, *features]`, bias `[languages, *features]`; logical names are
  ("languages",) + kernel_axes / bias_axes.
  """
  num_languages: int
  features: Sequence[int]
  num_input_axes: int
  kernel_axes: tuple
  bias_axes: tuple
  kernel_init: Callable
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lang_ids: jax.Array) -> jax.Array:
    n_in, features = self.num_input_axes, tuple(self.features)
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(self.kernel_init, (LANGUAGES,) + self.kernel_axes),
        (self.num_languages,) + x.shape[-n_in:] + features, self.param_dtype)
    bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros, (LANGUAGES,) + self.bias_axes),
        (self.num_languages,) + features, self.param_dtype)
    # All in the compute dtype (bf16 under mixed precision); 0/1 routing weights are exact in it.
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    weights = language_one_hot(lang_ids, self.num_languages, self.dtype)
    routed = _spread_by_language(x, weights, n_in)
    token_axes = lang_ids.ndim
    contract = tuple(range(token_axes, token_axes + 1 + n_in))  # languages and the input axes
    out = jax.lax.dot_general(routed, kernel, ((contract, tuple(range(1 + n_in))), ((), ())))
    return out + select_by_language(bias, weights)


class LanguageLayerNorm(nn.Module):
  """LayerNorm over the last axis whose scale and bias are those of each token's language."""
  num_languages: int
  epsilon: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x: jax.Array, lang_ids: jax.Array) -> jax.Array:
    shape = (self.num_languages, x.shape[-1])
    axes = (LANGUAGES, self.axis_name)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, axes), shape,
                       self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, axes), shape,
                      self.param_dtype)
    # The statistics are the shared LayerNorm's (parameter-free here); only the affine part
    # is per language.
    normalized = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, use_scale=False,
                              use_bias=False)(x)
    # One-hot in param_dtype: scale and bias are picked exactly, then cast to the compute dtype.
    weights = language_one_hot(lang_ids, self.num_languages, self.param_dtype)
    return (normalized * select_by_language(scale, weights).astype(self.dtype)
            + select_by_language(bias, weights).astype(self.dtype))


class LanguageEmbed(nn.Module):
  """One embedding table per language, `embedding [languages, rows, features]`.

  Lookups and the tied decoder (`attend`) run in float32, like the shared nn.Embed tables.
  """
  num_languages: int
  num_embeddings: int
  features: int
  axes: tuple
  embedding_init: Callable
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(self.embedding_init, (LANGUAGES,) + self.axes),
        (self.num_languages, self.num_embeddings, self.features), self.param_dtype)

  def __call__(self, ids: jax.Array, lang_ids: jax.Array) -> jax.Array:
    # Index first, cast after: only the looked-up rows are converted. An id out of range
    # gives NaN (as nn.Embed's jnp.take), not a silently clamped row.
    return self.embedding.at[lang_ids, ids].get(mode="fill").astype(jnp.float32)

  def attend(self, query: jax.Array, lang_ids: jax.Array) -> jax.Array:
    """Logits `[*tokens, rows]` = query @ table[lang].T per token (language-specific softmax).

    The same masked routing as LanguageDense: one float32 matmul contracting over
    (languages, features), num_languages x the FLOPs of a shared decoder; no per-token copy of
    a table and no [tokens, languages, rows] intermediate.
    """
    weights = language_one_hot(lang_ids, self.num_languages, jnp.float32)
    routed = _spread_by_language(query.astype(jnp.float32), weights, 1)
    token_axes = lang_ids.ndim
    return jax.lax.dot_general(routed, self.embedding.astype(jnp.float32),
                               (((token_axes, token_axes + 1), (0, 2)), ((), ())))
