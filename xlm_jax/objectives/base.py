"""The contract every objective implements.

An objective is a pure loss function plus a little metadata:

    loss_fn(params, batch, rng, ctx) -> (scalar_loss, metrics)

`batch` is the batch kind the objective declares ("mono", later "parallel", ...), already on
device; `rng` is a fresh key per step and objective; `ctx` holds static things (the Flax model,
the objective's config, special token ids). The trainer sums or alternates objectives, takes
gradients and applies the optimizer, so an objective never touches optimizer state.

Objectives that carry state beyond params (a momentum encoder, a key queue, EMA buffers) declare
`init_extra_state`; the trainer stores that pytree in `TrainState.extra[name]`, checkpoints it,
and passes it as `ctx.extra`. Such a loss returns `(loss, metrics, new_extra)` instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
  """Static inputs of a loss function (closed over by the jitted step)."""
  model: nn.Module
  config: Mapping[str, Any]           # this objective's config section, as a plain dict
  vocab_size: int
  mask_id: int
  pad_id: int
  special_ids: tuple[int, ...]
  languages: tuple[str, ...]
  train: bool = True                  # dropout on, and the trainer's RNG drives masking
  extra: Any = None                   # this objective's extra state, if it declares any


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  batch_kind: str
  loss_fn: Callable[..., Any]
  default_config: Callable[[], Any]
  init_extra_state: Callable[..., Any] | None = None
  # Metric whose (weighted) mean the evaluator reports as this objective's held-out score.
  eval_metrics: tuple[str, ...] = ("loss", "accuracy")


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy and accuracy over positions with weight > 0.

  The mean is over the global batch (jit sees global arrays), so it does not depend on how the
  batch is sharded. Returns the loss and metrics with `weight` = number of labelled positions,
  which the evaluator uses to combine batches exactly.
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits)
  # take_along_axis, not a one-hot product: no [B, P, V] target tensor, and no 0 * -inf = NaN.
  per_token = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  if label_smoothing:
    per_token = (1.0 - label_smoothing) * per_token - label_smoothing * jnp.mean(log_probs, -1)
  # Padding slots may hold anything (even -inf logits); they must not reach the sum.
  per_token = jnp.where(weights > 0, per_token, 0.0)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  loss = jnp.sum(per_token * weights) / total
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  accuracy = jnp.sum(correct * weights) / total
  return loss, {"loss": loss, "accuracy": accuracy, "weight": jnp.sum(weights)}
