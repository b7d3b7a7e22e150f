"""Dictionary translations on device, shared by DICT-MLM and the code-switched MLM (no objective here).

Host side, once per run: `load_dictionary_resources` reads the run's dictionaries
(xlm_jax.data.dictionary) into a translation table [ids, T] (-1 = no entry), each entry's source
language, and per-id word-boundary flags. Device side, inside the jitted step: `pick_translation`
draws one translation per token, `whole_word_positions` tells whole words from word pieces, and
`check_table_fits` rejects a table wider than the model's vocabulary before anything is traced.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xlm_jax.data import dictionary as dict_data
from xlm_jax.objectives.base import ObjectiveContext


# --- Host side: resources ------------------------------------------------------------------------------

def load_dictionary_resources(config, corpus, tokenizer, languages) -> dict:
  """Translation table (with each entry's language) and word-boundary tables (numpy)."""
  names = dict_data.dictionary_names(languages, config.get("dictionary_languages", ()))
  arrays = dict_data.load_dictionaries(corpus, names, tokenizer, languages,
                                       int(config.get("max_translations", 0)),
                                       bilingual_rate=float(config.get("bilingual_rate", 1.0)),
                                       bilingual_seed=dict_data.BILINGUAL_SEED)
  starts_word, is_boundary = dict_data.word_boundaries(tokenizer, arrays.translations.shape[0])
  return {"translations": arrays.translations, "source_languages": arrays.source_languages,
          "starts_word": starts_word, "is_boundary": is_boundary}


def check_table_fits(resources, ctx: ObjectiveContext) -> None:
  """ValueError when dictionary ids (a derived language's i + V) exceed the model's vocabulary."""
  rows = resources["translations"].shape[0]
  if rows > ctx.vocab_size:
    raise ValueError(f"objective {ctx.name or 'dict_mlm'!r}: the dictionaries hold ids up to {rows - 1} "
                     f"but the model's vocabulary has {ctx.vocab_size} ids; a derived language needs "
                     f"model.vocab_size = {rows} (2 x the tokenizer's)")


# --- Device side ----------------------------------------------------------------------------------------

def lookup(table, ids: jax.Array, fill) -> jax.Array:
  """table[ids] along axis 0; ids outside the table (a larger model vocabulary) get `fill`."""
  # An explicit fill: jnp.take's default out-of-range value is INT_MIN for ints and True for
  # bools, and a True "starts_word" would make an unknown id look like a word.
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
  # The slot of the (k + 1)-th valid entry: valid entries need not be contiguous once the
  # language filter drops some, so index by running count rather than by k directly.
  slot = jnp.argmax(valid & (jnp.cumsum(valid, axis=-1) == (k + 1)[..., None]), axis=-1)
  choice = jnp.take_along_axis(rows, slot[..., None], axis=-1)[..., 0]
  return jnp.where(count > 0, choice, -1), count > 0


def translation_language(resources, translation: jax.Array, original: jax.Array) -> jax.Array:
  """The language index in which `translation` reads as a translation of `original` (-1 if unknown).

  The entry of the translation's own row that points back to the original carries the language the
  translation is read in (`source_languages`): for a derived pair (i, i + V) that is the derived
  language for i + V and the source language for i.
  """
  rows = lookup(resources["translations"], translation, -1)          # [..., T]
  langs = lookup(resources["source_languages"], translation, -1)
  back = rows == original[..., None]
  slot = jnp.argmax(back, axis=-1)
  lang = jnp.take_along_axis(langs, slot[..., None], axis=-1)[..., 0].astype(jnp.int32)
  return jnp.where(jnp.any(back, axis=-1), lang, -1)


def whole_word_positions(input_ids: jax.Array, starts_word, is_boundary) -> jax.Array:
  """bool [B, L]: the token at each position is a whole word on its own.

  It begins a word ("▁house", or any piece after a bare "▁") and the next token begins another word or
  is special. A word cut by the row's end counts as not whole (its continuation is unknown).
  """
  starts = lookup(starts_word, input_ids, False)
  boundary = lookup(is_boundary, input_ids, False)
  after_boundary = jnp.pad(boundary[:, :-1], ((0, 0), (1, 0)))
  # Padding with False at the end: the last token of a row counts as cut (see docstring).
  next_starts = jnp.pad(starts[:, 1:], ((0, 0), (0, 1)))
  return ((starts & ~boundary) | after_boundary) & next_starts
