"""Masked language modelling (XLM-R; with language embeddings on, XLM's MLM)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xlm_jax.objectives.base import Objective, ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.masking import mlm_mask
from xlm_jax.registry import OBJECTIVES


def masking_config(**overrides) -> dict:
  """The config fields of every masked-token objective (BERT/XLM-R's 15% and 80/10/10), with
  `weight`; objectives add their own fields next to them."""
  fields = dict(
      weight=1.0,              # weight in the summed loss / sampling weight when alternating
      mask_rate=0.15,          # share of non-special tokens chosen for prediction
      mask_token_rate=0.8,     # of the chosen: replaced by <mask>
      random_token_rate=0.1,   # of the chosen: replaced by a random id (of the token's language
                               # where the vocabulary is split by language)
      label_smoothing=0.0,
  )
  fields.update(overrides)
  return fields


def default_config() -> dict:
  return masking_config()


def model_inputs(batch, ctx: ObjectiveContext) -> dict:
  """Keyword inputs of the model shared by objectives on the "mono" batch kind."""
  inputs = dict(position_ids=batch["position_ids"], segment_ids=batch["segment_ids"])
  if ctx.model.config.num_languages:
    inputs["lang_ids"] = batch["lang_ids"]
  return inputs


def row_random_ranges(batch, ctx: ObjectiveContext) -> dict:
  """`random_low`/`random_high` of mlm_mask for monolingual rows: the row language's id range
  where the vocabulary is split by language (no_anchors, derived scripts), else nothing."""
  if ctx.random_ranges is None:
    return {}
  ranges = jnp.asarray(ctx.random_ranges, jnp.int32)[batch["lang_ids"][:, 0]]
  return {"random_low": ranges[:, 0], "random_high": ranges[:, 1]}


def mlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at masked positions of monolingual streams."""
  cfg = ctx.config
  mask_rng, dropout_rng = jax.random.split(rng)
  masked = mlm_mask(mask_rng, batch["input_ids"], special_ids=ctx.special_ids, mask_id=ctx.mask_id,
                    vocab_size=ctx.vocab_size, mask_rate=cfg["mask_rate"],
                    mask_token_rate=cfg["mask_token_rate"],
                    random_token_rate=cfg["random_token_rate"], **row_random_ranges(batch, ctx))
  logits = ctx.model.apply({"params": params}, masked.input_ids, label_positions=masked.positions,
                           deterministic=not ctx.train, rngs={"dropout": dropout_rng},
                           **model_inputs(batch, ctx))
  return weighted_cross_entropy(logits, masked.labels, masked.weights, cfg["label_smoothing"])


OBJECTIVES.register("mlm")(Objective(
    name="mlm", batch_kind="mono", loss_fn=mlm_loss, default_config=default_config))
