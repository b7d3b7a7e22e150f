"""XLM-R encoder and masked-LM head (flax.linen).

The parameter tree mirrors HF `XLMRobertaForMaskedLM` so weights can be converted name by name:

    encoder/embeddings/{word,position,token_type,language}_embeddings, layer_norm
    encoder/layer_{i}/attention/{query,key,value,out}, attention_layer_norm,
                      intermediate, output, output_layer_norm        (scan_layers: encoder/layers/...)
    lm_head/{dense, layer_norm, bias}; the decoder is the word-embedding table (tied).

Post-LN layers, exact GELU, LayerNorm eps 1e-5, positions starting at pad_id + 1. Every parameter
carries logical axis names; the trainer maps them to mesh axes.

Language-specific parts (Conneau, Wu et al. 2020; see language_specific.py for the routing and
its cost) keep the same names with a leading "languages" axis:
  separate_embeddings: word_embeddings, position_embeddings [languages, rows, D] and
      lm_head/bias [languages, V], so the tied softmax is language-specific too.
  separate_layers = k: layer_0 .. layer_{k-1} hold one copy per language; layer_k .. are
      shared and named exactly as in XLM-R. With scan_layers the language-specific layers are
      stacked in encoder/language_layers [k, languages, ...] and the shared ones in
      encoder/layers [num_layers - k, ...], so layers[j] is XLM-R layer k + j.

Vocabulary padding. The "vocab" logical axis is sharded over the tensor mesh axis, which must
divide it, and XLM-R's 250002 pieces divide nothing useful. So the word-embedding table(s) and
the MLM bias have `config.padded_vocab_size` rows (vocab_size rounded up to vocab_multiple,
default 128). The padding rows start at zero, no id ever looks them up, and the tied decoder
replaces their logits by a large finite negative (`mask_padded_vocab`): they never win an
argmax, get probability exactly 0 and add nothing to a softmax cross-entropy. Logits keep the
padded width inside training (it shards evenly); `convert_params` moves a tree between
paddings (and between the scanned and unrolled layouts), and exports have no padding.

Activation sharding. Activations carry logical axis names too (`_constrain`): hidden states
("batch", "length", "embed") at the embeddings and at every layer's residual stream, q/k/v
("batch", "length", "heads", "kv"), the FFN's hidden ("batch", "length", "mlp"), and the MLM
head's input and logits, rows first ("batch", ..., "vocab"). Traced inside
`mesh.tracing_context` they pin the batch rows to the (data, fsdp) mesh axes; elsewhere they
are no-ops.
"""
from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax import mesh as mesh_lib
from xlm_jax.models import attention as attn_lib
from xlm_jax.models import language_specific as lang_lib
from xlm_jax.models.encoder_config import DTYPES, REMAT_POLICIES, EncoderConfig

# The logit of a padding column. Large and finite, as the attention mask's (attention.py): a
# finite value keeps p * log p = 0 * finite = 0 in entropy-style sums (-inf would give NaN),
# and exp(PADDED_LOGIT - max) is exactly 0 in float32.
PADDED_LOGIT = -0.7 * float(jnp.finfo(jnp.float32).max)


def _partitioned(init: Callable, axes: tuple) -> Callable:
  return nn.with_logical_partitioning(init, axes)


def _constrain(x: jax.Array, axes: tuple) -> jax.Array:
  """x constrained to the logical `axes`, one name (or None) per dimension.

  Parameters are sharded by their logical names, activations are not: XLA's propagation then
  follows the FSDP-gathered weights, which are whole along the batch, and gives every chip the
  hidden states and logits of the whole global batch. Naming the activations' axes keeps their
  rows split over the batch mesh axes. A no-op unless traced inside `mesh.tracing_context`.
  """
  rules = mesh_lib.activation_rules()
  # The rules map "batch" before "embed", and flax gives a mesh axis once: the rows take
  # (data, fsdp), so "embed", whose rule is fsdp too, stays whole in activations.
  return nn.with_logical_constraint(x, axes, rules=rules) if rules else x


def _rows(x: jax.Array, last: str | None) -> jax.Array:
  """x [rows, ..., last] constrained to rows over "batch" and its last axis over `last`: the MLM
  head's inputs and logits at gathered positions, [B, P, D|V] or flat [N, D|V]."""
  if x.ndim < 2:
    return x
  return _constrain(x, ("batch",) + (None,) * (x.ndim - 2) + (last,))


def _normal_with_zero_row(stddev: float, zero_row: int, real_rows: int | None = None) -> Callable:
  """Normal(0, stddev) table whose padding row starts at zero (as nn.Embedding(padding_idx));
  rows are axis -2, so a [languages, rows, D] stack zeroes the row in every language. Rows from
  `real_rows` on (vocabulary padding) start at zero too."""
  def init(key, shape, dtype=jnp.float32):
    table = jax.random.normal(key, shape, dtype) * jnp.asarray(stddev, dtype)
    rows = jnp.arange(shape[-2])[:, None]
    zero = (rows == zero_row) | (rows >= (shape[-2] if real_rows is None else real_rows))
    # A select against an iota, not .at[].set: initialised directly sharded (vocab over tensor),
    # two .at[].set row updates left row 512 with other values than on one device (jax 0.10.2).
    return jnp.where(zero, jnp.zeros((), dtype), table)
  return init


def mask_padded_vocab(logits: jax.Array, vocab_size: int) -> jax.Array:
  """`logits [..., padded V]` with the columns from vocab_size on set to PADDED_LOGIT.

  A select against a static iota, not a slice or a gather: the vocabulary axis keeps its padded,
  evenly sharded width, and the padding columns get no gradient.
  """
  if vocab_size >= logits.shape[-1]:
    return logits
  real = jnp.arange(logits.shape[-1]) < vocab_size
  return jnp.where(real, logits, jnp.asarray(PADDED_LOGIT, logits.dtype))


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


def _project(config: EncoderConfig, x, lang_ids, features, kernel_axes: tuple, bias_axes: tuple,
             axis=-1, name=None):
  """x through a shared DenseGeneral, or through each token's own language copy when lang_ids
  is given (a language-specific layer)."""
  if lang_ids is None:
    return _dense(config, features, kernel_axes, bias_axes, axis=axis, name=name)(x)
  return lang_lib.LanguageDense(
      config.num_languages, features if isinstance(features, tuple) else (features,),
      len(axis) if isinstance(axis, tuple) else 1, kernel_axes, bias_axes,
      nn.initializers.normal(config.initializer_range), DTYPES[config.dtype],
      DTYPES[config.param_dtype], name=name)(x, lang_ids)


def _normalize(config: EncoderConfig, x, lang_ids, name: str):
  """Shared LayerNorm, or per-language scale and bias when lang_ids is given."""
  if lang_ids is None:
    return _layer_norm(config, name=name)(x)
  return lang_lib.LanguageLayerNorm(config.num_languages, config.layer_norm_eps,
                                    DTYPES[config.dtype], DTYPES[config.param_dtype],
                                    name=name)(x, lang_ids)


class Embeddings(nn.Module):
  """word + position + token type (+ language) embeddings, LayerNorm, dropout."""
  config: EncoderConfig

  def setup(self):
    c = self.config
    param_dtype = DTYPES[c.param_dtype]

    def table(rows, axes, zero_row=None, real_rows=None):
      init = (nn.initializers.normal(c.initializer_range) if zero_row is None
              else _normal_with_zero_row(c.initializer_range, zero_row, real_rows))
      if c.separate_embeddings and zero_row is not None:  # word and position tables
        return lang_lib.LanguageEmbed(c.num_languages, rows, c.hidden_size, axes, init,
                                      param_dtype)
      # float32 lookups: the same table is the tied decoder, whose logits must be float32.
      return nn.Embed(rows, c.hidden_size, dtype=jnp.float32, param_dtype=param_dtype,
                      embedding_init=_partitioned(init, axes))

    # padded_vocab_size rows, so the "vocab" axis divides the tensor mesh axis (module doc).
    self.word_embeddings = table(c.padded_vocab_size, ("vocab", "embed"), zero_row=c.pad_id,
                                 real_rows=c.vocab_size)
    self.position_embeddings = table(c.max_positions, ("positions", "embed"), zero_row=c.pad_id)
    # A handful of rows (XLM-R has one token type): the row axis is left unsharded.
    self.token_type_embeddings = table(c.type_vocab_size, (None, "embed"))
    if c.num_languages > 0:
      # Language embeddings as in XLM (Lample & Conneau 2019); XLM-R itself has none.
      self.language_embeddings = table(c.num_languages, ("languages", "embed"))
    self.layer_norm = _layer_norm(c)
    self.dropout = nn.Dropout(c.dropout_rate)

  def __call__(self, input_ids, position_ids, lang_ids, deterministic: bool):
    if self.config.separate_embeddings:
      x = (self.word_embeddings(input_ids, lang_ids)
           + self.position_embeddings(position_ids, lang_ids))
    else:
      x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
    # XLM-R has a single token type; its row 0 is added everywhere.
    x = x + self.token_type_embeddings(jnp.zeros_like(input_ids))
    if self.config.num_languages > 0:
      x = x + self.language_embeddings(lang_ids)
    # The lookup reads a table sharded over vocab and embed; its output is rows of the batch.
    x = _constrain(x, ("batch", "length", "embed"))
    return self.dropout(self.layer_norm(x), deterministic=deterministic)

  def attend(self, query: jax.Array, lang_ids: jax.Array | None = None) -> jax.Array:
    """query @ word_embeddings.T (the tied MLM decoder), in float32, [..., padded_vocab_size]
    with the padding columns masked (mask_padded_vocab); with separate_embeddings each query
    uses the table of its language (lang_ids, shaped as query's token axes)."""
    if self.config.separate_embeddings:
      if lang_ids is None:
        raise ValueError("separate_embeddings: the tied decoder has one table per language; "
                         "pass lang_ids (the language of each query) to attend / lm_head")
      logits = self.word_embeddings.attend(query, lang_ids)
    else:
      logits = self.word_embeddings.attend(query.astype(jnp.float32))
    # Masked here, not only in the MLM head: other heads use the tied table too (EMS's XTR).
    # [rows, V] float32 logits are the largest activation: rows over the batch axes, V over
    # tensor, never the whole batch's logits on one chip.
    return _rows(mask_padded_vocab(logits, self.config.vocab_size), "vocab")


class SelfAttention(nn.Module):
  """Multi-head self-attention with an arbitrary mask, given as attn_lib.AttentionInputs (a
  boolean mask, or cuDNN's bias or key lengths: model.attention_impl); with lang_ids the
  projections are language-specific (each token projected by its own language's q, k, v and
  out)."""
  config: EncoderConfig

  @nn.compact
  def __call__(self, x, attention: attn_lib.AttentionInputs, deterministic: bool, lang_ids=None):
    c = self.config
    qkv = functools.partial(_project, c, x, lang_ids, (c.num_heads, c.head_dim),
                            ("embed", "heads", "kv"), ("heads", "kv"))
    heads = ("batch", "length", "heads", "kv")
    query, key, value = (_constrain(qkv(name=name), heads) for name in ("query", "key", "value"))
    # Only training with attention dropout pays for explicit [B, H, L, L] probabilities.
    if c.attention_dropout_rate > 0 and not deterministic:
      if attention.mask is None:  # plan_attention never plans cuDNN inputs for this case
        raise ValueError("attention dropout needs the boolean mask; got cuDNN attention inputs")
      out = attn_lib.attention_with_dropout(query, key, value, attention.mask,
                                            c.attention_dropout_rate, self.make_rng("dropout"))
    else:
      out = attn_lib.dot_product_attention(query, key, value, attention)
    out = _project(c, _constrain(out, heads), lang_ids, c.hidden_size, ("heads", "kv", "embed"),
                   ("embed",), axis=(-2, -1), name="out")
    return _constrain(out, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """One post-LN transformer layer; returns (hidden, hidden-or-None) so it can be scanned.

  Given lang_ids [B, L] it is a language-specific layer: every projection and LayerNorm has one
  copy per language and each token goes through its own language's copy.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, attention, deterministic: bool, emit_hidden: bool = False,
               lang_ids=None):
    c = self.config
    attended = SelfAttention(c, name="attention")(hidden, attention, deterministic, lang_ids)
    attended = nn.Dropout(c.dropout_rate)(attended, deterministic=deterministic)
    # Post-LN (LayerNorm after each residual add), as in BERT/XLM-R; pretrained weights assume it.
    hidden = _normalize(c, hidden + attended, lang_ids, "attention_layer_norm")
    hidden = _constrain(hidden, ("batch", "length", "embed"))
    ffn = _project(c, hidden, lang_ids, c.mlp_dim, ("embed", "mlp"), ("mlp",), name="intermediate")
    ffn = _constrain(ffn, ("batch", "length", "mlp"))
    # XLM-R uses the exact erf GELU; EMS's encoder swish (encoder_config.ACTIVATIONS).
    ffn = nn.swish(ffn) if c.activation == "swish" else nn.gelu(ffn, approximate=False)
    ffn = _project(c, ffn, lang_ids, c.hidden_size, ("mlp", "embed"), ("embed",), name="output")
    ffn = nn.Dropout(c.dropout_rate)(ffn, deterministic=deterministic)
    hidden = _normalize(c, hidden + ffn, lang_ids, "output_layer_norm")
    # The residual stream, and with scan_layers the loop's carry: rows over the batch axes at
    # every layer boundary (inside the remat'd layer, so the recomputation keeps it too).
    hidden = _constrain(hidden, ("batch", "length", "embed"))
    return hidden, (hidden if emit_hidden else None)


def _layer_class(config: EncoderConfig):
  """EncoderLayer, wrapped in nn.remat according to config.remat_policy."""
  if config.remat_policy == "none":
    return EncoderLayer
  # deterministic and emit_hidden (argument 3 and 4, counting self) are Python bools; lang_ids
  # (argument 5) is an array. Under scan the loop already stops CSE, so prevent_cse would only
  # cost speed.
  return nn.remat(EncoderLayer, policy=REMAT_POLICIES[config.remat_policy],
                  prevent_cse=not config.scan_layers, static_argnums=(3, 4))


def _checked_lang_ids(config: EncoderConfig, input_ids, lang_ids):
  """lang_ids broadcast to input_ids' [B, L] shape; None when the model has no languages."""
  if config.num_languages <= 0:
    return None
  if lang_ids is None:
    uses = ["language embeddings"] + [k for k in ("separate_embeddings", "separate_layers")
                                      if getattr(config, k)]
    raise ValueError(f"this encoder has num_languages={config.num_languages} ({', '.join(uses)}); "
                     "pass lang_ids [B, L] (index of each token's language)")
  try:
    return jnp.broadcast_to(lang_ids, input_ids.shape)
  except ValueError as err:
    raise ValueError(f"lang_ids of shape {lang_ids.shape} do not fit input_ids "
                     f"{input_ids.shape}; pass lang_ids [B, L]") from err


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
      # program size no longer grow with depth. The language-specific bottom layers are a
      # second stack, as their parameters have another shape.
      def stack(length: int, routed: bool):
        # Split rngs: each layer its own init and dropout masks. The mask, flags (and lang_ids)
        # are broadcast to every layer; the stacked axis is "layers" for the mesh rules.
        return nn.scan(
            layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * (4 if routed else 3), length=length,
            metadata_params={nn.PARTITION_NAME: "layers"})(c)
      if c.separate_layers:
        self.language_layers = stack(c.separate_layers, True)
      if c.num_layers > c.separate_layers:
        self.layers = stack(c.num_layers - c.separate_layers, False)
    else:
      self.layer = [layer(c) for _ in range(c.num_layers)]

  def __call__(self, input_ids, *, position_ids=None, lang_ids=None, segment_ids=None,
               attention_mask=None, deterministic: bool = True, return_all_layers: bool = False):
    """Hidden states [B, L, D]; with return_all_layers also a tuple of num_layers + 1 hidden
    states (embeddings output first, last layer last).

    attention_mask: bool [B, L, L] or [B, 1|H, L, L] (True = may attend). When None it is built
    from segment_ids (same non-zero segment) or else from input_ids != pad_id (padding may be
    anywhere in a row, with either model.attention_impl; attention.py). position_ids
    default to XLM-R positions from input_ids. lang_ids [B, L] are required when
    num_languages > 0 (they also route the language-specific parts) and ignored otherwise.
    """
    c = self.config
    batch, length = input_ids.shape
    lang_ids = _checked_lang_ids(c, input_ids, lang_ids)
    if position_ids is None:
      position_ids = attn_lib.xlmr_position_ids(input_ids, c.pad_id)
    # model.attention_impl (attention.py): only the mask built below from input_ids alone is
    # known to be key padding and nothing else; the cuDNN path can then pass key lengths.
    rules = dict(mesh_lib.activation_rules())
    plan = attn_lib.plan_attention(
        c.attention_impl, dtype=DTYPES[c.dtype], head_dim=c.head_dim, length=length,
        key_padding_only=attention_mask is None and segment_ids is None,
        attention_dropout=c.attention_dropout_rate > 0 and not deterministic,
        sequence_sharded=any(rules.get(axis) for axis in ("length", "kv")))
    inverse = None
    if plan.form == "kv_lengths":
      # Key lengths hold for right-padded rows only: every row is reordered to its real tokens
      # first (exact for any padding, attention.real_tokens_first) and back after the layers.
      order, inverse, kv_lengths = attn_lib.real_tokens_first(input_ids != c.pad_id)
      reorder = lambda x: None if x is None else gather_positions(
          jnp.broadcast_to(x, (batch, length)), order)
      input_ids, position_ids, lang_ids = map(reorder, (input_ids, position_ids, lang_ids))
      attention = attn_lib.AttentionInputs(kv_lengths=kv_lengths,
                                           implementation=plan.implementation)
    else:
      if attention_mask is not None:
        mask = attn_lib.normalize_mask(attention_mask, batch, c.num_heads, length)
      # Packed rows: a token attends only within its own sentence (segment).
      elif segment_ids is not None:
        mask = attn_lib.segment_mask(segment_ids)
      else:
        mask = attn_lib.padding_mask(input_ids, c.pad_id)
      if mask.shape[0] == batch:  # [B, 1|H, L, L]: 2 GiB of bool at 8192 x 512 if not split
        mask = _constrain(mask, ("batch", None, "length", None))
      if plan.form == "bias":
        bias = attn_lib.mask_to_bias(mask, batch, DTYPES[c.dtype])
        attention = attn_lib.AttentionInputs(
            bias=_constrain(bias, ("batch", None, "length", None)),
            implementation=plan.implementation)
      else:
        attention = attn_lib.AttentionInputs(mask=mask)

    hidden = self.embeddings(input_ids, position_ids, lang_ids, deterministic)
    per_layer = [hidden]
    routed = c.separate_layers
    if c.scan_layers:
      stacks = [(self.language_layers, routed, (lang_ids,))] if routed else []
      if c.num_layers > routed:
        stacks.append((self.layers, c.num_layers - routed, ()))
      for stack, depth, routing in stacks:
        hidden, stacked = stack(hidden, attention, deterministic, return_all_layers, *routing)
        if return_all_layers:
          per_layer.extend(stacked[i] for i in range(depth))
    else:
      for i, layer in enumerate(self.layer):
        hidden, _ = layer(hidden, attention, deterministic, False,
                          *((lang_ids,) if i < routed else ()))
        per_layer.append(hidden)
    if inverse is not None:  # back to the caller's token order
      hidden = gather_positions(hidden, inverse)
      per_layer = [gather_positions(h, inverse) for h in per_layer] if return_all_layers else []
    return (hidden, tuple(per_layer)) if return_all_layers else hidden

  def attend(self, query: jax.Array, lang_ids: jax.Array | None = None) -> jax.Array:
    return self.embeddings.attend(query, lang_ids)


class MlmHead(nn.Module):
  """dense -> GELU -> LayerNorm -> tied decoder + bias; float32 logits [..., padded_vocab_size]
  whose padding columns are PADDED_LOGIT.

  With separate_embeddings the decoder and its bias are those of each prediction's language
  (lang_ids shaped as hidden's token axes): a language-specific softmax.
  """
  config: EncoderConfig

  @nn.compact
  def __call__(self, hidden, decoder: Callable[..., jax.Array], lang_ids=None):
    c = self.config
    # Input side named "mlp" so a [D, D] kernel is not sharded twice on the same mesh axis.
    hidden = _rows(hidden, "embed")  # gathered rows [B, P, D]: still split by batch row
    x = _dense(c, c.hidden_size, ("mlp", "embed"), ("embed",), name="dense")(hidden)
    x = nn.gelu(x, approximate=False)
    # float32 LayerNorm: its output feeds the float32 tied decoder directly.
    x = _rows(_layer_norm(c, dtype=jnp.float32, name="layer_norm")(x), "embed")
    if c.separate_embeddings:
      bias = self.param("bias", _partitioned(nn.initializers.zeros, ("languages", "vocab")),
                        (c.num_languages, c.padded_vocab_size), DTYPES[c.param_dtype])
      weights = lang_lib.language_one_hot(lang_ids, c.num_languages, jnp.float32)
      logits = decoder(x, lang_ids) + lang_lib.select_by_language(bias.astype(jnp.float32),
                                                                   weights)
    else:
      bias = self.param("bias", _partitioned(nn.initializers.zeros, ("vocab",)),
                        (c.padded_vocab_size,), DTYPES[c.param_dtype])
      logits = decoder(x) + bias.astype(jnp.float32)
    # Masked again after the bias (one fused select): the padding columns are exactly
    # PADDED_LOGIT whatever the decoder passed in and whatever a loaded bias holds there.
    return _rows(mask_padded_vocab(logits, c.vocab_size), "vocab")


def gather_positions(x: jax.Array, positions: jax.Array) -> jax.Array:
  """x [B, L, ...] at positions [B, P]: [B, P, ...], row b's entries at its own positions.

  A gather batched over the rows (take_along_axis), not `x[arange(B)[:, None], positions]`:
  XLA shards the batched form by rows, where the two-index form, with rows split over devices,
  is computed as a masked gather of the whole batch on every device and an all-reduce of it.
  """
  index = positions.reshape(positions.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1, mode="clip")


class Model(nn.Module):
  """XLM-R for masked LM: Encoder + MLM head tied to the word embeddings."""
  config: EncoderConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.lm_head = MlmHead(self.config)

  def __call__(self, input_ids, *, label_positions=None, position_ids=None, lang_ids=None,
               segment_ids=None, attention_mask=None, deterministic: bool = True):
    """Logits [B, P, V] (float32) at label_positions [B, P]; hidden [B, L, D] when None.

    V is config.padded_vocab_size; the columns from vocab_size on are padding, PADDED_LOGIT.
    Hidden states are gathered before the head, so the vocabulary projection only runs where
    a label exists (at V = 250k it costs more than all the layers together). With
    separate_embeddings the softmax at a label position is that of the token's language there.
    """
    hidden = self.encoder(input_ids, position_ids=position_ids, lang_ids=lang_ids,
                          segment_ids=segment_ids, attention_mask=attention_mask,
                          deterministic=deterministic)
    label_langs = None
    if label_positions is None:
      if self.is_initializing():  # create the head's parameters
        if self.config.separate_embeddings:
          label_langs = _checked_lang_ids(self.config, input_ids, lang_ids)[:, :1]
        self.lm_head(hidden[:, :1], self.encoder.attend, label_langs)
      return hidden
    if self.config.separate_embeddings:
      label_langs = gather_positions(_checked_lang_ids(self.config, input_ids, lang_ids),
                                     label_positions)
    return self.lm_head(gather_positions(hidden, label_positions), self.encoder.attend,
                        label_langs)

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

  Language routing is counted as executed (language_specific.py): the projections of each of
  the `separate_layers` bottom layers and, with separate_embeddings, the decoder contract over
  all nL = num_languages copies, so they cost nL times their shared counterparts; picking each
  token's biases and LayerNorm parameters (9 D + F values per routed layer, V per prediction)
  is a one-hot matmul of 2 nL FLOPs per value.

  V is the padded vocabulary (config.padded_vocab_size): the decoder multiplies the padding
  rows too, so that is the executed work (at most vocab_multiple - 1 extra columns).
  """
  d, f, v = config.hidden_size, config.mlp_dim, config.padded_vocab_size
  projections = 8 * d * d + 4 * d * f
  nl = config.num_languages
  routed = config.separate_layers
  layers = ((config.num_layers - routed) * projections
            + routed * (nl * projections + 2 * nl * (9 * d + f))
            + config.num_layers * 4 * seq_len * d)
  decoder = nl * (2 * d * v + 2 * v) if config.separate_embeddings else 2 * d * v
  head = num_predictions_per_token * (2 * d * d + decoder)
  return 3.0 * (layers + head)


def abstract_params(config: EncoderConfig):
  """The parameter tree `config` builds as ShapeDtypeStructs, still boxed with their logical axis
  names (nn.Partitioned), traced abstractly: no memory, no FLOPs."""
  # lang_ids passed too so configs with languages trace; no parameter shape depends on [1, 2].
  ids = jnp.zeros((1, 2), jnp.int32)
  abstract = jax.eval_shape(lambda: Model(config).init(jax.random.key(0), ids, lang_ids=ids))
  return abstract["params"]


def param_shapes(config: EncoderConfig) -> dict[str, tuple[int, ...]]:
  """Path -> shape of every parameter `config` builds.

  The one answer to "which arrays does this config mean": resume compares a checkpoint's model
  with the configured one through it, and export compares the params it writes.
  """
  return shapes_by_path(nn.meta.unbox(abstract_params(config)))


def shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
  """Path -> shape of every array (or ShapeDtypeStruct) leaf of a parameter tree."""
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}



# --- Moving a parameter tree between layouts -----------------------------------------------------

# Fields that change where a model's arrays sit, never a trained value: convert_params moves a
# tree between their settings.
LAYOUT_FIELDS = ("vocab_multiple", "scan_layers")
MODEL_PARTS = ("encoder", "lm_head")  # the top-level entries of a Model's params
_LAYER_KEY = re.compile(r"layer_\d+|layers|language_layers")


def _array_module(leaf):
  """numpy for host arrays, jax.numpy otherwise: a converted tree stays where it was."""
  return np if isinstance(leaf, np.ndarray) else jnp


def _plain_dicts(tree):
  """Nested Mappings (FrozenDict, ConfigDict-like) as plain dicts, leaves untouched."""
  if hasattr(tree, "items"):
    return {key: _plain_dicts(value) for key, value in tree.items()}
  return tree


def _stack(trees: list) -> Any:
  return jax.tree.map(lambda *xs: _array_module(xs[0]).stack(xs), *trees)


def _unstack(tree, depth: int) -> list:
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(depth)]


def _layer_trees(encoder: dict, config: EncoderConfig) -> list:
  """The num_layers per-layer subtrees of `encoder` (unrolled layout), in XLM-R order."""
  if not config.scan_layers:
    return [encoder[f"layer_{i}"] for i in range(config.num_layers)]
  routed = config.separate_layers
  layers = _unstack(encoder["language_layers"], routed) if routed else []
  if config.num_layers > routed:
    layers += _unstack(encoder["layers"], config.num_layers - routed)
  return layers


def _with_vocab_rows(x, axis: int, rows: int):
  """x cut or zero-padded to `rows` entries along `axis`; kept entries are the same bits."""
  have = x.shape[axis]
  axis %= x.ndim
  if have > rows:
    return x[(slice(None),) * axis + (slice(0, rows),)]
  if have < rows:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, rows - have)
    return _array_module(x).pad(x, widths)
  return x


def convert_params(params, source: EncoderConfig, target: EncoderConfig) -> dict:
  """`params` of Model(source) laid out for Model(target), every value copied bit for bit.

  The configs may differ only in LAYOUT_FIELDS:
    vocab_multiple: the vocabulary rows of the word-embedding table(s) (axis -2) and of
      lm_head/bias (axis -1) are zero-padded or cut to target.padded_vocab_size. Both configs
      have the same vocab_size, so only padding rows are ever cut, never a real one.
    scan_layers: encoder/layer_{i} are stacked on a leading layer axis into encoder/layers
      (and encoder/language_layers for the separate_layers bottom layers), or unstacked.
  `params` is the Model's params collection (boxed or not, or the {"params": ...} variables),
  of numpy or jax arrays, or a part of it ({"encoder": ...} alone, as a momentum copy holds).
  Returns a plain nested dict of unboxed arrays of the same kind.
  Raises ValueError when the configs differ otherwise or `params` does not match `source`; the
  result is checked against param_shapes(target).

      exported = convert_params(params, config, dataclasses.replace(config, vocab_multiple=1))
  """
  source_fields, target_fields = source.to_dict(), target.to_dict()
  differing = [f"{name} ({value!r} -> {target_fields[name]!r})"
               for name, value in source_fields.items()
               if name not in LAYOUT_FIELDS and target_fields[name] != value]
  if differing:
    raise ValueError(f"convert_params moves parameters between {' and '.join(LAYOUT_FIELDS)} "
                     f"settings only, but the configs also differ in {', '.join(differing)}: "
                     "those change trained arrays, not their layout")
  params = nn.meta.unbox(params)
  if hasattr(params, "keys") and set(params.keys()) == {"params"}:
    params = params["params"]
  params = _plain_dicts(params)
  parts = set(params) if isinstance(params, dict) else set()
  if not parts or not parts <= set(MODEL_PARTS):
    raise ValueError(f"convert_params takes a Model's params, whose entries are {MODEL_PARTS} "
                     f"(a part of them will do), got {sorted(parts) or type(params).__name__}")
  _check_shapes(shapes_by_path(params), _part_shapes(source, parts),
                "params do not match the source config")
  converted = dict(params)
  if "lm_head" in params:
    converted["lm_head"] = {**params["lm_head"], "bias": _with_vocab_rows(
        params["lm_head"]["bias"], -1, target.padded_vocab_size)}
  if "encoder" in params:
    converted["encoder"] = _converted_encoder(params["encoder"], source, target)
  _check_shapes(shapes_by_path(converted), _part_shapes(target, parts),
                "convert_params built a tree that does not match the target config (a bug)")
  return converted


def _converted_encoder(encoder: dict, source: EncoderConfig, target: EncoderConfig) -> dict:
  encoder = dict(encoder)
  if source.scan_layers != target.scan_layers:
    layers = _layer_trees(encoder, source)
    encoder = {k: v for k, v in encoder.items() if not _LAYER_KEY.fullmatch(k)}
    routed = target.separate_layers
    if not target.scan_layers:
      encoder.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    else:
      if routed:
        encoder["language_layers"] = _stack(layers[:routed])
      if target.num_layers > routed:
        encoder["layers"] = _stack(layers[routed:])
  embeddings = dict(encoder["embeddings"])
  embeddings["word_embeddings"] = {"embedding": _with_vocab_rows(
      embeddings["word_embeddings"]["embedding"], -2, target.padded_vocab_size)}
  encoder["embeddings"] = embeddings
  return encoder


def _part_shapes(config: EncoderConfig, parts: set) -> dict:
  """param_shapes of `config` under the top-level entries `parts` only."""
  return {key: shape for key, shape in param_shapes(config).items()
          if any(key.startswith(f"['{part}']") for part in parts)}


def _check_shapes(got: dict, want: dict, what: str) -> None:
  if got == want:
    return
  lines = [f"{key}: {got.get(key, 'missing')} (expected {want.get(key, 'none')})"
           for key in sorted(set(got) | set(want)) if got.get(key) != want.get(key)]
  raise ValueError(f"{what}: {'; '.join(lines[:4])}" + (" ..." if len(lines) > 4 else ""))
