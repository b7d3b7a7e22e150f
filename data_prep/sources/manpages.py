"""Translated manual pages (manpages-<lang> packages) -> monolingual sentences.

Pages are roff (see roff.py for what is kept); each prose paragraph is split into sentences. Man pages
mix prose with option lists, file names and command lines, so a sentence is kept only when it reads as
prose. Pages are read from usr/share/man/<locale>/man<section>/<name>.<section>.gz, where <locale> is a
language ("de"), a region we accept ("zh_CN" -> zh; zh_TW is another written standard and skipped) or
either with a codeset ("de.UTF-8"). Dropped sentences are counted by reason:
  not_prose        less than half of the characters are letters (bullets, tables, ASCII diagrams)
  too_few_words    fewer than 2 words (option tags, single terms)
  code_like        more than half of the words are options, paths, identifiers or markup
  wrong_script     no character of the language's script (untranslated English in ja/zh/ru pages)
  control_chars    control characters
  encoding_error   bytes that are not UTF-8
  duplicate        the same sentence again in the same language (boilerplate such as the translators'
                   colophon repeats on every page); pages are read in sorted order, the first one keeps it
plus the roff_* counters of roff.py and, per page, pages_alias (symlinks and .so-only pages).
"""
from __future__ import annotations

import collections
import gzip
import pathlib
import re
import zlib

from data_prep import gettext_corpus
from data_prep.sources import base, roff

SOURCE = "manpages"
PACKAGES = {"de": "manpages-de", "fr": "manpages-fr", "es": "manpages-es", "it": "manpages-it",
            "ru": "manpages-ru", "pl": "manpages-pl", "ja": "manpages-ja", "zh": "manpages-zh"}
MAN_ROOT = "usr/share/man"
# Above this share of code-like words a sentence is an option list or a command line, not prose.
MAX_CODE_SHARE = 0.5
# Options (-a, --all), paths and URLs, assignments, calls and man references (ls(1)), identifiers with
# underscores, shell and C punctuation.
_CODE_WORD = re.compile(r"^[-+]{1,2}\w|[/=<>{}\[\]$_*|\\#@;~^&%`]|\w\(\w*\)")


def packages(languages) -> list[str]:
  """The man page packages for `languages` (English pages are not translations and are not read)."""
  return base.packages_for(PACKAGES, languages)


def language_of_man_locale(locale: str) -> str | None:
  """Our language code for a man locale folder ("de", "de.UTF-8", "zh_CN"), None when skipped."""
  # The codeset ("de.UTF-8") says nothing about the language.
  return gettext_corpus.language_of_locale(locale.split(".", 1)[0])


def code_share(text: str) -> float:
  """Share of code-like words: a CJK run counts as its base.word_count, so Chinese prose with one
  option name in it is not taken for code."""
  code, prose_tokens = 0, []
  for token in text.split():
    if _CODE_WORD.search(token):
      code += 1
    else:
      prose_tokens.append(token)
  prose = base.word_count(" ".join(prose_tokens))
  return code / (code + prose) if code + prose else 0.0


def sentence_drop_reason(sentence: str, lang: str) -> str | None:
  """Why a sentence is not kept as text of `lang`, or None when it is kept."""
  if "\ufffd" in sentence:
    return "encoding_error"
  if base.CONTROL_CHARS.search(sentence):
    return "control_chars"
  if base.letter_share(sentence) < 0.5:
    return "not_prose"
  if base.word_count(sentence) < base.MIN_WORDS:
    return "too_few_words"
  if code_share(sentence) > MAX_CODE_SHARE:
    return "code_like"
  if not base.in_expected_script(sentence, lang):
    return "wrong_script"
  return None


def page_sentences(source: str, lang: str, dropped: collections.Counter) -> list[str]:
  """The kept sentences of one page's roff source, in page order (drops counted in `dropped`)."""
  sentences = []
  for paragraph in roff.roff_paragraphs(source, dropped):
    for sentence in base.split_sentences(paragraph):
      reason = sentence_drop_reason(sentence, lang)
      if reason is None:
        sentences.append(sentence)
      else:
        dropped[reason] += 1
  return sentences


def read_man_page(job) -> tuple[list[base.TextUnit], collections.Counter]:
  """Reads one page: job = (unit, lang, label, path). Pure and picklable, for a process pool's map.

  Keys are sentence numbers within the page (no alignment across languages).
  """
  unit, lang, label, path = job
  dropped = collections.Counter()
  try:
    raw = pathlib.Path(path).read_bytes()
    data = gzip.decompress(raw) if str(path).endswith(".gz") else raw
  # A cut .gz raises EOFError, a damaged one zlib.error or BadGzipFile: all mean "unpack again".
  except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as err:
    raise ValueError(f"cannot read manual page {path}: {err}; delete the unpacked folder to unpack the "
                     "package again") from err
  # Bad bytes become U+FFFD: that sentence is dropped as encoding_error, not the whole page.
  source = data.decode("utf-8", errors="replace")
  sentences = page_sentences(source, lang, dropped)
  # A page that only includes another (`.so man1/foo.1`) is an alias, read under its own name.
  if not sentences and re.match(r"\s*[.']\s*so\s", source):
    dropped["pages_alias"] += 1
  units = [base.TextUnit(SOURCE, unit, lang, text, str(i), label) for i, text in enumerate(sentences)]
  return units, dropped


def find_man_pages(roots, languages,
                   dropped: collections.Counter) -> list[tuple[str, str, str, pathlib.Path]]:
  """(unit, lang, label, path) of the man pages of `languages` under unpacked package trees, sorted by
  language and unit. unit is the page file name without .gz ("ls.1"), label its section folder ("man1").
  Symlinks are aliases of pages read under their own name: skipped and counted as pages_alias."""
  wanted, found = set(languages), {}
  for root in roots:
    for path in sorted((pathlib.Path(root) / MAN_ROOT).glob("*/man*/*")):
      lang = language_of_man_locale(path.parent.parent.name)
      if lang is None or lang not in wanted:
        continue
      if path.is_symlink():
        dropped["pages_alias"] += 1
        continue
      if not path.is_file():
        continue
      unit = path.name[:-3] if path.name.endswith(".gz") else path.name
      # de/ and de.UTF-8/ may hold the same page: the first in sorted order is kept.
      found.setdefault((lang, unit), (unit, lang, path.parent.name, path))
  return [found[key] for key in sorted(found)]


def read_manpages(roots, languages, map_fn=map) -> tuple[list[base.TextUnit], collections.Counter]:
  """Reads the translated man pages of `languages` from unpacked package trees `roots`.

  Returns (units, dropped): one unit per kept sentence, pages in sorted order, each sentence at most once
  per language. `map_fn` may be a process pool's map.
  """
  dropped = collections.Counter()
  jobs = find_man_pages(roots, languages, dropped)
  return base.collect_unique(map_fn(read_man_page, jobs), dropped), dropped
