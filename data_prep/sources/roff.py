"""Manual pages in roff (man and mdoc macros) -> plain-text paragraphs.

Not a roff formatter: a line-based reading that keeps the prose a translator wrote and removes markup.
  - requests and macros (lines starting with "." or "'") end a paragraph; only the arguments of macros
    that carry running text are kept (.B .I .SM .BR .IR ... and mdoc's inline macros); the tag of .TP
    (next line), .IP and .It becomes a paragraph of its own; .SH/.SS headings are dropped
  - comments, macro definitions (.de/.ig ... ..), conditionals (.if/.ie/.el, with their \\{ \\} blocks)
    and .so includes are dropped (an include-only page is an alias of a page read under its own name)
  - no-fill blocks (.nf/.fi, .EX/.EE, pod2man's .Vb/.Ve, mdoc literal displays) and tables (.TS/.TE)
    are code, examples or layout: dropped
  - escapes: fonts, sizes and motions removed; special characters (\\(em, \\[u00E4], \\*(lq) mapped
  - inside a text line, a gap of 3+ spaces separates a tag from its description (help2man's .HP)
Dropped material is counted per line in `dropped` (roff_comment, roff_definition, roff_no_fill,
roff_table, roff_include, roff_heading, roff_unknown_escape, and roff_macro_arguments for the arguments of
structure macros such as .TH, .IX, .UR, .RS).
"""
from __future__ import annotations

import collections
import re

from data_prep.sources import base

# Named glyphs \(xx and \[xx] (groff_char(7)); anything not listed renders as nothing and is counted.
GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
    "aq": "'", "dq": '"', "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "bq": "‚", "Bq": "„", "co": "©",
    "rg": "®", "tm": "™", "de": "°", "mu": "×", "di": "÷", "+-": "±", "<=": "≤", ">=": "≥", "!=": "≠",
    "->": "→", "<-": "←", "<>": "↔", "rA": "⇒", "lA": "⇐", "ua": "↑", "da": "↓", "sc": "§", "ps": "¶",
    "ga": "`", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ba": "|", "or": "|", "bv": "|", "at": "@",
    "sh": "#", "Do": "$", "Eu": "€", "eu": "€", "Po": "£", "Ye": "¥", "ct": "¢", "ul": "_", "ru": "_",
    "pl": "+", "eq": "=", "dg": "†", "ss": "ß", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨",
    "ra": "⟩", "sp": " ", "r!": "¡", "r?": "¿", "12": "½", "14": "¼", "34": "¾", "ff": "ff", "fi": "fi",
    "fl": "fl", "Fi": "ffi", "Fl": "ffl", "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "/o": "ø", "/O": "Ø",
    "oa": "å", "oA": "Å", ":a": "ä", ":o": "ö", ":u": "ü", ":A": "Ä", ":O": "Ö", ":U": "Ü", "'e": "é",
    "`e": "è", "^e": "ê", "'a": "á", "`a": "à", ",c": "ç", "~n": "ñ", "'o": "ó", "'i": "í", "'u": "ú",
    "aa": "´", "ap": "~", "~~": "≈", "==": "≡", "pc": "·", "no": "¬", "if": "∞", "**": "*", "OK": "✓"}
# Predefined strings \*(xx, \*[xx], \*x of the man, mdoc and pod2man macro packages.
STRINGS = {"lq": "“", "rq": "”", "aq": "'", "Tm": "™", "R": "®", "C+": "C++", "C'": "'", "C`": "'",
           'L"': "“", 'R"': "”", "PI": "π", "Lq": "“", "Rq": "”", "Ba": "|", "Ne": "≠", "Ge": "≥",
           "Le": "≤", "Gt": ">", "Lt": "<", "Pm": "±", "q": '"'}
# One-character escapes. Zero-width and motion ones (\& \| \^ \% \/ \, \) \: \d \u \a \p) vanish.
_SIMPLE = {"-": "-", "e": "\\", "E": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "t": " ", "'": "'",
           "`": "`", ".": ".", "&": "", "|": "", "^": "", "%": "", "/": "", ",": "", ")": "", ":": "",
           "d": "", "u": "", "a": "", "p": "", "c": ""}
_ESCAPE = re.compile(r"""\\(?:
    f(?:\[[^\]]*\]|\(..|.)                       # font change
  | s(?:[-+]?\d|\([-+]?\d\d|\[[-+]?\d+\]|'[^']*')  # size change
  | \((?P<glyph2>..)                              # \(em
  | \[(?P<glyph>[^\]]*)\]                         # \[em] \[u00E4]
  | \*(?:\((?P<string2>..)|\[(?P<string>[^\]]*)\]|(?P<string1>.))  # \*(lq \*[lq] \*R
  | [nkgVYm](?:\(..|\[[^\]]*\]|.)                 # registers, marks, colours
  | N'(?P<number>\d+)'                            # character by number
  | [hvwoLlbDXZxRSHAB]'[^']*'                     # motions, widths, drawing
  | z                                             # zero-width: the next character stays
  | (?P<simple>.)
)""", re.VERBOSE)
_COMMENT = re.compile(r'\\".*$|\\#.*$')
_COMMENT_LINE = re.compile(r"""[.']?\s*\\["#]""")
_TAG_GAP = re.compile(r"(?<=\S) {3,}(?=\S)")
# man's inline font macros; the alternating ones join their arguments without spaces.
_FONT_MACROS = frozenset({"B", "I", "SM", "SB", "R"})
_ALTERNATING = frozenset({"BR", "RB", "IR", "RI", "BI", "IB"})
# mdoc macros whose arguments are running text (other mdoc macros are structure).
_MDOC_INLINE = frozenset(
    "Nm Nd Ar Fl Cm Ic Li Pa Va Ev Dv Er Em Sy Ql Dq Sq Pq Qq Aq Bq Brq Op Xr Fn Fa Ft Ad An Lk Mt Ns No "
    "Tn Ux Bx At St Xo Xc Oo Oc Do Dc So Sc Po Pc Qo Qc Eo Ec Ms Sx Cd Vt Ot Fo Fc Lb In Hf Ta".split())
_MDOC_CALLABLE = _MDOC_INLINE - {"Nd"}
_HEADINGS = frozenset({"SH", "SS", "Sh", "Ss"})
_TAGGED = frozenset({"IP", "It"})
_NO_FILL = {"nf": "fi", "EX": "EE", "Vb": "Ve", "TS": "TE", "SY": "YS"}
_DEFINITIONS = frozenset({"de", "de1", "am", "ig", "dei", "ami"})
_CONDITIONALS = frozenset({"if", "ie", "el", "while"})


def _end_request(name: str) -> re.Pattern:
  """Matches the control line `.name` (or `'name`) that ends a skipped block."""
  return re.compile(r"[.']\s*" + re.escape(name) + r"(?!\S)")


def unescape(text: str, dropped: collections.Counter) -> str:
  """Replaces roff escapes in one line of text by the characters they print (comments already gone)."""
  def replace(m):
    name = m.group("glyph2") or m.group("glyph")
    if name is not None:
      if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(_[0-9A-Fa-f]{4,6})*", name):
        return "".join(chr(int(part, 16)) for part in name[1:].split("_"))
      if name.startswith("char") and name[4:].isdigit():
        return chr(int(name[4:]))
      if name in GLYPHS:
        return GLYPHS[name]
      dropped["roff_unknown_escape"] += 1
      return ""
    string = m.group("string2") or m.group("string") or m.group("string1")
    if string is not None:
      return STRINGS.get(string, "")
    if m.group("number") is not None:
      return chr(int(m.group("number")))
    simple = m.group("simple")
    if simple is None:
      return ""
    if simple not in _SIMPLE:
      dropped["roff_unknown_escape"] += 1
    return _SIMPLE.get(simple, "")
  return _ESCAPE.sub(replace, text)


def split_arguments(line: str) -> list[str]:
  """Macro arguments: space-separated, "double quoted" with "" for a quote; escapes kept for unescape."""
  args, i, n = [], 0, len(line)
  while i < n:
    while i < n and line[i] in " \t":
      i += 1
    if i >= n:
      break
    quoted = line[i] == '"'
    i += quoted
    arg = []
    while i < n:
      ch = line[i]
      if ch == "\\" and i + 1 < n:
        arg.append(line[i:i + 2])
        i += 2
        continue
      if quoted and ch == '"':
        if line[i + 1:i + 2] == '"':
          arg.append('"')
          i += 2
          continue
        i += 1
        break
      if not quoted and ch in " \t":
        break
      arg.append(ch)
      i += 1
    args.append("".join(arg))
  return args


def _mdoc_text(args: list[str]) -> str:
  """Running text of mdoc inline arguments: macro names dropped, "Fl x" -> "-x", "Xr ls 1" -> "ls(1)"."""
  words, i = [], 0
  while i < len(args):
    arg = args[i]
    if arg == "Fl":
      words.append("-" + (args[i + 1] if i + 1 < len(args) and args[i + 1] not in _MDOC_CALLABLE else ""))
      i += 2 if i + 1 < len(args) and args[i + 1] not in _MDOC_CALLABLE else 1
      continue
    if arg == "Xr" and i + 2 < len(args):
      words.append(f"{args[i + 1]}({args[i + 2]})")
      i += 3
      continue
    if arg not in _MDOC_CALLABLE:
      words.append(arg)
    i += 1
  return " ".join(words)


class _Paragraphs:
  """Accumulates text lines into paragraphs; end_paragraph() closes the current one."""

  def __init__(self):
    self.done: list[str] = []
    self._lines: list[str] = []
    self._glue = False  # the previous line ended in \c: continue without a space

  def add(self, text: str, glue_next: bool = False) -> None:
    if self._glue and self._lines:
      self._lines[-1] += text
    else:
      self._lines.append(text)
    self._glue = glue_next

  def append_to_last(self, text: str) -> None:
    """Punctuation after a link (.UE ".", .ME ")") sticks to the previous word."""
    if self._lines:
      self._lines[-1] += text
    else:
      self.add(text)

  def end_paragraph(self) -> None:
    text = base.join_lines(self._lines)
    if text:
      self.done.append(text)
    self._lines, self._glue = [], False


def roff_paragraphs(source: str, dropped: collections.Counter) -> list[str]:
  """The prose paragraphs of one manual page in roff, in page order (see the module docstring)."""
  out = _Paragraphs()
  end_of_skip, skip_reason, brace_depth = None, "", 0  # a block being skipped ends at end_of_skip
  tag_next = heading_next = False
  page_name = ""
  for raw in source.splitlines():
    if end_of_skip is not None:
      dropped[skip_reason] += 1
      if end_of_skip.match(raw):
        end_of_skip = None
      continue
    if brace_depth > 0:  # inside a conditional's \{ ... \} block
      dropped["roff_definition"] += 1
      brace_depth += raw.count("\\{") - raw.count("\\}")
      continue
    if _COMMENT_LINE.match(raw):
      dropped["roff_comment"] += 1
      continue
    line = _COMMENT.sub("", raw)
    if line[:1] in (".", "'"):
      request = line[1:].strip()
      name, _, rest = request.partition(" ")
      name, rest = name.strip(), rest.strip()
      if not name:
        continue  # a lone "." is an empty request
      if name in _DEFINITIONS:
        end_of_skip, skip_reason = _end_request("."), "roff_definition"  # ends at a ".." line
        dropped[skip_reason] += 1
        continue
      if name in _CONDITIONALS:
        dropped["roff_definition"] += 1
        brace_depth = line.count("\\{") - line.count("\\}")
        continue
      if name in _NO_FILL or (name == "Bd" and ("-literal" in rest or "-unfilled" in rest)):
        end_of_skip = _end_request(_NO_FILL.get(name, "Ed"))
        skip_reason = "roff_table" if name == "TS" else "roff_no_fill"
        dropped[skip_reason] += 1
        out.end_paragraph()
        continue
      if name == "so":
        dropped["roff_include"] += 1
        continue
      args = split_arguments(rest)
      if name in _FONT_MACROS or name in _ALTERNATING:
        if args:
          joiner = "" if name in _ALTERNATING else " "
          _add_text(out, joiner.join(unescape(a, dropped) for a in args), tag_next, heading_next, dropped)
          tag_next = heading_next = False
        continue
      if name in ("UE", "ME"):
        out.append_to_last(unescape(" ".join(args), dropped))
        continue
      if name in _MDOC_INLINE:
        if name == "Nm" and args and not page_name:
          page_name = args[0]
        if name == "Nd":  # the one-line description after the name
          text = "– " + _mdoc_text(args)
        else:
          text = _mdoc_text([name] + args) if (args or name != "Nm") else page_name
        out.add(unescape(text, dropped))
        continue
      out.end_paragraph()
      if name in _HEADINGS:
        if args:
          dropped["roff_heading"] += 1
        heading_next = not args
        continue
      if name in ("TP", "TQ"):
        tag_next = True
      elif name in _TAGGED and args:
        tag = _mdoc_text(args) if name == "It" else args[0]
        out.add(unescape(tag, dropped))
        out.end_paragraph()
      elif args:
        dropped["roff_macro_arguments"] += 1
      continue
    if not line.strip():
      out.end_paragraph()
      continue
    glue = line.rstrip().endswith("\\c")
    text = unescape(line, dropped)
    _add_text(out, text, tag_next, heading_next, dropped, glue)
    tag_next = heading_next = False
  out.end_paragraph()
  return out.done


def _add_text(out: _Paragraphs, text: str, tag: bool, heading: bool, dropped: collections.Counter,
              glue: bool = False) -> None:
  """A line of text: a heading is dropped, a tag is a paragraph of its own, a 3+ space gap is a break."""
  if heading:
    dropped["roff_heading"] += 1
    return
  parts = _TAG_GAP.split(text)
  for i, part in enumerate(parts):
    if i:
      out.end_paragraph()
    out.add(part, glue_next=glue and i == len(parts) - 1)
  if tag:
    out.end_paragraph()
