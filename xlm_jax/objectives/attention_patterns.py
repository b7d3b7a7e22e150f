"""Attention masks of the translation objectives (TLM, CAMLM, BTMLM).

Every mask here is a boolean `[B, 1, L, L]` array (query axis, then key axis; True = the query may
attend to the key), the form `Model(..., attention_mask=...)` takes. Padding keys are never
attended. Padding queries get an all-False row (as `attention.segment_mask`): the model keeps
such rows finite and nothing reads them.

Sides of a parallel row follow the pipeline's segment ids: `<s> x </s>` is segment 1 (side x) and
`</s> y </s>` is segment 2 (side y). The special tokens therefore belong to the side whose
segment they carry; they are never masked, so this only decides what they may see and who may
see them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

X_SIDE, Y_SIDE = 1, 2
CAMLM_MODES = ("two_pass", "single_pass")


def _to_mask(allowed: jax.Array) -> jax.Array:
  return allowed[:, None, :, :]


def _self(segment_ids: jax.Array) -> jax.Array:
  length = segment_ids.shape[1]
  return jnp.eye(length, dtype=jnp.bool_)[None, :, :]


def full_pair_mask(segment_ids: jax.Array) -> jax.Array:
  """TLM: every real query attends to every real key of both sides (not block-diagonal)."""
  real = segment_ids != 0
  return _to_mask(real[:, :, None] & real[:, None, :])


def camlm_two_pass_mask(segment_ids: jax.Array, predicted_side: int) -> jax.Array:
  """One pass of exact CAMLM, predicting `predicted_side` (1 = x, 2 = y) from the other side.

  Queries of the predicted side see the other side's keys and their own position only, never
  another token of their own side; queries of the other side see only their own side. So at
  any depth a predicted-side hidden state depends on its own input token and the other side,
  nothing else.
  """
  if predicted_side not in (X_SIDE, Y_SIDE):
    raise ValueError(f"predicted_side must be {X_SIDE} (x) or {Y_SIDE} (y), got {predicted_side}")
  other_side = Y_SIDE if predicted_side == X_SIDE else X_SIDE
  q_pred = (segment_ids == predicted_side)[:, :, None]
  q_other = (segment_ids == other_side)[:, :, None]
  k_other = (segment_ids == other_side)[:, None, :]
  # The other side must not see the predicted side either: at the next layer the predicted side
  # reads those states, which would carry its own context back to it.
  allowed = (q_pred & (k_other | _self(segment_ids))) | (q_other & k_other)
  return _to_mask(allowed)


def camlm_single_pass_mask(segment_ids: jax.Array) -> jax.Array:
  """Cheap CAMLM: each side's queries see the other side's keys and their own position.

  From the second layer on, x reaches x through y (x -> y -> x), which the two-pass mode rules
  out; tests show both behaviours.
  """
  q_x = (segment_ids == X_SIDE)[:, :, None]
  q_y = (segment_ids == Y_SIDE)[:, :, None]
  k_x = (segment_ids == X_SIDE)[:, None, :]
  k_y = (segment_ids == Y_SIDE)[:, None, :]
  # Self-attention on real tokens only: padding queries keep their all-False rows.
  own = _self(segment_ids) & (segment_ids != 0)[:, :, None]
  return _to_mask((q_x & k_y) | (q_y & k_x) | own)


def btmlm_generation_mask(is_source: jax.Array, is_placeholder: jax.Array) -> jax.Array:
  """BTMLM step 1: source tokens see only the source; placeholders see source and placeholders.

  Source hidden states are therefore exactly those of the source sentence alone, whatever the
  placeholders carry (ids, language, positions).
  """
  q_src, q_ph = is_source[:, :, None], is_placeholder[:, :, None]
  k_src, k_ph = is_source[:, None, :], is_placeholder[:, None, :]
  return _to_mask((q_src & k_src) | (q_ph & (k_src | k_ph)))


def btmlm_training_mask(is_source: jax.Array, is_placeholder: jax.Array) -> jax.Array:
  """BTMLM step 2: full attention over [masked source ; pseudo tokens], padding excluded."""
  real = is_source | is_placeholder
  return _to_mask(real[:, :, None] & real[:, None, :])
