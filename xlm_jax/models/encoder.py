"""XLM-R encoder and masked-LM head (flax.linen).

The parameter tree mirrors HF `XLMRobertaForMaskedLM` so weights can be converted name by name:

    encoder/embeddings/{word,position,token_type,language}_embeddings, layer_norm
    encoder/layer_{i}/attention/{query,key,value,out}, attention_layer_norm,
                      intermediate, output, output_layer_norm        (scan_layers: encoder/layers/...)
    lm_head/{dense, layer_norm, bias}; the decoder is the word-embedding table (tied).

Post-LN layers, exact GELU, LayerNorm eps 1e-5, positions starting at pad_id + 1. Every parameter
carries logical axis names; the trainer maps them to mesh axes.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models import attention as attn_lib

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = {
    "none": None,
    "full": None,  # nn.remat without a policy saves nothing: everything is recomputed
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture and numerics of the encoder; defaults are XLM-R base."""
  vocab_size: int
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_positions: int = 514
  pad_id: int = 1
  type_vocab_size: int = 1
  num_languages: int = 0          # 0 = no language embeddings (XLM-R); > 0 = XLM-style
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-5
  initializer_range: float = 0.02
  dtype: str = "float32"          # activations / matmuls
  param_dtype: str = "float32"    # stored parameters
  remat_policy: str = "none"      # "none" | "full" | "dots" | "dots_no_batch"
  scan_layers: bool = False

  def __post_init__(self):
    if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
      raise ValueError(f"EncoderConfig: dtype/param_dtype must be one of {sorted(DTYPES)}, "
                       f"got dtype={self.dtype!r}, param_dtype={self.param_dtype!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"EncoderConfig: remat_policy must be one of {sorted(REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"EncoderConfig: hidden_size ({self.hidden_size}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    if self.vocab_size < 0 or self.num_languages < 0:
      raise ValueError(f"EncoderConfig: vocab_size ({self.vocab_size}) and num_languages "
                       f"({self.num_languages}) must be >= 0")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EncoderConfig":
    """Builds a config from a dict (or ConfigDict); unknown keys are an error, not ignored."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"EncoderConfig: unknown field(s) {unknown}; valid fields are {sorted(known)}")
    if "vocab_size" not in d:
      raise ValueError("EncoderConfig: field 'vocab_size' is required")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _partitioned(init: Callable, axes: tuple) -> Callable:
  return nn.with_logical_partitioning(init, axes)


def _normal_with_zero_row(stddev: float, zero_row: int) -> Callable:
  """Normal(0, stddev) table whose padding row starts at zero (as nn.Embedding(padding_idx))."""
  def init(key, shape, dtype=jnp.float32):
    table = jax.random.normal(key, shape, dtype) * jnp.asarray(stddev, dtype)
    return table.at[zero_row].set(0) if zero_row < shape[0] else table
  return init


def _layer_norm(config: EncoderConfig, axis_name: str = "embed", dtype=None, name=None):
  return nn.LayerNorm(
      epsilon=config.layer_norm_eps, dtype=dtype or DTYPES[config.dtype],
      param_dtype=DTYPES[config.param_dtype], name=name,
      scale_init=_partitioned(nn.initializers.ones, (axis_name,)),
      bias_init=_partitioned(nn.initializers.zeros, (axis_name,)))


def _dense(config: EncoderConfig, features, kernel_axes: tuple, bias_axes: tuple, axis=-1, name=None):
  return nn.DenseGeneral(
      features=features, axis=axis, dtype=DTYPES[config.dtype],
      param_dtype=DTYPES[config.param_dtype], name=name,
      kernel_init=_partitioned(nn.initializers.normal(config.initializer_range), kernel_axes),
      bias_init=_partitioned(nn.initializers.zeros, bias_axes))


class Embeddings(nn.Module):
  """word + position + token type (+ language) embeddings, LayerNorm, dropout."""
  config: EncoderConfig

  def setup(self):
    c = self.config
    param_dtype = DTYPES[c.param_dtype]

    def table(rows, axes, zero_row=None):
      init = (nn.initializers.normal(c.initializer_range) if zero_row is None
              else _normal_with_zero_row(c.initializer_range, zero_row))
      # float32 lookups: the same table is the tied decoder, whose logits must be float32.
      return nn.Embed(rows, c.hidden_size, dtype=jnp.float32, param_dtype=param_dtype,
                      embedding_init=_partitioned(init, axes))

    self.word_embeddings = table(c.vocab_size, ("vocab", "embed"), zero_row=c.pad_id)
    self.position_embeddings = table(c.max_positions, ("positions", "embed"), zero_row=c.pad_id)
    self.token_type_embeddings = table(c.type_vocab_size, (None, "embed"))
    if c.num_languages > 0:
      self.language_embeddings = table(c.num_languages, ("languages", "embed"))
    self.layer_norm = _layer_norm(c)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids, position_ids, lang_ids, deterministic: bool):
    x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
    # XLM-R has a single token type; its row 0 is added everywhere.
    x = x + self.token_type_embeddings(jnp.zeros_like(input_ids))
    if self.config.num_languages > 0:
      x = x + self.language_embeddings(lang_ids)
    return self.dropout(self.layer_norm(x), deterministic=deterministic)

  def attend(self, query: jax.Array) -> jax.Array:
    """query @ word_embeddings.T (the tied MLM decoder), in float32."""
    return self.word_embeddings.attend(query.astype(jnp.float32))


class SelfAttention(nn.Module):
  """Multi-head self-attention with an arbitrary boolean mask."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, attention_mask, deterministic: bool):
    c = self.config
    qkv = functools.partial(_dense, c, (c.num_heads, c.head_dim), ("embed", "heads", "kv"),
                            ("heads", "kv"))
    query, key, value = qkv(name="query")(x), qkv(name="key")(x), qkv(name="value")(x)
    if c.attention_dropout_rate > 0 and not deterministic:
      out = attn_lib.attention_with_dropout(query, key, value, attention_mask,
                                            c.attention_dropout_rate, self.make_rng("dropout"))
    else:
      out = jax.nn.dot_product_attention(query, key, value, mask=attention_mask)
    return _dense(c, c.hidden_size, ("heads", "kv", "embed"), ("embed",), axis=(-2, -1),
                  name="out")(out)


class EncoderLayer(nn.Module):
  """One post-LN transformer layer; returns (hidden, hidden-or-None) so it can be scanned."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, attention_mask, deterministic: bool, emit_hidden: bool = False):
    c = self.config
    attended = SelfAttention(c, name="attention")(hidden, attention_mask, deterministic)
    attended = nn.Dropout(c.dropout_rate)(attended, deterministic=deterministic)
    hidden = _layer_norm(c, name="attention_layer_norm")(hidden + attended)
    ffn = _dense(c, c.mlp_dim, ("embed", "mlp"), ("mlp",), name="intermediate")(hidden)
    ffn = nn.gelu(ffn, approximate=False)  # XLM-R uses the exact erf GELU
    ffn = _dense(c, c.hidden_size, ("mlp", "embed"), ("embed",), name="output")(ffn)
    ffn = nn.Dropout(c.dropout_rate)(ffn, deterministic=deterministic)
    hidden = _layer_norm(c, name="output_layer_norm")(hidden + ffn)
    return hidden, (hidden if emit_hidden else None)


def _layer_class(config: EncoderConfig):
  """EncoderLayer, wrapped in nn.remat according to config.remat_policy."""
  if config.remat_policy == "none":
    return EncoderLayer
  # deterministic and emit_hidden (argument 3 and 4, counting self) are Python bools.
  # Under scan the loop already stops CSE, so prevent_cse would only cost speed.
  return nn.remat(EncoderLayer, policy=REMAT_POLICIES[config.remat_policy],
                  prevent_cse=not config.scan_layers, static_argnums=(3, 4))


def _normalize_mask(mask: jax.Array, batch: int, num_heads: int, length: int) -> jax.Array:
  if mask.dtype != jnp.bool_:
    raise ValueError(f"attention_mask must be boolean (True = may attend), got dtype {mask.dtype}")
  if mask.ndim == 3:
    mask = mask[:, None]
  if (mask.ndim != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, num_heads)
      or mask.shape[2:] != (length, length)):
    raise ValueError(f"attention_mask must have shape [B, L, L] or [B, 1|H, L, L] with B={batch}, "
                     f"H={num_heads}, L={length}; got {mask.shape}")
  return mask


class Encoder(nn.Module):
  """Embeddings + a stack of post-LN transformer layers (XLM-R `roberta` body)."""
  config: EncoderConfig

  def setup(self):
    c = self.config
    if c.vocab_size <= 0:
      raise ValueError("EncoderConfig.vocab_size must be > 0 (set it from the tokenizer)")
    self.embeddings = Embeddings(c)
    layer = _layer_class(c)
    if c.scan_layers:
      # One traced layer, parameters stacked on a leading "layers" axis: compile time and
      # program size no longer grow with depth.
      self.layers = nn.scan(
          layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(c)
    else:
      self.layer = [layer(c) for _ in range(c.num_layers)]

  def __call__(self, input_ids, *, position_ids=None, lang_ids=None, segment_ids=None,
               attention_mask=None, deterministic: bool = True, return_all_layers: bool = False):
    """Hidden states [B, L, D]; with return_all_layers also a tuple of num_layers + 1 hidden
    states (embeddings output first, last layer last).

    attention_mask: bool [B, L, L] or [B, 1|H, L, L] (True = may attend). When None it is built
    from segment_ids (same non-zero segment) or else from input_ids != pad_id. position_ids
    default to XLM-R positions from input_ids. lang_ids [B, L] are required when
    num_languages > 0 and ignored otherwise.
    """
    c = self.config
    batch, length = input_ids.shape
    if c.num_languages > 0 and lang_ids is None:
      raise ValueError(f"this encoder has language embeddings (num_languages={c.num_languages}); "
                       "pass lang_ids [B, L]")
    if position_ids is None:
      position_ids = attn_lib.xlmr_position_ids(input_ids, c.pad_id)
    if attention_mask is not None:
      mask = _normalize_mask(attention_mask, batch, c.num_heads, length)
    elif segment_ids is not None:
      mask = attn_lib.segment_mask(segment_ids)
    else:
      mask = attn_lib.padding_mask(input_ids, c.pad_id)

    hidden = self.embeddings(input_ids, position_ids, lang_ids, deterministic)
    per_layer = [hidden]
    if c.scan_layers:
      hidden, stacked = self.layers(hidden, mask, deterministic, return_all_layers)
      if return_all_layers:
        per_layer.extend(stacked[i] for i in range(c.num_layers))
    else:
      for layer in self.layer:
        hidden, _ = layer(hidden, mask, deterministic, False)
        per_layer.append(hidden)
    return (hidden, tuple(per_layer)) if return_all_layers else hidden

  def attend(self, query: jax.Array) -> jax.Array:
    return self.embeddings.attend(query)


class MlmHead(nn.Module):
  """dense -> GELU -> LayerNorm -> tied decoder + bias; float32 logits."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, decoder: Callable[[jax.Array], jax.Array]):
    c = self.config
    # Input side named "mlp" so a [D, D] kernel is not sharded twice on the same mesh axis.
    x = _dense(c, c.hidden_size, ("mlp", "embed"), ("embed",), name="dense")(hidden)
    x = nn.gelu(x, approximate=False)
    x = _layer_norm(c, dtype=jnp.float32, name="layer_norm")(x)
    bias = self.param("bias", _partitioned(nn.initializers.zeros, ("vocab",)), (c.vocab_size,),
                      DTYPES[c.param_dtype])
    return decoder(x) + bias.astype(jnp.float32)


class Model(nn.Module):
  """XLM-R for masked LM: Encoder + MLM head tied to the word embeddings."""
  config: EncoderConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.lm_head = MlmHead(self.config)

  def __call__(self, input_ids, *, label_positions=None, position_ids=None, lang_ids=None,
               segment_ids=None, attention_mask=None, deterministic: bool = True):
    """Logits [B, P, V] (float32) at label_positions [B, P]; hidden [B, L, D] when None.

    Hidden states are gathered before the head, so the vocabulary projection only runs where
    a label exists (at V = 250k it costs more than all the layers together).
    """
    hidden = self.encoder(input_ids, position_ids=position_ids, lang_ids=lang_ids,
                          segment_ids=segment_ids, attention_mask=attention_mask,
                          deterministic=deterministic)
    if label_positions is None:
      if self.is_initializing():
        self.lm_head(hidden[:, :1], self.encoder.attend)  # create the head's parameters
      return hidden
    rows = jnp.arange(hidden.shape[0])[:, None]
    return self.lm_head(hidden[rows, label_positions], self.encoder.attend)

  def encode(self, input_ids, *, position_ids=None, lang_ids=None, segment_ids=None,
             attention_mask=None, deterministic: bool = True, return_all_layers: bool = False):
    """Encoder only (use as model.apply(variables, ..., method=Model.encode))."""
    return self.encoder(input_ids, position_ids=position_ids, lang_ids=lang_ids,
                        segment_ids=segment_ids, attention_mask=attention_mask,
                        deterministic=deterministic, return_all_layers=return_all_layers)


def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays, boxed arrays or ShapeDtypeStructs)."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def flops_per_token(config: EncoderConfig, seq_len: int, num_predictions_per_token: float) -> float:
  """Analytic training FLOPs per input token (forward + backward = 3 x forward matmuls).

  Per layer and token: q, k, v, out projections 4 * 2 D^2, FFN 2 * 2 D F, attention scores
  and the weighted sum of values 2 * 2 L D. The MLM head (dense D x D and decoder D x V) runs
  only at predicted positions: `num_predictions_per_token` of them per token (e.g. 0.15).
  Embedding lookups, LayerNorms and softmax are not matmuls and are left out.
  """
  d, f = config.hidden_size, config.mlp_dim
  per_layer = 8 * d * d + 4 * d * f + 4 * seq_len * d
  head = num_predictions_per_token * (2 * d * d + 2 * d * config.vocab_size)
  return 3.0 * (config.num_layers * per_layer + head)
