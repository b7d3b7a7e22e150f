"""DICT-MLM (Chaudhary et al. 2020): MLM whose masked dictionary words may stand for a translation.

Masking is the MLM's (mlm_mask: `mask_rate` of the tokens, 80% <mask> / 10% random / 10% kept). A
*masked dictionary word* is a chosen position whose original token has at least one translation in
the run's dictionaries and, with `whole_words` on, is a whole word (see `whole_word_positions`). Each
one is swapped with probability `p_swap`, to a translation drawn uniformly among its translations:
English words to any dictionary language, other words to English, a derived language's i <-> i + V.
With `language_aware` on, a token is translated only as a word of its row's language (lang_ids), so a
piece shared by two languages ("▁a") does not pick up the other language's translations.

  variant "target_swap" (the paper): the label becomes the translation and the input shows <mask>
      there (whatever mlm_mask wrote), so the model must predict the translation from the context;
  variant "input_swap": the input token becomes the translation and the label stays the original
      word, so the model must translate it back in context;
  variant "princeton": the exact rule of princeton-nlp/align-mlm (data_collator_dict_mlm.py,
      DataCollatorForDictMLM.mask_tokens, "DICT-MLM-50"): a coin with P(swap) = p_swap is thrown for
      every masked token; heads on a token with a translation show the translation (label: the
      original, as input_swap), heads on a token without one show the token itself, unchanged; only
      tails get the 80/10/10 of mlm_mask. A swapped token also takes its translation's language id
      (the reference flips lang_type_ids), which matters where the model has language embeddings.

Positions not swapped keep mlm_mask's outcome (but for princeton's heads without a translation).
The dictionary comes from the corpus artifacts (xlm_jax.data.dictionary), never from a random draw;
a derived language's holds the pairs of a random share `bilingual_rate` of the vocabulary (0.25 by
default, the reference's; see xlm_jax/objectives/align_mlm.py). Translation lookup and the
whole-word test live in dictionary_swap (shared with mlm_code_switch), masking and the MLM loss in
mlm_core.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.objectives.dictionary_swap import (check_table_fits, load_dictionary_resources,
                                                pick_translation, translation_language,
                                                whole_word_positions)
from xlm_jax.objectives.masking import MaskedTokens, masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import mask_mono_batch, mono_masked_loss
from xlm_jax.registry import OBJECTIVES

VARIANTS = ("target_swap", "input_swap", "princeton")


def default_config() -> dict:
  return masking_config(
      variant="target_swap",       # "target_swap" (paper) | "input_swap" | "princeton" (their code)
      p_swap=0.5,                  # probability that a masked dictionary word is swapped
      whole_words=True,            # only swap tokens that are a whole word (not "▁house" of "houses")
      language_aware=True,         # translate a token as a word of its row's language only
      dictionary_languages=(),     # () = every run language but English; "en_trans"-style derived too
      max_translations=0,          # translations kept per token (0 = all)
      bilingual_rate=0.25,         # share of the vocabulary in a derived language's dictionary (1 = all)
  )


class DictMasked(NamedTuple):
  masked: MaskedTokens        # input_ids / positions / labels / weights after the swap
  original: jax.Array         # [B, P] the original tokens at the positions
  candidate: jax.Array        # [B, P] bool: masked dictionary words (may be swapped)
  swapped: jax.Array          # [B, P] bool
  coin: jax.Array             # [B, P] bool: the swap coin came up heads (swapped = candidate & coin)
  lang_ids: jax.Array         # [B, L] language ids after the swap (princeton: a swapped token's changes)


def dict_mlm_mask(rng: jax.Array, batch, ctx: ObjectiveContext) -> DictMasked:
  """mlm_mask, then the DICT-MLM swap of `ctx.config["variant"]` (module docstring)."""
  cfg, res = ctx.config, ctx.resources
  if cfg["variant"] not in VARIANTS:
    raise ValueError(f"dict_mlm: variant must be one of {VARIANTS}, got {cfg['variant']!r}")
  check_table_fits(res, ctx)
  # `rng` itself masks (as in mlm_loss); the swap draws from keys folded out of it.
  k_pick, k_swap = jax.random.split(jax.random.fold_in(rng, 1))
  input_ids = batch["input_ids"]
  masked = mask_mono_batch(rng, input_ids, batch, ctx)
  original = masked.labels
  languages = None
  if cfg["language_aware"]:
    languages = jnp.take_along_axis(batch["lang_ids"], masked.positions, axis=1)
  translation, has_translation = pick_translation(k_pick, res, original, languages)
  candidate = has_translation & (masked.weights > 0)
  if cfg["whole_words"]:
    whole = whole_word_positions(input_ids, res["starts_word"], res["is_boundary"])
    candidate &= jnp.take_along_axis(whole, masked.positions, axis=1)
  coin = jax.random.uniform(k_swap, original.shape) < cfg["p_swap"]
  swapped = candidate & coin
  rows = jnp.arange(input_ids.shape[0])[:, None]
  shown = masked.input_ids[rows, masked.positions]
  lang_ids = batch["lang_ids"]
  if cfg["variant"] == "target_swap":
    labels = jnp.where(swapped, translation, original)
    shown = jnp.where(swapped, ctx.mask_id, shown)
  elif cfg["variant"] == "input_swap":
    labels = original
    shown = jnp.where(swapped, translation, shown)
  else:
    labels = original
    # The reference applies 80/10/10 only where the coin said "keep": heads without a translation
    # leave the token as it was (still a prediction slot, as in the reference's labels).
    shown = jnp.where(swapped, translation, jnp.where(coin & (masked.weights > 0), original, shown))
    new_lang = translation_language(res, translation, original)
    old_lang = jnp.take_along_axis(lang_ids, masked.positions, axis=1)
    lang_ids = lang_ids.at[rows, masked.positions].set(
        jnp.where(swapped & (new_lang >= 0), new_lang, old_lang).astype(lang_ids.dtype))
  # Positions are distinct (top_k), and unused slots write back what is there: no write conflicts.
  corrupted = masked.input_ids.at[rows, masked.positions].set(shown.astype(input_ids.dtype))
  return DictMasked(MaskedTokens(corrupted, masked.positions, labels, masked.weights), original,
                    candidate, swapped, coin, lang_ids)


def dict_mlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at the masked positions of the swapped batch, plus swap statistics; no extra
  state."""
  # Same key use as mlm_loss, so that p_swap = 0 reproduces the MLM exactly.
  mask_rng, dropout_rng = jax.random.split(rng)
  out = dict_mlm_mask(mask_rng, batch, ctx)
  # The swap may change tokens' language ids (princeton); the model reads them where it has language
  # embeddings.
  loss, metrics = mono_masked_loss(params, out.masked, dict(batch, lang_ids=out.lang_ids),
                                   dropout_rng, ctx)
  predictions = jnp.maximum(jnp.sum(out.masked.weights), 1.0)
  metrics["dictionary_rate"] = jnp.sum(out.candidate) / predictions
  metrics["swap_rate"] = jnp.sum(out.swapped) / predictions
  return loss, metrics, ctx.extra


# Swaps change ids and labels, never the slots: the MLM's share of logits.
OBJECTIVES.register("dict_mlm")(Objective(
    name="dict_mlm", batch_kind="mono", loss_fn=dict_mlm_loss, default_config=default_config,
    load_resources=load_dictionary_resources, predictions_per_token=masked_predictions_per_token))
