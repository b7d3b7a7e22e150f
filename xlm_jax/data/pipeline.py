"""grain input pipeline for monolingual (MLM) batches, and the stages every batch kind shares.

Per language: host shard (every shard_count-th sentence) -> per-epoch shuffle -> chunks of sentences ->
batched tokenization (`tokenizer.encode_texts`: with the language for per-language vocabularies; none for
pre-tokenized sources such as derived languages, `derived.py`) -> packing into rows (`packing.py`).
Languages are then mixed with q_l = p_l^alpha / sum p^alpha (`sampling.py`), rows are batched and
prefetched in a thread (`batch_rows`, also used by pairs.py and sentences.py). Every stage is a grain iterator
with get_state/set_state, so the whole iterator restores exactly (grain.checkpoint.CheckpointSave).

Batches are dicts of int32 numpy arrays [batch_size, seq_len]: input_ids, segment_ids, position_ids,
lang_ids (the batch kinds are described in xlm_jax/data/batch_kinds.py).
"""
from collections.abc import Mapping, Sequence
import functools
import logging
import math
import threading
from typing import Any

import grain
import numpy as np

from xlm_jax.data import packing as packing_lib
from xlm_jax.data import sampling
from xlm_jax.data.tokenizer import encode_texts

PACKING_MODES = ("stream", "segments")


def _texts_of(elements: Sequence[Mapping[str, Any]], lang: str) -> list[str]:
  """Pulls the UTF-8 "text" field out of a chunk of source records."""
  texts = []
  for element in elements:
    try:
      text = element["text"]
    # Name the expected record schema; a bare KeyError would not say which source is wrong.
    except (KeyError, TypeError, IndexError):
      raise ValueError(
        f"source for language {lang!r}: record {element!r:.80} has no 'text' field; mono sources "
        "must return {'text': bytes|str, ...} (rebuild the corpus with `xlm-jax data build`)."
      ) from None
    texts.append(text.decode("utf-8") if isinstance(text, bytes) else str(text))
  return texts


def _ids_of(elements: Sequence[Mapping[str, Any]], lang: str) -> list[list[int]]:
  """Pulls the token ids out of a chunk of pre-tokenized records (derived languages)."""
  try:
    return [element["ids"] for element in elements]
  except (KeyError, TypeError, IndexError):
    raise ValueError(
      f"source for language {lang!r}: a record has no 'ids' field; pre-tokenized sources must return "
      "{'ids': int array, ...} (see xlm_jax.data.derived.DerivedSource)."
    ) from None


def is_pretokenized(source: Any) -> bool:
  """Whether a source holds token ids ({"ids": ...}) rather than text: no tokenizer call for it."""
  return bool(getattr(source, "pretokenized", False))


class ExampleCounts:
  """Thread-safe tallies {lang: {"read": n, "skipped_empty": k}} of examples the readers processed.

  Examples that tokenize to nothing (a pair with an empty side, an empty sentence) are dropped; this
  makes the drop visible. Counts are of reads: a chunk read again after a restore counts again.
  """

  def __init__(self):
    self._counts: dict[str, dict[str, int]] = {}
    self._lock = threading.Lock()

  # Picklable (a lock is not), should a row builder holding it be sent to a worker process.
  def __getstate__(self):
    return {"counts": self.as_dict()}

  def __setstate__(self, state):
    self.__init__()
    self._counts = state["counts"]

  def add(self, lang: str, read: int, skipped_empty: int) -> None:
    with self._lock:
      entry = self._counts.setdefault(lang, {"read": 0, "skipped_empty": 0})
      first_drop = skipped_empty and not entry["skipped_empty"]
      entry["read"] += int(read)
      entry["skipped_empty"] += int(skipped_empty)
    if first_drop:  # Once per language in the log; the counts keep the running total.
      logging.warning("%s: %d of %d examples in a chunk are empty after tokenization and were dropped "
                      "(further drops are only counted: ExampleCounts)", lang, skipped_empty, read)

  def as_dict(self) -> dict[str, dict[str, int]]:
    with self._lock:
      return {lang: dict(entry) for lang, entry in self._counts.items()}

  def skipped(self) -> int:
    """Examples dropped so far, over all languages."""
    with self._lock:
      return sum(entry["skipped_empty"] for entry in self._counts.values())


def chunk_token_lists(payload: list, *, tokenizer: Any, lang: str, pretokenized: bool) -> list[list[int]]:
  """Token ids of a chunk: ids as stored for pre-tokenized sources, else the (language-aware) tokenizer."""
  if pretokenized:  # Arrays become lists: packing tests emptiness with `if ids`.
    return [ids.tolist() if hasattr(ids, "tolist") else list(ids) for ids in payload]
  return encode_texts(tokenizer, payload, lang)


def _tokenize_chunk(payload: list, tokenizer: Any, packing: str, seq_len: int, lang: str,
                    pretokenized: bool, counts: ExampleCounts | None) -> Any:
  token_lists = chunk_token_lists(payload, tokenizer=tokenizer, lang=lang, pretokenized=pretokenized)
  if counts is not None:
    counts.add(lang, len(token_lists), sum(1 for ids in token_lists if len(ids) == 0))
  if packing == "stream":
    return packing_lib.stream_chunk(token_lists, tokenizer.eos_id)
  return packing_lib.segment_chunk(token_lists, tokenizer.bos_id, tokenizer.eos_id, seq_len)


def default_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """(shard_index, shard_count), each defaulting to this JAX process's index / the process count."""
  if shard_index is None or shard_count is None:
    import jax  # Deferred: only the default per-host sharding needs it.

    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"pipeline: need 0 <= shard_index < shard_count, got {shard_index} of {shard_count}.")
  return shard_index, shard_count


class ShardChunks:
  """Chunk k of this host's shard of one language: the texts of `chunk_size` sentences.

  Sentence i belongs to shard i % shard_count. Each epoch reads the shard in its own permutation
  (`sampling.epoch_order`) and is cut into chunks that never span epochs. Chunks are addressed by a
  global index (epoch * chunks_per_epoch + k), so grain can read them in any thread and checkpoint
  a position as a plain integer. Indexing here rather than with grain's per-sentence shuffle/slice
  keeps the per-sentence cost to the source read itself (batched when the source has __getitems__).
  """

  def __init__(self, source: Any, *, lang: str, lang_id: int, shard_index: int, shard_count: int,
               chunk_size: int, shuffle: bool, seed: int, stream: int = 0, payload: Any = None):
    self._source, self._lang, self._lang_id = source, lang, lang_id
    self._shuffle, self._seed, self._chunk_size, self._stream = shuffle, seed, chunk_size, stream
    # What a chunk yields: texts by default, ids for pre-tokenized sources, whole records for pairs.
    self._payload = payload or (_ids_of if is_pretokenized(source) else _texts_of)
    self._indices = np.arange(shard_index, len(source), shard_count, dtype=np.int64)
    # A shard with no sentences has zero chunks per epoch and could never yield a row.
    if len(self._indices) == 0:
      raise ValueError(
        f"pipeline: language {lang!r} has {len(source)} sentences, none for shard {shard_index} of "
        f"{shard_count}; add data or train on fewer hosts."
      )
    # The last chunk of an epoch may be short: chunks never span two epochs' permutations.
    self.chunks_per_epoch = math.ceil(len(self._indices) / chunk_size)
    self._orders: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def _order(self, epoch: int) -> np.ndarray:
    if not self._shuffle:
      return self._indices
    with self._lock:  # Reader threads share the cache; they straddle at most one epoch boundary.
      if epoch not in self._orders:
        self._orders[epoch] = sampling.epoch_order(self._indices, self._seed, self._lang_id, epoch,
                                                   stream=self._stream)
        # Keep the two newest permutations only: bounded memory, enough for threads at a boundary.
        for old in sorted(self._orders)[:-2]:
          del self._orders[old]
      return self._orders[epoch]

  def __call__(self, chunk_index: int, _unused: Any = None) -> list:
    epoch, k = divmod(int(chunk_index), self.chunks_per_epoch)
    keys = self._order(epoch)[k * self._chunk_size:(k + 1) * self._chunk_size].tolist()
    if hasattr(self._source, "__getitems__"):  # TFDS data sources read a whole chunk at once.
      records = self._source.__getitems__(keys)
    else:
      records = [self._source[key] for key in keys]
    return self._payload(records, self._lang)


def check_common_args(sources: Mapping[str, Any], *, languages: Sequence[str], batch_size: int, seed: int,
                      num_epochs: int | None) -> None:
  """ValueErrors for arguments every pipeline shares (each names the argument and the bad value)."""
  if batch_size < 1:
    raise ValueError(f"pipeline: batch_size must be >= 1, got {batch_size}.")
  if seed < 0:
    raise ValueError(f"pipeline: seed must be >= 0, got {seed}.")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"pipeline: num_epochs must be None (forever) or >= 1, got {num_epochs}.")
  if not languages or len(set(languages)) != len(languages):
    raise ValueError(f"pipeline: `languages` must be a non-empty list without repeats, got {list(languages)}.")
  missing = [lang for lang in languages if lang not in sources]
  if missing:
    raise ValueError(f"pipeline: no source for languages {missing}; sources has {sorted(sources)}.")


def _language_rows(
  source: Any, *, lang: str, lang_id: int, tokenizer: Any, seq_len: int, packing: str, seed: int,
  shard_index: int, shard_count: int, num_epochs: int | None, shuffle: bool, tokenize_chunk: int,
  segment_bins: int, read_options: grain.ReadOptions, counts: ExampleCounts | None = None,
) -> grain.IterDataset:
  """Rows of one language on this host (infinite when num_epochs is None)."""
  reader = ShardChunks(source, lang=lang, lang_id=lang_id, shard_index=shard_index, shard_count=shard_count,
                       chunk_size=tokenize_chunk, shuffle=shuffle, seed=seed)
  # The iterator state records a chunk index, not a sentence: restoring re-reads one chunk.
  chunks = grain.MapDataset.range(reader.chunks_per_epoch).repeat(num_epochs).map_with_index(reader)
  chunks = chunks.map(
    functools.partial(_tokenize_chunk, tokenizer=tokenizer, packing=packing, seq_len=seq_len, lang=lang,
                      pretokenized=is_pretokenized(source), counts=counts)
  ).to_iter_dataset(read_options)
  # A whole epoch of empty chunks means no sentence has tokens (only possible to loop on forever).
  max_empty = reader.chunks_per_epoch + 1 if num_epochs is None else 0
  name = f"language {lang!r}"
  if packing == "stream":
    return packing_lib.StreamPackIterDataset(
      chunks, seq_len=seq_len, bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id, lang_id=lang_id,
      max_empty_chunks=max_empty, name=name)
  return packing_lib.SegmentPackIterDataset(
    chunks, seq_len=seq_len, pad_id=tokenizer.pad_id, lang_id=lang_id, num_bins=segment_bins,
    max_empty_chunks=max_empty, name=name)


def make_mono_dataset(
  sources: Mapping[str, Any],
  tokenizer: Any,
  *,
  languages: Sequence[str],
  seq_len: int,
  batch_size: int,
  alpha: float = 0.3,
  seed: int = 0,
  packing: str = "stream",
  shard_index: int | None = None,
  shard_count: int | None = None,
  num_epochs: int | None = None,
  shuffle: bool = True,
  tokenize_chunk: int = 512,
  segment_bins: int = 8,
  read_threads: int = 1,
  prefetch: int = 4,
  counts: ExampleCounts | None = None,
) -> grain.IterDataset:
  """Monolingual batches {input_ids, segment_ids, position_ids, lang_ids}: int32 [batch_size, seq_len].

  sources: {lang: random-access source}, `src[i] -> {"text": bytes|str, ...}` (TFDS data sources or
    lists of dicts), or pre-tokenized `src[i] -> {"ids": ...}` for sources with `pretokenized = True`
    (derived languages). Only `languages` are read; their order defines lang_ids.
  tokenizer: `encode(texts) -> list[list[int]]`, or `encode(texts, lang)` for per-language vocabularies
    (see `tokenizer.encode_texts`); no specials added; and bos_id/eos_id/pad_id.
  alpha: language sampling exponent; a row comes from language l with q_l (`language_sampling_probs`
    over the full source sizes, so every host uses the same weights). One language per row.
  packing: "stream" (XLM-R, no padding) or "segments" (first-fit `<s> s </s>` segments, padded).
  shard_index/shard_count: this host's slice of every language (sentences i with i % count == index);
    default jax.process_index()/process_count().
  num_epochs: None repeats forever and mixes languages with q (rows interleave deterministically in
    proportion to q). An integer makes a finite pass: each language's rows in `languages` order (mixing
    would stop at the first exhausted language), the last batch padded with pad rows to batch_size.
  shuffle: shuffle sentences per language with a per-epoch seed derived from `seed`.
  tokenize_chunk: sentences per tokenizer call. segment_bins: open rows for first-fit ("segments").
  read_threads / prefetch: threads per language for reading+tokenizing, and batches prefetched by a
    background thread (0 disables it).
  counts: an ExampleCounts that tallies sentences read and dropped as empty (also `dataset.example_counts`).

  The iterator of the returned dataset supports get_state()/set_state() (a JSON-serialisable dict).
  """
  if packing not in PACKING_MODES:
    raise ValueError(f"pipeline: packing must be one of {PACKING_MODES}, got {packing!r}.")
  # stream needs `<s>` plus one token; segments need `<s> s </s>`.
  min_len = 2 if packing == "stream" else 3
  if seq_len < min_len:
    raise ValueError(f"pipeline: seq_len must be >= {min_len} for packing={packing!r}, got {seq_len}.")
  if tokenize_chunk < 1:
    raise ValueError(f"pipeline: tokenize_chunk must be >= 1, got {tokenize_chunk}.")
  check_common_args(sources, languages=languages, batch_size=batch_size, seed=seed, num_epochs=num_epochs)
  shard_index, shard_count = default_shard(shard_index, shard_count)
  counts = ExampleCounts() if counts is None else counts

  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, 2 * read_threads))
  rows = {
    lang: _language_rows(
      sources[lang], lang=lang, lang_id=lang_id, tokenizer=tokenizer, seq_len=seq_len,
      packing=packing, seed=seed, shard_index=shard_index, shard_count=shard_count,
      num_epochs=num_epochs, shuffle=shuffle, tokenize_chunk=tokenize_chunk,
      segment_bins=segment_bins, read_options=read_options, counts=counts)
    for lang_id, lang in enumerate(languages)
  }
  # Full source sizes, not this host's shard: every host must derive the same mixing weights.
  sizes = {lang: len(sources[lang]) for lang in languages}
  return batch_rows(rows, sizes, alpha=alpha, batch_size=batch_size, pad_id=tokenizer.pad_id,
                    num_epochs=num_epochs, prefetch=prefetch, counts=counts)


def batch_rows(rows: Mapping[str, grain.IterDataset], sizes: Mapping[str, int], *, alpha: float,
               batch_size: int, pad_id: int, num_epochs: int | None, prefetch: int,
               counts: ExampleCounts) -> grain.IterDataset:
  """Mixes per-language row datasets into batches (shared by every batch kind).

  num_epochs None: languages mixed with q_l ∝ (sizes[l] / sum sizes)^alpha, full batches. Otherwise the
  languages are chained in `rows` order and the last batch is padded (`packing.pad_batch`).
  The returned dataset carries `example_counts` (the readers' ExampleCounts).
  """
  if num_epochs is None:
    probs = sampling.language_sampling_probs(dict(sizes), alpha)
    # Keyed by language so a checkpoint restores each language's position by name.
    mixed = grain.IterDataset.mix(dict(rows), probs)
    # Fixed [batch_size, ...] shapes, so the jitted train step compiles once.
    batches = mixed.batch(batch_size, drop_remainder=True)
  else:
    # Not mix(): it stops at the first exhausted language, which would cut a finite pass short.
    chained = packing_lib.ChainIterDataset(list(rows.values()))
    # Keep the short last batch, then pad it: every sentence is seen and the shape stays fixed.
    batches = chained.batch(batch_size, drop_remainder=False).map(
      functools.partial(packing_lib.pad_batch, batch_size=batch_size, pad_id=pad_id))
  # Read and tokenize in a background thread, overlapping with the device step.
  if prefetch > 0:
    batches = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch)
  batches.example_counts = counts
  return batches


def make_mono_iterator(sources: Mapping[str, Any], tokenizer: Any, **kwargs: Any) -> grain.DatasetIterator:
  """`iter(make_mono_dataset(...))`: a checkpointable iterator (get_state/set_state)."""
  return iter(make_mono_dataset(sources, tokenizer, **kwargs))


def make_eval_dataset(
  sources: Mapping[str, Any], tokenizer: Any, *, languages: Sequence[str], seq_len: int,
  batch_size: int, packing: str = "stream", shard_index: int | None = None,
  shard_count: int | None = None, **kwargs: Any,
) -> grain.IterDataset:
  """One deterministic, unshuffled pass over every sentence of this shard, in fixed-shape batches.

  Languages come one after another in `languages` order; the final batch is padded with pad rows
  (input_ids pad_id, segment_ids 0), which a loss must ignore through segment_ids / input_ids.
  Different shards may yield different numbers of batches.
  """
  return make_mono_dataset(
    sources, tokenizer, languages=languages, seq_len=seq_len, batch_size=batch_size, packing=packing,
    shard_index=shard_index, shard_count=shard_count, num_epochs=1, shuffle=False, **kwargs)
