"""Cross-attention masked language modelling (ERNIE-M): predict one side only from the other.

Input and masking as TLM (`<s> x </s> </s> y </s>`, `mlm_mask` over both sides), but attention is
restricted so a masked token of x is recovered from y, not from x's own context:

- `camlm_mode="two_pass"` (exact, default): pass x lets x-queries see y-keys and their own
  position, y-queries see only y; its logits are used for the masked tokens of x. Pass y mirrors
  it for the masked tokens of y. Two forward passes over the same corrupted row.
- `camlm_mode="single_pass"`: x-queries see y + self, y-queries see x + self, one pass for both
  sides. After two layers x reaches x through y (the cheaper reading of the paper).

Sides follow segment ids: `<s>` and the first `</s>` belong to x, `</s> y </s>` to y (see
attention_patterns). Positions are continuous over the pair by default (ERNIE-M continues
positions, as its BTMLM does); `reset_positions` restarts them on y as TLM does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xlm_jax.objectives import attention_patterns as patterns
from xlm_jax.objectives.base import (Objective, ObjectiveContext, merged_config,
                                     weighted_cross_entropy)
from xlm_jax.objectives.masking import masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import mask_tokens
from xlm_jax.objectives.pair_inputs import pair_model_inputs
from xlm_jax.registry import OBJECTIVES


def default_config() -> dict:
  return masking_config(
      camlm_mode="two_pass",   # "two_pass" (exact) | "single_pass" (x reaches x after 2 layers)
      reset_positions=False,   # True: y's positions restart at pad_id + 1 (as TLM)
  )


def _mode(cfg) -> str:
  mode = cfg["camlm_mode"]
  if mode not in patterns.CAMLM_MODES:
    raise ValueError(f"objectives.camlm.camlm_mode must be one of {list(patterns.CAMLM_MODES)}, "
                     f"got {mode!r}")
  return mode


def camlm_logits(params, masked_ids, batch, label_positions, dropout_rng, ctx: ObjectiveContext):
  """Logits [B, P, V] at `label_positions` of the corrupted pair `masked_ids`, per `camlm_mode`.

  In two-pass mode each label slot takes its logits from the pass predicting its own side
  (slots on padding, which carry weight 0, take pass y's).
  """
  cfg = merged_config(ctx, default_config)
  mode = _mode(cfg)
  segment_ids = batch["segment_ids"]
  inputs = pair_model_inputs(batch, ctx, cfg["reset_positions"])

  def forward(attention_mask, rng):
    return ctx.model.apply({"params": params}, masked_ids, label_positions=label_positions,
                           attention_mask=attention_mask, deterministic=not ctx.train,
                           rngs={"dropout": rng}, **inputs)

  if mode == "single_pass":
    return forward(patterns.camlm_single_pass_mask(segment_ids), dropout_rng)
  # Each pass gets its own dropout key: the passes are separate forwards over the same row.
  rng_x, rng_y = jax.random.split(dropout_rng)
  # Both passes read the same corrupted row: the side used as context keeps its own masked
  # tokens hidden, so no label of one side leaks into the pass that predicts the other.
  logits_x = forward(patterns.camlm_two_pass_mask(segment_ids, patterns.X_SIDE), rng_x)
  logits_y = forward(patterns.camlm_two_pass_mask(segment_ids, patterns.Y_SIDE), rng_y)
  # Both passes project all P slots to the vocabulary (shapes stay static); each slot then keeps
  # the pass that predicts its own side.
  side = jnp.take_along_axis(segment_ids, label_positions, axis=1)
  return jnp.where((side == patterns.X_SIDE)[..., None], logits_x, logits_y)


def camlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at the masked tokens of both sides, each predicted from the other side; no
  extra state."""
  cfg = merged_config(ctx, default_config)
  _mode(cfg)   # a bad mode fails before any work is traced
  mask_rng, dropout_rng = jax.random.split(rng)
  segment_ids = batch["segment_ids"]
  masked = mask_tokens(mask_rng, batch["input_ids"], batch["lang_ids"], ctx, cfg,
                       eligible=segment_ids != 0)
  logits = camlm_logits(params, masked.input_ids, batch, masked.positions, dropout_rng, ctx)
  loss, metrics = weighted_cross_entropy(logits, masked.labels, masked.weights,
                                         cfg["label_smoothing"], ctx.model.config.vocab_size)
  return loss, metrics, ctx.extra


def predictions_per_token(config, seq_len: int) -> float:
  """The MLM's share per pass: two_pass computes logits at every slot twice (one pass per side).

  (The encoder also runs twice in two_pass mode; this counts only the vocabulary head.)
  """
  cfg = {**default_config(), **dict(config)}
  passes = 2 if cfg["camlm_mode"] == "two_pass" else 1
  return passes * masked_predictions_per_token(cfg, seq_len)


OBJECTIVES.register("camlm")(Objective(
    name="camlm", batch_kind="parallel", loss_fn=camlm_loss, default_config=default_config,
    predictions_per_token=predictions_per_token))
