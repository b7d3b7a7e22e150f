"""Translation language modelling (XLM): MLM over a sentence and its translation side by side.

A "parallel" row is `<s> x </s> </s> y </s>` + padding, segment 1 on `<s> x </s>` and segment 2 on
`</s> y </s>`. Tokens of both sides are masked (one `mlm_mask` over the row) and every token
attends to every real token of both sides, so a masked word can be recovered from its
translation. Each token carries its side's language id (batch `lang_ids`) when the model has
language embeddings. With `reset_positions` (XLM's default) y's positions restart at pad_id + 1
on its leading `</s>`, mirroring x's `<s>`; otherwise they continue from x.

The helpers `merged_config`, `mask_tokens` and `pair_model_inputs` are shared with CAMLM and BTMLM.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from xlm_jax.models.attention import segment_position_ids
from xlm_jax.objectives import attention_patterns
from xlm_jax.objectives.base import Objective, ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.masking import MaskedTokens, mlm_mask
from xlm_jax.registry import OBJECTIVES
from xlm_jax.objectives.mlm import masking_config


def default_config() -> dict:
  return masking_config(
      reset_positions=True,    # y's positions restart at pad_id + 1 (XLM); False = continuous
  )


def merged_config(ctx: ObjectiveContext, defaults: Callable[[], dict]) -> dict:
  """The objective's config section over its defaults (an experiment may set only some fields)."""
  return {**defaults(), **dict(ctx.config)}


def mask_tokens(rng: jax.Array, input_ids: jax.Array, lang_ids: jax.Array, ctx: ObjectiveContext,
                cfg: Mapping[str, Any], eligible: jax.Array | None = None) -> MaskedTokens:
  """`mlm_mask` whose random replacements come from each masked token's own language.

  With `ctx.random_ranges` (a vocabulary split by language, [num_languages, 2] [low, high)),
  the replacement for a token is drawn from the range of `lang_ids` at that token, so on a
  parallel row x and y each keep their own language. Without ranges the whole vocabulary above
  the special ids is used.
  """
  input_ids, lang_ids = jnp.asarray(input_ids), jnp.asarray(lang_ids)
  bounds = {}
  if ctx.random_ranges is not None:
    ranges = jnp.asarray(ctx.random_ranges, jnp.int32)[lang_ids]  # [B, L, 2]: per token
    bounds = {"random_low": ranges[..., 0], "random_high": ranges[..., 1]}
  return mlm_mask(rng, input_ids, special_ids=ctx.special_ids, mask_id=ctx.mask_id,
                  vocab_size=ctx.vocab_size, mask_rate=cfg["mask_rate"],
                  mask_token_rate=cfg["mask_token_rate"],
                  random_token_rate=cfg["random_token_rate"], eligible=eligible, **bounds)


def pair_model_inputs(batch, ctx: ObjectiveContext, reset_positions: bool) -> dict:
  """Position ids (restarting on y or continuous) and language ids of a "parallel" batch."""
  if reset_positions:
    position_ids = segment_position_ids(batch["segment_ids"], ctx.pad_id)
  else:
    position_ids = batch["position_ids"]
  inputs = dict(position_ids=position_ids)
  if ctx.model.config.num_languages:
    inputs["lang_ids"] = batch["lang_ids"]
  return inputs


def tlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at masked tokens of both sides, full attention over the pair."""
  cfg = merged_config(ctx, default_config)
  mask_rng, dropout_rng = jax.random.split(rng)
  segment_ids = batch["segment_ids"]
  masked = mask_tokens(mask_rng, batch["input_ids"], batch["lang_ids"], ctx, cfg,
                       eligible=segment_ids != 0)
  logits = ctx.model.apply(
      {"params": params}, masked.input_ids, label_positions=masked.positions,
      attention_mask=attention_patterns.full_pair_mask(segment_ids),
      deterministic=not ctx.train, rngs={"dropout": dropout_rng},
      **pair_model_inputs(batch, ctx, cfg["reset_positions"]))
  return weighted_cross_entropy(logits, masked.labels, masked.weights, cfg["label_smoothing"])


OBJECTIVES.register("tlm")(Objective(
    name="tlm", batch_kind="parallel", loss_fn=tlm_loss, default_config=default_config))
