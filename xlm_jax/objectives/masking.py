"""Jitted BERT/XLM-R token masking: choose positions, then 80% <mask> / 10% random / 10% same.

The number of predictions per row is fixed at `max_predictions(seq_len, rate)` so shapes are
static under jit; rows use a per-row count n = floor(rate * eligible + u), u ~ U(0, 1) (fairseq's
unbiased rounding), and the unused slots get weight 0. Positions are returned so the model can
gather hidden states *before* the vocabulary projection.

Also here, because every masked-token objective shares them: the masking config fields
(`masking_config`) and the share of a row that gets vocabulary logits
(`masked_predictions_per_token`, the default of Objective.predictions_per_token). This module
depends on nothing in the package, so base.py can import it.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp


class MaskedTokens(NamedTuple):
  input_ids: jax.Array        # [B, L] with the chosen positions corrupted
  positions: jax.Array        # [B, P] int32, positions to predict (valid where weights > 0)
  labels: jax.Array           # [B, P] int32, the original tokens there
  weights: jax.Array          # [B, P] float32, 1 for real predictions, 0 for padding slots


def max_predictions(seq_len: int, mask_rate: float) -> int:
  """Static number of prediction slots per row (an upper bound of the per-row count)."""
  return max(1, math.ceil(mask_rate * seq_len))


def masking_config(**overrides) -> dict:
  """The config fields of every masked-token objective (BERT/XLM-R's 15% and 80/10/10), with
  `weight`; objectives add their own fields next to them."""
  fields = dict(
      weight=1.0,              # weight in the summed loss / sampling weight when alternating
      mask_rate=0.15,          # share of non-special tokens chosen for prediction
      mask_token_rate=0.8,     # of the chosen: replaced by <mask>
      random_token_rate=0.1,   # of the chosen: replaced by a random id (of the token's language
                               # where the vocabulary is split by language)
      label_smoothing=0.0,
  )
  fields.update(overrides)
  return fields


def masked_predictions_per_token(config: Mapping[str, Any], seq_len: int) -> float:
  """Share of a row's tokens that get vocabulary logits under `mlm_mask`: all of its static
  slots, used or not (the model computes logits for weight-0 slots too)."""
  return max_predictions(seq_len, config.get("mask_rate", 0.15)) / seq_len


def mlm_mask(rng: jax.Array, input_ids: jax.Array, *, special_ids: Sequence[int], mask_id: int,
             vocab_size: int, mask_rate: float = 0.15, mask_token_rate: float = 0.8,
             random_token_rate: float = 0.1, eligible: jax.Array | None = None,
             random_low: jax.Array | int | None = None,
             random_high: jax.Array | int | None = None) -> MaskedTokens:
  """Chooses `mask_rate` of the non-special tokens of each row and corrupts them.

  Args:
    rng: PRNG key; a new one every step.
    input_ids: [B, L] int32.
    special_ids: ids never chosen (bos, pad, eos, unk, mask, language tags).
    mask_id: id written at `mask_token_rate` of the chosen positions.
    vocab_size: random replacements are drawn from [random_low, random_high), by default the
      whole vocabulary above the special ids.
    eligible: optional [B, L] bool restricting which positions may be chosen (e.g. x only).
    random_low / random_high: optional bounds for random replacements, used where the
      vocabulary is split by language: a scalar, per row [B], or per token [B, L] (a parallel
      row whose two sides are in two languages).
  """
  batch, seq_len = input_ids.shape
  num_slots = max_predictions(seq_len, mask_rate)
  k_choose, k_round, k_kind, k_random = jax.random.split(rng, 4)

  is_special = jnp.isin(input_ids, jnp.asarray(tuple(special_ids), dtype=input_ids.dtype))
  can_mask = ~is_special if eligible is None else (~is_special & eligible)
  num_eligible = jnp.sum(can_mask, axis=-1)
  count = jnp.floor(mask_rate * num_eligible + jax.random.uniform(k_round, (batch,)))
  count = jnp.minimum(count.astype(jnp.int32), jnp.minimum(num_eligible, num_slots))

  # The `count` eligible positions with the smallest random scores are chosen.
  scores = jnp.where(can_mask, jax.random.uniform(k_choose, (batch, seq_len)), 2.0)
  _, positions = jax.lax.top_k(-scores, num_slots)
  positions = positions.astype(jnp.int32)
  chosen = jnp.arange(num_slots)[None, :] < count[:, None]
  labels = jnp.take_along_axis(input_ids, positions, axis=1)

  low = _bounds_at(max(special_ids) + 1 if random_low is None else random_low, positions,
                  (batch, seq_len), num_slots)
  high = _bounds_at(vocab_size if random_high is None else random_high, positions,
                    (batch, seq_len), num_slots)
  random_ids = jax.random.randint(k_random, (batch, num_slots), low, high, dtype=jnp.int32)

  u = jax.random.uniform(k_kind, (batch, num_slots))
  to_mask = chosen & (u < mask_token_rate)
  to_random = chosen & (u >= mask_token_rate) & (u < mask_token_rate + random_token_rate)
  new_ids = jnp.where(to_mask, mask_id, jnp.where(to_random, random_ids, labels))
  rows = jnp.arange(batch)[:, None]
  corrupted = input_ids.at[rows, positions].set(new_ids.astype(input_ids.dtype))
  return MaskedTokens(corrupted, positions, labels.astype(jnp.int32), chosen.astype(jnp.float32))


def _bounds_at(bound, positions: jax.Array, ids_shape: tuple[int, int], num_slots: int) -> jax.Array:
  """A scalar, [B] or [B, L] replacement bound as [B, num_slots] at the chosen positions."""
  bound = jnp.asarray(bound, jnp.int32)
  if bound.shape == ids_shape:
    return jnp.take_along_axis(bound, positions, axis=1)
  return jnp.broadcast_to(bound.reshape(-1, 1), (ids_shape[0], num_slots))
