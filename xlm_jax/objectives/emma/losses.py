"""Encoder-side losses of EMMA-X: rank temperatures, encoder ranks and the rank-wise InfoNCE.

Queries are the 2B sentences of a batch of B pairs (x rows, then y rows); candidates are the 2B
keys of the same sentences (then optional monolingual keys), then the queue. So query i's own key
("self") is candidate i and its translation's key is candidate (i + B) mod 2B.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

RINCE_ROWS = ("all", "with_positive")
# Masked logits use a large finite value, not -inf: a row or rank without cells then gives a
# finite (and discarded) value instead of inf - inf = NaN in the forward or backward pass.
_MASKED = -1e9


def rank_temperatures(num_ranks: int, high: float, low: float) -> tuple[float, ...]:
  """tau_i for ranks i = 1 .. N-1, linear from `high` (rank 1) to `low` (rank N-1)."""
  if num_ranks < 2:
    raise ValueError(f"emma_x.num_ranks must be >= 2 (translation + unrelated), got {num_ranks}")
  if num_ranks == 2:
    return (float(low),)
  step = (high - low) / (num_ranks - 2)
  return tuple(float(high - step * (i - 1)) for i in range(1, num_ranks))


def pair_cells(num_pairs: int, num_candidates: int) -> tuple[jax.Array, jax.Array]:
  """Boolean [2B, M] masks of the self cells and the translation cells."""
  rows = jnp.arange(2 * num_pairs)[:, None]
  cols = jnp.arange(num_candidates)[None, :]
  is_self = cols == rows
  is_translation = cols == (rows + num_pairs) % (2 * num_pairs)
  return is_self, is_translation


def encoder_ranks(similarities: jax.Array, rank_means: jax.Array) -> jax.Array:
  """r_enc = argmin_r |S - m_r| (ties go to the lower rank): int32 [Q, M]."""
  distance = jnp.abs(similarities[..., None] - rank_means.astype(similarities.dtype))
  return jnp.argmin(distance, axis=-1).astype(jnp.int32)


def rince_loss(similarities: jax.Array, labels: jax.Array, valid: jax.Array,
               temperatures: tuple[float, ...], rows: str = "all"
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Rank-wise InfoNCE, summed over ranks i = 1 .. N-1:

      L_i = mean_rows -log( mean_{j: y_j = i} e^{S_j/tau_i} / sum_{j: y_j <= i} e^{S_j/tau_i} )

  over the cells with `valid` (the self cell is excluded by the caller). A row without a
  positive of rank i has no term for i; what the mean divides by is `rows`:
    "all" (guopingiie/EMMA-X criterion.py: `-log(mean_prob_pos + 1e-7).mean()` over every row):
        the sum over the rows with a positive, divided by all rows. The reference's rows without
        a positive add the constant -log(1e-7) (no gradient); it is left out here, so the loss
        reads 0 when nothing is to be learned, and the gradient is the reference's.
    "with_positive": divided by the rows that have a positive of rank i, so every rank weighs
        alike however rare its positives (ranks 1..N-2 are rare early on); rescales them against
        "all" by rows / rows-with-positive.
  A rank with no positive in the whole batch contributes 0 (the reference skips it).
  Returns the loss and per-rank metrics ("rank{i}_loss", "rank{i}_rows").
  """
  if rows not in RINCE_ROWS:
    raise ValueError(f"emma_x.rince_rows must be one of {RINCE_ROWS}, got {rows!r}")
  sims = similarities.astype(jnp.float32)
  metrics = {}
  total = jnp.zeros((), jnp.float32)
  for i, tau in enumerate(temperatures, start=1):
    logits = sims / tau
    positive = valid & (labels == i)
    pool = valid & (labels <= i)
    count = jnp.sum(positive, axis=-1)
    has_positive = count > 0
    log_numerator = (jax.nn.logsumexp(jnp.where(positive, logits, _MASKED), axis=-1)
                     - jnp.log(jnp.maximum(count, 1).astype(jnp.float32)))
    log_denominator = jax.nn.logsumexp(jnp.where(pool, logits, _MASKED), axis=-1)
    per_row = jnp.where(has_positive, log_denominator - log_numerator, 0.0)
    with_positive = jnp.sum(has_positive)
    divisor = with_positive if rows == "with_positive" else per_row.shape[0]
    rank_loss = jnp.sum(per_row) / jnp.maximum(divisor, 1).astype(jnp.float32)
    total = total + rank_loss
    metrics[f"rank{i}_loss"] = rank_loss
    metrics[f"rank{i}_rows"] = with_positive.astype(jnp.float32)
  return total, metrics


def translation_accuracy(similarities: jax.Array, is_self: jax.Array,
                         is_translation: jax.Array) -> jax.Array:
  """Share of queries whose most similar candidate (self excluded) is their translation's key."""
  best = jnp.argmax(jnp.where(is_self, -jnp.inf, similarities), axis=-1)
  hit = jnp.take_along_axis(is_translation, best[:, None], axis=-1)[:, 0]
  return jnp.mean(hit.astype(jnp.float32))
