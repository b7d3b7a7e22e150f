"""LibreOffice help (HTML, one package per language) -> paragraphs aligned across languages.

Each help page exists in every language under the same relative path, and every paragraph carries the same
`id` attribute in all of them, so (file, paragraph id) aligns a translation with its English source
exactly. Translators leave some paragraphs untranslated: the help build then copies the English text, which
must not pass as a translation. Dropped paragraphs are counted by reason:
  empty            no text (image-only paragraphs, anchors)
  code             example/code paragraphs (class code, codeintable, smathcode, example)
  too_few_words    fewer than 2 words (button names, single terms)
  untranslated     foreign text identical to the English paragraph of the same file and id
  control_chars    control characters in the text
  no_english_help  foreign files read without the English help to check them against
"""
from __future__ import annotations

import collections
import html
import html.parser
import pathlib
import re
import warnings

from data_prep.sources import base

SOURCE = "libreoffice_help"
# Our language code -> Debian package; English comes first, every other language is aligned to it.
PACKAGES = {
    "en": "libreoffice-help-en-us", "de": "libreoffice-help-de", "fr": "libreoffice-help-fr",
    "es": "libreoffice-help-es", "it": "libreoffice-help-it", "ru": "libreoffice-help-ru",
    "ja": "libreoffice-help-ja", "zh": "libreoffice-help-zh-cn", "pl": "libreoffice-help-pl"}
# The help folder of a language where it is not the language code itself.
HELP_DIRS = {"en": "en-US", "zh": "zh-CN"}
HELP_ROOT = "usr/share/libreoffice/help"
# The application modules: labels for a topic classification set. Files elsewhere ("shared": common
# dialogs) keep their folder name as label.
MODULES = ("sbasic", "scalc", "schart", "sdatabase", "sdraw", "simpress", "smath", "swriter")

_PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6"})
_CODE_CLASSES = frozenset({"code", "codeintable", "smathcode", "example"})
# The start tag of a paragraph or heading with an id; group 1 is the tag name.
_PARAGRAPH_START = re.compile(r"<(p|h[1-6])\s(?=[^>]*?\bid=[\"'])[^>]*>")
_ID = re.compile(r"""\sid\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_CLASS = re.compile(r"""\sclass\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_TAG = re.compile(r"<!--.*?-->|<[^>]*>", re.DOTALL)
_BREAK = re.compile(r"<br\b[^>]*>", re.IGNORECASE)
_VOID_TAGS = frozenset({"br", "img", "input", "meta", "link", "hr", "wbr", "source", "embed", "area", "col"})
# The page body: header, index and footer (bookmark ids) around it are the same navigation on every page.
_BODY_START, _BODY_END = '<div id="DisplayArea"', "<footer>"


def packages(languages) -> list[str]:
  """The help packages for `languages`, English always included (needed to align and to spot copies)."""
  return base.packages_for(PACKAGES, languages, always=("en",))


class _ParagraphParser(html.parser.HTMLParser):
  """Collects (id, class, text) of every paragraph or heading that has an id attribute.

  Inline switches (<span class="switchinline">) hold alternatives for other systems or applications
  ("LibreOffice - Preferences" on macOS, "Tools - Options" elsewhere) in hidden spans; all of them are in
  the file, so only the "default..." alternative (else the first) is kept, as the help viewer shows it.
  """

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.paragraphs: list[tuple[str, str, str]] = []
    # Open elements: [tag, role, payload]; role "para" (payload: text parts), "switch" (payload: list of
    # (case id, parts)), "case" (payload: parts) or "plain" (None).
    self._stack: list[list] = []
    self._para = None  # (id, class) of the paragraph being collected

  def handle_starttag(self, tag, attrs):
    if tag in _VOID_TAGS:
      if tag == "br":
        self.handle_data(" ")
      return
    attrs = dict(attrs)
    top = self._stack[-1] if self._stack else None
    if self._para is None and tag in _PARAGRAPH_TAGS and attrs.get("id"):
      self._para = (attrs["id"], attrs.get("class") or "")
      self._stack.append([tag, "para", []])
    elif self._para is not None and "switchinline" in (attrs.get("class") or "").split():
      self._stack.append([tag, "switch", []])
    elif top is not None and top[1] == "switch" and "hidden" in attrs:
      self._stack.append([tag, "case", [], attrs.get("id") or ""])
    else:
      self._stack.append([tag, "plain", None])

  def handle_startendtag(self, tag, attrs):
    self.handle_starttag(tag, attrs)
    if tag not in _VOID_TAGS:
      self.handle_endtag(tag)

  def handle_data(self, data):
    for frame in reversed(self._stack):
      if frame[1] in ("para", "case"):
        frame[2].append(data)
        return
      if frame[1] == "switch":  # whitespace between the alternatives
        return

  def handle_endtag(self, tag):
    # Close up to the innermost open element of this tag; a stray end tag closes nothing.
    for depth in range(len(self._stack) - 1, -1, -1):
      if self._stack[depth][0] == tag:
        while len(self._stack) > depth:
          self._close(self._stack.pop())
        return

  def close(self):
    super().close()
    while self._stack:  # a page cut off inside a paragraph still yields that paragraph
      self._close(self._stack.pop())

  def _close(self, frame):
    role = frame[1]
    if role == "case" and self._stack and self._stack[-1][1] == "switch":
      self._stack[-1][2].append((frame[3], "".join(frame[2])))
    elif role == "switch":
      cases = frame[2]
      chosen = next((text for name, text in cases if name.startswith("default")),
                    cases[0][1] if cases else "")
      self.handle_data(chosen)
    elif role == "para":
      self.paragraphs.append((*self._para, "".join(frame[2])))
      self._para = None


def _plain_paragraph(piece: str, start_tag_end: int, close: str) -> tuple[str, str, str]:
  """(id, class, text) of a paragraph without inline switches: its text is everything outside tags."""
  start_tag = piece[:start_tag_end]
  inner = piece[start_tag_end:-len(close)] if piece.endswith(close) else piece[start_tag_end:]
  text = html.unescape(_TAG.sub("", _BREAK.sub(" ", inner)))
  return _attribute(_ID, start_tag), _attribute(_CLASS, start_tag), text


def _attribute(pattern: re.Pattern, start_tag: str) -> str:
  match = pattern.search(start_tag)
  if match is None:
    return ""
  return html.unescape(match.group(1) if match.group(1) is not None else match.group(2))


def parse_help_page(markup: str) -> list[tuple[str, str, str]]:
  """(paragraph id, class attribute, raw text) of each paragraph of one help page, in page order."""
  start, end = markup.find(_BODY_START), markup.rfind(_BODY_END)
  if start >= 0 and end > start:  # skip the navigation around the body: the same on every page
    markup = markup[start:end]
  # Paragraphs and headings cannot nest, so each one ends at the first matching end tag. Most hold only
  # inline formatting, whose text is what lies outside the tags; only those with inline switches need a
  # real parse (html.parser is pure Python and took 3/4 of the reading time when it parsed every page).
  paragraphs, position = [], 0
  for match in _PARAGRAPH_START.finditer(markup):
    if match.start() < position:
      continue
    close = f"</{match.group(1)}>"
    end = markup.find(close, match.end())
    position = len(markup) if end < 0 else end + len(close)
    piece = markup[match.start():position]
    if "switchinline" in piece:
      parser = _ParagraphParser()
      parser.feed(piece)
      parser.close()
      paragraphs.extend(parser.paragraphs)
    else:
      paragraphs.append(_plain_paragraph(piece, match.end() - match.start(), close))
  return paragraphs


def _clean_paragraphs(path: pathlib.Path, dropped: collections.Counter) -> dict[str, str]:
  """{key: text} of one page's usable paragraphs. An id that repeats in a page (an embedded section
  shown twice) gets its occurrence number appended ("par_id1#2"), which is the same in every language."""
  try:
    markup = path.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as err:
    raise ValueError(f"cannot read LibreOffice help page {path}: {err}; delete the unpacked folder "
                     "to unpack the package again") from err
  texts, seen = {}, collections.Counter()
  for pid, css_class, raw in parse_help_page(markup):
    seen[pid] += 1
    key = pid if seen[pid] == 1 else f"{pid}#{seen[pid]}"
    text = base.collapse_whitespace(raw)
    if not text:
      dropped["empty"] += 1
    elif _CODE_CLASSES & set(css_class.split()):
      dropped["code"] += 1
    elif base.CONTROL_CHARS.search(text):
      dropped["control_chars"] += 1
    elif base.word_count(text) < base.MIN_WORDS:
      dropped["too_few_words"] += 1
    else:
      texts[key] = text
  return texts


def module_of(unit: str) -> str:
  """The label of a help file: its module folder ("text/scalc/01/x.html" -> "scalc")."""
  parts = unit.split("/")
  return parts[1] if len(parts) > 2 and parts[0] == "text" else "other"


def read_help_page(job) -> tuple[list[base.TextUnit], collections.Counter]:
  """Reads one help page in every language: job = (unit, [(lang, path), ...]) with English first.

  Pure and picklable, so a process pool can map it over the pages. Foreign paragraphs equal to the English
  paragraph with the same key are dropped as untranslated.
  """
  unit, paths = job
  dropped = collections.Counter()
  label = module_of(unit)
  units, english = [], {}
  for lang, path in paths:
    texts = _clean_paragraphs(path, dropped)
    if lang == "en":
      english = texts
    for key, text in texts.items():
      if lang != "en" and english.get(key) == text:
        dropped["untranslated"] += 1
        continue
      units.append(base.TextUnit(SOURCE, unit, lang, text, key, label))
  return units, dropped


def find_pages(roots, lang: str) -> dict[str, pathlib.Path]:
  """{unit: path} of the help pages of one language under the unpacked package trees `roots`;
  unit is the path below the language folder, e.g. "text/scalc/main0200.html"."""
  folder = HELP_DIRS.get(lang, lang)
  pages = {}
  for root in roots:
    lang_dir = pathlib.Path(root) / HELP_ROOT / folder
    for path in sorted((lang_dir / "text").glob("**/*.html")):
      if path.is_file():
        pages.setdefault(path.relative_to(lang_dir).as_posix(), path)
  return pages


def read_help(roots, languages, map_fn=map) -> tuple[list[base.TextUnit], collections.Counter]:
  """Reads the LibreOffice help for English and `languages` from unpacked package trees `roots`.

  Returns (units, dropped): English paragraphs plus the translated paragraphs of each requested language
  (page order, pages sorted). Without the English help nothing can be checked for untranslated copies, so
  foreign pages are then skipped with a warning and counted. `map_fn` may be a process pool's map.
  """
  roots, foreign = list(roots), [lang for lang in dict.fromkeys(languages) if lang != "en"]
  english = find_pages(roots, "en")
  dropped = collections.Counter()
  by_lang = {lang: find_pages(roots, lang) for lang in foreign}
  if not english:
    skipped = sum(len(pages) for pages in by_lang.values())
    if skipped:
      warnings.warn(f"LibreOffice help: {skipped} foreign pages skipped, no English help under {HELP_ROOT}"
                    f"/en-US in {len(roots)} package trees (package {PACKAGES['en']} missing?)")
      dropped["no_english_help"] += skipped
    return [], dropped
  jobs = []
  for unit, path in english.items():
    jobs.append((unit, [("en", path)] + [(lang, by_lang[lang][unit]) for lang in foreign
                                          if unit in by_lang[lang]]))
  # Foreign pages with no English counterpart cannot be checked either.
  dropped["no_english_help"] += sum(1 for lang in foreign for unit in by_lang[lang] if unit not in english)
  units = []
  for page_units, page_dropped in map_fn(read_help_page, jobs):
    units.extend(page_units)
    dropped.update(page_dropped)
  return units, +dropped


def aligned_pairs(units, lang: str) -> list[tuple[str, str, str, str, str]]:
  """(unit, key, label, English, translation) for every paragraph of `lang` with an English paragraph of
  the same file and id, in the order of `units`."""
  english = {(u.unit, u.key): u.text for u in units if u.lang == "en"}
  return [(u.unit, u.key, u.label, english[(u.unit, u.key)], u.text) for u in units
          if u.lang == lang and (u.unit, u.key) in english]
