"""Records in TFDS's shuffled order (md5 of split name + key), sorted on disk so memory stays flat.

TFDS's own writer (tfds.core.GeneratorBasedBuilder) orders a split's examples by the md5 of "<split><key>"
and holds up to 1 GB of them in memory before it spills to 1000 bucket files. We keep its order, so a
corpus reads the same record at the same index whichever writer made it, but sort externally: records are
buffered up to `buffer_bytes` (64 MiB by default, Python's per-object overhead counted), each full buffer is
sorted and written as a run file, and the runs are merged at the end with one small read buffer each.
Memory is therefore the buffer plus MAX_OPEN_RUNS read buffers, whatever the input size; disk holds one
copy of the serialized records while the split is written.
"""
from __future__ import annotations

import hashlib
import heapq
import pathlib
import struct

DEFAULT_BUFFER_BYTES = 64 << 20
# Bytes a buffered record costs beyond its data: the tuple, two bytes objects and the list slot.
RECORD_OVERHEAD = 160
# At most this many run files are read at once; more are first merged into larger runs (bounded open files
# and read buffers at any input size: 128 runs of 64 MiB already hold 8 GiB).
MAX_OPEN_RUNS = 128
READ_BUFFER = 256 << 10
_LENGTH = struct.Struct("<I")


def tfds_key_hash(salt: str, key: int) -> bytes:
  """TFDS's hash of an integer key (tensorflow_datasets.core.hashing.Hasher), as 16 big-endian bytes.

  TFDS compares int(md5.hexdigest(), 16); comparing the big-endian digests gives the same order.
  """
  md5 = hashlib.md5(salt.encode("utf-8"))
  md5.update(str(key).encode("utf-8"))
  return md5.digest()


def _write_run(path: pathlib.Path, records) -> None:
  with open(path, "wb", buffering=1 << 20) as f:
    for hkey, data in records:
      f.write(hkey)
      f.write(_LENGTH.pack(len(data)))
      f.write(data)


def _read_run(path: pathlib.Path):
  with open(path, "rb", buffering=READ_BUFFER) as f:
    while hkey := f.read(16):
      (length,) = _LENGTH.unpack(f.read(4))
      yield hkey, f.read(length)


class HashedOrder:
  """Collects (key, serialized example) and yields the examples sorted by tfds_key_hash(salt, key).

  Run files go to `folder` (created; the caller removes it). Iterate once, after the last add().
  """

  def __init__(self, folder, salt: str, buffer_bytes: int = DEFAULT_BUFFER_BYTES):
    self.folder = pathlib.Path(folder)
    self._hasher = hashlib.md5(salt.encode("utf-8"))
    self._buffer_bytes = buffer_bytes
    self._buffer: list[tuple[bytes, bytes]] = []
    self._buffered = 0
    self._runs: list[pathlib.Path] = []
    self._run_names = 0
    self.num_examples = 0
    self.total_bytes = 0  # of the examples' data, as TFDS's split info counts it

  def add(self, key: int, data: bytes) -> None:
    md5 = self._hasher.copy()
    md5.update(str(key).encode("utf-8"))
    self._buffer.append((md5.digest(), data))
    self._buffered += len(data) + RECORD_OVERHEAD
    self.num_examples += 1
    self.total_bytes += len(data)
    if self._buffered >= self._buffer_bytes:
      self._spill()

  def _run_path(self) -> pathlib.Path:
    self.folder.mkdir(parents=True, exist_ok=True)
    self._run_names += 1
    return self.folder / f"run-{self._run_names:06d}"

  def _spill(self) -> None:
    self._buffer.sort()
    path = self._run_path()
    _write_run(path, self._buffer)
    self._runs.append(path)
    self._buffer, self._buffered = [], 0

  def __iter__(self):
    """The examples' data in hash order (keys are unique, so hashes are: ties never reach the data)."""
    if not self._runs:
      self._buffer.sort()
      buffer, self._buffer = self._buffer, []
      yield from (data for _, data in buffer)
      return
    if self._buffer:
      self._spill()
    runs, self._runs = self._runs, []
    while len(runs) > MAX_OPEN_RUNS:
      group, runs = runs[:MAX_OPEN_RUNS], runs[MAX_OPEN_RUNS:]
      merged = self._run_path()
      _write_run(merged, heapq.merge(*map(_read_run, group)))
      for path in group:
        path.unlink()
      runs.append(merged)
    for _, data in heapq.merge(*map(_read_run, runs)):
      yield data
    for path in runs:
      path.unlink()
