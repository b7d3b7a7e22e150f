"""The contract every objective implements.

An objective is a pure loss function plus a little metadata:

    loss_fn(params, batch, rng, ctx) -> (scalar_loss, metrics, extra_state)

Every loss returns all three; an objective without extra state returns `ctx.extra` (None)
unchanged as the third value, so the step never has to guess the arity.

`batch` is the batch kind the objective declares ("mono", later "parallel", ...), already on
device; `rng` is a fresh key per step and objective; `ctx` holds static things (the Flax model,
the objective's config, special token ids). The trainer sums or alternates objectives, takes
gradients and applies the optimizer, so an objective never touches optimizer state.

Optional hooks, each `None` unless the objective needs it:
- `init_params(rng, ctx)`: trainable parameters of the objective's own heads (EMS's XTR decoder,
  a projection). The trainer stores them at `params["heads"][name]`, next to the encoder's, so
  the optimizer, sharding and checkpoints treat them like any weight; export leaves them out.
  Logical axis names (nn.with_logical_partitioning) shard them like the encoder's.
- `init_extra_state(rng, params, ctx)`: state that is not trained by gradient (a momentum
  encoder, a key queue, EMA buffers). The trainer stores it in `TrainState.extra[name]`,
  checkpoints it, and passes it as `ctx.extra`; the loss returns the updated state third.
- `load_resources(config, corpus, tokenizer, languages) -> dict`: host-side constants read once
  when the run is built (dictionary token pairs); they reach the loss as `ctx.resources` and are
  baked into the jitted step.
- `extra_batch_kinds(config)`: batch kinds read besides `batch_kind` (only with `make_steps`).
- `make_steps(bound, tx, schedule) -> [(name, step_fn), ...]`: objectives whose update is not
  "gradient of a loss" (EMMA-X's E-step and M-step) give their own pure
  `step_fn(state, batches) -> (state, metrics)`; the trainer jits each one separately and runs
  them in order every step. The last one must advance `state.step`.

Metadata with a default:
- `predictions_per_token(config, seq_len) -> float`: the share of a row's token slots
  (rows of `seq_len`, as the trainer counts tokens) that get vocabulary logits in one step, for
  the FLOP count. Default: the masked-LM rate, max_predictions(seq_len, mask_rate) / seq_len.
  `predictions_per_token(bound, seq_len)` below gives a run's value.

Objective modules import each other's code only through the shared helper modules (masking,
mlm_core, pair_inputs, dictionary_swap, attention_patterns, emma/), never another objective
module, and each is named after the key it registers.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.objectives.masking import masked_predictions_per_token


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
  # Devices that split the batch (mesh data * fsdp): per-device variants (e.g. EMS negatives
  # drawn only from a device's own rows) need it; jit itself always sees the global batch.
  data_parallel_size: int = 1
  # Per-language [low, high) id ranges [num_languages, 2] where the vocabulary is split by
  # language (the "no anchors" vocabulary): random MLM replacements stay inside the row's own
  # language. None = the whole vocabulary above the special ids.
  random_ranges: Any = None
  resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # from load_resources
  name: str = ""                      # the objective's name in config.objectives

  def head_params(self, params) -> Any:
    """This objective's own parameters inside the full parameter tree (see `init_params`)."""
    return params["heads"][self.name]


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  batch_kind: str
  loss_fn: Callable[..., Any]
  default_config: Callable[[], Any]
  init_extra_state: Callable[..., Any] | None = None
  init_params: Callable[..., Any] | None = None
  load_resources: Callable[..., Mapping[str, Any]] | None = None
  make_steps: Callable[..., Any] | None = None
  # config -> further batch kinds the objective's steps read (EMMA-X's monolingual candidates);
  # they arrive in the `batches` dict that `make_steps` functions receive.
  extra_batch_kinds: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
  # Metric whose (weighted) mean the evaluator reports as this objective's held-out score.
  eval_metrics: tuple[str, ...] = ("loss", "accuracy")
  # (config, seq_len) -> share of a row's tokens that get vocabulary logits (module docstring).
  # The default suits anything that masks `mask_rate` of a row like the MLM.
  predictions_per_token: Callable[[Mapping[str, Any], int], float] = masked_predictions_per_token

  def batch_kinds(self, config: Mapping[str, Any]) -> tuple[str, ...]:
    """Every batch kind a step of this objective reads, its own first."""
    extra = self.extra_batch_kinds(config) if self.extra_batch_kinds is not None else ()
    return (self.batch_kind,) + tuple(k for k in extra if k != self.batch_kind)


def merged_config(ctx: ObjectiveContext, defaults: Callable[[], Mapping[str, Any]]) -> dict:
  """The objective's config section over its defaults (an experiment may set only some fields)."""
  return {**defaults(), **dict(ctx.config)}


def predictions_per_token(bound_objectives: Mapping[str, Any], seq_len: int) -> float:
  """The largest `Objective.predictions_per_token` among a run's objectives.

  `bound_objectives` maps names to BoundObjectives (anything with `.objective` and
  `.context.config`) or to bare Objectives (read with their default config). The max, not a sum:
  the trainer counts FLOPs per token of one batch, and where objectives alternate a step runs
  one of them, so the max bounds any step. (Objectives summed in one step each read their own
  batch, which a per-token count of one batch misses either way.) 0.0 for no objectives.
  """
  values = []
  for entry in bound_objectives.values():
    if hasattr(entry, "objective"):
      objective, config = entry.objective, entry.context.config
    else:
      objective, config = entry, entry.default_config()
    # Defaults under the run's fields: a hand-built context may carry only the fields it changes.
    config = {**objective.default_config(), **dict(config)}
    values.append(float(objective.predictions_per_token(config, seq_len)))
  return max(values, default=0.0)


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0, vocab_size: int | None = None
                           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy and accuracy over positions with weight > 0.

  The mean is over the global batch (jit sees global arrays), so it does not depend on how the
  batch is sharded. Returns the loss and metrics with `weight` = number of labelled positions,
  which the evaluator uses to combine batches exactly.

  vocab_size: the real vocabulary when the logits carry the model's padding columns (their
  width is config.padded_vocab_size): label smoothing spreads its mass over the real columns
  only. None = every column is real. The padding logits themselves need nothing here: they are
  masked (models/encoder.py), so they have probability 0 and never win the argmax.
  """
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits)
  # take_along_axis, not a one-hot product: no [B, P, V] target tensor, and no 0 * -inf = NaN.
  per_token = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  if label_smoothing:
    columns = logits.shape[-1]
    if vocab_size is None or vocab_size >= columns:
      uniform_log_prob = jnp.mean(log_probs, -1)
    else:
      # A padding column's log-probability is about -2e38: averaged in, it would swamp the loss.
      is_real = jnp.arange(columns) < vocab_size
      uniform_log_prob = jnp.sum(jnp.where(is_real, log_probs, 0.0), axis=-1) / vocab_size
    per_token = (1.0 - label_smoothing) * per_token - label_smoothing * uniform_log_prob
  # Padding slots may hold anything (even -inf logits); they must not reach the sum.
  per_token = jnp.where(weights > 0, per_token, 0.0)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  loss = jnp.sum(per_token * weights) / total
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  accuracy = jnp.sum(correct * weights) / total
  return loss, {"loss": loss, "accuracy": accuracy, "weight": jnp.sum(weights)}
