"""One example per row: the reading stage shared by the "parallel", "parallel_pairs" and "sentences" kinds.

Per language: this host's shard -> per-epoch shuffle -> chunks of examples (`pipeline.ShardChunks`) ->
`build_chunk(chunk_index, payload)` turns a chunk into finished rows (tokenize, drop empty, lay out) ->
`packing.FlattenIterDataset` yields them one by one. The chunk index is global (epoch * chunks_per_epoch +
k), so randomness drawn from it (the side order of a pair) is fixed by the seed and survives a restore.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain
import numpy as np

from xlm_jax.data import packing, pipeline

# Salts that keep the readers of different batch kinds from walking a shared source in the same order
# (`sampling.epoch_order(stream=...)`); mono keeps 0, its historical order.
STREAMS = {"mono": 0, "parallel": 1, "parallel_pairs": 2, "sentences": 3}


class _ChunkRows:
  """map_with_index callable: reads chunk `index` and builds its rows (a class, so grain can pickle it)."""

  def __init__(self, reader: pipeline.ShardChunks, build_chunk: Callable[[int, Any], list]):
    self._reader, self._build_chunk = reader, build_chunk

  def __call__(self, index: int, element: Any) -> list:
    return self._build_chunk(int(index), self._reader(index, element))


def language_rows(source: Any, *, lang: str, lang_id: int, build_chunk: Callable[[int, Any], list],
                  kind: str, seed: int, shard_index: int, shard_count: int, num_epochs: int | None,
                  shuffle: bool, chunk_size: int, read_options: grain.ReadOptions,
                  payload: Callable | None = None) -> grain.IterDataset:
  """Rows of one language (or language pair) on this host; infinite when num_epochs is None.

  payload(records, lang) picks what `build_chunk` receives from a chunk of records (default: texts, or
  ids for pre-tokenized sources). A whole epoch without a row raises instead of looping forever.
  """
  reader = pipeline.ShardChunks(source, lang=lang, lang_id=lang_id, shard_index=shard_index,
                                shard_count=shard_count, chunk_size=chunk_size, shuffle=shuffle, seed=seed,
                                stream=STREAMS[kind], payload=payload)
  chunks = (grain.MapDataset.range(reader.chunks_per_epoch).repeat(num_epochs)
            .map_with_index(_ChunkRows(reader, build_chunk)).to_iter_dataset(read_options))
  max_empty = reader.chunks_per_epoch + 1 if num_epochs is None else 0
  return packing.FlattenIterDataset(chunks, max_empty_chunks=max_empty, name=f"{kind} rows of {lang!r}")


def chunk_rng(seed: int, kind: str, lang_id: int, chunk_index: int) -> np.random.Generator:
  """The generator of one chunk's random choices, fixed by (seed, kind, language, global chunk index)."""
  return np.random.default_rng([int(seed), STREAMS[kind], int(lang_id), int(chunk_index), 1])


def side_row(ids, length: int, bos_id: int, eos_id: int, pad_id: int) -> np.ndarray:
  """`<s> ids </s>` then padding to `length`; ids beyond length - 2 are cut off."""
  row = np.full(length, pad_id, np.int32)
  kept = list(ids[:length - 2])
  row[:len(kept) + 2] = [bos_id, *kept, eos_id]
  return row


def read_options(read_threads: int) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, 2 * read_threads))
