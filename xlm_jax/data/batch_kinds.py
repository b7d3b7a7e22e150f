"""One entry point for the input pipeline of every batch kind.

    mono            MLM streams or packed sentences        pipeline.make_mono_dataset
    parallel        <s> x </s> </s> y </s> per row         pairs.make_pair_dataset
    parallel_pairs  x and y in separate rows (siamese)     pairs.make_pair_dataset
    sentences       one <s> s </s> per row                 sentences.make_sentence_dataset

Every batch is a dict of int32 numpy arrays (per host; the trainer assembles the global batch):
- mono, sentences: input_ids, segment_ids, position_ids, lang_ids, all [B, L]. Segment ids are
  1..k for the packed segments of a row and 0 on padding; positions start at pad_id + 1 in every
  segment (XLM-R) and are pad_id on padding; lang_ids index data.languages (0 on padding).
- parallel: the same four keys for `<s> x </s> </s> y </s>` + padding, segment 1 on `<s> x </s>`
  and 2 on `</s> y </s>`, continuous positions over the pair (TLM resets y's on device), each
  token's lang_id that of its side. English is one side of every pair, first or second at random
  (a derived language "<lang>_<op>" pairs with its source language instead: en and en_trans).
- parallel_pairs: x_input_ids, y_input_ids [B, Ls] (`<s> s </s>` + padding; row i of x and of y
  are translations) and x_lang_ids, y_lang_ids [B].

`make_dataset` opens the corpus's sources for a kind (TFDS text, or the pre-tokenized rows of derived
languages "<lang>_<op>", derived on first use) and builds that kind's grain dataset.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain

from xlm_jax.data import derived, pairs, pipeline, sentences
# The vocabulary facts a run needs beside its batches, importable from here too.
from xlm_jax.data.tokenizer import effective_vocab_size, language_ranges

__all__ = ["BATCH_KINDS", "FirstExamples", "check_languages", "effective_vocab_size", "language_ranges",
           "make_dataset", "mono_sources", "parallel_sources"]
BATCH_KINDS = ("mono", "parallel", "parallel_pairs", "sentences")


class FirstExamples:
  """The first `n` examples of a random-access source (bounded evaluation sets)."""

  def __init__(self, source: Any, n: int):
    self._source, self._n = source, min(int(n), len(source))
    # Forwarded, so the pipeline does not feed a derived language's token ids to the tokenizer.
    self.pretokenized = pipeline.is_pretokenized(source)
    # Likewise for a derived language's pairs, whose foreign side is token ids.
    self.foreign_pretokenized = bool(getattr(source, "foreign_pretokenized", False))

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int):
    # Negative keys are refused too: Python indexing would wrap them to the full source's end.
    if not 0 <= index < self._n:
      raise IndexError(f"index {index} out of range for the first {self._n} examples")
    return self._source[index]

  def __getitems__(self, keys):
    if any(not 0 <= k < self._n for k in keys):
      raise IndexError(f"indices {list(keys)} out of range for the first {self._n} examples")
    if hasattr(self._source, "__getitems__"):
      return self._source.__getitems__(keys)  # batched reads: the pipeline's fast path
    return [self._source[k] for k in keys]


def check_languages(corpus, languages: Sequence[str]) -> None:
  """ValueError naming a data.languages entry that is neither a corpus language nor a derived one
  "<lang>_<op>" of a corpus language, or whose (source) language has no training text."""
  plain = []
  for name in languages:
    if name in corpus.languages:
      plain.append(name)
      continue
    parts = derived.split_derived(name)
    if parts is None:
      hint = (f"; a derived language is '<lang>_<op>' with op one of {derived.synthetic.OPS} ('+' may replace "
              "'∘')" if "_" in name else "")
      raise ValueError(f"data.languages: {name!r} is not a language of corpus {corpus.dir} "
                       f"({', '.join(corpus.languages)}){hint}")
    if parts[0] not in corpus.languages:
      raise ValueError(f"data.languages: derived language {name!r} needs source language {parts[0]!r}, "
                       f"which corpus {corpus.dir} lacks ({', '.join(corpus.languages)})")
    plain.append(parts[0])
  # A derived language and its source map to one corpus language: check each once, in order.
  corpus.check_languages(list(dict.fromkeys(plain)))


def mono_sources(corpus, languages: Sequence[str], split: str, tokenizer=None,
                 derive_seed: int | None = None, max_examples: int | None = None) -> dict[str, Any]:
  """{lang: mono source}: the corpus's TFDS text, or a DerivedSource (derived first if missing)."""
  sources = {}
  for lang in languages:
    if derived.is_derived(lang):
      sources[lang] = derived.derived_source(corpus, lang, split, tokenizer, derive_seed)
    else:
      sources[lang] = corpus.mono_source(lang, split)
  return _first(sources, max_examples)


def parallel_sources(corpus, languages: Sequence[str], split: str, max_examples: int | None = None,
                     tokenizer=None, derive_seed: int | None = None) -> dict[str, Any]:
  """{lang: en-<lang> source} for every language with pairs (`pairs.pair_languages`); a derived
  language's pairs are its sentences beside their source sentences (derived first if missing)."""
  sources = {}
  for lang in pairs.pair_languages(languages):
    if derived.is_derived(lang):
      sources[lang] = derived.DerivedPairSource(corpus, lang, split, tokenizer, derive_seed)
      continue
    source = corpus.parallel_source(lang, split)
    # An empty pair source would only fail later, in sampling, without naming the corpus split.
    if len(source) == 0:
      raise ValueError(f"corpus {corpus.dir} has no {split} pairs for en-{lang} (manifest counts "
                       f"parallel_{split} = {corpus.num_examples(lang, split, 'parallel')}); drop {lang!r} "
                       "from data.languages for parallel objectives or rebuild the corpus with more packages")
    sources[lang] = source
  return _first(sources, max_examples)


def _first(sources: dict[str, Any], max_examples: int | None) -> dict[str, Any]:
  if not max_examples:
    return sources
  return {lang: FirstExamples(source, max_examples) for lang, source in sources.items()}


def make_dataset(
  kind: str, corpus, tokenizer, *, languages: Sequence[str], seq_len: int, batch_size: int, alpha: float,
  seed: int, packing: str = "stream", pair_seq_len: int | None = None, sentence_len: int | None = None,
  num_epochs: int | None = None, shuffle: bool = True, max_examples: int | None = None,
  read_threads: int = 1, shard_index: int | None = None, shard_count: int | None = None,
  split: str = "train", foreign_first_rate: float = 0.5, derive_seed: int | None = None,
  prefetch: int = 4, counts: pipeline.ExampleCounts | None = None,
) -> grain.IterDataset:
  """The grain dataset of one batch kind over a built corpus (per-host batches of `batch_size` rows).

  kind: one of BATCH_KINDS. corpus: xlm_jax.data.corpus.Corpus. tokenizer: from
    `tokenizer.load_tokenizer` (joint, union or no_anchors; the pipelines call it with the language).
  languages: data.languages; their order defines lang_ids. Entries "<lang>_<op>" are derived languages
    (in the parallel kinds each pairs with its source language, when that is listed too).
  seq_len, packing (mono), pair_seq_len (parallel_pairs; default seq_len // 2), sentence_len (sentences;
    default seq_len), alpha (language sampling over this split's sizes), seed, foreign_first_rate
    (parallel kinds: probability the foreign side comes first).
  num_epochs None: an infinite shuffled mix; an integer with shuffle=False: a deterministic finite pass,
    languages one after another, last batch padded. max_examples: only the first n examples of each
    language (fixed evaluation sets). split: "train" or "test".
  derive_seed: seed of derived languages (None: whatever was derived, 0 when deriving now).
  counts: a pipeline.ExampleCounts tallying examples read and dropped as empty (the returned dataset also
    carries it as `example_counts`).
  Its iterator restores exactly with get_state()/set_state().
  """
  if kind not in BATCH_KINDS:
    raise ValueError(f"unknown batch kind {kind!r}; known kinds: {', '.join(BATCH_KINDS)}")
  languages = list(languages)
  check_languages(corpus, languages)
  # Fails early, naming them, for languages a per-language vocabulary lacks (or derived + no_anchors).
  language_ranges(tokenizer, languages)
  common = dict(languages=languages, seq_len=seq_len, batch_size=batch_size, alpha=alpha, seed=seed,
                shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs, shuffle=shuffle,
                read_threads=read_threads, prefetch=prefetch, counts=counts)
  if kind in ("mono", "sentences"):
    sources = mono_sources(corpus, languages, split, tokenizer, derive_seed, max_examples)
    if kind == "mono":
      return pipeline.make_mono_dataset(sources, tokenizer, packing=packing, **common)
    return sentences.make_sentence_dataset(sources, tokenizer, sentence_len=sentence_len, **common)
  sources = parallel_sources(corpus, languages, split, max_examples, tokenizer, derive_seed)
  return pairs.make_pair_dataset(kind, sources, tokenizer, pair_seq_len=pair_seq_len,
                                 foreign_first_rate=foreign_first_rate, **common)
