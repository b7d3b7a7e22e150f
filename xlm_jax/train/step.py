"""The jitted train and eval steps, generic over a set of objectives.

One train step: for each micro-batch (gradient accumulation, `lax.scan`), sum the weighted
objective losses, take gradients, then one optimizer update. Objectives read the batch kind
they declared from `batches[kind]`. The state is donated, so parameters and optimizer moments
are updated in place in device memory. The trainer wraps every update in `nonfinite.skip_nonfinite`:
a step whose loss or gradients are NaN or inf leaves the state as it was.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import optax

from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class BoundObjective:
  """An objective with its config, weight and static context, ready to call in a step."""
  objective: Objective
  weight: float
  context: ObjectiveContext

  @property
  def kinds(self) -> tuple[str, ...]:
    """The batch kinds this objective's steps read."""
    return self.objective.batch_kinds(self.context.config)

  def __call__(self, params, batch, rng, extra=None, train=True):
    """`(loss, metrics, extra_state)` of the objective's loss_fn (see objectives/base.py)."""
    ctx = dataclasses.replace(self.context, train=train, extra=extra)
    out = self.objective.loss_fn(params, batch, rng, ctx)
    # Checked while tracing, so it costs nothing per step and names the objective at fault.
    if not isinstance(out, tuple) or len(out) != 3:
      got = f"a {len(out)}-tuple" if isinstance(out, tuple) else type(out).__name__
      raise TypeError(f"loss_fn of objective {self.objective.name!r} must return (loss, metrics, "
                      f"extra_state), with ctx.extra as extra_state when it keeps none; got {got}")
    return out


def _objectives_loss(bound: Mapping[str, BoundObjective], params, batches, rng, extra, train):
  # One scalar for all objectives: a single backward pass gives the weighted sum of their grads.
  total = 0.0
  metrics, new_extra = {}, dict(extra)
  for i, (name, obj) in enumerate(bound.items()):
    # A key per objective (by position): two objectives never share masks or dropout.
    loss, obj_metrics, obj_extra = obj(params, batches[obj.objective.batch_kind],
                                       jax.random.fold_in(rng, i), extra.get(name), train)
    total = total + obj.weight * loss
    metrics.update({f"{name}/{k}": v for k, v in obj_metrics.items()})
    # None means "no extra state" (ctx.extra handed back): nothing to store under `name`.
    if obj_extra is not None:
      new_extra[name] = obj_extra
  metrics["loss"] = total
  return total, (metrics, new_extra)


def make_train_step(bound: Mapping[str, BoundObjective], tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum_steps: int):
  """Returns `train_step(state, batches) -> (state, metrics)` (not yet jitted).

  With `grad_accum_steps > 1`, every array in `batches` has a leading micro-batch axis.
  """
  grad_fn = jax.value_and_grad(
      lambda p, b, r, e: _objectives_loss(bound, p, b, r, e, True), has_aux=True)

  def train_step(state: TrainState, batches):
    # state.rng never changes; folding in the step gives each step fresh keys, and a resumed run
    # the same keys for the same step.
    step_rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
      (_, (metrics, extra)), grads = grad_fn(state.params, batches, step_rng, state.extra)
    else:
      # The extra state threads through the micro-batches (a key queue sees each one in turn);
      # gradients are summed and averaged after, so each micro-batch counts equally.
      def micro_step(carry, xs):
        grads_sum, extra = carry
        micro_batch, index = xs
        (_, (metrics, extra)), grads = grad_fn(state.params, micro_batch,
                                               jax.random.fold_in(step_rng, index), extra)
        return (jax.tree.map(jnp.add, grads_sum, grads), extra), metrics
      # lax.scan traces micro_step once: compile time and program size do not grow with
      # grad_accum_steps, as they would with an unrolled Python loop.
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, extra), metrics = jax.lax.scan(
          micro_step, (zeros, state.extra), (batches, jnp.arange(grad_accum_steps)))
      # The mean, not the sum: the update's scale and clip_norm do not change with accumulation.
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
      metrics = jax.tree.map(jnp.mean, metrics)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # Clipping happens inside `tx`, so this is the raw norm: it shows how often clip_norm bites.
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)
    metrics["learning_rate"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, extra=extra)
    return new_state, metrics

  return train_step


def make_eval_step(bound: Mapping[str, BoundObjective]):
  """Returns `eval_step(params, extra, batches, rng) -> metrics` (dropout off, fixed RNG)."""
  def eval_step(params, extra, batches, rng):
    # The caller's fixed rng gives the same masks at every evaluation: checkpoints compare.
    # The extra state it returns is dropped: evaluating must not advance, e.g., a key queue.
    _, (metrics, _) = _objectives_loss(bound, params, batches, rng, extra, False)
    return metrics
  return eval_step
