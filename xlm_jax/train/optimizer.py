"""AdamW (or AMSGrad, EMS's optimiser) with warm-up, a decay schedule, global-norm clipping and
weight-decay masking."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "amsgrad")
SCHEDULES = ("linear", "cosine", "inverse_sqrt", "constant")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then linear / cosine / inverse-sqrt / constant."""
  peak = cfg.learning_rate
  # Clamped so a warm-up longer than the run still leaves optax a decay of at least one step.
  warmup = max(0, min(cfg.warmup_steps, total_steps))
  decay_steps = max(1, total_steps - warmup)
  end = peak * cfg.end_lr_ratio
  if cfg.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif cfg.schedule == "cosine":
    # alpha is the final fraction of peak, so cosine ends where linear does.
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
  elif cfg.schedule == "inverse_sqrt":
    # fairseq's inverse_sqrt: lr = peak * sqrt(warmup / step) after warm-up.
    # join_schedules restarts `count` at 0 after warm-up, so count + warmup is the global step.
    scale = max(warmup, 1)
    decay = lambda count: peak * jnp.sqrt(scale / (count + scale))
  elif cfg.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
  if warmup == 0:
    return decay
  # The decay schedule counts from 0 at the boundary, so it starts at peak where warm-up ends.
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


# Weight decay on matrices only: every Dense kernel and Embed table of the models here, which Flax
# names `kernel` and `embedding` (their language-specific copies keep the names). Biases and
# LayerNorm scales are not decayed (BERT/XLM-R practice). By name, not by rank: q/k/v biases are
# [heads, head_dim], and scan_layers stacks every bias and LayerNorm scale on a leading layers axis,
# so a rank rule would decay them.
DECAYED_NAMES = ("kernel", "embedding")


def decay_mask(params):
  """True for the leaves weight decay applies to (DECAYED_NAMES), False for the rest."""
  def decayed(path, _):
    # The last dict key is the parameter's name (a boxed nn.Partitioned adds a `.value` after it).
    names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
    return bool(names) and names[-1] in DECAYED_NAMES
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(cfg, total_steps)
  parts = []
  # Clipping comes first: the global norm is that of the raw gradients, before Adam rescales them.
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.name == "amsgrad":
    # AMSGrad keeps the running maximum of the second moment; decoupled decay as in AdamW.
    parts.append(optax.scale_by_amsgrad(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    if cfg.weight_decay:
      parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
  else:
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
