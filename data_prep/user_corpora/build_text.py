"""Users' inputs -> the corpus text layout, streamed: train/test split by unit hash, dedup, overlap removal.

    <work_dir>/text/mono/{train,test}/<lang>.txt
    <work_dir>/text/parallel/{train,test}/en-<lang>.tsv

Pass 1 reads every input once, a block at a time, cuts it into units (units.py), sends each unit whole
to train or test by the md5 of its text, and appends its lines to the split's file at once; only one
read block (reading.READ_BYTES) and one unit (at most max_unit_lines lines) are ever held. The digests
of all lines go to disk (dedup.py); passes 2 and 3 drop duplicates and training lines that equal a test
string. Memory therefore does not grow with the input: see benchmarks/streaming_memory.py.

A Debian recipe's text (RecipeText: already split, with its evaluation strings) can go into the same
files first; the dedup and test-string removal of passes 2 and 3 then run over both sources at once.
"""
from __future__ import annotations

import collections
import collections.abc
import dataclasses
import hashlib
import os
import pathlib
import shutil
import sys
import time

from data_prep.user_corpora import dedup, units
from data_prep.user_corpora.inputs import MonoFiles, ParallelFiles, ParallelTsv, UserInputs
from data_prep.user_corpora.reading import LineDefects, check_encoding
from xlm_jax.data.corpus import SPLITS

TEST_BUCKETS = 10_000
# `dropped` reasons that mean a line could not be read (the others are dedup and split decisions).
DEFECT_REASONS = ("invalid_utf8", "undecodable", "line_too_long", "tsv_columns")
DEFAULT_TEST_FRACTION = 0.01
DEFAULT_MAX_UNIT_LINES = 100
_STAGING = ".user_text_staging"


def is_test_unit(unit_bytes: bytes, test_fraction: float) -> bool:
  """Deterministic split of a unit: md5 bucket (of TEST_BUCKETS) below test_fraction * TEST_BUCKETS."""
  bucket = int.from_bytes(hashlib.md5(unit_bytes).digest()[:8], "big") % TEST_BUCKETS
  return bucket < test_fraction * TEST_BUCKETS


class _Outputs:
  """The staged files of pass 1: for every language, mono train/test and (but English) parallel train/test.

  All are created up front, so that every language gets every file (empty where it has no text) and
  readers of the corpus find them all. An input writes to two of them (its language's train and test),
  so only those are open: a hundred languages do not mean four hundred open files and write buffers.
  """

  def __init__(self, staging: pathlib.Path, languages):
    self.staging = staging
    self.keys = [(kind, lang, split) for lang in languages for kind in ("mono", "parallel")
                 for split in SPLITS if kind == "mono" or lang != "en"]
    self.ids = {key: index for index, key in enumerate(self.keys)}
    self.sizes = [0] * len(self.keys)
    self._open = {}
    for output in range(len(self.keys)):
      self.staged(output).touch()

  def write(self, output: int, unit: bytes, count: int) -> int:
    """Appends `count` lines joined by newlines (no final one); returns the index of the first."""
    if output not in self._open:
      self._open[output] = open(self.staged(output), "ab", buffering=1 << 20)
    self._open[output].write(unit + b"\n")
    first = self.sizes[output]
    self.sizes[output] += count
    return first

  def staged(self, output: int) -> pathlib.Path:
    return self.staging / f"{output}.staged"

  def close(self) -> None:
    for f in self._open.values():
      f.close()
    self._open = {}


def text_path(text_dir: pathlib.Path, kind: str, lang: str, split: str) -> pathlib.Path:
  """Where the corpus layout keeps one (kind, lang, split) of text under <corpus>/text."""
  if kind == "mono":
    return text_dir / "mono" / split / f"{lang}.txt"
  return text_dir / "parallel" / split / f"en-{lang}.tsv"


def _write_mono(outputs: _Outputs, log: dedup.DigestLog, lang: str, unit: bytes, count: int,
                test: bool) -> None:
  output = outputs.ids["mono", lang, "test" if test else "train"]
  first = outputs.write(output, unit, count)
  flags = dedup.DEDUP | dedup.OVERLAP | (dedup.TEST if test else 0)
  log.add(output, first, dedup.line_digests(unit.split(b"\n")), flags)


def _write_mono_unit(outputs: _Outputs, log: dedup.DigestLog, lang: str, lines: list[str],
                     test_fraction: float) -> None:
  unit = "\n".join(lines).encode("utf-8")
  _write_mono(outputs, log, lang, unit, len(lines), is_test_unit(unit, test_fraction))


def _pair_bytes(pairs) -> tuple[list[bytes], list[bytes], bytes]:
  en = [e.encode("utf-8") for e, _ in pairs]
  xx = [x.encode("utf-8") for _, x in pairs]
  return en, xx, b"\n".join(map(b"\t".join, zip(en, xx)))


def _write_parallel_unit(outputs: _Outputs, log: dedup.DigestLog, lang: str, pairs, test_fraction: float):
  en, xx, unit = _pair_bytes(pairs)
  _write_parallel(outputs, log, lang, en, xx, unit, is_test_unit(unit, test_fraction))


def _write_parallel(outputs: _Outputs, log: dedup.DigestLog, lang: str, en, xx, unit: bytes, test: bool):
  output = outputs.ids["parallel", lang, "test" if test else "train"]
  first = outputs.write(output, unit, len(en))
  test_flag = dedup.TEST if test else 0
  log.add(output, first, dedup.pair_digests(en, xx), dedup.DEDUP | test_flag)
  log.add(output, first, dedup.line_digests(en), dedup.OVERLAP | test_flag)
  log.add(output, first, dedup.line_digests(xx), dedup.OVERLAP | test_flag)


def _read_all(inputs: UserInputs, outputs: _Outputs, log: dedup.DigestLog, defects: LineDefects,
              test_fraction: float, max_unit_lines: int, progress: bool, encoding: str = "utf-8") -> list[dict]:
  """Pass 1 over every input; returns the per-input report entries (their counts by name)."""
  entries = []
  for source in [*inputs.mono, *inputs.parallel, *inputs.tfds]:
    kind = ("mono" if isinstance(source, MonoFiles) else
            "parallel" if isinstance(source, (ParallelFiles, ParallelTsv)) else "tfds")
    if progress:
      print(f"[user corpora] reading {kind} {source.lang}: {source.describe()}", file=sys.stderr, flush=True)
    stats, files = collections.Counter(), {}
    if kind == "parallel":
      for pairs in units.parallel_units(source, max_unit_lines, defects, stats, files, encoding):
        _write_parallel_unit(outputs, log, source.lang, pairs, test_fraction)
    else:
      unit_iter = (units.mono_units(source, max_unit_lines, defects, stats, files, encoding) if kind == "mono"
                   else units.tfds_units(source, max_unit_lines, defects, stats))
      for lines in unit_iter:
        _write_mono_unit(outputs, log, source.lang, lines, test_fraction)
    outputs.close()  # the next input writes to other files
    entry = {"kind": kind, "lang": source.lang, "source": source.describe(), **dict(stats)}
    if files:  # TFDS inputs have none
      entry["files"] = [{"path": path, **record} for path, record in files.items()]
    entries.append(entry)
  return entries


@dataclasses.dataclass
class RecipeText:
  """Text whose split is already decided (a Debian recipe's), built into the same files as users' text.

  mono {lang: {split: [sentence]}}, parallel {lang: {split: [(english, foreign)]}}; eval_strings are the
  recipe's evaluation texts, which are no output's lines but must leave users' training text too.
  """
  mono: dict
  parallel: dict
  eval_strings: collections.abc.Iterable = ()

  def languages(self) -> list[str]:
    return list(self.mono)


# Recipe lines go through pass 1 in chunks of this many (their split is known, so a chunk is no unit).
_RECIPE_CHUNK = 10_000


def _check_recipe_lines(texts, where: str, forbidden: str) -> None:
  for number, text in enumerate(texts):
    if not text or any(ch in text for ch in forbidden):
      raise ValueError(f"{where}: item {number} is {text!r}; corpus lines must be non-empty and hold no "
                       f"{forbidden!r} (a bug in the recipe's reader)")


def _write_recipe(recipe: RecipeText, outputs: _Outputs, log: dedup.DigestLog) -> None:
  """Pass 1 for recipe text: first, so that a line users repeat keeps the recipe's copy."""
  for lang, by_split in recipe.mono.items():
    for split, texts in by_split.items():
      for start in range(0, len(texts), _RECIPE_CHUNK):
        lines = texts[start:start + _RECIPE_CHUNK]
        _check_recipe_lines(lines, f"recipe mono {lang} {split}", "\n")
        unit = "\n".join(lines).encode("utf-8")
        _write_mono(outputs, log, lang, unit, len(lines), split == "test")
  for lang, by_split in recipe.parallel.items():
    for split, pairs in by_split.items():
      for start in range(0, len(pairs), _RECIPE_CHUNK):
        chunk = pairs[start:start + _RECIPE_CHUNK]
        _check_recipe_lines([side for pair in chunk for side in pair], f"recipe en-{lang} {split}", "\n\t")
        en, xx, unit = _pair_bytes(chunk)
        _write_parallel(outputs, log, lang, en, xx, unit, split == "test")
  outputs.close()
  strings = [text.encode("utf-8") for text in recipe.eval_strings]
  # Output 0, positions 0..: never marked, since only training lines and dedup keys are (dedup.resolve).
  log.add(0, 0, dedup.line_digests(strings), dedup.OVERLAP | dedup.TEST)


def _finish(outputs: _Outputs, log: dedup.DigestLog, text_dir: pathlib.Path,
            dropped: collections.Counter) -> dict:
  """Passes 2 and 3: resolves duplicates and test overlap, writes the final files; returns line counts."""
  overlap, duplicate = dedup.resolve(log, outputs.sizes)
  kept = {}
  for output, key in enumerate(outputs.keys):
    final = text_path(text_dir, *key)
    final.parent.mkdir(parents=True, exist_ok=True)
    drop = overlap[output] | duplicate[output]
    dropped["test_overlap"] += dedup.count_bits(overlap[output])  # only training lines are ever marked
    dropped["duplicate"] += dedup.count_bits(duplicate[output] & ~overlap[output])
    removed = dedup.count_bits(drop)
    if removed:
      dedup.filter_lines(outputs.staged(output), final, drop)
    else:
      os.replace(outputs.staged(output), final)
    kept[key] = outputs.sizes[output] - removed
  return kept


def build_user_text(work_dir, inputs: UserInputs, *, test_fraction: float = DEFAULT_TEST_FRACTION,
                    max_unit_lines: int = DEFAULT_MAX_UNIT_LINES, strict: bool = False,
                    progress: bool = False, recipe: RecipeText | None = None, encoding: str = "utf-8") -> dict:
  """Writes <work_dir>/text/... from checked `inputs` (see inputs.py, tfds_text.py); returns the report.

  Every language of the inputs gets all four files (empty where it has no text; no parallel files for
  English; see _Outputs). The report holds the manifest's "languages", "counts" ({lang: {mono_train, mono_test,
  parallel_train, parallel_test}}) and "dropped" ({reason: lines}), plus "changed" (lines kept but
  altered), "inputs" (per-input line/unit/byte counts), "skipped_inputs", "first_defects" (the first bad
  line of each kind), "split" (how test was chosen) and "seconds".

  Per-line defects are skipped and counted (warning once per kind), or raised as ValueError if `strict`.
  Files are decoded as `encoding` (an ASCII-compatible codec; default UTF-8); a binary file (a NUL byte) or
  one whose lines mostly do not decode fails, naming the file (reading.UNDECODABLE_LINES).
  A `recipe` (RecipeText) is written first, with its own splits, then the inputs; dedup and test-overlap
  removal then run over both, and its languages come first in the report. Each input entry lists its files
  with their size and sha256. `work_dir/text` must not exist yet (the work dir is the build's fresh
  `.partial-<pid>` folder).
  """
  if not 0 <= test_fraction < 1:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  if max_unit_lines < 1:
    raise ValueError(f"max_unit_lines must be at least 1, got {max_unit_lines}")
  encoding = check_encoding(encoding)
  languages = list(dict.fromkeys([*(recipe.languages() if recipe else []), *inputs.languages()]))
  if not languages:
    raise ValueError("no inputs: pass at least one mono folder, parallel input or TFDS dataset")
  work_dir = pathlib.Path(work_dir)
  text_dir = work_dir / "text"
  if text_dir.exists():
    raise ValueError(f"{text_dir} already exists; build user corpora into a fresh work dir")
  staging = work_dir / _STAGING
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir(parents=True)
  start = time.perf_counter()
  defects, dropped = LineDefects(strict), collections.Counter()
  try:
    outputs = _Outputs(staging, languages)
    log = dedup.DigestLog(staging / "digests")
    try:
      if recipe is not None:
        _write_recipe(recipe, outputs, log)
      entries = _read_all(inputs, outputs, log, defects, test_fraction, max_unit_lines, progress, encoding)
    finally:
      outputs.close()
    kept = _finish(outputs, log, text_dir, dropped)
  except BaseException:
    shutil.rmtree(text_dir, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  dropped.update(defects.dropped)
  dropped["empty_side"] += sum(entry.get("empty_side", 0) for entry in entries)
  changed = {"tab_in_parallel_side": sum(entry.get("tab_in_parallel_side", 0) for entry in entries)}
  counts = {lang: {f"{kind}_{split}": kept.get((kind, lang, split), 0)
                   for kind in ("mono", "parallel") for split in SPLITS} for lang in languages}
  return {
      "languages": languages, "counts": counts,
      "dropped": {reason: n for reason, n in sorted(dropped.items()) if n},
      "changed": {reason: n for reason, n in changed.items() if n},
      "inputs": entries, "skipped_inputs": list(inputs.skipped), "first_defects": dict(defects.first),
      "encoding": encoding,
      "split": {"unit": f"document (blank-line separated) or TFDS example, cut at {max_unit_lines} lines",
                "hash": "md5", "buckets": TEST_BUCKETS, "test_fraction": test_fraction},
      "seconds": round(time.perf_counter() - start, 1),
  }
