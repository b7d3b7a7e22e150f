"""Bilingual dictionaries: their saved format, and at training time the token-id pairs of a run's languages
as arrays.

Two kinds of artifact, both part of a built corpus:

    <corpus>/dictionaries/en-<lang>.tsv (+ .ids.npy, .json)   a word dictionary (save_dictionary, written
        by `xlm-jax data build --recipe debian8`; load_dictionary); its token pairs are (English id,
        foreign id) of words that are single pieces
    <corpus>/derived/<op>/dictionary.npy (+ .json)            the implicit dictionary i <-> i + V of a
        derived (synthetic) language, named "<lang>_<op>" in data.languages ("en_trans";
        xlm_jax.data.derived), derived on first use like the pipelines do

English is the pivot of every word dictionary and has none of its own. The arrays made here are
host-side numpy; objectives receive them through `load_resources` and bake them into the jitted step.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import unicodedata

import numpy as np

from xlm_jax.data import derived, synthetic
from xlm_jax.data.corpus import build_command

PIVOT_LANGUAGE = "en"
WORD_BOUNDARY_PIECE = "\u2581"  # SentencePiece's "▁"
# Unicode name prefixes of scripts written without spaces between words.
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "THAI", "LAO", "KHMER", "MYANMAR")
# Seed of the objectives' `bilingual_rate` draw: one share of the vocabulary per rate, run after run.
BILINGUAL_SEED = 0


def word_dictionary_path(corpus_dir, lang: str) -> pathlib.Path:
  """<corpus>/dictionaries/en-<lang>.tsv (the word-pair TSV; the token ids sit beside it)."""
  return pathlib.Path(corpus_dir) / "dictionaries" / f"{PIVOT_LANGUAGE}-{lang}.tsv"


# --- The saved word-dictionary format (written by the corpus build, read here and by the evaluators) -------

FORMAT_VERSION = 1
_REBUILD_HINT = "rebuild it with the corpus's tokenizer (save_dictionary(path, pairs, tokenizer))"


def artifact_paths(path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """(word-pair TSV, token-id .npy, JSON sidecar) of the dictionary artifact at `path` (the TSV)."""
  path = pathlib.Path(path)
  return path, path.with_suffix(".ids.npy"), path.with_suffix(".json")


def single_piece_ids(tokenizer, words, lang: str | None = None) -> dict[str, int | None]:
  """The id of each word that is one tokenizer piece, else None.

  A word encodes either as one piece ("▁house") or as the bare word-boundary piece plus one piece ("▁" +
  "犬": how words of unspaced scripts, and rarer words, appear in running text). Both count; the id kept is
  the content piece. Special pieces (<unk>) never count. `lang` is passed to tokenizers whose vocabulary
  is split by language (the "no anchors" LanguageTaggedTokenizer).
  """
  words = list(dict.fromkeys(words))
  special = set(getattr(tokenizer, "special_ids", ()))
  result = {}
  encoded = tokenizer.encode(words) if lang is None else tokenizer.encode(words, lang)
  for word, ids in zip(words, encoded):
    if len(ids) == 2 and tokenizer.id_to_piece(ids[0]) == WORD_BOUNDARY_PIECE:
      ids = ids[1:]  # the bare "▁" only marks the preceding space; the word is the piece after it
    result[word] = ids[0] if len(ids) == 1 and ids[0] not in special else None
  return result


def token_pairs(pairs, tokenizer, dropped: collections.Counter, lang: str | None = None) -> np.ndarray:
  """int32 [N, 2] ids of the pairs whose words are both one piece; unique, in pair order.

  `lang` (the foreign side's language) is needed by tokenizers whose vocabulary is split by language;
  the English side is then encoded as "en".
  """
  # A shared vocabulary encodes both sides alike: one call covers every word.
  if lang is None:
    en_ids = xx_ids = single_piece_ids(tokenizer, [w for pair in pairs for w in pair])
  else:
    en_ids = single_piece_ids(tokenizer, [en for en, _ in pairs], "en")
    xx_ids = single_piece_ids(tokenizer, [xx for _, xx in pairs], lang)
  kept = {}
  for en, xx in pairs:
    if en_ids[en] is None or xx_ids[xx] is None:
      dropped["not_single_piece"] += 1
    elif en_ids[en] == xx_ids[xx]:
      dropped["same_piece"] += 1  # cos(E[i], E[i]) = 1: nothing to align
    elif (en_ids[en], xx_ids[xx]) in kept:
      dropped["duplicate_ids"] += 1
    else:
      kept[en_ids[en], xx_ids[xx]] = None
  return np.array(list(kept), dtype=np.int32).reshape(-1, 2)


def _replace_atomically(path: pathlib.Path, write) -> None:
  """Calls write(binary file) on a temporary file next to `path`, then renames it over `path`."""
  path.parent.mkdir(parents=True, exist_ok=True)
  # Same folder, so os.replace is a rename within one file system: readers see old or new, whole.
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def save_dictionary(path, pairs, tokenizer=None, metadata: dict | None = None) -> dict:
  """Writes the dictionary artifact at `path` (e.g. <dir>/en-de.tsv); returns the sidecar.

    en-de.tsv       "english<TAB>foreign" per line, UTF-8
    en-de.ids.npy   with a tokenizer: int32 [N, 2] (English id, foreign id) of the pairs whose words are
                    both one piece (single_piece_ids)
    en-de.json      counts, dropped, vocab_size and tokenizer sha256 (the ids mean nothing with another
                    model), and `metadata` (e.g. the LanguageDictionary counts) under "build"
  Each file is replaced atomically; without a tokenizer a stale .ids.npy of an earlier save is removed.
  """
  tsv_path, ids_path, json_path = artifact_paths(path)
  pairs = [(en, xx) for en, xx in pairs]
  for lineno, (en, xx) in enumerate(pairs, 1):
    if not en or not xx or any(ch in "\t\n\r" for ch in en + xx):
      raise ValueError(f"pair {lineno} ({en!r}, {xx!r}) cannot be written to {tsv_path}: words must be "
                       "non-empty and hold no tab or newline")
  sidecar = {"format_version": FORMAT_VERSION, "word_pairs": len(pairs), "token_pairs": None,
             "vocab_size": None, "tokenizer_sha256": None, "dropped": {}, "build": metadata or {}}
  if tokenizer is not None:
    dropped = collections.Counter()
    ids = token_pairs(pairs, tokenizer, dropped)
    serialized = tokenizer.serialized() if hasattr(tokenizer, "serialized") else None
    sidecar.update(token_pairs=len(ids), vocab_size=int(tokenizer.vocab_size), dropped=dict(dropped),
                   tokenizer_sha256=hashlib.sha256(serialized).hexdigest() if serialized else None)
    _replace_atomically(ids_path, lambda f: np.save(f, ids, allow_pickle=False))
  else:
    ids_path.unlink(missing_ok=True)
  sidecar_text = json.dumps(sidecar, indent=1, ensure_ascii=False)
  _replace_atomically(json_path, lambda f: f.write(sidecar_text.encode("utf-8")))
  # The TSV goes last: load_dictionary looks for it first, so a first save that crashes leaves no
  # dictionary rather than ids without their words.
  text = "".join(f"{en}\t{xx}\n" for en, xx in pairs)
  _replace_atomically(tsv_path, lambda f: f.write(text.encode("utf-8")))
  return sidecar


@dataclasses.dataclass
class Dictionary:
  """A loaded dictionary artifact: word pairs, token-id pairs ([N, 2] int32, or None) and the sidecar."""
  pairs: list[tuple[str, str]]
  token_ids: np.ndarray | None
  metadata: dict


def load_dictionary(path, vocab_size: int | None = None) -> Dictionary:
  """Reads and validates a save_dictionary artifact. ValueError for a malformed TSV line (naming file and
  line), a token-id file that is not int [N, 2], and, given vocab_size, a token id outside [0, vocab_size)
  (naming file and row) or a sidecar that says the ids were made for another vocabulary size."""
  tsv_path, ids_path, json_path = artifact_paths(path)
  if not tsv_path.is_file():
    raise FileNotFoundError(f"dictionary {tsv_path} not found; build it with `xlm-jax data build`")
  pairs = []
  with open(tsv_path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      fields = line.rstrip("\n").split("\t")
      if len(fields) != 2 or not all(fields):
        raise ValueError(f"{tsv_path}:{lineno}: expected 'english<TAB>foreign' with two non-empty words, got "
                         f"{line.rstrip()!r}; fix the line or rebuild the dictionary (`xlm-jax data build`)")
      pairs.append((fields[0], fields[1]))
  metadata = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {}
  if not ids_path.is_file():
    return Dictionary(pairs, None, metadata)
  try:
    ids = np.load(ids_path, allow_pickle=False)
  except (OSError, ValueError) as err:
    raise ValueError(f"{ids_path} is not a token-id .npy file ({err}); {_REBUILD_HINT}") from err
  if ids.ndim != 2 or ids.shape[1] != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"{ids_path}: expected integer token-id pairs of shape [N, 2], got {ids.dtype} "
                     f"{list(ids.shape)}; {_REBUILD_HINT}")
  if vocab_size is not None:
    bad = np.argwhere((ids < 0) | (ids >= vocab_size))
    if len(bad):
      row, col = (int(v) for v in bad[0])
      raise ValueError(f"{ids_path}: row {row} holds token id {int(ids[row, col])}, outside [0, {vocab_size})"
                       f" of this tokenizer, so it was made with another tokenizer: {_REBUILD_HINT}")
    built_for = metadata.get("vocab_size")
    if built_for is not None and built_for != vocab_size:
      raise ValueError(f"{json_path}: token ids were made for vocab_size {built_for}, not {vocab_size}; "
                       f"{_REBUILD_HINT}")
  return Dictionary(pairs, ids.astype(np.int32), metadata)


# --- Dictionaries of a run ---------------------------------------------------------------------------------


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
        f"them: `{build_command(corpus_dir, recipe='debian8')} --force`; or leave {lang!r} out of the "
        "objective's `dictionary_languages` (derived languages are named '<lang>_<op>', e.g. 'en_trans')")
  loaded = load_dictionary(path, vocab_size=vocab_size)
  if loaded.token_ids is None:
    raise ValueError(f"{artifact_paths(path)[1]} not found: {path} was saved without a "
                     "tokenizer, so it has no token ids; rebuild the corpus "
                     f"(`{build_command(corpus_dir, recipe='debian8')} --force`)")
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


def bilingual_subset(pairs: np.ndarray, source_vocab_size: int, rate: float, seed: int) -> np.ndarray:
  """The pairs (i, i + V) of an implicit dictionary whose source id i lies in a fixed random fraction
  `rate` of the source vocabulary (ALIGN-MLM's `bilingual_rate`).

  The rule of princeton-nlp/align-mlm (RobertaForAlignedMLM.__init__, DataCollatorForDictMLM): permute
  the V source ids with the seed, keep the first int(V * rate), then drop the special ids among them (the
  implicit dictionary has no pair for those, nor for overlap ids). `rate` 1 keeps every pair.
  """
  if not 0.0 < rate <= 1.0:
    raise ValueError(f"bilingual_rate must be in (0, 1] (the share of the vocabulary in the dictionary), "
                     f"got {rate}")
  pairs = np.asarray(pairs).reshape(-1, 2)
  if rate >= 1.0:
    return pairs
  chosen = np.random.default_rng(seed).permutation(source_vocab_size)[:int(source_vocab_size * rate)]
  return pairs[np.isin(pairs[:, 0], chosen)]


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
  # A piece that is its own translation has nothing to swap to (token_pairs drops these too).
  entries = entries[entries[:, 0] != entries[:, 1]]
  _, first = np.unique(entries, axis=0, return_index=True)
  entries = entries[np.sort(first)]                              # unique, first-seen order
  entries = entries[np.argsort(entries[:, 0], kind="stable")]    # grouped by id, order kept inside
  counts = np.bincount(entries[:, 0], minlength=num_ids)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  # Each entry's column: its rank inside its id's group, so a row fills left to right.
  slot = np.arange(len(entries)) - starts[entries[:, 0]]
  width = int(counts.max()) if len(entries) else 1
  if max_translations > 0:
    width = min(width, max_translations)
  width = max(width, 1)
  # Narrow dtypes: both [num_ids, T] tables are baked into the jitted step as constants.
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


def load_dictionaries(corpus, names, tokenizer, languages=(), max_translations: int = 0,
                      bilingual_rate: float = 1.0,
                      bilingual_seed: int = BILINGUAL_SEED) -> DictionaryArrays:
  """The token pairs of `names` (word-dictionary languages and derived "<lang>_<op>" languages).

  The table has one row per id of the largest vocabulary involved (2 V with a derived language).
  `languages` (the run's) give the language indices of the table's entries: an en-de pair reads its
  first id as English and its second as German; a derived pair reads i in the source language and
  i + V in the derived one. A derived language's implicit dictionary keeps the pairs of a fixed random
  `bilingual_rate` of the vocabulary (`bilingual_subset`, seed `bilingual_seed`); word dictionaries are
  used whole. ValueError if there is no pair at all.
  """
  index = {lang: i for i, lang in enumerate(languages)}
  parts, part_languages, sizes = [], [], {}
  for name in names:
    if derived.is_derived(name):
      pairs = bilingual_subset(load_derived_pairs(corpus, name, tokenizer), tokenizer.vocab_size,
                               bilingual_rate, bilingual_seed)
      source = derived.split_derived(name)[0]
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
  # Dictionaries may share pairs; np.unique sorts, so its first indices restore pair order.
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
