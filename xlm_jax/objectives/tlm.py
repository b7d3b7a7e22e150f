"""Translation language modelling (XLM): MLM over a sentence and its translation side by side.

A "parallel" row is `<s> x </s> </s> y </s>` + padding, segment 1 on `<s> x </s>` and segment 2 on
`</s> y </s>`. Tokens of both sides are masked (one `mlm_mask` over the row) and every token
attends to every real token of both sides, so a masked word can be recovered from its
translation. Each token carries its side's language id (batch `lang_ids`) when the model has
language embeddings. With `reset_positions` (XLM's default) y's positions restart at pad_id + 1
on its leading `</s>`, mirroring x's `<s>`; otherwise they continue from x.

Masking (mlm_core.mask_tokens) and the pair's model inputs (pair_inputs) are shared with CAMLM
and BTMLM.
"""
from __future__ import annotations

import jax

from xlm_jax.objectives import attention_patterns
from xlm_jax.objectives.base import (Objective, ObjectiveContext, merged_config,
                                     weighted_cross_entropy)
from xlm_jax.objectives.masking import masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import mask_tokens
from xlm_jax.objectives.pair_inputs import pair_model_inputs
from xlm_jax.registry import OBJECTIVES


def default_config() -> dict:
  return masking_config(
      reset_positions=True,    # y's positions restart at pad_id + 1 (XLM); False = continuous
  )


def tlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at masked tokens of both sides, full attention over the pair; no extra state."""
  cfg = merged_config(ctx, default_config)
  mask_rng, dropout_rng = jax.random.split(rng)
  segment_ids = batch["segment_ids"]
  # One mask over both sides together (XLM draws x's and y's masks jointly, not per side).
  # Per-token lang_ids: a random replacement on y is drawn from y's language, not x's.
  masked = mask_tokens(mask_rng, batch["input_ids"], batch["lang_ids"], ctx, cfg,
                       eligible=segment_ids != 0)
  logits = ctx.model.apply(
      {"params": params}, masked.input_ids, label_positions=masked.positions,
      attention_mask=attention_patterns.full_pair_mask(segment_ids),
      deterministic=not ctx.train, rngs={"dropout": dropout_rng},
      **pair_model_inputs(batch, ctx, cfg["reset_positions"]))
  loss, metrics = weighted_cross_entropy(logits, masked.labels, masked.weights,
                                         cfg["label_smoothing"], ctx.model.config.vocab_size)
  return loss, metrics, ctx.extra


# A parallel row is one row of seq_len masked like a mono row: the MLM's share of logits.
OBJECTIVES.register("tlm")(Objective(
    name="tlm", batch_kind="parallel", loss_fn=tlm_loss, default_config=default_config,
    predictions_per_token=masked_predictions_per_token))
