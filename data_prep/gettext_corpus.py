"""Gettext catalogues (.mo) -> cleaned (program, English, translation) pairs.

Translators of GNU/Debian programs wrote these; msgid is the English UI string, msgstr its translation.
The raw text is noisy in known ways, each handled by one explicit rule below, and every dropped message
or line is counted by reason so the manifest says what the cleaning threw away:
  fuzzy / empty           untranslated or unreviewed entries
  line_count_mismatch     multi-line (--help) blocks whose translation reflowed the lines: no line alignment
  too_few_words           fewer than 2 English words (menu labels, single identifiers)
  format_only             nothing but placeholders and punctuation ("%s: %s")
  untranslated            translation identical to the English (fallback copies, identifiers)
  control_chars           terminal escapes and other control characters
  duplicate               the same pair again in the same program
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import re

import polib

# Region-specific locales we accept, and the language code they become. Plain locales ("de", "ja") map to
# themselves; other region/codeset/modifier variants (en_GB, en@quot, zh_TW, ja.sjis, ...) are skipped, as
# they duplicate a plain catalogue in another encoding or are a different written standard.
REGION_LOCALES = {"zh_CN": "zh"}

# gnulib ships its messages as "<program>-gnulib" next to the program's own catalogue: same program.
_GNULIB_SUFFIX = "-gnulib"

# Where catalogues live inside an unpacked .deb: the standard place and vim's private one.
CATALOGUE_GLOBS = ("usr/share/locale/*/LC_MESSAGES/*.mo", "usr/share/vim/vim*/lang/*/LC_MESSAGES/*.mo")

# Placeholders: printf (%s, %1$d, %-10.3lf, %<PRIu64>), Python (%(name)s, {0}, {name}), shell ($VAR, ${VAR}).
_PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspnmC%]"
    r"|%<PRI[a-zA-Z0-9]+>|%\([A-Za-z_]\w*\)[sdifr]|\{\w*\}|\$\{?\w+\}?")
# CJK translations put the accelerator in parentheses after the label: "開く(_O)", "ファイル(&F)".
_PAREN_ACCEL = re.compile(r"\s*[(（][_&]\w[)）]")
_UNDERSCORE_ACCEL = re.compile(r"_(?=[^\W\d_])")
# "&" before a letter, but not an HTML entity (&amp; &lt; &#38;).
_AMPERSAND_ACCEL = re.compile(r"&(?![a-zA-Z]+;|#\d+;)(?=[^\W\d_])")
# Environment variables and constants (LC_ALL, GREP_COLORS) carry underscores that are not accelerators.
_UPPER_IDENTIFIER = re.compile(r"\b[A-Z0-9]+(?:_[A-Z0-9]+)+\b")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class Message:
  """One aligned pair: English `en` and its translation `xx` into `lang`, from `program`."""
  program: str
  lang: str
  en: str
  xx: str


def language_of_locale(locale: str) -> str | None:
  """Our language code for a locale folder name, or None when the locale is skipped."""
  if locale in REGION_LOCALES:
    return REGION_LOCALES[locale]
  if re.fullmatch(r"[a-z]{2,3}", locale) and locale != "en":
    return locale
  return None


def program_of_domain(domain: str) -> str:
  """The program a gettext domain belongs to (splits are by program, so gnulib goes with its program)."""
  return domain[:-len(_GNULIB_SUFFIX)] if domain.endswith(_GNULIB_SUFFIX) else domain


def find_catalogues(root: pathlib.Path) -> list[tuple[str, str, pathlib.Path]]:
  """(locale, domain, path) of every .mo under an unpacked package tree, sorted for determinism."""
  found = []
  for pattern in CATALOGUE_GLOBS:
    for path in pathlib.Path(root).glob(pattern):
      found.append((path.parent.parent.name, path.stem, path))
  return sorted(found)


def strip_accelerators(text: str) -> str:
  """Removes keyboard accelerators: "_Open" -> "Open", "Save _As" -> "Save As", "開く(_O)" -> "開く".

  A message has at most one accelerator, so a marker kind is stripped only when it occurs exactly once
  (several underscores means identifiers such as "max_depth_level"); upper-case identifiers are left alone.
  """
  text = _PAREN_ACCEL.sub("", text)
  masked = _UPPER_IDENTIFIER.sub(lambda m: "#" * len(m.group()), text)
  for marker in (_UNDERSCORE_ACCEL, _AMPERSAND_ACCEL):
    hits = list(marker.finditer(masked))
    if len(hits) == 1:
      i = hits[0].start()
      text, masked = text[:i] + text[i + 1:], masked[:i] + masked[i + 1:]
  return text


def collapse_whitespace(text: str) -> str:
  return " ".join(text.split())


def is_format_only(text: str) -> bool:
  """True when nothing but placeholders, digits and punctuation remains: no letter in any script."""
  return not any(ch.isalpha() for ch in _PLACEHOLDER.sub(" ", text))


def _nonblank_lines(text: str) -> list[str]:
  return [line for line in text.split("\n") if line.strip()]


def clean_pair(msgid: str, msgstr: str, dropped: collections.Counter) -> list[tuple[str, str]]:
  """Cleans one catalogue entry into zero or more (English, translation) line pairs.

  Multi-line blocks (--help texts) are paired line by line only when both sides have the same number of
  non-blank lines; otherwise the alignment is unknown and the whole entry is dropped. `dropped` is updated
  in place with the reason for every dropped entry or line.
  """
  if not msgstr.strip():
    dropped["empty"] += 1
    return []
  en_lines, xx_lines = _nonblank_lines(msgid), _nonblank_lines(msgstr)
  if len(en_lines) != len(xx_lines):
    dropped["line_count_mismatch"] += 1
    return []
  pairs = []
  for en, xx in zip(en_lines, xx_lines):
    en, xx = collapse_whitespace(strip_accelerators(en)), collapse_whitespace(strip_accelerators(xx))
    if _CONTROL.search(en) or _CONTROL.search(xx):
      dropped["control_chars"] += 1
    elif len(en.split()) < 2:
      dropped["too_few_words"] += 1
    elif is_format_only(en) or is_format_only(xx):
      dropped["format_only"] += 1
    elif en == xx:
      dropped["untranslated"] += 1
    else:
      pairs.append((en, xx))
  return pairs


def read_catalogue(path: pathlib.Path, program: str, lang: str,
                   dropped: collections.Counter) -> list[Message]:
  """All cleaned messages of one .mo file (deduplicated, in file order)."""
  try:
    catalogue = polib.mofile(str(path))
  except (OSError, ValueError, UnicodeDecodeError) as err:
    raise ValueError(f"cannot parse gettext catalogue {path}: {err}") from err
  messages, seen = [], set()
  for entry in catalogue:
    if not entry.msgid:  # the header entry holds metadata, not a message
      continue
    if entry.obsolete or "fuzzy" in getattr(entry, "flags", ()):
      dropped["fuzzy"] += 1
      continue
    # Plurals: the singular English with the first plural form (the singular in every language we use).
    msgstr = entry.msgstr_plural.get(0, "") if entry.msgid_plural else entry.msgstr
    for en, xx in clean_pair(entry.msgid, msgstr, dropped):
      if (en, xx) in seen:
        dropped["duplicate"] += 1
        continue
      seen.add((en, xx))
      messages.append(Message(program, lang, en, xx))
  return messages


def _read_catalogue_job(job) -> tuple[list[Message], collections.Counter]:
  """read_catalogue for one (path, program, lang), in a form a process pool can map."""
  path, program, lang = job
  dropped = collections.Counter()
  return read_catalogue(path, program, lang, dropped), dropped


def extract_messages(roots, languages, map_fn=map) -> tuple[list[Message], collections.Counter]:
  """Reads every catalogue for `languages` under the unpacked package trees `roots`.

  Returns (messages, dropped). English ("en") is the msgid side of every catalogue, so it needs no locale.
  Within one program a pair appears once even when it comes from several domains/packages. `map_fn` may be
  a process pool's map (parsing is pure Python and CPU bound); results are merged in catalogue order, so
  the output does not depend on it.
  """
  wanted = set(languages)
  jobs = []
  for root in roots:
    for locale, domain, path in find_catalogues(root):
      lang = language_of_locale(locale)
      if lang is not None and lang in wanted:
        jobs.append((path, program_of_domain(domain), lang))
  dropped = collections.Counter()
  messages, seen = [], set()
  for catalogue_messages, catalogue_dropped in map_fn(_read_catalogue_job, jobs):
    dropped.update(catalogue_dropped)
    for message in catalogue_messages:
      if message in seen:
        dropped["duplicate"] += 1
        continue
      seen.add(message)
      messages.append(message)
  return messages, dropped
