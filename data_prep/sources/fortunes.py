"""Fortune cookie files (fortunes-<lang> packages) -> monolingual entries.

A fortune file is plain text with entries separated by a line holding only "%": quotations, jokes,
proverbs, short poems. Each entry becomes ONE text (its hard-wrapped lines and paragraphs joined), not one
text per sentence: a joke or a dialogue is only coherent as a whole, and whole entries make exact-duplicate
removal between train and test meaningful (short sentences such as "Warum?" recur everywhere). Entries
are short (measured: median 40-150 characters by language, 99th percentile 230-1,300, longest 9k in pl);
the pipeline packs or truncates them.

Files skipped, counted per file:
  files_offensive         "off/" folders, which `fortune` shows only with -o
  files_other_language    files in another language than their folder (Slovak in fortunes-cs)
  files_unknown_language  files directly under the fortunes folder that we cannot place (not fortunes-zh)
Entries dropped, counted per entry:
  empty                   nothing but whitespace
  not_prose               less than half of the characters are letters (ASCII art, tables, ciphers)
  too_few_words           fewer than 2 words
  wrong_script            no character of the language's script (English quotes in ru/zh files)
  control_chars           control characters left after removing terminal colour codes
  encoding_error          bytes that are not UTF-8
  duplicate               the same text again in the same language (files are read in sorted order)
"""
from __future__ import annotations

import collections
import pathlib
import re

from data_prep.sources import base

SOURCE = "fortunes"
PACKAGES = {"de": "fortunes-de", "es": "fortunes-es", "it": "fortunes-it", "ru": "fortunes-ru",
            "pl": "fortunes-pl", "zh": "fortunes-zh", "cs": "fortunes-cs"}
FORTUNE_ROOT = "usr/share/games/fortunes"
# fortunes-zh installs its files directly under FORTUNE_ROOT, where no folder names the language.
TOP_LEVEL_FILES = {"chinese": "zh", "song100": "zh", "tang300": "zh"}
OTHER_LANGUAGE_FILES = frozenset({"cs/klasik-sk"})  # Slovak classics shipped in the Czech package
# Index files made by strfile (.dat) and the ".u8" markers (symlinks or empty files) are not text.
_NOT_TEXT_SUFFIXES = (".dat", ".u8")
_SEPARATOR = re.compile(r"^%[ \t]*\r?$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r]*\n")
# A text is prose when at least this share of its non-space characters are letters.
MIN_LETTER_SHARE = 0.5


def packages(languages) -> list[str]:
  """The fortune packages for `languages` (languages without one, e.g. en, fr, ja, are skipped)."""
  return base.packages_for(PACKAGES, languages)


def split_entries(text: str) -> list[str]:
  """The raw entries of a fortune file, in file order (separator lines removed)."""
  return _SEPARATOR.split(text)


def clean_entry(raw: str) -> str:
  """One entry as one line: terminal colour codes removed, hard-wrapped lines joined (without a space
  inside CJK text), paragraphs (blank-line separated: a title, then the text) joined by a space."""
  paragraphs = _PARAGRAPH_BREAK.split(base.strip_terminal_codes(raw).replace("\t", " "))
  return " ".join(filter(None, (base.join_lines(p.splitlines()) for p in paragraphs)))


def read_fortune_file(job) -> tuple[list[base.TextUnit], collections.Counter]:
  """Reads one fortune file: job = (unit, lang, path). Pure and picklable, for a process pool's map.

  Keys are the entry's position in the file (dropped entries keep their number, so a key always points at
  the same entry); they do not align across languages.
  """
  unit, lang, path = job
  dropped = collections.Counter()
  try:
    text = pathlib.Path(path).read_bytes().decode("utf-8", errors="replace")
  except OSError as err:
    raise ValueError(f"cannot read fortune file {path}: {err}; delete the unpacked folder to unpack the "
                     "package again") from err
  units, entries = [], split_entries(text)
  for number, raw in enumerate(entries):
    entry = clean_entry(raw)
    if not entry:
      # What precedes the first separator or follows the last one is not an entry when it is blank.
      if 0 < number < len(entries) - 1 or raw.strip():
        dropped["empty"] += 1
    elif "\ufffd" in entry:
      dropped["encoding_error"] += 1
    elif base.CONTROL_CHARS.search(entry):
      dropped["control_chars"] += 1
    elif base.letter_share(entry) < MIN_LETTER_SHARE:
      dropped["not_prose"] += 1
    elif base.word_count(entry) < base.MIN_WORDS:
      dropped["too_few_words"] += 1
    elif not base.in_expected_script(entry, lang):
      dropped["wrong_script"] += 1
    else:
      units.append(base.TextUnit(SOURCE, unit, lang, entry, str(number)))
  return units, dropped


def find_fortune_files(roots, languages, dropped: collections.Counter) -> list[tuple[str, str, pathlib.Path]]:
  """(unit, lang, path) of the readable fortune files for `languages` under unpacked package trees, sorted.

  unit is the path below the fortunes folder ("de/computer", "chinese"). Symlinks are skipped (they point
  at files read under their own name); skipped files are counted in `dropped`.
  """
  wanted, found = set(languages), {}
  for root in roots:
    top = pathlib.Path(root) / FORTUNE_ROOT
    for path in sorted(top.glob("**/*")):
      if path.is_symlink() or not path.is_file() or path.name.endswith(_NOT_TEXT_SUFFIXES):
        continue
      if path.stat().st_size == 0:
        continue
      unit = path.relative_to(top).as_posix()
      parts = unit.split("/")
      lang = TOP_LEVEL_FILES.get(unit) if len(parts) == 1 else parts[0]
      if lang is None:
        dropped["files_unknown_language"] += 1
      elif lang not in wanted:
        continue
      elif "off" in parts[:-1]:
        dropped["files_offensive"] += 1
      elif unit in OTHER_LANGUAGE_FILES:
        dropped["files_other_language"] += 1
      else:
        found.setdefault(unit, (unit, lang, path))
  return [found[unit] for unit in sorted(found)]


def read_fortunes(roots, languages, map_fn=map) -> tuple[list[base.TextUnit], collections.Counter]:
  """Reads the fortune entries of `languages` from unpacked package trees `roots`.

  Returns (units, dropped), one unit per entry, files in sorted order. An entry already seen in the same
  language (fortune collections copy each other) is dropped as a duplicate. `map_fn` may be a pool's map.
  """
  dropped = collections.Counter()
  jobs = find_fortune_files(roots, languages, dropped)
  return base.collect_unique(map_fn(read_fortune_file, jobs), dropped), dropped
