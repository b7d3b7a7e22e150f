"""Masked-LM building blocks shared by the masked-token objectives (no objective registered here).

- `mask_mono_batch`: `mlm_mask` with the objective's rates on monolingual rows, random
  replacements inside the row language's id range where the vocabulary is split by language.
- `mask_tokens`: the same with a language per *token* (a parallel row's two sides, BTMLM's x).
- `mono_model_inputs`: the model's keyword inputs for "mono" rows.
- `masked_lm_loss`: the whole XLM-R MLM loss on a mono batch; MLM, ALIGN-MLM and the
  code-switched MLM call it, and DICT-MLM reuses its second half (`mono_masked_loss`) after its
  swap, so that with nothing swapped all four give the MLM's loss for the same key.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from xlm_jax.objectives.base import ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.masking import MaskedTokens, mlm_mask


def mono_model_inputs(batch, ctx: ObjectiveContext) -> dict:
  """Keyword inputs of the model shared by objectives on the "mono" batch kind."""
  inputs = dict(position_ids=batch["position_ids"], segment_ids=batch["segment_ids"])
  # Language embeddings as in XLM; XLM-R-style models (num_languages 0) have none.
  if ctx.model.config.num_languages:
    inputs["lang_ids"] = batch["lang_ids"]
  return inputs


def row_random_ranges(batch, ctx: ObjectiveContext) -> dict:
  """`random_low`/`random_high` of mlm_mask for monolingual rows: the row language's id range
  where the vocabulary is split by language (no_anchors, derived scripts), else nothing."""
  # With disjoint id ranges, a replacement from another language's range would be a token the
  # row's language never uses, giving the corruption away.
  if ctx.random_ranges is None:
    return {}
  # A mono row holds one language, so its first token's language id stands for the row.
  ranges = jnp.asarray(ctx.random_ranges, jnp.int32)[batch["lang_ids"][:, 0]]
  return {"random_low": ranges[:, 0], "random_high": ranges[:, 1]}


def mask_mono_batch(rng: jax.Array, input_ids: jax.Array, batch,
                    ctx: ObjectiveContext) -> MaskedTokens:
  """mlm_mask with the objective's rates, random replacements in the row language's id range where
  the vocabulary is split by language (exactly what masked_lm_loss does)."""
  cfg = ctx.config
  return mlm_mask(rng, input_ids, special_ids=ctx.special_ids, mask_id=ctx.mask_id,
                  vocab_size=ctx.vocab_size, mask_rate=cfg["mask_rate"],
                  mask_token_rate=cfg["mask_token_rate"], random_token_rate=cfg["random_token_rate"],
                  **row_random_ranges(batch, ctx))


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


def mono_masked_loss(params, masked: MaskedTokens, batch, dropout_rng,
                     ctx: ObjectiveContext) -> tuple[jax.Array, dict]:
  """(cross-entropy, metrics) of the model on the corrupted mono rows `masked`."""
  # label_positions: the model gathers the hidden states of the P slots before the vocabulary
  # projection, so logits are [B, P, V], never [B, L, V].
  logits = ctx.model.apply({"params": params}, masked.input_ids, label_positions=masked.positions,
                           deterministic=not ctx.train, rngs={"dropout": dropout_rng},
                           **mono_model_inputs(batch, ctx))
  return weighted_cross_entropy(logits, masked.labels, masked.weights,
                                ctx.config["label_smoothing"], ctx.model.config.vocab_size)


def masked_lm_loss(params, batch, rng, ctx: ObjectiveContext) -> tuple[jax.Array, dict]:
  """(cross-entropy at masked positions of monolingual streams, metrics).

  `rng` splits into (mask key, dropout key); objectives built on the MLM keep that split so a
  no-op variant of theirs reproduces it exactly.
  """
  mask_rng, dropout_rng = jax.random.split(rng)
  masked = mask_mono_batch(mask_rng, batch["input_ids"], batch, ctx)
  return mono_masked_loss(params, masked, batch, dropout_rng, ctx)
