"""Attention masks, position ids, and the explicit attention used with attention dropout.

Masks are boolean `[B, 1, L, L]` arrays (query axis, then key axis) where True means "this query
may attend to this key"; the head axis is 1 so one mask broadcasts over all heads. Objectives
that need special attention patterns (CAMLM, BTMLM) build their own mask of this form and pass
it to the model, combining it with these helpers via `combine_masks`.

Position ids follow fairseq/XLM-R: the padding index doubles as the "no position" id, and the
first real token gets `pad_id + 1` (2 for XLM-R), so pretrained XLM-R position tables line up.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def padding_mask(input_ids: jax.Array, pad_id: int) -> jax.Array:
  """`[B, 1, L, L]` mask letting every query attend to every non-padding key.

  Padding queries still attend to the real keys (as in fairseq and HF), which keeps their
  outputs finite; nothing reads them.
  """
  batch, length = input_ids.shape
  key_is_real = input_ids != pad_id
  return jnp.broadcast_to(key_is_real[:, None, None, :], (batch, 1, length, length))


def segment_mask(segment_ids: jax.Array) -> jax.Array:
  """`[B, 1, L, L]` mask: query and key are in the same segment, and that segment is not 0.

  Segment 0 marks padding, so padding queries get an all-False row (the model handles such
  rows without NaN) and padding keys are never attended to.
  """
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  real = (segment_ids != 0)[:, :, None]
  return (same & real)[:, None, :, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of boolean masks (None entries are skipped; all None -> None).

  Masks broadcast against each other, so `[B, 1, L, L]` combines with `[B, H, L, L]`.
  """
  present = [m for m in masks if m is not None]
  if not present:
    return None
  for m in present:
    if m.dtype != jnp.bool_:
      raise ValueError(f"combine_masks expects boolean masks, got dtype {m.dtype}; "
                       "build masks with comparisons, not 0/1 integers")
  combined = present[0]
  for m in present[1:]:
    combined = jnp.logical_and(combined, m)
  return combined


def normalize_mask(mask: jax.Array, batch: int, num_heads: int, length: int) -> jax.Array:
  """A caller's attention mask, checked, as `[B|1, 1|H, L, L]` (`[B, L, L]` gets a head axis)."""
  if mask.dtype != jnp.bool_:
    raise ValueError(f"attention_mask must be boolean (True = may attend), got dtype {mask.dtype}")
  if mask.ndim == 3:
    mask = mask[:, None]
  if (mask.ndim != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, num_heads)
      or mask.shape[2:] != (length, length)):
    raise ValueError(f"attention_mask must have shape [B, L, L] or [B, 1|H, L, L] with B={batch}, "
                     f"H={num_heads}, L={length}; got {mask.shape}")
  return mask


def xlmr_position_ids(input_ids: jax.Array, pad_id: int) -> jax.Array:
  """fairseq `make_positions`: real tokens get pad_id+1, pad_id+2, ...; padding gets pad_id.

  Counting only non-padding tokens means left padding does not shift positions.
  """
  is_real = (input_ids != pad_id).astype(jnp.int32)
  # Multiplying by is_real zeroes the count on padding, which therefore lands on pad_id exactly.
  return jnp.cumsum(is_real, axis=-1) * is_real + pad_id


def segment_position_ids(segment_ids: jax.Array, pad_id: int) -> jax.Array:
  """Positions restarting at pad_id+1 at the start of every segment; pad_id on segment 0.

  Segments are contiguous runs of one id (as the packing pipeline writes them); a new run
  starts wherever the id changes from the previous token.
  """
  batch, length = segment_ids.shape
  index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  # Shifted ids with a -1 in front (no segment uses it): token 0 always starts a run.
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  run_start = jnp.where(segment_ids != previous, index, 0)
  # The latest run start at or before each token is a running maximum: O(L), no [L, L] array.
  start = jax.lax.cummax(run_start, axis=1)
  is_real = segment_ids != 0
  return jnp.where(is_real, index - start + pad_id + 1, pad_id).astype(jnp.int32)


def attention_with_dropout(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                           dropout_rate: float, dropout_rng: jax.Array) -> jax.Array:
  """Softmax attention with dropout on the attention probabilities (training path).

  `jax.nn.dot_product_attention` has no dropout, so the train step with attention dropout uses
  this explicit form; evaluation uses the fused function. Shapes as there: query/key/value
  `[B, L, H, Dh]`, boolean mask `[B, 1|H, L, L]`; returns `[B, L, H, Dh]`.
  """
  scale = 1.0 / jnp.sqrt(jnp.asarray(query.shape[-1], jnp.float32))
  # Scores accumulate in float32 even for bf16 inputs, so the softmax sees full-precision logits.
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32) * scale
  # A large finite negative (not -inf) keeps fully masked rows (padding queries) finite: they
  # become a uniform average instead of 0/0 = NaN, matching jax.nn.dot_product_attention.
  logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
  probs = jax.nn.softmax(logits, axis=-1)
  # Inverted dropout: kept probabilities are scaled by 1 / (1 - rate), so eval needs no rescale.
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, value)
