"""Inputs -> units: the pieces of text that go to train or test whole.

Splitting by line would leak neighbouring sentences of one document into both splits (data.md: split by
unit, never by line). A unit is a document (lines up to a blank line or the end of a file, or one TFDS
example), or, for parallel text, a block of pairs up to a blank line (a blank line on both sides). A unit
longer than `max_unit_lines` is cut into consecutive units of that many lines: this bounds the memory a
unit takes, and gives a file with no blank lines at all (typical of OPUS pairs) a test split too.

Each generator yields lists: of str (mono) or of (english, foreign) tuples (parallel). Per-input counts go
into the `stats` Counter passed in ("units", "unit_cuts", "pairs", "empty_side", "tab_in_parallel_side",
...); bad lines into `defects`; each file read to its end into `files` ({path: {"bytes", "sha256"}}).
"""
from __future__ import annotations

import collections
import itertools
import pathlib

from data_prep.user_corpora import tfds_text
from data_prep.user_corpora.inputs import MonoFiles, ParallelFiles, ParallelTsv
from data_prep.user_corpora.reading import LineDefects, read_lines


def _chunks(lines: list, max_unit_lines: int, stats: collections.Counter):
  stats["unit_cuts"] += (len(lines) - 1) // max_unit_lines
  for start in range(0, len(lines), max_unit_lines):
    stats["units"] += 1
    yield lines[start:start + max_unit_lines]


def _no_text(path: pathlib.Path) -> ValueError:
  return ValueError(f"{path} contains no text (only blank lines); remove it from the inputs or fill it")


def mono_units(source: MonoFiles, max_unit_lines: int, defects: LineDefects, stats: collections.Counter,
               files: dict | None = None, encoding: str = "utf-8"):
  """Documents of each file in turn; a document never spans two files."""
  for path in source.paths:
    units_before, bad_before = stats["units"], stats["bad_lines"]
    document, full = [], False
    for text in read_lines(path, defects, stats, files=files, encoding=encoding):
      if text:
        if full:  # the document goes on past a full unit: that was a cut
          stats["unit_cuts"] += 1
          full = False
        document.append(text)
        if len(document) == max_unit_lines:  # emit early: memory stays bounded on files without blanks
          stats["units"] += 1
          yield document
          document, full = [], True
      elif text == "":
        full = False
        if document:
          stats["units"] += 1
          yield document
          document = []
    if document:
      stats["units"] += 1
      yield document
    if stats["units"] == units_before and stats["bad_lines"] == bad_before:
      raise _no_text(path)


def _blocks(rows, max_unit_lines: int, stats: collections.Counter):
  """(en, xx) rows, None for a bad line -> blocks of (en, xx) pairs (a row of two blanks ends a block)."""
  block = []
  for en, xx in rows:
    if en is None or xx is None:
      stats["bad_rows"] += 1  # already counted by LineDefects
      continue
    if not en and not xx:
      if block:
        yield from _chunks(block, max_unit_lines, stats)
        block = []
      continue
    if not en or not xx:  # a dropped pair (the build reports it under "dropped")
      stats["empty_side"] += 1
      continue
    if "\t" in en or "\t" in xx:  # would add a column to the output TSV; reported under "changed"
      stats["tab_in_parallel_side"] += 1
      en, xx = en.replace("\t", " "), xx.replace("\t", " ")
    block.append((en, xx))
    stats["pairs"] += 1
  if block:
    yield from _chunks(block, max_unit_lines, stats)


def _aligned(source: ParallelFiles, defects: LineDefects, stats: collections.Counter, files: dict | None,
             encoding: str = "utf-8"):
  """(en, xx) rows of two line-aligned files; ValueError naming both if their lengths differ."""
  en_stats = collections.Counter()
  en_lines = read_lines(source.en_path, defects, en_stats, files=files, encoding=encoding)
  xx_lines = read_lines(source.xx_path, defects, stats, files=files, encoding=encoding)
  end = object()
  for number, (en, xx) in enumerate(itertools.zip_longest(en_lines, xx_lines, fillvalue=end), start=1):
    if en is end or xx is end:
      shorter, longer, rest = ((source.en_path, source.xx_path, xx_lines) if en is end
                               else (source.xx_path, source.en_path, en_lines))
      total = number + sum(1 for _ in rest)
      raise ValueError(f"parallel files differ in length: {shorter} has {number - 1} lines, {longer} has "
                       f"{total}; line-aligned files need the same number of lines (one was cut short or "
                       "split differently): fix or remove the pair")
    yield en, xx
  stats["bytes"] += en_stats["bytes"]


def _tsv_rows(source: ParallelTsv, defects: LineDefects, stats: collections.Counter, files: dict | None,
              encoding: str = "utf-8"):
  lines = read_lines(source.path, defects, stats, strip=False, files=files, encoding=encoding)
  for number, line in enumerate(lines, start=1):
    if line is None:  # bad, already counted
      yield None, None
      continue
    if not line.strip():  # blank: ends a block
      yield "", ""
      continue
    columns = line.split("\t")
    if len(columns) != 2:
      defects.skip("tsv_columns", f"{source.path}:{number}",
                   f"expected 2 tab-separated columns (a<TAB>b), got {len(columns)}")
      yield None, None
      continue
    en, xx = (c.strip() for c in (columns if source.en_column == 0 else columns[::-1]))
    yield en, xx


def parallel_units(source: ParallelFiles | ParallelTsv, max_unit_lines: int, defects: LineDefects,
                   stats: collections.Counter, files: dict | None = None, encoding: str = "utf-8"):
  """Blocks of (english, foreign) pairs; ValueError if the input has no pair at all."""
  rows = _tsv_rows(source, defects, stats, files, encoding) if isinstance(source, ParallelTsv) else _aligned(
      source, defects, stats, files, encoding)
  yield from _blocks(rows, max_unit_lines, stats)
  if not stats["pairs"] and not stats["bad_rows"] and not stats["empty_side"]:
    raise _no_text(source.path if isinstance(source, ParallelTsv) else source.en_path)


def _decode(value, where: str, defects: LineDefects) -> str | None:
  if isinstance(value, str):
    return value
  try:
    return value.decode("utf-8")
  except UnicodeDecodeError as err:
    defects.skip("invalid_utf8", where, f"invalid UTF-8 ({err.reason}) at byte {err.start} of the text")
    return None


def tfds_units(source: tfds_text.TfdsText, max_unit_lines: int, defects: LineDefects,
               stats: collections.Counter, builder=None):
  """One unit per example, its strings split at "\\n" (cut at max_unit_lines); ValueError if all empty."""
  for where, values in tfds_text.iter_documents(source, builder):
    stats["examples"] += 1
    texts = [text for text in (_decode(v, where, defects) for v in values) if text is not None]
    lines = "\n".join(texts).split("\n") if texts else []
    stats["lines"] += len(lines)
    document = [line.strip() for line in lines if line.strip()]
    if document:
      yield from _chunks(document, max_unit_lines, stats)
  if not stats["units"]:
    raise ValueError(f"TFDS input {source.describe()}: {stats['examples']} examples, but field "
                     f"{source.field!r} holds no text in any of them; choose another field")
