"""Synthetic derived languages (Deshpande et al. 2022), made from token ids of our SentencePiece tokenizer.

A derived language changes one property of its source and keeps the rest, so transfer between the two
isolates that property. `trans`: a disjoint "script", id i -> i + V for every non-special id (V = source
vocabulary size) except an optional overlap set, which stays shared. `inv`: each sentence's words in reverse
order. `perm`: each sentence's words in a random order, seeded per sentence. inv and perm keep
sentence-final punctuation last. Compositions `trans∘inv`, `trans∘perm` reorder source ids, then shift.
A word is a piece starting with "▁" plus the pieces after it up to the next such piece; pieces are never
reordered inside a word. Tagging labels (one per word) move with their words.

`derive_corpus` writes the derived text (shuffled: content-parallel, never row-aligned), the implicit
dictionary i <-> i + V and the derived evaluation sets (unshuffled, so they stay aligned with their labels).
This module is the pure part (transformations, the derived folder's format); `xlm_jax.data.derived` turns a
corpus language into a derived one (`derive_language`, used on first use and by `xlm-jax data derive`).
How well a model aligned the two embedding tables is measured by
`xlm_jax.evaluation.alignment.dictionary_alignment_accuracy` on the implicit dictionary.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import unicodedata

import numpy as np

from xlm_jax.atomic_files import write_directory_atomically

SPECIAL_IDS = (0, 1, 2, 3, 4)  # <s> <pad> </s> <unk> <mask> (contract)
CONTROL_IDS = (0, 1, 2)        # <s> <pad> </s>: sentence boundaries, never part of a word
WORD_START = "▁"
WORD_ORDER_OPS = ("inv", "perm")
OPS = ("trans", "inv", "perm", "trans∘inv", "trans∘perm")
DICTIONARY_FORMAT = "token_pairs"
FORMAT_VERSION = 1


# --- The transformations on id sequences -------------------------------------------------------------------

def parse_op(op: str) -> tuple[bool, str | None]:
  """(shift ids?, word-order op or None) for an op name; "∘" or "+" joins parts, in either order."""
  parts = op.replace("+", "∘").split("∘")
  order = [part for part in parts if part in WORD_ORDER_OPS]
  if (not parts or any(part not in ("trans",) + WORD_ORDER_OPS for part in parts)
      or len(order) > 1 or len(parts) != len(set(parts))):
    raise ValueError(f"unknown synthetic-language op {op!r}; use one of {OPS} ('+' may replace '∘')")
  return "trans" in parts, (order[0] if order else None)


def _is_punctuation(piece: str) -> bool:
  return all(unicodedata.category(char).startswith("P") for char in piece)


@dataclasses.dataclass(frozen=True)
class PieceKinds:
  """Per-id facts about the vocabulary that the word-order ops need (lists of length V, indexed by id)."""
  word_start: list   # the piece begins a word ("▁...")
  punct_tail: list   # the piece, without "▁", is empty or all punctuation: may end a sentence
  has_punct: list    # ... and holds at least one punctuation character

  @classmethod
  def from_pieces(cls, pieces) -> PieceKinds:
    bare = [piece.replace(WORD_START, "") for piece in pieces]
    return cls(word_start=[piece.startswith(WORD_START) for piece in pieces],
               punct_tail=[_is_punctuation(text) for text in bare],
               has_punct=[bool(text) and _is_punctuation(text) for text in bare])


def _sentence_spans(ids: list[int]) -> list[tuple[int, int]]:
  """[start, end) of each maximal run of non-control ids: the sentences of a (possibly packed) sequence."""
  spans, start = [], None
  for position, token in enumerate(ids + [CONTROL_IDS[0]]):
    if token in CONTROL_IDS:
      if start is not None:
        spans.append((start, position))
      start = None
    elif start is None:
      start = position
  return spans


def _reorder_sentence(ids: list[int], kinds: PieceKinds, order_op: str | None, rng) -> tuple[list, list]:
  """Reorders one sentence's words: (new ids, the source word of each label slot, in output order).

  The sentence-final punctuation run stays put. Words that start inside it keep their labels last;
  punctuation glued to the last word ("▁end" ".") leaves that word and stays last, unlabelled.
  """
  tail = len(ids)
  while tail > 0 and kinds.punct_tail[ids[tail - 1]]:
    tail -= 1
  if not any(kinds.has_punct[t] for t in ids[tail:]):
    tail = len(ids)  # a trailing bare "▁" is no punctuation
  # A sentence begins a word even if its first piece has no "▁".
  bounds = [p for p in range(tail) if p == 0 or kinds.word_start[ids[p]]] + [tail]
  words = [ids[a:b] for a, b in zip(bounds, bounds[1:])]
  order = list(range(len(words)))  # order_op None: only count and index the words (for labels)
  if order_op == "inv":
    order = order[::-1]
  elif order_op == "perm":
    order = rng.permutation(len(words)).tolist()
  tail_words = sum(p == 0 or kinds.word_start[ids[p]] for p in range(tail, len(ids)))
  # The body holds the first len(words) words of the sentence, so body word w carries label w.
  label_order = order + list(range(len(words), len(words) + tail_words))
  return [t for w in order for t in words[w]] + ids[tail:], label_order


def sentence_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of sentence `index`: fixed by (seed, index), so batching never changes a permutation."""
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, index)))


def derive(ids_list, op: str, vocab_size: int, seed: int, overlap=None, labels=None, *, pieces=None,
           first_index: int = 0, special_ids=SPECIAL_IDS):
  """Applies `op` to each id sequence; returns (derived id lists, derived label lists or None).

  ids_list: sequences of source ids in [0, vocab_size); control ids (<s> <pad> </s>) split a sequence into
    sentences and stay where they are. overlap: ids that `trans` leaves shared. labels: one list per
    sequence with one label per word. pieces: id -> piece string (needed by inv/perm to find words).
    first_index: the corpus index of ids_list[0], so that calling batch by batch gives what one call gives.
  """
  shift, order_op = parse_op(op)
  if order_op and pieces is None:
    raise ValueError(f"op {op!r} reorders words and needs pieces= (the tokenizer's pieces, id -> piece)")
  if pieces is not None and len(pieces) != vocab_size:
    raise ValueError(f"pieces has {len(pieces)} entries but vocab_size is {vocab_size}; pass all pieces")
  if labels is not None and len(labels) != len(ids_list):
    raise ValueError(f"labels has {len(labels)} sequences but ids_list has {len(ids_list)}")
  moved = np.ones(vocab_size, bool)  # ids that trans shifts
  moved[list(special_ids)] = False
  moved[_overlap_ids(overlap, vocab_size)] = False
  # A per-id offset list (0 or V): the loop below runs per token in Python, where list indexing beats numpy.
  offsets = (moved * vocab_size).tolist() if shift else None
  kinds = PieceKinds.from_pieces(pieces) if pieces is not None else None
  out_ids, out_labels = [], [] if labels is not None else None
  for k, seq in enumerate(ids_list):
    ids = [int(t) for t in seq]
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
      raise ValueError(f"sequence {first_index + k} has ids outside [0, {vocab_size}); "
                       "encode it with the tokenizer whose vocab_size you passed")
    if order_op or labels is not None:
      if kinds is None:
        raise ValueError("labels need pieces= to count the words of each sequence")
      rng = sentence_rng(seed, first_index + k) if order_op == "perm" else None
      label_order = []
      for start, end in _sentence_spans(ids):
        ids[start:end], sentence_order = _reorder_sentence(ids[start:end], kinds, order_op, rng)
        label_order += [len(label_order) + w for w in sentence_order]
      if labels is not None:
        if len(labels[k]) != len(label_order):
          raise ValueError(f"sequence {first_index + k} has {len(label_order)} words but {len(labels[k])} "
                           "labels; give one label per word (a word starts at a piece beginning with '▁')")
        out_labels.append([labels[k][w] for w in label_order])
    out_ids.append([t + offsets[t] for t in ids] if shift else ids)
  return out_ids, out_labels


def _overlap_ids(overlap, vocab_size: int) -> np.ndarray:
  ids = np.asarray(sorted(overlap or ()), np.int64)
  if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
    raise ValueError(f"overlap ids must lie in [0, {vocab_size}); got {ids.min()}..{ids.max()}")
  return ids


def read_overlap_file(path, pieces) -> frozenset[int]:
  """Ids listed in an overlap file: one id (digits) or one piece per line; blank lines are skipped.

  A piece made only of digits must be given by its id. Unknown pieces and out-of-range ids raise
  ValueError naming file:line.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"overlap file {path} not found")
  piece_to_id = {piece: i for i, piece in enumerate(pieces)}
  ids = set()
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    entry = line.strip()
    if not entry:
      continue
    if entry.isascii() and entry.isdigit():
      if int(entry) >= len(pieces):
        raise ValueError(f"{path}:{number}: id {entry} is outside the vocabulary [0, {len(pieces)}); "
                         "fix or delete the line")
      ids.add(int(entry))
    elif entry in piece_to_id:
      ids.add(piece_to_id[entry])
    else:
      raise ValueError(f"{path}:{number}: {entry!r} is neither an id nor a piece of the tokenizer "
                       "(pieces spell the word-initial space as '▁'); fix or delete the line")
  return frozenset(ids)


def implicit_dictionary(vocab_size: int, overlap=None, special_ids=SPECIAL_IDS) -> np.ndarray:
  """int32 [N, 2] pairs (i, i + V) for every id that trans moves (not special, not in the overlap)."""
  moved = np.ones(vocab_size, bool)
  moved[list(special_ids)] = False
  moved[_overlap_ids(overlap, vocab_size)] = False
  ids = np.flatnonzero(moved).astype(np.int32)
  return np.stack([ids, ids + vocab_size], axis=1)


# --- Corpus artifact ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class DerivedCorpus:
  """What derive_corpus made (and, given an output dir, wrote)."""
  op: str
  vocab_size: int                      # 2 V: the model's vocabulary for source + derived text
  ids: list                            # derived training sequences, shuffled
  dictionary: np.ndarray               # int32 [N, 2]
  eval_ids: dict                       # name -> derived sequences, row-aligned with the eval texts
  eval_labels: dict                    # name -> derived labels (only sets given labels)
  manifest: dict


def training_row_order(seed: int, num_rows: int) -> np.ndarray:
  """The source sentence of each derived training row: row j of train.jsonl is sentence order[j].

  The shuffle that keeps the derived text from lining up with its source row by row; the pair
  pipeline (xlm_jax.data.derived.DerivedPairSource) inverts it to put each sentence beside its
  derived form again.
  """
  # spawn_key (1,) keeps the row shuffle apart from perm's per-sentence streams (spawn_key (0, index)), so
  # changing the corpus size never changes how a given sentence is permuted.
  return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(num_rows)


def derive_corpus(texts, tokenizer, op: str, seed: int, output_dir=None, overlap=None, eval_texts=None,
                  eval_labels=None, source_language: str = "en") -> DerivedCorpus:
  """Derives a synthetic language from `texts` (source_language, English by default).

  tokenizer: an xlm_jax.data.tokenizer.Tokenizer. overlap: ids, or the path of an overlap file.
  eval_texts: {name: texts}, eval_labels: {name: per-text word labels}; both stay in their row order.
  The training rows are shuffled with `seed` so that no row of the derived text lines up with its source.
  """
  vocab_size = tokenizer.vocab_size
  pieces = [tokenizer.id_to_piece(i) for i in range(vocab_size)]
  if isinstance(overlap, (str, os.PathLike)):
    overlap = read_overlap_file(overlap, pieces)
  overlap = frozenset(int(i) for i in overlap or ())
  eval_texts, eval_labels = dict(eval_texts or {}), dict(eval_labels or {})
  if set(eval_labels) - set(eval_texts):
    raise ValueError(f"eval_labels names sets {sorted(set(eval_labels) - set(eval_texts))} not in eval_texts")
  special = tokenizer.special_ids
  derived, _ = derive(tokenizer.encode(list(texts)), op, vocab_size, seed, overlap, pieces=pieces,
                      special_ids=special)
  derived = [derived[i] for i in training_row_order(seed, len(derived))]
  eval_ids, eval_out_labels = {}, {}
  for name, name_texts in eval_texts.items():
    eval_ids[name], got_labels = derive(tokenizer.encode(list(name_texts)), op, vocab_size, seed, overlap,
                                        eval_labels.get(name), pieces=pieces, special_ids=special)
    if got_labels is not None:
      eval_out_labels[name] = got_labels
  dictionary = implicit_dictionary(vocab_size, overlap, special)
  manifest = {
      "format_version": FORMAT_VERSION, "op": op, "seed": seed, "source_language": source_language,
      "source_vocab_size": vocab_size, "vocab_size": 2 * vocab_size, "special_ids": list(special),
      "overlap_ids": sorted(overlap), "num_sequences": len(derived),
      "tokenizer_sha256": hashlib.sha256(tokenizer.serialized()).hexdigest(),
      "eval_sets": {name: {"num_sequences": len(seqs), "labels": name in eval_out_labels}
                    for name, seqs in eval_ids.items()}}
  result = DerivedCorpus(op, 2 * vocab_size, derived, dictionary, eval_ids, eval_out_labels, manifest)
  if output_dir is not None:
    write_derived_corpus(result, output_dir)
  return result


def dictionary_files(pairs: np.ndarray, **sidecar) -> dict[str, bytes]:
  """The dictionary artifact: `dictionary.npy` (int32 [N, 2]) and its JSON sidecar `dictionary.json`."""
  pairs = np.ascontiguousarray(pairs, np.int32)
  if pairs.ndim != 2 or pairs.shape[1] != 2:
    raise ValueError(f"dictionary pairs must be shaped [N, 2]; got {pairs.shape}")
  buffer = io.BytesIO()
  np.save(buffer, pairs, allow_pickle=False)
  data = buffer.getvalue()
  meta = {"format": DICTIONARY_FORMAT, "format_version": FORMAT_VERSION, "dtype": "int32",
          "shape": list(pairs.shape), "columns": ["source_id", "target_id"],
          "sha256": hashlib.sha256(data).hexdigest(), **sidecar}
  return {"dictionary.npy": data, "dictionary.json": _json_bytes(meta)}


def read_dictionary(path) -> tuple[np.ndarray, dict]:
  """(pairs int32 [N, 2], sidecar) of a dictionary artifact (the .npy path; the sidecar sits beside it)."""
  path = pathlib.Path(path)
  sidecar_path = path.with_suffix(".json")
  for needed in (path, sidecar_path):
    if not needed.is_file():
      raise FileNotFoundError(f"dictionary artifact file {needed} not found (a dictionary is a .npy "
                              "and a .json sidecar)")
  data = path.read_bytes()
  meta = json.loads(sidecar_path.read_text(encoding="utf-8"))
  # The sidecar's sha256 catches a .npy replaced without its sidecar (e.g. a half-copied folder).
  if meta.get("format") != DICTIONARY_FORMAT or meta.get("sha256") != hashlib.sha256(data).hexdigest():
    raise ValueError(f"{sidecar_path} does not describe {path} (format or sha256 differ); rebuild both")
  return np.load(io.BytesIO(data), allow_pickle=False), meta


def read_sequences(path) -> tuple[list, list | None]:
  """(id lists, label lists or None) from a derived .jsonl file ({"ids": [...], "labels": [...]} a line)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"derived sequence file {path} not found")
  ids, labels = [], []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    try:
      row = json.loads(line)
      ids.append([int(i) for i in row["ids"]])
    except (ValueError, KeyError, TypeError) as err:
      raise ValueError(f"{path}:{number}: not a derived-sequence line ({err}); rebuild the file") from err
    labels.append(row.get("labels"))
  # Labels are all-or-nothing: a set with some unlabelled rows cannot be scored as a tagging set.
  return ids, (labels if all(label is not None for label in labels) and labels else None)


def write_derived_corpus(result: DerivedCorpus, output_dir) -> None:
  """Writes derived.json, train.jsonl, dictionary.{npy,json} and eval/<name>.jsonl, atomically."""
  files = {"derived.json": _json_bytes(result.manifest), "train.jsonl": _jsonl_bytes(result.ids)}
  files.update(dictionary_files(result.dictionary, vocab_size=result.vocab_size,
                                source="synthetic", op=result.op))
  for name, seqs in result.eval_ids.items():
    files[f"eval/{name}.jsonl"] = _jsonl_bytes(seqs, result.eval_labels.get(name))
  write_directory_atomically(pathlib.Path(output_dir), files)


def _json_bytes(obj) -> bytes:
  return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _jsonl_bytes(seqs, labels=None) -> bytes:
  rows = [{"ids": seq} if labels is None else {"ids": seq, "labels": labels[k]}
          for k, seq in enumerate(seqs)]
  return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
