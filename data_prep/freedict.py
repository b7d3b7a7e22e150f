"""FreeDict dictd databases (`dict-freedict-<src>-<tgt>` packages) -> (headword, translation) entries.

A dictd database is two files: `freedict-X-Y.index`, one line per headword "key<TAB>offset<TAB>length" with
the numbers in dictd's base64 (digits A-Z a-z 0-9 + /, most significant first), and `freedict-X-Y.dict.dz`, a
dictzip (gzip-compatible) text whose byte range [offset, offset + length) is the entry. The index key is
folded (lower-cased, punctuation removed) and several keys can point at one entry, so the headwords are read
from the entry's first line instead.

Entries are plain text rendered from TEI by FreeDict's tei2c5 and differ in layout between dictionaries:

  hunting animal /hˈʌntɪŋ ˈanɪməl/                       headword(s), pronunciation in slashes, <pos>
  Jagdtier <neut>, jagendes Tier <neut>, Jäger [zool.]   translations, separated by commas or semicolons
     Synonym: {hunter}                                   references (Synonym/see/Note/See also): skipped
        "I argued"  - ich stritt                         examples: skipped

Senses are numbered "1." / "I." at the start of a line (eng-pol nests "II.  <Adj> 1.  text"), or, in eng-jpn
and pol-eng, " 2." at the end of the previous line. The first text line of a sense holds its translations;
further text lines of the same sense are definitions in either language (eng-jpn glosses, pol-eng
explanations) and are skipped. eng-pol embeds phrase sub-entries ("<V Phras>stir up  1.  wzburzać",
"on target (:on :target)" followed by " - translation"), which are skipped too, as they do not translate the
headword. jpn-eng glues a usage label to the gloss after it ("Note: archaismmoon"); glued_note_labels learns
those labels from each database so the gloss is recovered. Skipped lines are counted by reason.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import pathlib
import re
import zlib

DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_DIGIT_VALUE = {c: i for i, c in enumerate(DICTD_BASE64)}

# Our language codes -> the ISO 639-3 codes FreeDict names its packages with.
ISO639_3 = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "ru": "rus", "ja": "jpn",
            "pl": "pol", "zh": "zho", "nl": "nld", "pt": "por", "sv": "swe", "cs": "ces"}

# dictfmt stores the database's own description under these keys ("00databaseinfo", "00-database-url").
_META_KEY = re.compile(r"00-?database")
# A pronunciation: "/.../" or eng-jpn's "//...//", starting at a word boundary ("he/she" is no pronunciation).
_PRONUNCIATION = re.compile(r"(?:^|(?<=\s))/+[^/\n]*/+")
# Innermost bracketed annotations: <pos>, [domain], {cross-reference}, (usage note).
_ANNOTATION = re.compile(r"<[^<>]*>|\[[^\[\]]*\]|\{[^{}]*\}|\([^()]*\)|（[^（）]*）")
_REFERENCE = re.compile(r"\s*(?:Synonyms?|Antonyms?|see|See also|Notes?):")
_NOTE_LINE = re.compile(r"^[ \t]*Notes?: ?(.*)$", re.MULTILINE)
_SENSE_MARK = re.compile(r"\s*(?:([IVX]+)|(\d+))\.(?=\s|$)")
_LEADING_TAG = re.compile(r"\s*<([^<>]*)>")
_TRAILING_SENSE_MARK = re.compile(r"\s+(\d+)\.$")
# eng-pol phrase patterns: "(:on :target)", "(fend V: :for PROREFL)".
_PHRASE_PATTERN = re.compile(r"\((?:[^()]*\s)?:\w")
_SEPARATORS = re.compile(r"[,;]")
_HIRAGANA_ONLY = re.compile(r"[\u3041-\u309f\u30fc]+")
_KANJI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Typographic hyphens (eng-fra writes "chou‐fleur" with U+2010) become ASCII ones.
_HYPHENS = str.maketrans({"\u2010": "-", "\u2011": "-"})
_TYPOGRAPHIC_HYPHEN = re.compile("[\u2010\u2011]")
_MARKUP_CHAR = re.compile(r"[/<\[{(（]")


@dataclasses.dataclass(frozen=True)
class FreeDictEntry:
  """One dictionary entry: its headwords (spelling variants) and the translations of all its senses."""
  headwords: tuple[str, ...]
  translations: tuple[str, ...]


def freedict_package(source: str, target: str) -> str:
  """Debian package of the FreeDict dictionary source -> target, from our codes: ("en", "de") -> eng-deu."""
  return f"dict-freedict-{ISO639_3.get(source, source)}-{ISO639_3.get(target, target)}"


def decode_dictd_number(text: str) -> int:
  """Value of a dictd base64 number ("B" = 1, "BA" = 64); ValueError on a character outside the alphabet."""
  if not text:
    raise ValueError("empty dictd number")
  value = 0
  for char in text:
    if char not in _DIGIT_VALUE:
      raise ValueError(f"{char!r} is not a dictd base64 digit")
    value = value * 64 + _DIGIT_VALUE[char]
  return value


def encode_dictd_number(value: int) -> str:
  """Inverse of decode_dictd_number (used to write test databases)."""
  digits = DICTD_BASE64[value % 64]
  while value >= 64:
    value //= 64
    digits = DICTD_BASE64[value % 64] + digits
  return digits


def read_index(path) -> list[tuple[str, int, int]]:
  """(key, offset, length) per line of a dictd .index file; ValueError naming file and line if malformed."""
  path = pathlib.Path(path)
  rows = []
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      fields = line.rstrip("\n").split("\t")
      try:
        if len(fields) != 3:
          raise ValueError(f"expected 3 tab-separated fields, got {len(fields)}")
        rows.append((fields[0], decode_dictd_number(fields[1]), decode_dictd_number(fields[2])))
      except ValueError as err:
        raise ValueError(f"{path}:{lineno}: malformed dictd index line {line.strip()!r}: {err}; "
                         "delete the unpacked package to extract it again") from err
  return rows


def strip_annotations(text: str) -> str:
  """Text without pronunciations and bracketed annotations (nested ones too), whitespace collapsed."""
  if _MARKUP_CHAR.search(text):  # most lines have none: skip the substitutions
    text, removed = _ANNOTATION.subn(" ", _PRONUNCIATION.sub(" ", text))
    while removed:  # innermost first, so "(noun (common))" takes two rounds
      text, removed = _ANNOTATION.subn(" ", text)
  return " ".join(text.split())


def split_terms(text: str) -> list[str]:
  """Comma/semicolon-separated terms of one line, annotations removed, empty ones dropped."""
  text = strip_annotations(text)
  if _TYPOGRAPHIC_HYPHEN.search(text):
    text = text.translate(_HYPHENS)
  return [term for term in map(str.strip, _SEPARATORS.split(text)) if term]


def glued_note_labels(text: str, min_uses: int = 3) -> frozenset[str]:
  """Usage labels that a database glues to the gloss after them, learnt from the database's own notes.

  jpn-eng renders a JMdict usage label and the sense's gloss as one note with no separator ("Note: archaism"
  alone, but "Note: archaismmoon", "Note: word usually written using kana alonetobacco"); about one entry in
  ten has its only gloss there. A label is a note that occurs alone at least `min_uses` times and also
  starts at least `min_uses` different longer notes, directly followed by a non-space character.
  """
  counts = collections.Counter(m.group(1).strip() for m in _NOTE_LINE.finditer(text))
  notes = sorted(counts)
  labels = set()
  for i, note in enumerate(notes):  # sorted, so the notes that extend `note` follow it
    extensions, j = 0, i + 1
    while j < len(notes) and notes[j].startswith(note):
      extensions += not notes[j][len(note)].isspace()
      j += 1
    if min(extensions, counts[note]) >= min_uses and len(note) >= 4 and note[0].isalpha():
      labels.add(note)
  # "archaismyou" (extended by "archaismyoung ...") is itself a label glued to a gloss, not a label.
  return frozenset(label for label in labels
                   if not any(label.startswith(other) and not label[len(other)].isspace()
                              for other in labels if len(other) < len(label)))


def _glued_gloss(line: str, labels: frozenset[str]) -> str:
  """The gloss after the longest glued label of a note line, or "" when the note is no glued label."""
  note = _NOTE_LINE.match(line)
  if not labels or note is None:
    return ""
  text = note.group(1).strip()
  for end in range(len(text) - 1, 3, -1):  # longest label first
    if text[:end] in labels and not text[end].isspace():
      return text[end:]
  return ""


class _SenseReader:
  """Walks the body lines of one entry, keeping which sense a line belongs to."""

  def __init__(self, skipped: collections.Counter, note_labels: frozenset[str]):
    self.skipped, self.note_labels = skipped, note_labels
    self.translations: list[str] = []
    self.sense, self.text_lines_in_sense, self.in_phrase_block = 1, 0, False

  def _start_sense(self, number: int) -> None:
    self.sense, self.text_lines_in_sense = number, 0

  def _strip_marks(self, line: str) -> str:
    """Removes leading sense numbers and part-of-speech tags, possibly nested: "II.  <Adj> 1.  text"."""
    while True:
      mark = _SENSE_MARK.match(line)
      if mark:
        if mark.group(1):  # a roman numeral starts a part of speech: numbering restarts, phrase blocks end
          self._start_sense(1)
          self.in_phrase_block = False
        else:
          self._start_sense(int(mark.group(2)))
        line = line[mark.end():]
        continue
      tag = _LEADING_TAG.match(line)
      if tag:
        self.in_phrase_block = self.in_phrase_block or "Phras" in tag.group(1)
        line = line[tag.end():]
        continue
      return line

  def read(self, line: str) -> None:
    """Takes one body line: its translations, or a count of why it holds none."""
    if _REFERENCE.match(line):
      gloss = _glued_gloss(line, self.note_labels) if self.text_lines_in_sense == 0 else ""
      terms = split_terms(gloss) if gloss else []
      if terms:
        self.translations.extend(terms)
        self.text_lines_in_sense += 1
      else:
        self.skipped["reference_line"] += 1
      return
    if line[:1].isspace() and line.lstrip().startswith('"'):
      self.skipped["example_line"] += 1
      return
    # "傴僂 2." ends sense 1 and announces sense 2; "... Article 5." or "... 1964." announce nothing.
    trailing = _TRAILING_SENSE_MARK.search(line)
    if trailing and int(trailing.group(1)) != self.sense + 1:
      trailing = None
    body = self._strip_marks(line[:trailing.start()] if trailing else line).strip()
    if not strip_annotations(body):
      pass  # only a sense number or a grammar note: "(noun (common) (futsuumeishi))"
    elif self.in_phrase_block or _PHRASE_PATTERN.search(body):
      self.skipped["phrase_line"] += 1
    elif body.startswith(("-", "=", "…")) or self.text_lines_in_sense > 0:
      self.skipped["definition_line"] += 1  # " - " translates a phrase; "=", "…" and later lines explain
    else:
      self.translations.extend(split_terms(body))
      self.text_lines_in_sense += 1
    if trailing:
      self._start_sense(int(trailing.group(1)))


def parse_entry(text: str, skipped: collections.Counter,
                note_labels: frozenset[str] = frozenset()) -> FreeDictEntry:
  """Headwords (first line) and translations (first text line of each sense) of one entry's text.

  `skipped` counts the body lines that are not translations, by kind (reference_line, example_line,
  definition_line, phrase_line). `note_labels` (from glued_note_labels) recovers glosses glued to a label.
  """
  lines = text.split("\n")
  reader = _SenseReader(skipped, note_labels)
  for line in lines[1:]:
    if line.strip():
      reader.read(line)
  headwords = tuple(dict.fromkeys(split_terms(lines[0])))
  return FreeDictEntry(headwords, tuple(dict.fromkeys(reader.translations)))


def read_freedict(index_path, dict_path, skipped: collections.Counter) -> list[FreeDictEntry]:
  """All entries of one dictd database, in index order, each entry once.

  Metadata entries ("00-database-info", ...) and entries without a headword or translation are skipped and
  counted in `skipped` (meta_entry, no_headword, no_translation), as are the skipped body lines.
  """
  index_path, dict_path = pathlib.Path(index_path), pathlib.Path(dict_path)
  rows = read_index(index_path)
  try:
    with gzip.open(dict_path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as err:
    raise ValueError(f"cannot decompress dictd data {dict_path}: {err}; delete the unpacked package "
                     "to extract it again") from err
  # Labels are learnt from the notes of this database only (decoding is cheap next to parsing).
  note_labels = glued_note_labels(data.decode("utf-8", errors="replace"))
  entries, seen = [], set()
  for lineno, (key, offset, length) in enumerate(rows, 1):
    if (offset, length) in seen:  # another key of an entry already read
      continue
    seen.add((offset, length))
    if _META_KEY.match(key):
      skipped["meta_entry"] += 1
      continue
    if offset + length > len(data):
      raise ValueError(f"{index_path}:{lineno}: entry {key!r} ends at byte {offset + length}, past the end "
                       f"of {dict_path} ({len(data)} bytes); the two files do not belong together")
    try:
      text = data[offset:offset + length].decode("utf-8")
    except UnicodeDecodeError as err:
      raise ValueError(f"{index_path}:{lineno}: entry {key!r} in {dict_path} is not UTF-8: {err}") from err
    entry = parse_entry(text, skipped, note_labels)
    if not entry.headwords:
      skipped["no_headword"] += 1
    elif not entry.translations:
      skipped["no_translation"] += 1
    else:
      entries.append(entry)
  return entries


def find_database(root, source: str, target: str) -> tuple[pathlib.Path, pathlib.Path]:
  """(index, dict.dz) paths of the source -> target database inside an unpacked package tree."""
  name = f"freedict-{ISO639_3.get(source, source)}-{ISO639_3.get(target, target)}"
  folder = pathlib.Path(root) / "usr/share/dictd"
  index_path, dict_path = folder / f"{name}.index", folder / f"{name}.dict.dz"
  for path in (index_path, dict_path):
    if not path.is_file():
      raise FileNotFoundError(f"{path} not found: unpack {freedict_package(source, target)} into {root} "
                              "(data_prep.debian.fetch_packages + extract_package)")
  return index_path, dict_path


def read_direction(job) -> tuple[list[FreeDictEntry], collections.Counter]:
  """(entries, skipped) of one (root, source, target) database, in a form a process pool can map."""
  root, source, target = job
  skipped = collections.Counter()
  return read_freedict(*find_database(root, source, target), skipped), skipped


def is_kana_reading(headword: str, headwords) -> bool:
  """True for a hiragana-only headword of an entry that also has a kanji spelling: jpn-eng lists the
  reading after the spellings ("犬, いぬ"), and readings of one kanji ("館, かん") are not how text writes it."""
  return bool(_HIRAGANA_ONLY.fullmatch(headword)) and any(_KANJI.search(other) for other in headwords)


def candidate_pairs(en_to_xx, xx_to_en, dropped: collections.Counter) -> list[tuple[str, str]]:
  """Raw (English, foreign) pairs: every headword x translation of both directions' entries.

  Pairs of a kana reading (is_kana_reading) are not made; dropped["kana_reading"] counts them.
  """
  pairs = [(en, xx) for entry in en_to_xx for en in entry.headwords for xx in entry.translations]
  for entry in xx_to_en:
    for xx in entry.headwords:
      if is_kana_reading(xx, entry.headwords):
        dropped["kana_reading"] += len(entry.translations)
      else:
        pairs += [(en, xx) for en in entry.translations]
  return pairs
