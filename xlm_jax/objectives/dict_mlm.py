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
  variant "input_swap" (princeton-nlp's code): the input token becomes the translation and the label
      stays the original word, so the model must translate it back in context.

Positions not swapped keep mlm_mask's outcome. The dictionary comes from the corpus artifacts
(xlm_jax.data.dictionary), never from a random draw. The device-side helpers here (translation
lookup, whole-word test, masking with per-language random ranges) are shared with code_switch.py.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from xlm_jax.data import dictionary as dict_data
from xlm_jax.objectives.base import Objective, ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.masking import MaskedTokens, mlm_mask
from xlm_jax.objectives.mlm import masking_config, model_inputs, row_random_ranges
from xlm_jax.registry import OBJECTIVES

VARIANTS = ("target_swap", "input_swap")


def default_config() -> dict:
  return masking_config(
      variant="target_swap",       # "target_swap" (paper) | "input_swap" (princeton-nlp code)
      p_swap=0.5,                  # probability that a masked dictionary word is swapped
      whole_words=True,            # only swap tokens that are a whole word (not "▁house" of "houses")
      language_aware=True,         # translate a token as a word of its row's language only
      dictionary_languages=(),     # () = every run language but English; "en_trans"-style derived too
      max_translations=0,          # translations kept per token (0 = all)
  )


# --- Host side: resources ------------------------------------------------------------------------------

def load_dictionary_resources(config, corpus, tokenizer, languages) -> dict:
  """Translation table (with each entry's language) and word-boundary tables (numpy)."""
  names = dict_data.dictionary_names(languages, config.get("dictionary_languages", ()))
  arrays = dict_data.load_dictionaries(corpus, names, tokenizer, languages,
                                       int(config.get("max_translations", 0)))
  starts_word, is_boundary = dict_data.word_boundaries(tokenizer, arrays.translations.shape[0])
  return {"translations": arrays.translations, "source_languages": arrays.source_languages,
          "starts_word": starts_word, "is_boundary": is_boundary}


# --- Device side: shared helpers ------------------------------------------------------------------------

def lookup(table, ids: jax.Array, fill) -> jax.Array:
  """table[ids] along axis 0; ids outside the table (a larger model vocabulary) get `fill`."""
  return jnp.take(jnp.asarray(table), ids, axis=0, mode="fill", fill_value=fill)


def pick_translation(rng: jax.Array, resources, ids: jax.Array,
                     token_languages: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """(a uniform random translation of each id (-1 where none), whether the id has one).

  With `token_languages` (the language index of each id's text, same shape as ids) only entries read
  in that language count: a German "▁die" translates to English, never as if it were English "die".
  """
  rows = lookup(resources["translations"], ids, -1)                  # [..., T]
  valid = rows >= 0
  if token_languages is not None:
    valid &= lookup(resources["source_languages"], ids, -1) == token_languages[..., None]
  count = jnp.sum(valid, axis=-1)
  k = jnp.floor(jax.random.uniform(rng, ids.shape) * count).astype(jnp.int32)
  k = jnp.clip(k, 0, jnp.maximum(count - 1, 0))                      # u < 1, but be safe in float32
  # The slot of the (k + 1)-th valid entry.
  slot = jnp.argmax(valid & (jnp.cumsum(valid, axis=-1) == (k + 1)[..., None]), axis=-1)
  choice = jnp.take_along_axis(rows, slot[..., None], axis=-1)[..., 0]
  return jnp.where(count > 0, choice, -1), count > 0


def whole_word_positions(input_ids: jax.Array, starts_word, is_boundary) -> jax.Array:
  """bool [B, L]: the token at each position is a whole word on its own.

  It begins a word ("▁house", or any piece after a bare "▁") and the next token begins another word or
  is special. A word cut by the row's end counts as not whole (its continuation is unknown).
  """
  starts = lookup(starts_word, input_ids, False)
  boundary = lookup(is_boundary, input_ids, False)
  after_boundary = jnp.pad(boundary[:, :-1], ((0, 0), (1, 0)))
  next_starts = jnp.pad(starts[:, 1:], ((0, 0), (0, 1)))
  return ((starts & ~boundary) | after_boundary) & next_starts


def mask_mono_batch(rng: jax.Array, input_ids: jax.Array, batch, ctx: ObjectiveContext) -> MaskedTokens:
  """mlm_mask with the objective's rates, random replacements in the row language's id range where
  the vocabulary is split by language (exactly what mlm_loss does)."""
  cfg = ctx.config
  return mlm_mask(rng, input_ids, special_ids=ctx.special_ids, mask_id=ctx.mask_id,
                  vocab_size=ctx.vocab_size, mask_rate=cfg["mask_rate"],
                  mask_token_rate=cfg["mask_token_rate"], random_token_rate=cfg["random_token_rate"],
                  **row_random_ranges(batch, ctx))


def check_table_fits(resources, ctx: ObjectiveContext) -> None:
  """ValueError when dictionary ids (a derived language's i + V) exceed the model's vocabulary."""
  rows = resources["translations"].shape[0]
  if rows > ctx.vocab_size:
    raise ValueError(f"objective {ctx.name or 'dict_mlm'!r}: the dictionaries hold ids up to {rows - 1} "
                     f"but the model's vocabulary has {ctx.vocab_size} ids; a derived language needs "
                     f"model.vocab_size = {rows} (2 x the tokenizer's)")


# --- DICT-MLM ---------------------------------------------------------------------------------------------

class DictMasked(NamedTuple):
  masked: MaskedTokens        # input_ids / positions / labels / weights after the swap
  original: jax.Array         # [B, P] the original tokens at the positions
  candidate: jax.Array        # [B, P] bool: masked dictionary words (may be swapped)
  swapped: jax.Array          # [B, P] bool


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
  swapped = candidate & (jax.random.uniform(k_swap, original.shape) < cfg["p_swap"])
  rows = jnp.arange(input_ids.shape[0])[:, None]
  shown = masked.input_ids[rows, masked.positions]
  if cfg["variant"] == "target_swap":
    labels = jnp.where(swapped, translation, original)
    shown = jnp.where(swapped, ctx.mask_id, shown)
  else:
    labels = original
    shown = jnp.where(swapped, translation, shown)
  # Positions are distinct (top_k), and unused slots write back what is there: no write conflicts.
  corrupted = masked.input_ids.at[rows, masked.positions].set(shown.astype(input_ids.dtype))
  return DictMasked(MaskedTokens(corrupted, masked.positions, labels, masked.weights), original,
                    candidate, swapped)


def dict_mlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Cross-entropy at the masked positions of the swapped batch, plus swap statistics."""
  # Same key use as mlm_loss, so that p_swap = 0 reproduces the MLM exactly.
  mask_rng, dropout_rng = jax.random.split(rng)
  out = dict_mlm_mask(mask_rng, batch, ctx)
  m = out.masked
  logits = ctx.model.apply({"params": params}, m.input_ids, label_positions=m.positions,
                           deterministic=not ctx.train, rngs={"dropout": dropout_rng},
                           **model_inputs(batch, ctx))
  loss, metrics = weighted_cross_entropy(logits, m.labels, m.weights, ctx.config["label_smoothing"])
  predictions = jnp.maximum(jnp.sum(m.weights), 1.0)
  metrics["dictionary_rate"] = jnp.sum(out.candidate) / predictions
  metrics["swap_rate"] = jnp.sum(out.swapped) / predictions
  return loss, metrics


OBJECTIVES.register("dict_mlm")(Objective(
    name="dict_mlm", batch_kind="mono", loss_fn=dict_mlm_loss, default_config=default_config,
    load_resources=load_dictionary_resources))
