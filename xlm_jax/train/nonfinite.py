"""Non-finite training steps: dropped inside the jitted step, watched on the host.

`skip_nonfinite` wraps every update function the trainer jits: an update whose loss or gradient
norm is NaN or inf leaves the state as it was. The train loop reads the steps' skip flags when it
reads metrics anyway (log steps, and before every checkpoint), and `NonFiniteWatch` decides, by
`train.nonfinite` and `train.max_consecutive_nonfinite`, whether to go on.
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np


# =============================================================================================
# Non-finite updates: a NaN or inf loss or gradient is dropped inside the jitted step
# =============================================================================================


# What the train loop does about a skipped step (config train.nonfinite): go on, or stop.
NONFINITE_MODES = ("skip", "stop")


def is_nonfinite_key(key: str) -> bool:
  """Metrics a non-finite update shows in: the total loss, each objective's losses and the
  gradient norms (a norm is finite exactly when every gradient entry is)."""
  return key in ("loss", "grad_norm") or key.endswith(("/loss", "_loss", "grad_norm"))


def skip_nonfinite(step_fn):
  """Wraps `step_fn(state, batches) -> (state, metrics)` so that an update whose loss or
  gradient norm is NaN or inf leaves the state as it was, and reports it.

  The choice is a `jnp.where` on one all-finite flag, per array, inside the jitted step: no
  host sync, and XLA fuses it into the update, so the donated buffers are still updated in
  place. A skipped step keeps params, optimizer state, `rng` and the objectives' extra state bit
  for bit. Optax's own count stays too (as with `optax.apply_if_finite`): bias correction and the
  learning rate actually applied lag `step` by the number of skips.

  `state.step` still advances: the step's batch was drawn, and the data position, the per-step
  key (`fold_in(rng, step)`), the stage and the alternating group all follow `step`. So step N
  of a checkpoint is always "N batches consumed", and a resumed run draws the same batches and
  keys as one never interrupted. Metrics gain `nonfinite_skipped` (1.0 or 0.0).
  """
  def guarded(state, batches):
    new_state, metrics = step_fn(state, batches)
    checked = [jnp.all(jnp.isfinite(v)) for k, v in metrics.items() if is_nonfinite_key(k)]
    finite = jnp.all(jnp.stack(checked)) if checked else jnp.asarray(True)
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                        new_state.replace(step=state.step), state)
    metrics = dict(metrics, nonfinite_skipped=1.0 - finite.astype(jnp.float32))
    return kept.replace(step=new_state.step), metrics
  return guarded


# =============================================================================================
# Non-finite steps: the jitted step never applies one (skip_nonfinite above); the host learns
# of it when it reads metrics anyway (every log step, and before every checkpoint, so a stopped
# run never saves a state from after the bad step) and decides whether to go on.
# =============================================================================================


class NonFiniteError(ValueError):
  """The run stopped on non-finite steps (train.nonfinite, train.max_consecutive_nonfinite).
  A ValueError: the command prints its one-paragraph message and exits with status 2."""


def describe_nonfinite(step: int, group, metrics) -> str:
  """'step 7: loss of objective 'mlm' is not finite (loss=nan, mlm/loss=nan, grad_norm=nan)'."""
  bad = [k for k in sorted(metrics)
         if is_nonfinite_key(k) and not np.all(np.isfinite(metrics[k]))]
  named = [n for n in group if any(k.startswith(f"{n}/") for k in bad)] or list(group)
  what = "loss" if any(k.endswith("loss") for k in bad) else "gradient"
  values = ", ".join(f"{k}={float(np.asarray(metrics[k]).max()):g}" for k in bad)
  return (f"step {step}: {what} of objective{'s' if len(named) > 1 else ''} "
          f"{', '.join(map(repr, named))} is not finite ({values})")


class NonFiniteWatch:
  """Counts skipped steps from the metrics, in step order, and says when to stop."""

  def __init__(self, mode: str, max_consecutive: int):
    self.mode, self.max_consecutive = mode, max_consecutive
    self.total = 0        # steps skipped in this run (this process's part of it)
    self.consecutive = 0  # non-finite steps in a row, up to the last one seen

  def observe(self, step: int, group, metrics) -> str | None:
    """Records one step's host metrics; returns why to stop, or None to go on."""
    if not metrics.get("nonfinite_skipped"):
      self.consecutive = 0
      return None
    self.total += 1
    self.consecutive += 1
    what = describe_nonfinite(step, group, metrics)
    if self.mode == "stop":
      return f"{what}, and train.nonfinite='stop'"
    if self.consecutive > self.max_consecutive:
      return (f"{what}, {self.consecutive} steps in a row (steps "
              f"{step - self.consecutive + 1}-{step}) while train.max_consecutive_nonfinite is "
              f"{self.max_consecutive}")
    logging.warning("%s: the update was skipped (params and optimizer state unchanged)", what)
    return None


def nonfinite_error(reason: str, checkpointer) -> NonFiniteError:
  latest = checkpointer.latest_step()
  kept = (f"the last checkpoint, step {latest} ({checkpointer.directory / str(latest)}), is "
          "from before it and is kept" if latest else "no checkpoint was written before it")
  return NonFiniteError(
      f"non-finite training step, {reason}. The update was not applied and nothing after it was "
      f"saved: {kept}. A rerun resumes there and meets the same batches with the same keys, so "
      "change something first: lower optimizer.learning_rate, set optimizer.clip_norm, or "
      "let it pass with train.nonfinite='skip' (and a larger train.max_consecutive_nonfinite)")
