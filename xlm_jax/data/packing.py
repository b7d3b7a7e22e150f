"""Packing tokenized sentences into fixed-length rows (checkpointable grain IterDatasets).

Both packers read *chunks* (one element = the tokenized sentences of one tokenizer call) so that
tokenization stays batched, and both restore exactly from a small JSON-able state:

- `StreamPackIterDataset` ("stream", XLM-R): sentences followed by `</s>` form one token stream;
  each row is `<s>` + the next seq_len - 1 stream tokens. State = (parent state before the current
  chunk, offset inside the chunk).
- `SegmentPackIterDataset` ("segments"): each sentence becomes `<s> s </s>` (truncated to seq_len) and
  is placed first-fit into a group of `num_bins` rows; when a sentence fits no open row the group is
  emitted in order and a new one starts with it (grain's FirstFitPack rule). State = (where the group
  began, rows of it already emitted); restoring rebuilds that one group, which is deterministic.

grain 0.2.18's ConcatThenSplit / FirstFitPack take one sentence per element and number positions
from 0 with their own segment-id features, so matching the contract through them would need a
flat-map and a rewrite of every row; the packers here emit contract rows directly.
"""
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np


def stream_chunk(token_lists: Sequence[Sequence[int]], eos_id: int) -> np.ndarray:
  """Flattens one chunk into its piece of the token stream: each non-empty sentence then `</s>`."""
  flat = []
  for ids in token_lists:
    # An empty sentence would put a lone `</s>` into the stream.
    if ids:
      flat.extend(ids)
      flat.append(eos_id)
  return np.asarray(flat, dtype=np.int32)


def segment_chunk(
  token_lists: Sequence[Sequence[int]], bos_id: int, eos_id: int, seq_len: int
) -> list[np.ndarray]:
  """One `<s> s </s>` array per non-empty sentence; longer ones keep their first seq_len - 2 tokens."""
  keep = seq_len - 2
  return [
    np.asarray([bos_id, *ids[:keep], eos_id], dtype=np.int32) for ids in token_lists if ids
  ]


def row_from_segments(
  segments: Sequence[np.ndarray], seq_len: int, pad_id: int, lang_id: int
) -> dict[str, np.ndarray]:
  """Builds one contract row from token segments laid end to end (they must fit in seq_len).

  Segment k (1-based) gets segment_ids k and positions pad_id+1, pad_id+2, ...; the tail is
  padding: input pad_id, segment 0, position pad_id, lang 0.
  """
  input_ids = np.full(seq_len, pad_id, np.int32)
  segment_ids = np.zeros(seq_len, np.int32)
  position_ids = np.full(seq_len, pad_id, np.int32)
  offset = 0
  for k, seg in enumerate(segments, start=1):
    n = len(seg)
    input_ids[offset:offset + n] = seg
    segment_ids[offset:offset + n] = k
    # Positions restart per segment, so each packed sentence is numbered as if it began a row.
    position_ids[offset:offset + n] = np.arange(pad_id + 1, pad_id + 1 + n, dtype=np.int32)
    offset += n
  if offset > seq_len:
    raise ValueError(f"row_from_segments: segments hold {offset} tokens, more than seq_len={seq_len}.")
  lang_ids = np.where(segment_ids > 0, np.int32(lang_id), np.int32(0)).astype(np.int32)
  return {
    "input_ids": input_ids,
    "segment_ids": segment_ids,
    "position_ids": position_ids,
    "lang_ids": lang_ids,
  }


def _check_no_empty_epoch(empty_chunks: int, max_empty_chunks: int, name: str) -> None:
  # An infinitely repeated source whose sentences all tokenize to nothing would spin forever.
  if max_empty_chunks and empty_chunks > max_empty_chunks:
    raise ValueError(
      f"{name}: {empty_chunks} consecutive tokenizer chunks held no tokens (a whole epoch); every "
      "example is empty after tokenization. Check the source's text fields."
    )


class _ChunkCursor:
  """Position in a parent iterator of chunks: (parent state before the chunk, index inside it)."""

  def __init__(self, parent: grain.DatasetIterator, max_empty_chunks: int, name: str):
    self._parent = parent
    self._max_empty_chunks = max_empty_chunks
    self._name = name
    # Taken before the chunk is read: a restore re-reads this chunk and skips `index` elements.
    self.chunk_state = parent.get_state()
    self.chunk = None  # Loaded lazily, so a restored cursor re-reads its chunk on first use.
    self.index = 0

  def restore(self, chunk_state: Any, index: int) -> None:
    self._parent.set_state(chunk_state)
    self.chunk_state, self.chunk, self.index = chunk_state, None, int(index)

  def ready(self) -> bool:
    """Makes `chunk[index]` valid; returns False when the parent is exhausted."""
    empty = 0
    while True:
      if self.chunk is None:
        try:
          self.chunk = next(self._parent)
        except StopIteration:
          return False
      if self.index < len(self.chunk):
        return True
      # Only empty chunks count toward the limit; a chunk read to its end is normal progress.
      empty += 1 if len(self.chunk) == 0 else 0
      _check_no_empty_epoch(empty, self._max_empty_chunks, self._name)
      # The chunk is used up: the saved state moves past it before the next one is fetched.
      self.chunk_state = self._parent.get_state()
      self.chunk, self.index = None, 0


class _StreamPackIterator(grain.DatasetIterator):
  def __init__(self, parent, *, seq_len, bos_id, pad_id, lang_id, max_empty_chunks, name):
    super().__init__(parent)
    self._seq_len, self._bos_id, self._pad_id, self._lang_id = seq_len, bos_id, pad_id, lang_id
    self._cursor = _ChunkCursor(parent, max_empty_chunks, name)

  def __next__(self) -> dict[str, np.ndarray]:
    cursor = self._cursor
    # `<s>` + seq_len - 1 stream tokens, as fairseq's masked_lm task builds XLM-R rows
    # (TokenBlockDataset of tokens_per_sample - 1, then PrependTokenDataset with bos).
    need = self._seq_len - 1
    pieces = [np.asarray([self._bos_id], np.int32)]
    while need > 0 and cursor.ready():
      piece = cursor.chunk[cursor.index:cursor.index + need]
      pieces.append(piece)
      cursor.index += len(piece)
      need -= len(piece)
    # Nothing was left to read: a row of `<s>` alone would be no example.
    if need == self._seq_len - 1:
      raise StopIteration
    # Only the very last row of a finite pass can be short; it is padded like a segment row.
    return row_from_segments([np.concatenate(pieces)], self._seq_len, self._pad_id, self._lang_id)

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._cursor.chunk_state, "offset": self._cursor.index}

  def set_state(self, state: dict[str, Any]) -> None:
    self._cursor.restore(state["parent"], state["offset"])


class StreamPackIterDataset(grain.IterDataset):
  """XLM-R stream packing of chunks from `stream_chunk` into rows of exactly seq_len tokens."""

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, bos_id: int, pad_id: int,
               lang_id: int, max_empty_chunks: int = 0, name: str = "stream packing"):
    super().__init__(parent)
    self._kwargs = dict(seq_len=seq_len, bos_id=bos_id, pad_id=pad_id, lang_id=lang_id,
                        max_empty_chunks=max_empty_chunks, name=name)

  def __iter__(self) -> grain.DatasetIterator:
    return _StreamPackIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self) -> str:
    return f"StreamPackIterDataset({self._kwargs['name']}, seq_len={self._kwargs['seq_len']})"


class _SegmentPackIterator(grain.DatasetIterator):
  def __init__(self, parent, *, seq_len, pad_id, lang_id, num_bins, max_empty_chunks, name):
    super().__init__(parent)
    self._seq_len, self._pad_id, self._lang_id, self._num_bins = seq_len, pad_id, lang_id, num_bins
    self._cursor = _ChunkCursor(parent, max_empty_chunks, name)
    self._group_start = (self._cursor.chunk_state, 0)
    self._rows = None  # Rows of the current group, built on demand.
    self._emitted = 0

  def _build_group(self) -> list[dict[str, np.ndarray]]:
    cursor = self._cursor
    bins: list[list[np.ndarray]] = []
    used: list[int] = []
    while cursor.ready():
      segment = cursor.chunk[cursor.index]
      n = len(segment)
      # First fit: the earliest open row with room, as grain's FirstFitPack does.
      target = next((b for b, u in enumerate(used) if u + n <= self._seq_len), None)
      if target is None:
        if len(bins) == self._num_bins:
          break  # Fits nowhere: close the group; this sentence opens the next one.
        bins.append([])
        used.append(0)
        target = len(bins) - 1
      bins[target].append(segment)
      used[target] += n
      cursor.index += 1
    return [row_from_segments(b, self._seq_len, self._pad_id, self._lang_id) for b in bins]

  def __next__(self) -> dict[str, np.ndarray]:
    if self._rows is None:
      self._rows = self._build_group()
    if self._emitted >= len(self._rows):
      raise StopIteration
    row = self._rows[self._emitted]
    self._emitted += 1
    if self._emitted == len(self._rows):
      # The group is done: the next one starts at the cursor.
      self._group_start = (self._cursor.chunk_state, self._cursor.index)
      self._rows, self._emitted = None, 0
    return row

  def get_state(self) -> dict[str, Any]:
    # Only group boundaries are saved: a restore rebuilds the group from its start and skips the
    # rows already emitted; exact, as first-fit over the same segments is deterministic.
    parent_state, index = self._group_start
    return {"parent": parent_state, "index": index, "emitted": self._emitted}

  def set_state(self, state: dict[str, Any]) -> None:
    self._cursor.restore(state["parent"], state["index"])
    self._group_start = (state["parent"], int(state["index"]))
    self._rows = None
    self._emitted = int(state["emitted"])


class SegmentPackIterDataset(grain.IterDataset):
  """First-fit packing of `<s> s </s>` segments (from `segment_chunk`) into padded rows."""

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, pad_id: int, lang_id: int,
               num_bins: int = 8, max_empty_chunks: int = 0, name: str = "segment packing"):
    super().__init__(parent)
    if num_bins < 1:
      raise ValueError(f"SegmentPackIterDataset: num_bins must be >= 1, got {num_bins}.")
    self._kwargs = dict(seq_len=seq_len, pad_id=pad_id, lang_id=lang_id, num_bins=num_bins,
                        max_empty_chunks=max_empty_chunks, name=name)

  def __iter__(self) -> grain.DatasetIterator:
    return _SegmentPackIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self) -> str:
    return f"SegmentPackIterDataset({self._kwargs['name']}, seq_len={self._kwargs['seq_len']})"


class _ChainIterator(grain.DatasetIterator):
  def __init__(self, parents: list[grain.DatasetIterator]):
    super().__init__(parents)
    self._current = 0

  def __next__(self):
    while self._current < len(self._parents):
      try:
        return next(self._parents[self._current])
      except StopIteration:
        self._current += 1
    raise StopIteration

  def get_state(self) -> dict[str, Any]:
    return {"current": self._current, "parents": [p.get_state() for p in self._parents]}

  def set_state(self, state: dict[str, Any]) -> None:
    self._current = int(state["current"])
    for parent, parent_state in zip(self._parents, state["parents"]):
      parent.set_state(parent_state)


class ChainIterDataset(grain.IterDataset):
  """All elements of the first dataset, then the second, ... (finite passes over every language).

  grain's `IterDataset.mix` stops as soon as any input runs out, which would drop data in a finite
  pass, so finite passes chain the languages instead.
  """

  def __init__(self, parents: Sequence[grain.IterDataset]):
    super().__init__(list(parents))

  def __iter__(self) -> grain.DatasetIterator:
    return _ChainIterator([p.__iter__() for p in self._parents])

  def __str__(self) -> str:
    return f"ChainIterDataset({len(self._parents)} parents)"


class _FlattenIterator(grain.DatasetIterator):
  def __init__(self, parent, *, max_empty_chunks, name):
    super().__init__(parent)
    self._cursor = _ChunkCursor(parent, max_empty_chunks, name)

  def __next__(self):
    cursor = self._cursor
    if not cursor.ready():
      raise StopIteration
    element = cursor.chunk[cursor.index]
    cursor.index += 1
    return element

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._cursor.chunk_state, "offset": self._cursor.index}

  def set_state(self, state: dict[str, Any]) -> None:
    self._cursor.restore(state["parent"], state["offset"])


class FlattenIterDataset(grain.IterDataset):
  """The elements of each chunk (a list of finished rows), one by one; state = (chunk, offset).

  For batch kinds with one example per row (parallel, parallel_pairs, sentences): the rows of one
  tokenizer call come out in order and a restored iterator re-reads only the current chunk.
  """

  def __init__(self, parent: grain.IterDataset, *, max_empty_chunks: int = 0, name: str = "rows"):
    super().__init__(parent)
    self._kwargs = dict(max_empty_chunks=max_empty_chunks, name=name)

  def __iter__(self) -> grain.DatasetIterator:
    return _FlattenIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self) -> str:
    return f"FlattenIterDataset({self._kwargs['name']})"


def pad_batch(batch: dict[str, np.ndarray], batch_size: int, pad_id: int) -> dict[str, np.ndarray]:
  """Pads a short final batch with pad rows to batch_size.

  Keys ending in "input_ids" / "position_ids" are filled with pad_id, all others (segment ids, language
  ids) with 0, so a pad row looks like padding to every batch kind.
  """
  rows = len(next(iter(batch.values())))
  if rows == batch_size:
    return batch
  if rows > batch_size:
    raise ValueError(f"pad_batch: batch has {rows} rows, more than batch_size={batch_size}.")
  out = {}
  for key, value in batch.items():
    # Pad rows have no real token and segment 0, so losses and attention masks ignore them.
    fill = pad_id if key.endswith(("input_ids", "position_ids")) else 0
    pad = np.full((batch_size - rows, *value.shape[1:]), fill, dtype=value.dtype)
    out[key] = np.concatenate([value, pad], axis=0)
  return out
