"""Parallel-text batches: "parallel" (TLM, CAMLM) and "parallel_pairs" (EMS, EMMA-X siamese).

Sources are the corpus's en-<lang> pairs ({"en", "xx", "lang"} records), one per non-English language of
data.languages; English is one side of every pair, so "en" must be listed too (for its lang id). A derived
language "<lang>_<op>" (xlm_jax.data.derived) pairs with its source language when that is listed too:
each sentence beside its derived form ({"en": source text, "xx_ids": derived ids}, `DerivedPairSource`),
so TLM can read English next to derived English (the XLM baseline of ALIGN-MLM). Pair
languages are mixed with q_l ∝ p_l^alpha over the parallel sizes. Per pair a seeded draw decides which side
comes first (x): the foreign one with probability `foreign_first_rate`. A pair with a side that tokenizes to
nothing is dropped and counted (`pipeline.ExampleCounts`).

"parallel" rows, length L = seq_len (contract "Batch kinds"):
    input_ids     <s> x </s> </s> y </s> <pad> ...
    segment_ids    1  1  1    2   2  2    0
    position_ids   continuous pad_id+1, pad_id+2, ... over the pair; pad_id on padding
    lang_ids       x's language on segment 1, y's on segment 2, 0 on padding
  When the pair does not fit, the longer side is cut first (`truncate_pair`), each side keeping its start.
"parallel_pairs": x_input_ids, y_input_ids [B, Ls] (`<s> side </s>` + padding, each side cut to Ls - 2
  tokens on its own), x_lang_ids, y_lang_ids [B].
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
from typing import Any

import grain
import numpy as np

from xlm_jax.data import pipeline, rows as rows_lib
from xlm_jax.data.tokenizer import encode_texts

ENGLISH = "en"
PAIR_KINDS = ("parallel", "parallel_pairs")
# <s> x </s> </s> y </s>: four special tokens, and at least one token per side.
PARALLEL_SPECIALS = 4
MIN_PARALLEL_LEN = PARALLEL_SPECIALS + 2


def truncate_pair(x: Sequence[int], y: Sequence[int], budget: int) -> tuple[list[int], list[int]]:
  """Cuts the end of the longer side first until len(x) + len(y) <= budget.

  Token by token that leaves the shorter side whole if the longer one can absorb the cut (shorter <=
  budget // 2); else both sides end up at half the budget, x keeping the odd token.
  """
  x, y = list(x), list(y)
  if len(x) + len(y) <= budget:
    return x, y
  # The shorter side fits in half the budget: cut only the longer side.
  if min(len(x), len(y)) <= budget // 2:
    if len(x) >= len(y):
      return x[:budget - len(y)], y
    return x, y[:budget - len(x)]
  return x[:(budget + 1) // 2], y[:budget // 2]


def parallel_row(x: Sequence[int], y: Sequence[int], *, x_lang_id: int, y_lang_id: int, seq_len: int,
                 bos_id: int, eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """One "parallel" row (layout in the module docstring); sides are truncated to fit seq_len."""
  x, y = truncate_pair(x, y, seq_len - PARALLEL_SPECIALS)
  # `</s> </s>` between the sides is the fairseq/HF XLM-R sentence-pair separator.
  first, second = [bos_id, *x, eos_id], [eos_id, *y, eos_id]
  n1, n = len(first), len(first) + len(second)
  input_ids = np.full(seq_len, pad_id, np.int32)
  input_ids[:n] = first + second
  segment_ids = np.zeros(seq_len, np.int32)
  segment_ids[:n1], segment_ids[n1:n] = 1, 2
  position_ids = np.full(seq_len, pad_id, np.int32)
  # Continuous positions from pad_id + 1 (XLM-R); objectives that want XLM's restart on y
  # (TLM's reset_positions) redo them on device, so one batch layout serves both.
  position_ids[:n] = np.arange(pad_id + 1, pad_id + 1 + n)
  lang_ids = np.zeros(seq_len, np.int32)
  lang_ids[:n1], lang_ids[n1:n] = x_lang_id, y_lang_id
  return {"input_ids": input_ids, "segment_ids": segment_ids, "position_ids": position_ids,
          "lang_ids": lang_ids}


def pair_row(x: Sequence[int], y: Sequence[int], *, x_lang_id: int, y_lang_id: int, pair_seq_len: int,
             bos_id: int, eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """One "parallel_pairs" row: each side `<s> side </s>` in its own pair_seq_len row."""
  return {"x_input_ids": rows_lib.side_row(x, pair_seq_len, bos_id, eos_id, pad_id),
          "y_input_ids": rows_lib.side_row(y, pair_seq_len, bos_id, eos_id, pad_id),
          "x_lang_ids": np.int32(x_lang_id), "y_lang_ids": np.int32(y_lang_id)}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def pair_texts(records: Sequence[Mapping[str, Any]], lang: str) -> tuple[list[str], list]:
  """(English texts, foreign texts) of a chunk of {"en", "xx", ...} records; a derived language's
  records hold the foreign side as ids ("xx_ids"), returned as int lists in place of texts."""
  en, xx = [], []
  for record in records:
    try:
      en_side = record["en"]
      xx_side = [int(i) for i in record["xx_ids"]] if "xx_ids" in record else _text(record["xx"])
    # Name the expected record schema; a bare KeyError would not say which source is wrong.
    except (KeyError, TypeError, IndexError):
      raise ValueError(
        f"parallel source en-{lang}: record {record!r:.80} lacks the field 'en' or 'xx'; parallel sources "
        "must return {'en': bytes|str, 'xx': bytes|str, ...} (rebuild the corpus with `xlm-jax data build`)."
      ) from None
    en.append(_text(en_side))
    xx.append(xx_side)
  return en, xx


class PairChunkRows:
  """Builds the rows of one chunk of en-<lang> pairs: tokenize both sides, draw the order, lay out.

  `pivot` is the language of the "en" side: English, or a derived language's source language.
  `foreign_pretokenized`: the foreign side arrives as ids (a derived language), not as text.
  """

  def __init__(self, *, kind: str, lang: str, lang_id: int, en_id: int, tokenizer: Any, seed: int,
               foreign_first_rate: float, length: int, counts: pipeline.ExampleCounts,
               pivot: str = ENGLISH, foreign_pretokenized: bool = False):
    self._kind, self._lang, self._lang_id, self._en_id = kind, lang, lang_id, en_id
    self._pivot, self._foreign_pretokenized = pivot, foreign_pretokenized
    self._tokenizer, self._seed, self._rate, self._counts = tokenizer, seed, foreign_first_rate, counts
    tok = tokenizer
    layout = parallel_row if kind == "parallel" else pair_row
    length_key = "seq_len" if kind == "parallel" else "pair_seq_len"
    self._layout = functools.partial(layout, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                                     **{length_key: length})

  def __call__(self, chunk_index: int, texts: tuple[list[str], list[str]]) -> list[dict[str, np.ndarray]]:
    en_texts, xx_texts = texts
    en_ids = encode_texts(self._tokenizer, en_texts, self._pivot)
    xx_ids = xx_texts if self._foreign_pretokenized else encode_texts(self._tokenizer, xx_texts, self._lang)
    # Drawn for every pair, kept or not, so a dropped pair never shifts the others' order.
    # Seeded by the global chunk index, so a restored iterator draws the same side orders again.
    rng = rows_lib.chunk_rng(self._seed, self._kind, self._lang_id, chunk_index)
    foreign_first = rng.random(len(en_ids)) < self._rate
    out, skipped = [], 0
    for en, xx, swap in zip(en_ids, xx_ids, foreign_first):
      if not en or not xx:
        skipped += 1
        continue
      x, y = ((xx, self._lang_id), (en, self._en_id)) if swap else ((en, self._en_id), (xx, self._lang_id))
      out.append(self._layout(x[0], y[0], x_lang_id=x[1], y_lang_id=y[1]))
    self._counts.add(f"{self._pivot}-{self._lang}", len(en_ids), skipped)
    return out


def pair_sides(languages: Sequence[str]) -> dict[str, str]:
  """{language with pairs: the language of the pairs' other side}: English for every listed natural
  language but English, the source language for a derived one ("en_trans" -> "en") whose source is
  listed too (it needs a language id); a derived language whose source is not listed has no pairs."""
  from xlm_jax.data.derived import split_derived
  sides = {}
  for lang in languages:
    parts = split_derived(lang)
    if parts is None:
      if lang != ENGLISH:
        sides[lang] = ENGLISH
    elif parts[0] in languages:
      sides[lang] = parts[0]
  return sides


def pair_languages(languages: Sequence[str]) -> list[str]:
  """The languages that have pairs (`pair_sides`), in `languages` order."""
  return list(pair_sides(languages))


def make_pair_dataset(
  kind: str, sources: Mapping[str, Any], tokenizer: Any, *, languages: Sequence[str], seq_len: int,
  batch_size: int, pair_seq_len: int | None = None, alpha: float = 0.3, seed: int = 0,
  foreign_first_rate: float = 0.5, shard_index: int | None = None, shard_count: int | None = None,
  num_epochs: int | None = None, shuffle: bool = True, chunk_size: int = 512, read_threads: int = 1,
  prefetch: int = 4, counts: pipeline.ExampleCounts | None = None,
) -> grain.IterDataset:
  """Batches of kind "parallel" ([batch_size, seq_len] arrays) or "parallel_pairs" ([batch_size,
  pair_seq_len] token arrays and [batch_size] language ids); layouts in the module docstring.

  sources: {lang: random-access en-<lang> source}, for every `pair_languages(languages)`; a derived
    language's source (`derived.DerivedPairSource`) pairs it with its source language.
  languages: data.languages; their order defines lang ids; must include "en" when a natural language
    other than English is listed. pair_seq_len: default seq_len // 2 ("parallel_pairs" only).
  foreign_first_rate: probability that the foreign side is x (comes first); 0.5 = random order.
  num_epochs / shuffle / shard_* / read_threads / prefetch: as `pipeline.make_mono_dataset` (a finite
    pass chains the pair languages in `languages` order and pads the last batch with pad rows:
    input ids pad_id, every other field 0). chunk_size: pairs per tokenizer call.
  counts: tallies pairs read and dropped per "en-<lang>" (also `dataset.example_counts`).
  """
  if kind not in PAIR_KINDS:
    raise ValueError(f"pairs: kind must be one of {PAIR_KINDS}, got {kind!r}.")
  # Lang ids are positions in `languages`: a repeat would give one language two ids.
  if len(set(languages)) != len(languages):
    raise ValueError(f"pairs: `languages` must not repeat a language, got {list(languages)}.")
  sides = pair_sides(languages)
  if ENGLISH not in languages and ENGLISH in sides.values():
    raise ValueError(f"{kind} batches need 'en' in data.languages (English is one side of every pair and "
                     f"needs a language id); got {list(languages)}.")
  wanted = list(sides)
  if not wanted:
    raise ValueError(f"{kind} batches need a non-English language with parallel text in data.languages "
                     "(or a derived language '<lang>_<op>' beside its source language); "
                     f"got {list(languages)}.")
  pipeline.check_common_args(sources, languages=wanted, batch_size=batch_size, seed=seed,
                             num_epochs=num_epochs)
  if not 0.0 <= foreign_first_rate <= 1.0:
    raise ValueError(f"pairs: foreign_first_rate must be in [0, 1], got {foreign_first_rate}.")
  if chunk_size < 1:
    raise ValueError(f"pairs: chunk_size must be >= 1, got {chunk_size}.")
  if kind == "parallel":
    if seq_len < MIN_PARALLEL_LEN:
      raise ValueError(f"parallel: seq_len must be >= {MIN_PARALLEL_LEN} (<s> x </s> </s> y </s>), got {seq_len}.")
    length = seq_len
  else:
    # Default: each side gets half a row, so a pair holds as many tokens as one "parallel" row.
    length = seq_len // 2 if pair_seq_len is None else pair_seq_len
    if length < 3:
      raise ValueError(f"parallel_pairs: pair_seq_len must be >= 3 (<s> s </s>), got {length}.")
  # Per-host sharding: each JAX process reads a disjoint slice of every language's pairs.
  shard_index, shard_count = pipeline.default_shard(shard_index, shard_count)
  counts = pipeline.ExampleCounts() if counts is None else counts
  options = rows_lib.read_options(read_threads)
  by_lang = {}
  for lang in wanted:
    lang_id = list(languages).index(lang)
    build = PairChunkRows(kind=kind, lang=lang, lang_id=lang_id, en_id=list(languages).index(sides[lang]),
                          tokenizer=tokenizer, seed=seed, foreign_first_rate=foreign_first_rate,
                          length=length, counts=counts, pivot=sides[lang],
                          foreign_pretokenized=bool(getattr(sources[lang], "foreign_pretokenized", False)))
    by_lang[lang] = rows_lib.language_rows(
      sources[lang], lang=lang, lang_id=lang_id, build_chunk=build, kind=kind, seed=seed,
      shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs, shuffle=shuffle,
      chunk_size=chunk_size, read_options=options, payload=pair_texts)
  # Full source sizes, not this host's shard: every host must derive the same mixing weights.
  sizes = {lang: len(sources[lang]) for lang in wanted}
  return pipeline.batch_rows(by_lang, sizes, alpha=alpha, batch_size=batch_size, pad_id=tokenizer.pad_id,
                             num_epochs=num_epochs, prefetch=prefetch, counts=counts)
