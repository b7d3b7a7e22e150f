""""sentences" batches (BTMLM; EMMA-X monolingual candidates): one `<s> s </s>` per row.

A sentence keeps its first sentence_len - 2 tokens, so a row holds at most sentence_len real tokens, then
padding to L = seq_len. Keys as "mono": input_ids, segment_ids (1 on the sentence, 0 on padding),
position_ids (pad_id+1, ... ; pad_id on padding), lang_ids (the language's index, 0 on padding).
Sources are the mono ones (text, or pre-tokenized ids for derived languages); languages are mixed with
q_l ∝ p_l^alpha over the source sizes. Sentences that tokenize to nothing are dropped and counted.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from xlm_jax.data import packing, pipeline, rows as rows_lib


def sentence_row(ids: Sequence[int], *, sentence_len: int, seq_len: int, lang_id: int, bos_id: int,
                 eos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """One "sentences" row: `<s> ids[:sentence_len - 2] </s>` as segment 1, padded to seq_len."""
  segment = np.asarray([bos_id, *ids[:sentence_len - 2], eos_id], np.int32)
  return packing.row_from_segments([segment], seq_len, pad_id, lang_id)


class SentenceChunkRows:
  """Builds the rows of one chunk of sentences of one language."""

  def __init__(self, *, lang: str, lang_id: int, tokenizer: Any, pretokenized: bool, sentence_len: int,
               seq_len: int, counts: pipeline.ExampleCounts):
    self._lang, self._lang_id, self._tokenizer, self._pretokenized = lang, lang_id, tokenizer, pretokenized
    self._sentence_len, self._seq_len, self._counts = sentence_len, seq_len, counts

  def __call__(self, chunk_index: int, payload: list) -> list[dict[str, np.ndarray]]:
    del chunk_index  # No random choice here: the reader's shuffle is all.
    tok = self._tokenizer
    token_lists = pipeline.chunk_token_lists(payload, tokenizer=tok, lang=self._lang,
                                             pretokenized=self._pretokenized)
    kept = [ids for ids in token_lists if ids]
    self._counts.add(self._lang, len(token_lists), len(token_lists) - len(kept))
    return [sentence_row(ids, sentence_len=self._sentence_len, seq_len=self._seq_len, lang_id=self._lang_id,
                         bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id) for ids in kept]


def make_sentence_dataset(
  sources: Mapping[str, Any], tokenizer: Any, *, languages: Sequence[str], seq_len: int, batch_size: int,
  sentence_len: int | None = None, alpha: float = 0.3, seed: int = 0, shard_index: int | None = None,
  shard_count: int | None = None, num_epochs: int | None = None, shuffle: bool = True,
  chunk_size: int = 512, read_threads: int = 1, prefetch: int = 4,
  counts: pipeline.ExampleCounts | None = None,
) -> grain.IterDataset:
  """"sentences" batches: int32 [batch_size, seq_len] input_ids, segment_ids, position_ids, lang_ids.

  sources: {lang: mono source} as for `pipeline.make_mono_dataset` (text or pre-tokenized records).
  sentence_len: real tokens per row at most, <s> and </s> included; default seq_len, at most seq_len.
  Other arguments as `pipeline.make_mono_dataset` (a finite pass chains languages, last batch padded).
  """
  sentence_len = seq_len if sentence_len is None else sentence_len
  if not 3 <= sentence_len <= seq_len:
    raise ValueError(f"sentences: need 3 <= sentence_len <= seq_len (<s> s </s> in one row), got "
                     f"sentence_len={sentence_len}, seq_len={seq_len}.")
  if chunk_size < 1:
    raise ValueError(f"sentences: chunk_size must be >= 1, got {chunk_size}.")
  pipeline.check_common_args(sources, languages=languages, batch_size=batch_size, seed=seed,
                             num_epochs=num_epochs)
  shard_index, shard_count = pipeline.default_shard(shard_index, shard_count)
  counts = pipeline.ExampleCounts() if counts is None else counts
  options = rows_lib.read_options(read_threads)
  by_lang = {}
  for lang_id, lang in enumerate(languages):
    build = SentenceChunkRows(lang=lang, lang_id=lang_id, tokenizer=tokenizer,
                              pretokenized=pipeline.is_pretokenized(sources[lang]),
                              sentence_len=sentence_len, seq_len=seq_len, counts=counts)
    by_lang[lang] = rows_lib.language_rows(
      sources[lang], lang=lang, lang_id=lang_id, build_chunk=build, kind="sentences", seed=seed,
      shard_index=shard_index, shard_count=shard_count, num_epochs=num_epochs, shuffle=shuffle,
      chunk_size=chunk_size, read_options=options)
  sizes = {lang: len(sources[lang]) for lang in languages}
  return pipeline.batch_rows(by_lang, sizes, alpha=alpha, batch_size=batch_size, pad_id=tokenizer.pad_id,
                             num_epochs=num_epochs, prefetch=prefetch, counts=counts)
