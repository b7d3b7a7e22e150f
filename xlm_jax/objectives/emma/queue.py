"""The non-gradient state updates of EMMA-X: key queue, momentum key encoder, rank-mean EMA.

All pure functions of arrays: the caller threads the results through TrainState.extra.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def enqueue(queue: jax.Array, pointer: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Writes `keys` [n, d] at queue rows pointer, pointer+1, ... (mod K); returns (queue, pointer).

  The oldest keys are overwritten first. n may be any size up to K: a write that runs past the
  end wraps around to row 0 (the reference code needs K % n == 0 instead).
  """
  size, n = queue.shape[0], keys.shape[0]
  if n > size:
    raise ValueError(f"emma_x.queue_size ({size}) must be >= the keys enqueued per step ({n} = "
                     "2 x batch pairs + mono_candidates); raise queue_size or lower the batch")
  rows = (pointer + jnp.arange(n, dtype=pointer.dtype)) % size
  queue = queue.at[rows].set(jax.lax.stop_gradient(keys).astype(queue.dtype))
  return queue, ((pointer + n) % size).astype(pointer.dtype)


def momentum_update(key_params, query_params, momentum: float):
  """k <- m k + (1 - m) q, leaf by leaf (the key encoder never gets gradients)."""
  return jax.tree.map(
      lambda k, q: (momentum * k + (1.0 - momentum) * q.astype(k.dtype)).astype(k.dtype),
      key_params, query_params)


def update_rank_means(rank_means: jax.Array, rank_weight: jax.Array, similarities: jax.Array,
                      ranks: jax.Array, alpha: float,
                      weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """m_r <- (1 - alpha) m_r + alpha * mean(S over cells of rank r), for ranks present.

  Also w_r <- (1 - alpha) w_r + alpha: the total weight the EMA has given to observed batches
  (1 - (1 - alpha)^n after n updates), for `current_rank_means`. Ranks with no cell in this
  batch keep both. Under jit the arrays are the global batch, so this is the mean over the
  data gathered from every device.
  """
  num_ranks = rank_means.shape[0]
  one_hot = jax.nn.one_hot(ranks, num_ranks, dtype=jnp.float32)            # [..., N]
  if weights is not None:
    one_hot = one_hot * weights[..., None].astype(jnp.float32)
  axes = tuple(range(one_hot.ndim - 1))
  counts = jnp.sum(one_hot, axis=axes)
  sums = jnp.sum(one_hot * similarities[..., None].astype(jnp.float32), axis=axes)
  batch_means = sums / jnp.maximum(counts, 1.0)
  present = counts > 0
  means = jnp.where(present, (1.0 - alpha) * rank_means + alpha * batch_means, rank_means)
  weight = jnp.where(present, (1.0 - alpha) * rank_weight + alpha, rank_weight)
  return means.astype(rank_means.dtype), weight.astype(rank_weight.dtype)


def current_rank_means(rank_means: jax.Array, rank_weight: jax.Array, debias: bool) -> jax.Array:
  """The rank means the encoder-side ranks compare with.

  debias=False: the EMA as it stands, which starts at 0 (the reference code): with alpha =
  0.001 it needs thousands of steps to leave 0. debias=True: m_r / w_r, the same exponentially
  weighted mean over the batches seen so far without the pull of the zero start (as Adam's bias
  correction); 0 for a rank never seen.
  """
  if not debias:
    return rank_means
  return jnp.where(rank_weight > 0, rank_means / jnp.maximum(rank_weight, 1e-30), 0.0)
