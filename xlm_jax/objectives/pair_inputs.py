"""Model inputs of a "parallel" row `<s> x </s> </s> y </s>` (TLM, CAMLM; no objective here).

Segment 1 is `<s> x </s>`, segment 2 `</s> y </s>`. With `reset_positions` y's positions restart
at pad_id + 1 on its leading `</s>`, mirroring x's `<s>` (XLM's TLM); otherwise they continue
from x as the pipeline wrote them (ERNIE-M, which continues positions across the pair).
"""
from __future__ import annotations

from xlm_jax.models.attention import segment_position_ids
from xlm_jax.objectives.base import ObjectiveContext


def pair_model_inputs(batch, ctx: ObjectiveContext, reset_positions: bool) -> dict:
  """Position ids (restarting on y or continuous) and language ids of a "parallel" batch."""
  if reset_positions:
    position_ids = segment_position_ids(batch["segment_ids"], ctx.pad_id)
  else:
    position_ids = batch["position_ids"]
  inputs = dict(position_ids=position_ids)
  # Each token carries its own side's language id, so x and y get different embeddings.
  if ctx.model.config.num_languages:
    inputs["lang_ids"] = batch["lang_ids"]
  return inputs
