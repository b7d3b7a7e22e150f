"""What every text source yields (TextUnit) and the text rules the sources share.

The rules are plain and explicit so a reader of the manifest's drop counters can tell what was removed:
whitespace is collapsed, hard-wrapped lines are joined (without a space between two CJK characters, where
a line break is not a word break), and length is measured in words, with CJK text (no spaces between
words) counted at two characters per word.
"""
from __future__ import annotations

import dataclasses
import re

# Fewer words than this is a label, a heading or an identifier, not a sentence.
MIN_WORDS = 2

# CJK punctuation, kana, ideographs (ext. A and the main block), compatibility ideographs and full-width
# forms: the scripts written without spaces between words.
_CJK_RANGES = ((0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF))
_CJK_CLASS = "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in _CJK_RANGES)
_CJK_CHAR = re.compile(f"[{_CJK_CLASS}]")
# A space-separated word outside CJK text: a run holding at least one letter or digit.
_NON_CJK_WORD = re.compile(f"[^\\s{_CJK_CLASS}]*[^\\W_{_CJK_CLASS}][^\\s{_CJK_CLASS}]*")
# Terminal colour codes (fortunes-zh colours titles and authors) and other control characters.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Languages whose script is easy to check: a text with no character of it is an untranslated (English)
# leftover. Japanese needs kana or kanji, Chinese hanzi, Russian Cyrillic.
_SCRIPTS = {"ja": re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]"),
            "zh": re.compile("[\u3400-\u4dbf\u4e00-\u9fff]"), "ru": re.compile("[\u0400-\u04ff]")}

# Sentence ends: Western punctuation needs following space and an upper-case start (checked in code),
# or, between two CJK characters, nothing (older Chinese pages write "。" as "."); CJK full stops end a
# sentence wherever they stand. Closing quotes and brackets stay with their sentence; they include
# German “ ‘ and « » (German quotes »so«, French «ainsi»).
_SENTENCE_END = re.compile(r"([.!?…]+[\"'»«“”‘’›‹)\]」』]*)(\s*)|([。！？]+[」』”’）)]*)\s*")
_OPENING_PUNCT = "\"'«„“‘([¿¡"
# Lower-cased abbreviations (without their final dot) after which a full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    "bzw ca vgl usw ggf evtl inkl nr abb dr mr mrs prof st vs sog z.b d.h u.a e.g i.e cf "  # en de
    "p.ej pág ej aprox núm p.ex env éd ecc pag sig "  # es fr it
    "т.е т.д т.п см рис напр np tzn itp itd m.in".split())  # ru pl


@dataclasses.dataclass(frozen=True)
class TextUnit:
  """One piece of text from a source.

  source: which reader produced it ("libreoffice_help", "fortunes", "manpages").
  unit:   the split unit (help file path, fortune file, man page): everything from one unit goes to the
          same split, in every language.
  lang:   our language code ("en", "de", ..., "zh" for simplified Chinese).
  text:   cleaned text, one line, whitespace collapsed.
  key:    position inside the unit. For LibreOffice help the paragraph id, equal across languages, so
          (unit, key) aligns translations; for the other sources only an ordinal (no alignment).
  label:  a class for classification tasks (help module, man section), "" when the source has none.
  """
  source: str
  unit: str
  lang: str
  text: str
  key: str = ""
  label: str = ""


def packages_for(table: dict[str, str], languages, always=()) -> list[str]:
  """The Debian packages of `table` ({lang: package}) for `languages` (unknown ones skipped), plus the
  languages in `always` (e.g. English, which a parallel source needs), in table order, no duplicates."""
  wanted = set(languages) | set(always)
  return [package for lang, package in table.items() if lang in wanted]


def is_cjk(ch: str) -> bool:
  return bool(_CJK_CHAR.match(ch))


def collapse_whitespace(text: str) -> str:
  return " ".join(text.split())


def strip_terminal_codes(text: str) -> str:
  return _ANSI_ESCAPE.sub("", text)


def join_lines(lines) -> str:
  """Joins hard-wrapped lines into one line: a space between lines, none between two CJK characters."""
  out = ""
  for line in lines:
    line = collapse_whitespace(line)
    if not line:
      continue
    if out and not (is_cjk(out[-1]) and is_cjk(line[0])):
      out += " "
    out += line
  return out


def word_count(text: str) -> int:
  """Words separated by spaces, plus one word per two CJK characters (rounded up)."""
  cjk = len(_CJK_CHAR.findall(text))
  words = len(_NON_CJK_WORD.findall(text))
  return words + (cjk + 1) // 2


def in_expected_script(text: str, lang: str) -> bool:
  """False when `lang` has a distinctive script (ja, zh, ru) and `text` has no character of it."""
  script = _SCRIPTS.get(lang)
  return script is None or bool(script.search(text))


def letter_share(text: str) -> float:
  """Share of letters (any script) among the non-space characters; 0.0 for empty text."""
  chars = len("".join(text.split()))
  return sum(map(str.isalpha, text)) / chars if chars else 0.0


def _is_abbreviation(before: str) -> bool:
  """True when the word before a full stop is an initial or a known abbreviation ("z. B.", "e.g.")."""
  word = before.rsplit(None, 1)[-1].lstrip(_OPENING_PUNCT) if before.strip() else ""
  word = word.rstrip(".").lower()
  return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
  """Splits a paragraph into sentences (rule-based, errs on the side of not splitting).

  A Western sentence ends at . ! ? or … followed by space and an upper-case letter (after an optional
  opening quote), unless the word before is an initial or a listed abbreviation; a CJK sentence ends at
  。！？ with or without space after, or at . ! ? between two CJK characters. Closing quotes and
  brackets stay with their sentence.
  """
  sentences, start = [], 0
  for match in _SENTENCE_END.finditer(text):
    if match.group(1) is not None:
      after, stop = match.end(), match.start(1)
      if 0 < stop and after < len(text) and is_cjk(text[stop - 1]) and is_cjk(text[after]):
        pass  # "输出.例如" or "输出. 例如"
      elif not match.group(2):
        continue
      else:
        while after < len(text) and text[after] in _OPENING_PUNCT:
          after += 1
        if after == len(text) or not text[after].isupper() or (
            match.group(1)[0] == "." and _is_abbreviation(text[start:stop])):
          continue
      end = match.end(1)
    else:
      end = match.end(3)
    sentence = text[start:end].strip()
    if sentence:
      sentences.append(sentence)
    start = match.end()
  tail = text[start:].strip()
  if tail:
    sentences.append(tail)
  return sentences


def collect_unique(results, dropped) -> list[TextUnit]:
  """Flattens per-file (units, dropped) results, keeping each (lang, text) once.

  Fortune collections and man pages copy each other's text, so duplicates are dropped (and
  counted) in file order, which makes the kept copy deterministic.
  """
  units, seen = [], set()
  for file_units, file_dropped in results:
    dropped.update(file_dropped)
    for unit in file_units:
      if (unit.lang, unit.text) in seen:
        dropped["duplicate"] += 1
        continue
      seen.add((unit.lang, unit.text))
      units.append(unit)
  return units

