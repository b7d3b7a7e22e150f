"""Vocabulary variants of the Emerging-structure studies (Conneau, Wu et al. 2020).

Both start from one SentencePiece model per language, trained on that language's text alone:
  - union ("default anchors"): one vocabulary holding every language's pieces, a piece that several languages
    learned appearing once; those shared pieces are the anchors. A plain SentencePiece model, so
    xlm_jax.data.tokenizer.Tokenizer loads it like the joint one.
  - no anchors: every language keeps its own pieces in its own id range, so "▁the" learned by en and by fr
    are two ids and nothing is shared but the special ids 0..4. Encoding needs the language
    (`LanguageTaggedTokenizer.encode(texts, lang)`); `language_ranges` lets MLM masking draw random
    replacement tokens from the same language's range.
Every model keeps the contract's special ids: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4.

This module sits in xlm_jax.data, not in the corpus builder, because training reads these folders and
`xlm_jax.data.tokenizer.load_tokenizer` builds a missing one on first use; `xlm-jax data tokenizers` is the
command-line way to build the same folders ahead of time.
"""
from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import pathlib

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from xlm_jax.atomic_files import write_directory_atomically
from xlm_jax.data.tokenizer_training import (DEFAULT_CHARACTER_COVERAGE, DEFAULT_MAX_SENTENCES, alpha_sample,
                                             train_sentencepiece)

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4 (contract)
NUM_SPECIALS = len(SPECIALS)
TAGGED_FORMAT = "language_tagged_sentencepiece"
FORMAT_VERSION = 1
FALLBACK_CHARACTER_COVERAGE = 0.995
_NORMAL = sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL


def train_per_language(texts_by_lang: dict[str, list[str]], vocab_size_per_lang, model_type: str = "unigram",
                       seed: int = 0, max_sentences: int = DEFAULT_MAX_SENTENCES,
                       num_threads: int | None = None) -> dict[str, bytes]:
  """One serialized SentencePiece model per language, in the order of texts_by_lang.

  vocab_size_per_lang: an int for all languages or {lang: size}. A language with more than max_sentences
  sentences is subsampled with `seed` (alpha_sample with one language), as for the joint tokenizer.
  """
  models = {}
  for lang, texts in texts_by_lang.items():
    size = vocab_size_per_lang[lang] if isinstance(vocab_size_per_lang, dict) else vocab_size_per_lang
    if not texts:
      raise ValueError(f"language {lang!r} has no text to train its SentencePiece model on")
    # One language, so alpha does not matter: this only caps (and seeds) the subsample of a big language.
    sentences = alpha_sample({lang: list(texts)}, alpha=1.0, max_sentences=max_sentences, seed=seed)
    train = functools.partial(train_sentencepiece, sentences, size, model_type=model_type, seed=seed,
                              num_threads=num_threads)
    try:
      models[lang] = train()
    except ValueError as err:
      if "required_chars" not in str(err):
        raise ValueError(f"language {lang!r}: {err}") from err
      # A per-language model of a logographic script (zh, ja) can need more distinct characters
      # for 99.95% coverage than it has pieces; the rarest characters then become <unk>.
      logging.warning("language %r: %d pieces cannot hold the characters of %.2f%% coverage; "
                      "training with %.1f%% character coverage", lang, size,
                      100 * DEFAULT_CHARACTER_COVERAGE, 100 * FALLBACK_CHARACTER_COVERAGE)
      try:
        models[lang] = train(character_coverage=FALLBACK_CHARACTER_COVERAGE)
      except ValueError as err2:
        raise ValueError(f"language {lang!r}: {err2} (raise --vocab-size-per-lang)") from err2
  return models


def _proto(model: bytes, source: str) -> sentencepiece_model_pb2.ModelProto:
  """The model proto, checked for the contract's special pieces at ids 0..4."""
  try:
    proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  except Exception as err:  # protobuf raises DecodeError, which is no ValueError subclass
    raise ValueError(f"{source} is not a serialized SentencePiece model: {err}") from err
  got = tuple(piece.piece for piece in proto.pieces[:NUM_SPECIALS])
  if got != SPECIALS:
    raise ValueError(f"{source} has {got} at ids 0..4, not {SPECIALS}; train it with "
                     "xlm_jax.data.tokenizer_training.train_sentencepiece (the contract's special ids)")
  if any(piece.type != _NORMAL for piece in proto.pieces[NUM_SPECIALS:]):
    raise ValueError(f"{source} has special pieces after id 4; only <s> <pad> </s> <unk> <mask> may be "
                     "special (train with train_sentencepiece)")
  return proto


# --- Union ("default anchors") ------------------------------------------------------------------------------

def union_model(models: dict[str, bytes]) -> tuple[bytes, dict[str, list[str]]]:
  """Merges per-language models into one: (serialized model, {piece: languages that learned it}).

  Ids 0..4 are the specials; then every piece once, by descending score (ties by piece). A piece learned
  by several languages keeps its highest score: it is as likely as in the language that uses it most, and
  for BPE (score = -merge rank) the earliest merge wins.
  """
  if not models:
    raise ValueError("union_model needs at least one language's model")
  protos = {lang: _proto(model, f"the {lang} model") for lang, model in models.items()}
  kinds = {proto.trainer_spec.model_type for proto in protos.values()}
  if len(kinds) != 1:
    raise ValueError(f"per-language models mix model types {sorted(kinds)}; train all with one model_type")
  scores, owners = {}, {}
  for lang, proto in protos.items():
    for piece in proto.pieces[NUM_SPECIALS:]:
      scores[piece.piece] = max(scores.get(piece.piece, -np.inf), piece.score)
      owners.setdefault(piece.piece, []).append(lang)
  union = sentencepiece_model_pb2.ModelProto()
  union.CopyFrom(next(iter(protos.values())))  # normalizer and trainer settings are the same for all
  del union.pieces[NUM_SPECIALS:]
  for piece in sorted(scores, key=lambda p: (-scores[p], p)):
    union.pieces.add(piece=piece, score=scores[piece], type=_NORMAL)
  union.trainer_spec.vocab_size = len(union.pieces)
  return union.SerializeToString(), owners


def write_union_tokenizer(models: dict[str, bytes], out_dir) -> dict:
  """Writes spm.model, spm.vocab ("piece<TAB>score") and anchors.json into out_dir (atomically).

  anchors.json: languages, vocab_size, pieces per language, the anchor count and the anchors (pieces of
  two or more languages) with their languages. Returns that summary.
  """
  model, owners = union_model(models)
  processor = spm.SentencePieceProcessor(model_proto=model)
  vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                  for i in range(processor.get_piece_size()))
  anchors = {piece: langs for piece, langs in sorted(owners.items()) if len(langs) > 1}
  summary = {"variant": "union", "languages": list(models), "vocab_size": processor.get_piece_size(),
             "pieces_per_language": {lang: len(_proto(m, lang).pieces) - NUM_SPECIALS
                                     for lang, m in models.items()},
             "num_anchors": len(anchors), "anchors": anchors,
             "sha256": hashlib.sha256(model).hexdigest()}
  write_directory_atomically(pathlib.Path(out_dir), {
      "spm.model": model, "spm.vocab": vocab.encode("utf-8"),
      "anchors.json": (json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()})
  return summary


# --- No anchors: per-language id ranges ---------------------------------------------------------------------

class LanguageTaggedTokenizer:
  """Per-language SentencePiece models whose pieces live in disjoint id ranges (nothing shared but 0..4).

  Language l's local id k >= 5 is global id start_l + k - 5; the ranges follow the order of `languages`.
  Picklable (grain workers get the model bytes).
  """
  # Every per-language model has the contract's specials at 0..4, so they are the same ids in all ranges.
  bos_id, pad_id, eos_id, unk_id, mask_id = range(NUM_SPECIALS)
  special_ids = tuple(range(NUM_SPECIALS))

  def __init__(self, models: dict[str, bytes]):
    if not models:
      raise ValueError("LanguageTaggedTokenizer needs at least one language's model")
    self._models = {lang: bytes(model) for lang, model in models.items()}
    self._processors, self.language_ranges, start = {}, {}, NUM_SPECIALS
    for lang, model in self._models.items():
      _proto(model, f"the {lang} model")
      processor = spm.SentencePieceProcessor(model_proto=model)
      self._processors[lang] = processor
      end = start + processor.get_piece_size() - NUM_SPECIALS
      self.language_ranges[lang] = (start, end)
      start = end
    self.languages = tuple(self._models)
    self.vocab_size = start
    self._starts = [self.language_ranges[lang][0] for lang in self.languages]

  # SentencePieceProcessor objects do not pickle; workers rebuild them from the model bytes.
  def __getstate__(self):
    return {"models": self._models}

  def __setstate__(self, state):
    self.__init__(state["models"])

  def ranges_for(self, languages) -> np.ndarray:
    """int32 [len(languages), 2] of half-open id ranges, in the given order (e.g. config.data.languages)."""
    missing = [lang for lang in languages if lang not in self.language_ranges]
    if missing:
      raise ValueError(f"languages {missing} have no model in this tokenizer (it has {list(self.languages)})")
    return np.array([self.language_ranges[lang] for lang in languages], np.int32).reshape(-1, 2)

  def encode(self, texts: list[str], lang: str) -> list[list[int]]:
    """Global token ids of each text in language `lang` (no <s>/</s> added)."""
    if isinstance(texts, str):
      raise TypeError("encode takes a list of strings; wrap a single text as [text]")
    if lang not in self._processors:
      raise ValueError(f"no tokenizer for language {lang!r}; this one has {list(self.languages)}")
    offset = self.language_ranges[lang][0] - NUM_SPECIALS
    return [[i if i < NUM_SPECIALS else i + offset for i in ids]
            for ids in self._processors[lang].encode(list(texts), out_type=int)]

  def language_of(self, token_id: int) -> str | None:
    """The language whose range holds token_id; None for the special ids."""
    token_id = int(token_id)
    if not 0 <= token_id < self.vocab_size:
      raise ValueError(f"id {token_id} is outside the vocabulary [0, {self.vocab_size})")
    if token_id < NUM_SPECIALS:
      return None
    # Ranges are contiguous and sorted by start, so the last start <= token_id names the language.
    return self.languages[bisect.bisect_right(self._starts, token_id) - 1]

  def _local(self, token_id: int) -> tuple[str | None, int]:
    lang = self.language_of(token_id)
    return lang, token_id if lang is None else token_id - self.language_ranges[lang][0] + NUM_SPECIALS

  def id_to_piece(self, token_id: int) -> str:
    """The piece of an id, as its language's model spells it (the same piece may exist in other ranges)."""
    lang, local = self._local(token_id)
    return SPECIALS[local] if lang is None else self._processors[lang].id_to_piece(local)

  def decode(self, ids) -> str:
    """Text of ids that may mix languages: each same-language run is decoded by its own model."""
    runs = []  # [lang, local ids]; special ids join the run they are in
    for token_id in ids:
      lang, local = self._local(token_id)
      if not runs or (lang is not None and runs[-1][0] not in (None, lang)):
        runs.append([lang, []])
      if runs[-1][0] is None:
        runs[-1][0] = lang
      runs[-1][1].append(local)
    text = ""
    for lang, local_ids in runs:
      processor = self._processors[lang or self.languages[0]]
      part = processor.decode(local_ids)
      # Each model drops the space before its run's first word; put it back between runs.
      first = next((i for i in local_ids if i >= NUM_SPECIALS), None)
      if text and part and first is not None and processor.id_to_piece(first).startswith("▁"):
        part = " " + part
      text += part
    return text

  def save(self, directory) -> None:
    """Writes <lang>.model per language and tokenizer.json (ranges, checksums), atomically."""
    write_directory_atomically(pathlib.Path(directory), self.files())

  def files(self) -> dict[str, bytes]:
    """The folder `save` writes, as {file name: bytes} (an export embeds it)."""
    files = {f"{lang}.model": model for lang, model in self._models.items()}
    meta = {"format": TAGGED_FORMAT, "format_version": FORMAT_VERSION, "languages": list(self.languages),
            "language_ranges": {lang: list(r) for lang, r in self.language_ranges.items()},
            "vocab_size": self.vocab_size, "special_ids": list(self.special_ids),
            "models": {lang: {"file": f"{lang}.model", "sha256": hashlib.sha256(model).hexdigest()}
                       for lang, model in self._models.items()}}
    files["tokenizer.json"] = (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    return files

  @classmethod
  def load(cls, directory) -> LanguageTaggedTokenizer:
    """Reads a folder written by `save`; checks checksums and that the ranges match the models."""
    directory = pathlib.Path(directory).expanduser()
    meta_path = directory / "tokenizer.json"
    if not meta_path.is_file():
      raise FileNotFoundError(f"{meta_path} not found; write the tokenizer with "
                              "xlm_jax.data.tokenizer_variants.build_no_anchors_tokenizer")
    files = {path.name: path.read_bytes() for path in directory.iterdir() if path.is_file()}
    return cls.from_files(files, source=str(directory))

  @classmethod
  def from_files(cls, files: dict[str, bytes], source: str = "tokenizer files") -> LanguageTaggedTokenizer:
    """Rebuilds the tokenizer from `files()` output; checks checksums and ranges."""
    if "tokenizer.json" not in files:
      raise FileNotFoundError(f"{source}: tokenizer.json not found; write the tokenizer with "
                              "xlm_jax.data.tokenizer_variants.build_no_anchors_tokenizer")
    meta = json.loads(files["tokenizer.json"].decode("utf-8"))
    meta_path = f"{source}/tokenizer.json"
    if meta.get("format") != TAGGED_FORMAT or meta.get("format_version") != FORMAT_VERSION:
      raise ValueError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('format_version')} is not "
                       f"{TAGGED_FORMAT!r} v{FORMAT_VERSION}; rebuild the tokenizer")
    models = {}
    for lang in meta["languages"]:
      entry = meta["models"][lang]
      if entry["file"] not in files:
        raise FileNotFoundError(f"{source}/{entry['file']} (the {lang} model named in {meta_path}) not found")
      models[lang] = files[entry["file"]]
      if hashlib.sha256(models[lang]).hexdigest() != entry["sha256"]:
        raise ValueError(f"{source}/{entry['file']} does not match the sha256 in {meta_path}; the folder was "
                         "changed, rebuild it")
    tokenizer = cls(models)
    if {lang: list(r) for lang, r in tokenizer.language_ranges.items()} != meta["language_ranges"]:
      raise ValueError(f"{meta_path}: language_ranges do not match the models' sizes; rebuild the tokenizer")
    return tokenizer


def build_union_tokenizer(texts_by_lang, out_dir, vocab_size_per_lang, model_type: str = "unigram",
                          seed: int = 0, num_threads: int | None = None) -> dict:
  """Trains per-language models and writes their union ("default anchors") to out_dir; returns the summary."""
  models = train_per_language(texts_by_lang, vocab_size_per_lang, model_type, seed, num_threads=num_threads)
  return write_union_tokenizer(models, out_dir)


def build_no_anchors_tokenizer(texts_by_lang, out_dir, vocab_size_per_lang, model_type: str = "unigram",
                               seed: int = 0, num_threads: int | None = None) -> LanguageTaggedTokenizer:
  """Trains per-language models and saves them as a LanguageTaggedTokenizer ("no anchors") in out_dir."""
  models = train_per_language(texts_by_lang, vocab_size_per_lang, model_type, seed, num_threads=num_threads)
  tokenizer = LanguageTaggedTokenizer(models)
  tokenizer.save(out_dir)
  return tokenizer
