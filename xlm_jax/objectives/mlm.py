"""Masked language modelling (XLM-R; with language embeddings on, XLM's MLM).

The loss itself is mlm_core.masked_lm_loss, which the MLM-based objectives share.
"""
from __future__ import annotations

from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.objectives.masking import masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import masked_lm_loss
from xlm_jax.registry import OBJECTIVES


def default_config() -> dict:
  return masking_config()


def mlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at masked positions of monolingual streams; no extra state."""
  loss, metrics = masked_lm_loss(params, batch, rng, ctx)
  return loss, metrics, ctx.extra


OBJECTIVES.register("mlm")(Objective(
    name="mlm", batch_kind="mono", loss_fn=mlm_loss, default_config=default_config,
    predictions_per_token=masked_predictions_per_token))
