"""Exact deduplication and test-overlap removal over any amount of text, in flat memory.

A set of every line seen grows with the corpus (about 80 bytes per line in Python: 1.6 GB for a 2 GB file of
short sentences), so the digests go to disk instead:

  pass 1  while the text is written, each line adds a 17-byte record (8-byte digest, position, role flags)
          to one of PARTITIONS files chosen by the digest's top bits;
  pass 2  each partition is loaded alone (records / PARTITIONS of them), sorted by digest, and decides
          per line: a repeat of an earlier line in the same output file is a "duplicate"; a training line
          equal to any test string, in any language or output, is "test_overlap" (data.md: remove every
          test string from all training text, wherever it occurs). Decisions land in bitmaps, 1 bit a line;
  pass 3  outputs with dropped lines are copied without them (filter_lines).

Memory: the bitmaps (2 bits per line: 6 MB for 25 million lines) plus one partition (17 bytes x lines /
PARTITIONS: 1.7 MB for 25 million lines, a few times that while it is sorted) plus a fixed write buffer
(FLUSH_RECORDS x 17 bytes). At a billion lines (~100 GB of text) that is ~250 MB of bitmaps and ~66 MB
partitions; raise PARTITION_BITS beyond that. Disk: 17 bytes per line (3 per parallel pair: 51) while
the build runs. Digests are 64-bit BLAKE2b: two different lines share one with probability ~n^2 / 2^65
(1e-5 for 25 million lines), in which case one of them is dropped.

Roles: a mono line is both a dedup key and a test string (DEDUP | OVERLAP); a parallel pair is a dedup key
as a pair (digest of "en\\tx" in its own namespace) and adds both its sides as test strings (OVERLAP).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import pathlib

import numpy as np

DEDUP, OVERLAP, TEST = 1, 2, 4
RECORD = np.dtype([("digest", "<u8"), ("pos", "<u8"), ("flags", "u1")])  # packed: 17 bytes
INDEX_BITS = 48  # pos = output << 48 | line index: 2.8e14 lines per output file, 65536 output files
PARTITION_BITS = 8
PARTITIONS = 1 << PARTITION_BITS
FLUSH_RECORDS = 1 << 18
_PAIR_PREFIX = b"\x00pair\x00"  # keeps pair digests apart from line digests


_blake2b_8 = functools.partial(hashlib.blake2b, digest_size=8)
_digest = operator.methodcaller("digest")


def line_digests(lines: list[bytes]) -> bytes:
  """The 8-byte digests of the lines' UTF-8 bytes, concatenated.

  Iterates in C (map over C callables): this runs for every line of the corpus.
  """
  return b"".join(map(_digest, map(_blake2b_8, lines)))


def pair_digests(en: list[bytes], xx: list[bytes]) -> bytes:
  """Digests of the pairs "en<TAB>xx", in a namespace of their own (a mono line may hold a tab too)."""
  return line_digests([_PAIR_PREFIX + e + b"\t" + x for e, x in zip(en, xx)])


class DigestLog:
  """Pass 1: appends records to PARTITIONS files under `folder` (created), buffering FLUSH_RECORDS."""

  def __init__(self, folder: pathlib.Path):
    self.folder = pathlib.Path(folder)
    self.folder.mkdir(parents=True, exist_ok=True)
    self._digests: list[bytes] = []
    self._runs: list[tuple[int, int, int, int]] = []  # (output, first index, count, flags)
    self._buffered = 0

  def add(self, output: int, first_index: int, digests: bytes, flags: int) -> None:
    """Records lines first_index, first_index + 1, ... of `output` whose digests are concatenated."""
    count = len(digests) // 8
    if count:
      self._digests.append(digests)
      self._runs.append((output, first_index, count, flags))
      self._buffered += count
      if self._buffered >= FLUSH_RECORDS:
        self.flush()

  def flush(self) -> None:
    if not self._buffered:
      return
    runs = np.array(self._runs, dtype=np.int64).reshape(-1, 4)
    records = np.empty(self._buffered, RECORD)
    records["digest"] = np.frombuffer(b"".join(self._digests), "<u8")
    # Positions of run r are start_r, start_r + 1, ...: one arange shifted per run.
    starts = (runs[:, 0].astype(np.uint64) << np.uint64(INDEX_BITS)) + runs[:, 1].astype(np.uint64)
    offsets = np.repeat(np.cumsum(runs[:, 2]) - runs[:, 2], runs[:, 2]).astype(np.uint64)
    records["pos"] = np.repeat(starts, runs[:, 2]) + np.arange(self._buffered, dtype=np.uint64) - offsets
    records["flags"] = np.repeat(runs[:, 3], runs[:, 2])
    part = (records["digest"] >> np.uint64(64 - PARTITION_BITS)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    records, bounds = records[order], np.searchsorted(part[order], np.arange(PARTITIONS + 1))
    for p in np.flatnonzero(np.diff(bounds)):
      with open(self.folder / f"{p:03d}.rec", "ab") as f:
        records[bounds[p]:bounds[p + 1]].tofile(f)
    self._digests, self._runs, self._buffered = [], [], 0

  def partitions(self):
    self.flush()
    return sorted(self.folder.glob("*.rec"))


def _set_bits(bitmaps: list[np.ndarray], pos: np.ndarray) -> None:
  outputs = (pos >> np.uint64(INDEX_BITS)).astype(np.int64)
  index = (pos & np.uint64((1 << INDEX_BITS) - 1)).astype(np.int64)
  for output in np.unique(outputs):
    mine = index[outputs == output]
    np.bitwise_or.at(bitmaps[output], mine >> 3, (1 << (mine & 7)).astype(np.uint8))


def resolve(log: DigestLog, sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Pass 2: (overlap, duplicate) bitmaps per output (bit i of output o set = drop line i of o).

  `sizes` are the line counts of the outputs. The first copy of a line in an output is kept; a copy that
  is both a duplicate and a test overlap is marked in both (count it once, as test_overlap).
  """
  overlap = [np.zeros((n + 7) // 8, np.uint8) for n in sizes]
  duplicate = [np.zeros((n + 7) // 8, np.uint8) for n in sizes]
  for path in log.partitions():
    rec = np.fromfile(path, RECORD)
    rec = rec[np.lexsort((rec["pos"], rec["digest"]))]
    digest, flags = rec["digest"], rec["flags"]
    group = np.cumsum(np.r_[True, digest[1:] != digest[:-1]]) - 1
    is_test_string = (flags & (OVERLAP | TEST)) == (OVERLAP | TEST)
    group_has_test = np.zeros(group[-1] + 1, bool)
    group_has_test[group[is_test_string]] = True
    train_string = ((flags & OVERLAP) != 0) & ((flags & TEST) == 0)
    _set_bits(overlap, rec["pos"][train_string & group_has_test[group]])
    keys = rec[(flags & DEDUP) != 0]  # still sorted by (digest, output, index)
    output = keys["pos"] >> np.uint64(INDEX_BITS)
    repeat = (keys["digest"][1:] == keys["digest"][:-1]) & (output[1:] == output[:-1])
    _set_bits(duplicate, keys["pos"][1:][repeat])
  return overlap, duplicate


def count_bits(bitmap: np.ndarray) -> int:
  return int(np.bitwise_count(bitmap).sum())


def filter_lines(staged: pathlib.Path, final: pathlib.Path, drop: np.ndarray) -> None:
  """Pass 3: copies `staged` to `final` without the lines whose bit is set in `drop`."""
  with open(staged, "rb") as src, open(final, "wb") as dst:
    index = 0
    while lines := src.readlines(1 << 20):  # ~1 MB of whole lines at a time
      first, n = index >> 3, len(lines)
      bits = np.unpackbits(drop[first:(index + n + 7) // 8 + 1], bitorder="little")
      keep = bits[index - 8 * first:index - 8 * first + n] == 0
      dst.write(b"".join(itertools.compress(lines, keep.tolist())))
      index += n
