"""Extra anchors (Conneau, Wu et al. 2020, "Emerging structure"): MLM on dictionary-code-switched text.

The spec's rule is "keep 70%, replace 30% with a translation, at most 15% of words per batch". We read
it as follows (every number is a config field):

  * A *dictionary word* is a token with at least one translation in the run's dictionaries that is a
    whole word (dictionary_swap.whole_word_positions; with `whole_words` off, any such token).
  * `switch_order = "replace_then_cap"` (default, the literal reading): each dictionary word is
    replaced with probability `replace_rate` (0.3) and kept otherwise (0.7); if that replaces more
    than floor(`max_switch_rate` (0.15) * words in the batch), a uniform random subset of that size of
    the drawn words is replaced and the rest kept.
  * `switch_order = "select_then_replace"` (the BERT-like reading): first select min(dictionary
    words, floor(max_switch_rate * words)) dictionary words uniformly at random, then replace each
    selected one with probability replace_rate. At most ~4.5% of words are then replaced.
  The two agree whenever dictionary words are at most 15% of the words; they differ when the
  dictionary covers more of the text.
  * "Words in the batch" = tokens that begin a word ("▁..." pieces, the bare "▁", and every piece of
    an unspaced script such as zh or ja: xlm_jax.data.dictionary.starts_word), specials excluded;
    "batch" = the global batch the jitted step sees (one micro-batch with gradient accumulation).
  * A replacement is a translation drawn uniformly among the token's translations: an English word's
    in any dictionary language, another language's word's in English; with `language_aware` on, only
    entries read in the row's language (a shared piece is not translated as the other language's word).
    lang_ids are left as they are (the row's language), as in the paper's models without them.

The switched text then goes through the plain MLM (mlm_core.masked_lm_loss, the loss of "mlm"):
masks, inputs and labels are those of the switched text, so a masked switched word must be predicted
in its new language.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.objectives.dictionary_swap import (check_table_fits, load_dictionary_resources, lookup,
                                                pick_translation, whole_word_positions)
from xlm_jax.objectives.masking import masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import masked_lm_loss
from xlm_jax.registry import OBJECTIVES

SWITCH_ORDERS = ("replace_then_cap", "select_then_replace")


def default_config() -> dict:
  return masking_config(
      replace_rate=0.3,            # a dictionary word is replaced with this probability (kept: 0.7)
      max_switch_rate=0.15,        # cap: replaced (or selected) words <= this share of the batch's words
      switch_order="replace_then_cap",  # "replace_then_cap" | "select_then_replace" (docstring)
      whole_words=True,            # only replace tokens that are a whole word (dictionary_swap)
      language_aware=True,         # translate a token as a word of its row's language only
      dictionary_languages=(),     # () = every run language but English; "en_trans"-style derived too
      max_translations=0,          # translations kept per token (0 = all)
  )


def random_subset(rng: jax.Array, pool: jax.Array, limit: jax.Array) -> jax.Array:
  """bool like `pool`: a uniform random subset of min(limit, |pool|) of pool's True entries."""
  # Uniform scores, 2.0 (above any draw) outside the pool: the pool's entries take the lowest
  # ranks in random order. Ranked over the flattened batch because the cap is per batch, not row.
  scores = jnp.where(pool, jax.random.uniform(rng, pool.shape), 2.0).ravel()
  rank = jnp.empty_like(scores, dtype=jnp.int32).at[jnp.argsort(scores)].set(
      jnp.arange(scores.size, dtype=jnp.int32))
  return pool & (rank.reshape(pool.shape) < limit)


def code_switch(rng: jax.Array, input_ids: jax.Array, lang_ids: jax.Array, ctx: ObjectiveContext):
  """(switched input_ids, dictionary-word mask, replaced mask, number of words) for [B, L] ids and
  their language indices."""
  cfg, res = ctx.config, ctx.resources
  if cfg["switch_order"] not in SWITCH_ORDERS:
    raise ValueError(f"mlm_code_switch: switch_order must be one of {SWITCH_ORDERS}, "
                     f"got {cfg['switch_order']!r}")
  check_table_fits(res, ctx)
  k_pick, k_replace, k_subset = jax.random.split(rng, 3)
  languages = lang_ids if cfg["language_aware"] else None
  translation, has_translation = pick_translation(k_pick, res, input_ids, languages)
  dictionary_word = has_translation
  if cfg["whole_words"]:
    dictionary_word &= whole_word_positions(input_ids, res["starts_word"], res["is_boundary"])
  special = jnp.isin(input_ids, jnp.asarray(ctx.special_ids, input_ids.dtype))
  num_words = jnp.sum(lookup(res["starts_word"], input_ids, False) & ~special)
  limit = jnp.floor(cfg["max_switch_rate"] * num_words).astype(jnp.int32)
  drawn = jax.random.uniform(k_replace, input_ids.shape) < cfg["replace_rate"]
  if cfg["switch_order"] == "replace_then_cap":
    replaced = random_subset(k_subset, dictionary_word & drawn, limit)
  else:
    replaced = random_subset(k_subset, dictionary_word, limit) & drawn
  switched = jnp.where(replaced, translation, input_ids).astype(input_ids.dtype)
  return switched, dictionary_word, replaced, num_words


def code_switch_mlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """The MLM loss on the code-switched batch; metrics add the switched share of words. No extra
  state."""
  switch_rng, mlm_rng = jax.random.split(rng)
  switched, dictionary_word, replaced, num_words = code_switch(switch_rng, batch["input_ids"],
                                                               batch["lang_ids"], ctx)
  loss, metrics = masked_lm_loss(params, dict(batch, input_ids=switched), mlm_rng, ctx)
  words = jnp.maximum(num_words, 1).astype(jnp.float32)
  metrics["dictionary_word_rate"] = jnp.sum(dictionary_word) / words
  metrics["switch_rate"] = jnp.sum(replaced) / words
  return loss, metrics, ctx.extra


# Switching changes ids, not the masked slots: the MLM's share of logits.
OBJECTIVES.register("mlm_code_switch")(Objective(
    name="mlm_code_switch", batch_kind="mono", loss_fn=code_switch_mlm_loss,
    default_config=default_config, load_resources=load_dictionary_resources,
    predictions_per_token=masked_predictions_per_token))
