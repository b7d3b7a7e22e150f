"""Line-by-line reading of plain, .gz and .xz text files, with per-line defects counted or raised.

Files are read in binary blocks and decoded a block at a time, so memory does not depend on the file size,
and an invalid UTF-8 sequence can be reported with its file, line number and byte offset. A line longer
than MAX_LINE_BYTES is skipped in pieces and never held whole: one gigabyte without a newline is a broken
file, not a sentence, and must not take the build's memory with it.

Files are decoded as UTF-8 unless an `encoding` is named (any ASCII-compatible codec: latin-1, cp1252, ...;
the corpus itself is always UTF-8).

Per-line defects (a line that does not decode, a line over MAX_LINE_BYTES, a TSV line with the wrong number
of columns) are skipped and counted by default, with one warning per kind naming the first bad line: a
crawled corpus of many gigabytes nearly always has a few, and failing after an hour of work for one of them
helps nobody. `strict=True` turns the first one into a ValueError instead. Defects of a whole input (an
empty file, a binary file (a NUL byte), a file mostly in another encoding (see UNDECODABLE_LINES), parallel
files of different lengths, an unknown language) always fail.
"""
from __future__ import annotations

import codecs
import collections
import gzip
import hashlib
import itertools
import lzma
import pathlib
import warnings

# Longer lines are dropped (counted as "line_too_long"); no natural sentence or paragraph comes close.
MAX_LINE_BYTES = 1 << 20
# A file whose undecodable lines are more than half of its lines, or more than this many and more than
# UNDECODABLE_SHARE of them, is in another encoding (or not text): it fails, naming the file, its first bad
# line and --encoding, instead of losing every line with a non-ASCII character. Counted as it is read.
UNDECODABLE_LINES = 10
UNDECODABLE_SHARE = 0.01
COMPRESSED_SUFFIXES = (".gz", ".xz")
# Bytes read (and decoded) at a time.
READ_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"


class LineDefects:
  """Counts skipped lines by reason and remembers the first of each; raises instead when strict."""

  def __init__(self, strict: bool = False):
    self.strict = strict
    self.dropped = collections.Counter()
    self.first: dict[str, str] = {}

  def skip(self, reason: str, where: str, problem: str, hint: str = "") -> None:
    """Records one bad line (`where` = "file:line"); ValueError when strict. `hint` (e.g. how to read the
    file in another encoding) ends both messages."""
    if self.strict:
      raise ValueError(f"{where}: {problem}; fix or remove the line{hint}, or build with strict=False "
                       "(drop --strict) to skip and count such lines")
    self.dropped[reason] += 1
    if reason not in self.first:
      self.first[reason] = f"{where}: {problem}"
      warnings.warn(f"{where}: {problem}; skipping such lines and counting them as dropped[{reason!r}] "
                    f"(strict=True / --strict fails instead){hint}", stacklevel=2)


class HashingFile:
  """A binary file whose bytes, as they are read, feed a sha256 (the manifest records every input's
  digest, and reading the file a second time to get it would double the I/O of a multi-GB build)."""

  def __init__(self, path: pathlib.Path):
    self.path = pathlib.Path(path)
    self._file = open(path, "rb", buffering=0)  # we read large blocks ourselves
    self.sha256 = hashlib.sha256()
    self.size = 0

  def read(self, size: int = -1) -> bytes:
    data = self._file.read(size)
    self.sha256.update(data)
    self.size += len(data)
    return data

  def finish(self) -> dict:
    """Hashes whatever a decompressor left unread (padding after the last member); the file's record."""
    while self.read(READ_BYTES):
      pass
    return {"bytes": self.size, "sha256": self.sha256.hexdigest()}

  def close(self) -> None:
    self._file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def open_binary(raw: HashingFile):
  """A reader of the decompressed bytes of `raw`: .gz and .xz stream through their decompressor, other
  files are read as they are."""
  if raw.path.suffix == ".gz":
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if raw.path.suffix == ".xz":
    return lzma.open(raw, "rb")
  return raw


def strip_compression(name: str) -> str:
  """"de.txt.xz" -> "de.txt"."""
  for suffix in COMPRESSED_SUFFIXES:
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return name


def check_encoding(name: str) -> str:
  """The canonical name of codec `name` if the line reader can use it: Python knows it and its newline and
  tab are the ASCII bytes (UTF-8, Latin-1, cp1252, ...; not UTF-16/32). ValueError otherwise."""
  try:
    info = codecs.lookup(name)
  except LookupError:
    raise ValueError(f"unknown encoding {name!r}; use a Python codec name such as utf-8, latin-1 or "
                     "cp1252") from None
  if "\n\t".encode(info.name) != b"\n\t":
    raise ValueError(f"encoding {name!r} is not ASCII-compatible (lines are split on the newline byte); "
                     "convert the file to UTF-8 first (iconv -f ... -t utf-8)")
  return info.name


def is_utf8(encoding: str) -> bool:
  return encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")


def _decoder_name(encoding: str) -> str:
  return "UTF-8" if is_utf8(encoding) else encoding


def decode_reason(encoding: str) -> str:
  """The `dropped` reason of a line that does not decode: "invalid_utf8", or "undecodable"."""
  return "invalid_utf8" if is_utf8(encoding) else "undecodable"


def _encoding_hint(encoding: str) -> str:
  if is_utf8(encoding):
    return ("; if the file is not UTF-8, name its encoding (--encoding latin-1, --encoding cp1252, ...; "
            "build_user_text(encoding=...))")
  return f"; the file was read as {encoding} (--encoding): check that this is its encoding"


class _FileCheck:
  """Per-file counts for the whole-file decode rule (UNDECODABLE_LINES), and the file's first bad line."""

  def __init__(self, path: pathlib.Path, encoding: str):
    self.path, self.encoding = path, encoding
    self.undecodable, self.first = 0, ""

  def bad_line(self, where: str) -> None:
    self.undecodable += 1
    self.first = self.first or where

  def check(self, lines_read: int) -> None:
    """ValueError when the undecodable lines so far show the file is not in the expected encoding."""
    bad = self.undecodable
    if bad and (bad * 2 > lines_read or (bad > UNDECODABLE_LINES and bad > UNDECODABLE_SHARE * lines_read)):
      name = _decoder_name(self.encoding)
      hint = ("pass its encoding, e.g. --encoding latin-1 (or cp1252), or convert it to UTF-8"
              if is_utf8(self.encoding) else f"check its encoding (read as {self.encoding}, --encoding)")
      raise ValueError(f"{self.path}: {bad} of its first {lines_read} lines are not valid {name} (first: "
                       f"{self.first}); it is in another encoding or not text: {hint}, or remove it from "
                       "the inputs")


def _check_no_nul(data: bytes, path: pathlib.Path, number: int, offset: int, compressed: bool) -> None:
  """ValueError for a NUL byte: text files have none, binary files (and UTF-16/32 text) do."""
  at = data.find(b"\0")
  if at >= 0:
    line = number + data.count(b"\n", 0, at)
    within = "of the decompressed text" if compressed else "in the file"
    raise ValueError(f"{path}:{line}: NUL byte at byte offset {offset + at} {within}: {path} is a binary "
                     "file, not text (UTF-16/32 text: convert it to UTF-8); remove it from the inputs")


def _decode_lines(body: bytes, path: pathlib.Path, first_number: int, first_offset: int,
                  defects: LineDefects, stats: collections.Counter, strip: bool, encoding: str = "utf-8",
                  check: _FileCheck | None = None) -> list:
  """The lines of `body` (complete lines without their final newline) as str, None where bad."""
  raw_lines = body.split(b"\n")
  if max(map(len, raw_lines)) <= MAX_LINE_BYTES:
    try:  # the common case: one decode and one split for the whole block, both in C
      lines = body.decode(encoding).split("\n")
      return [line.strip() for line in lines] if strip else lines
    except UnicodeDecodeError:
      pass
  texts, offset = [], first_offset
  compressed = path.suffix in COMPRESSED_SUFFIXES
  name = _decoder_name(encoding)
  for number, raw in enumerate(raw_lines, start=first_number):
    where = f"{path}:{number}"
    if len(raw) > MAX_LINE_BYTES:
      defects.skip("line_too_long", where, f"line of {len(raw)} bytes, longer than {MAX_LINE_BYTES}")
      texts.append(None)
    else:
      try:
        text = raw.decode(encoding)
        texts.append(text.strip() if strip else text)
      except UnicodeDecodeError as err:
        within = "of the decompressed text" if compressed else "in the file"
        if check is not None:
          check.bad_line(where)
        defects.skip(decode_reason(encoding), where,
                     f"invalid {name} ({err.reason}) at byte offset {offset + err.start} {within} "
                     f"(byte {err.start} of the line: {raw[err.start:err.start + 4]!r})", _encoding_hint(encoding))
        texts.append(None)
    if texts[-1] is None:
      stats["bad_lines"] += 1
    offset += len(raw) + 1
  return texts


def _skip_long_line(f, length: int) -> tuple[int, bytes | None]:
  """Reads on to the end of an over-long line: (its length, the bytes after its newline or None at EOF)."""
  while chunk := f.read(READ_BYTES):
    end = chunk.find(b"\n")
    if end >= 0:
      return length + end, chunk[end + 1:]
    length += len(chunk)
  return length, None


def _line_blocks(path: pathlib.Path, defects: LineDefects, stats: collections.Counter, strip: bool,
                 files: dict | None, encoding: str = "utf-8"):
  """Lists of decoded lines, READ_BYTES of the file at a time; see read_lines."""
  number, offset, carry = 1, 0, b""  # number: of the next line; offset: where it starts
  check = _FileCheck(path, encoding)
  compressed = path.suffix in COMPRESSED_SUFFIXES
  decode = dict(strip=strip, encoding=encoding, check=check)
  with HashingFile(path) as raw, open_binary(raw) as f:
    while chunk := f.read(READ_BYTES):
      if offset == 0 and number == 1 and not carry and is_utf8(encoding) and chunk.startswith(_BOM):
        chunk, offset = chunk[len(_BOM):], len(_BOM)  # a byte-order mark (Windows editors) is not text
      _check_no_nul(chunk, path, number, offset + len(carry), compressed)  # carry holds no newline
      data = carry + chunk
      end = data.rfind(b"\n")
      if end < 0:  # no line ends in this chunk
        carry = data
        if len(carry) > MAX_LINE_BYTES:  # hold no more of it: skip to its end, count it once
          length, rest = _skip_long_line(f, len(carry))
          defects.skip("line_too_long", f"{path}:{number}",
                       f"line of {length} bytes, longer than {MAX_LINE_BYTES}")
          stats["bad_lines"] += 1
          yield [None]
          number, offset, carry = number + 1, offset + length + (rest is not None), rest or b""
        continue
      body, carry = data[:end], data[end + 1:]
      texts = _decode_lines(body, path, number, offset, defects, stats, **decode)
      number, offset = number + len(texts), offset + end + 1
      check.check(number - 1)  # before the block goes anywhere
      yield texts
    if carry:  # last line without a newline
      texts = _decode_lines(carry, path, number, offset, defects, stats, **decode)
      number, offset = number + 1, offset + len(carry)
      check.check(number - 1)
      yield texts
    if files is not None:
      files[str(path)] = raw.finish()
  stats["lines"] += number - 1
  stats["bytes"] += offset


def read_lines(path: pathlib.Path, defects: LineDefects, stats: collections.Counter, strip: bool = True,
               files: dict | None = None, encoding: str = "utf-8"):
  """Iterates over the lines of `path` in order (line n is item n), stripped of surrounding whitespace
  unless not `strip` (TSV: a trailing tab is an empty column, not whitespace).

  Blank lines come as "" (they separate documents). A bad line is reported to `defects` and comes as None,
  so that line-aligned files stay aligned. `stats` gains "lines", "bytes" (decompressed) and "bad_lines"
  once the file is read to its end. The file is read and decoded in blocks of READ_BYTES (the per-line
  Python work is what limits throughput), and memory stays below a few blocks plus MAX_LINE_BYTES.
  `files`, if given, gains {str(path): {"bytes", "sha256"}} of the file as stored (compressed or not).
  `encoding` is the file's (default UTF-8). ValueError, naming the file, for a NUL byte (a binary file)
  and for a file whose lines mostly do not decode (see UNDECODABLE_LINES).
  """
  return itertools.chain.from_iterable(_line_blocks(path, defects, stats, strip, files, encoding))
