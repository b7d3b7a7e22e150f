"""Bilingual dictionaries at training time: the token-id pairs of a run's languages as arrays.

Two kinds of artifact, both written by data_prep:

    <corpus>/dictionaries/en-<lang>.tsv (+ .ids.npy, .json)   a word dictionary (save_dictionary); its
        token pairs are (English id, foreign id) of words that are single pieces
    <corpus>/derived/<op>/dictionary.npy (+ .json)            the implicit dictionary i <-> i + V of a
        derived (synthetic) language, named "<lang>_<op>" in data.languages ("en_trans";
        xlm_jax.data.derived), derived on first use like the pipelines do

English is the pivot of every word dictionary and has none of its own. The arrays made here are
host-side numpy; objectives receive them through `load_resources` and bake them into the jitted step.
"""
from __future__ import annotations

import dataclasses
import pathlib
import unicodedata

import numpy as np

from data_prep import dictionaries as dict_lib
from data_prep import synthetic
from xlm_jax.data import derived
from xlm_jax.data.corpus import build_command

PIVOT_LANGUAGE = "en"
WORD_BOUNDARY_PIECE = dict_lib.WORD_BOUNDARY_PIECE  # "▁"
# Unicode name prefixes of scripts written without spaces between words.
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "THAI", "LAO", "KHMER", "MYANMAR")


def word_dictionary_path(corpus_dir, lang: str) -> pathlib.Path:
  """<corpus>/dictionaries/en-<lang>.tsv (the word-pair TSV; the token ids sit beside it)."""
  return pathlib.Path(corpus_dir) / "dictionaries" / f"{PIVOT_LANGUAGE}-{lang}.tsv"


def dictionary_names(languages, configured=()) -> tuple[str, ...]:
  """The dictionaries an objective uses: `configured` if given, else every run language but English."""
  names = tuple(configured) if configured else tuple(languages)
  return tuple(n for n in names if n != PIVOT_LANGUAGE)


def load_word_pairs(corpus_dir, lang: str, vocab_size: int) -> np.ndarray:
  """int32 [N, 2] (English id, foreign id) of en-<lang>, checked against the tokenizer's vocab_size."""
  path = word_dictionary_path(corpus_dir, lang)
  if not path.is_file():
    raise FileNotFoundError(
        f"no dictionary for language {lang!r}: {path} not found. Corpora of the debian8 recipe have "
        f"them: `{build_command(corpus_dir)} --recipe debian8 --force`; or leave {lang!r} out of the "
        "objective's `dictionary_languages` (derived languages are named '<lang>_<op>', e.g. 'en_trans')")
  loaded = dict_lib.load_dictionary(path, vocab_size=vocab_size)
  if loaded.token_ids is None:
    raise ValueError(f"{dict_lib.artifact_paths(path)[1]} not found: {path} was saved without a "
                     "tokenizer, so it has no token ids; rebuild the corpus "
                     f"(`{build_command(corpus_dir)} --recipe debian8 --force`)")
  return loaded.token_ids


def load_derived_pairs(corpus, name: str, tokenizer) -> np.ndarray:
  """int32 [N, 2] (i, i + V) of derived language `name`, derived first if missing; the folder must have
  been made with this tokenizer (derived.json's sha256, and 2 V ids)."""
  folder = derived.ensure_derived(corpus, name, tokenizer)
  path = folder / "dictionary.npy"
  pairs, meta = synthetic.read_dictionary(path)
  made_for, vocab_size = meta.get("vocab_size"), tokenizer.vocab_size
  remake = derived.derive_command(corpus, name, 0)
  if made_for != 2 * vocab_size:
    raise ValueError(f"{path.with_suffix('.json')}: field 'vocab_size' is {made_for}, not 2 x {vocab_size} "
                     f"(this tokenizer's pieces), so {name!r} was derived with another tokenizer; remake it "
                     f"with `{remake}`")
  if pairs.size and (pairs.min() < 0 or pairs.max() >= made_for):
    raise ValueError(f"{path}: ids outside [0, {made_for}); remake it with `{remake}`")
  return pairs.astype(np.int32)


def translation_table(pairs: np.ndarray, num_ids: int, max_translations: int = 0,
                      pair_languages: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(translations, source_languages), both [num_ids, T]: row i lists the translations of id i in both
  directions (int32, -1 padded) and, for each, the language the id i is read in for that entry (int8
  language index from `pair_languages` [N, 2], else -1).

  A shared piece ("▁a": English article, Spanish preposition) gets entries from both readings; the tag
  lets a lookup keep only those of the text's language. Entries are unique per (id, translation,
  language) and in first-seen pair order, valid ones first. `max_translations` > 0 keeps the first that
  many of a row (bounds T for ids with very many translations). T >= 1.
  """
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  if pairs.size and (pairs.min() < 0 or pairs.max() >= num_ids):
    raise ValueError(f"dictionary ids must lie in [0, {num_ids}); got {pairs.min()}..{pairs.max()}")
  if pair_languages is None:
    pair_languages = np.full(pairs.shape, -1)
  langs = np.asarray(pair_languages, np.int64).reshape(-1, 2)
  entries = np.concatenate([np.stack([pairs[:, 0], pairs[:, 1], langs[:, 0]], 1),
                            np.stack([pairs[:, 1], pairs[:, 0], langs[:, 1]], 1)])
  entries = entries[entries[:, 0] != entries[:, 1]]
  _, first = np.unique(entries, axis=0, return_index=True)
  entries = entries[np.sort(first)]                              # unique, first-seen order
  entries = entries[np.argsort(entries[:, 0], kind="stable")]    # grouped by id, order kept inside
  counts = np.bincount(entries[:, 0], minlength=num_ids)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  slot = np.arange(len(entries)) - starts[entries[:, 0]]
  width = int(counts.max()) if len(entries) else 1
  if max_translations > 0:
    width = min(width, max_translations)
  width = max(width, 1)
  table = np.full((num_ids, width), -1, np.int32)
  sources = np.full((num_ids, width), -1, np.int8)
  keep = slot < width
  table[entries[keep, 0], slot[keep]] = entries[keep, 1]
  sources[entries[keep, 0], slot[keep]] = entries[keep, 2]
  return table, sources


@dataclasses.dataclass(frozen=True)
class DictionaryArrays:
  """The pairs of several dictionaries and their translation table."""
  pairs: np.ndarray             # int32 [N, 2], all dictionaries concatenated (duplicates removed)
  translations: np.ndarray      # int32 [num_ids, T], see translation_table
  source_languages: np.ndarray  # int8 [num_ids, T]: index in `languages` of the entry's reading, or -1
  sizes: dict                   # name -> number of pairs it gave


def load_dictionaries(corpus, names, tokenizer, languages=(), max_translations: int = 0) -> DictionaryArrays:
  """The token pairs of `names` (word-dictionary languages and derived "<lang>_<op>" languages).

  The table has one row per id of the largest vocabulary involved (2 V with a derived language).
  `languages` (the run's) give the language indices of the table's entries: an en-de pair reads its
  first id as English and its second as German; a derived pair reads i in the source language and
  i + V in the derived one. ValueError if there is no pair at all.
  """
  index = {lang: i for i, lang in enumerate(languages)}
  parts, part_languages, sizes = [], [], {}
  for name in names:
    if derived.is_derived(name):
      pairs, source = load_derived_pairs(corpus, name, tokenizer), derived.split_derived(name)[0]
    else:
      pairs, source = load_word_pairs(corpus.dir, name, tokenizer.vocab_size), PIVOT_LANGUAGE
    parts.append(pairs)
    part_languages.append(np.tile([[index.get(source, -1), index.get(name, -1)]], (len(pairs), 1)))
    sizes[name] = len(pairs)
  pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int32)
  if not len(pairs):
    raise ValueError(f"the dictionaries {list(names)} of {corpus.dir} hold no token pair (sizes {sizes}); "
                     "name languages that have dictionaries in the objective's `dictionary_languages`")
  num_ids = max(tokenizer.vocab_size, int(pairs.max()) + 1)
  translations, sources = translation_table(pairs, num_ids, max_translations, np.concatenate(part_languages))
  _, first = np.unique(pairs, axis=0, return_index=True)
  return DictionaryArrays(pairs[np.sort(first)].astype(np.int32), translations, sources, sizes)


def starts_word(piece: str) -> bool:
  """Whether a piece begins a word: "▁..." or, in scripts written without spaces, any piece.

  SentencePiece marks word starts with "▁" only after whitespace, which Chinese, Japanese or Thai text
  does not have; there each piece is taken as a word of its own ("文件" in "打开文件").
  """
  if piece.startswith(WORD_BOUNDARY_PIECE):
    return True
  return bool(piece) and unicodedata.name(piece[0], "").startswith(UNSPACED_SCRIPTS)


def word_boundaries(tokenizer, num_ids: int) -> tuple[np.ndarray, np.ndarray]:
  """(starts_word, is_boundary) bool [num_ids] from the tokenizer's pieces.

  starts_word: the piece begins a word (`starts_word`), or is special (specials end the word before).
  is_boundary: the piece is the bare "▁" that precedes a one-piece word after a space ("▁" + "犬").
  Ids beyond the tokenizer's (a derived language's i + V) repeat the pieces of i.
  """
  size = tokenizer.vocab_size
  pieces = [tokenizer.id_to_piece(i) for i in range(size)]
  starts = np.array([starts_word(p) for p in pieces], bool)
  starts[list(tokenizer.special_ids)] = True
  boundary = np.array([p == WORD_BOUNDARY_PIECE for p in pieces], bool)
  index = np.arange(num_ids) % size
  return starts[index], boundary[index]
