"""data_prep.sources: LibreOffice help, fortunes and man pages, on small files the tests write themselves,
plus one slow test on the real German packages."""
import collections
import gzip
import os
import pathlib
import pickle

import pytest

from data_prep import debian
from data_prep.sources import base, fortunes, libreoffice_help, manpages, roff
from data_prep.sources.base import TextUnit


def _write(path: pathlib.Path, text: str | bytes) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text, encoding="utf-8")
  return path


def _pickling_map(fn, jobs):
  """map() that pickles the function, every job and every result, as a process pool would."""
  fn = pickle.loads(pickle.dumps(fn))
  return [pickle.loads(pickle.dumps(fn(pickle.loads(pickle.dumps(job))))) for job in jobs]


# --- shared text rules --------------------------------------------------------------------------------------

def test_sentences_words_and_line_joining():
  assert base.split_sentences("Das ist z. B. gut. Dann geht es weiter! Und? ja. „Zitat.“ Ende") == [
      "Das ist z. B. gut.", "Dann geht es weiter!", "Und? ja.", "„Zitat.“", "Ende"]
  assert base.split_sentences("第一句。第二句！输出.例如 ok") == ["第一句。", "第二句！", "输出.", "例如 ok"]
  assert base.split_sentences("See e.g. the file. Then stop.") == ["See e.g. the file.", "Then stop."]
  assert base.join_lines(["很难避免", " 的人。 ", "", "Debian  ist", "gut"]) == "很难避免的人。 Debian ist gut"
  # CJK: two characters per word, rounded up; a run of punctuation is no word.
  assert [base.word_count(t) for t in ("设置", "打开文件", "zwei Wörter", "在 Debian 这种", "-- %")] == [
      1, 2, 2, 3, 0]
  assert base.in_expected_script("Ответ: yes", "ru") and not base.in_expected_script("only English", "zh")
  assert base.packages_for({"en": "a", "de": "b", "fr": "c"}, ["fr", "xx"], always=("en",)) == ["a", "c"]


# --- LibreOffice help ---------------------------------------------------------------------------------------

def _help_page(lang_attr: str, body: str) -> str:
  # The real pages wrap the body in navigation that repeats on every page; ids there are not paragraphs.
  return (f'<!DOCTYPE html><html lang="{lang_attr}"><head><title>t</title></head><body>'
          '<header><p id="nav_id1">Help navigation bar text</p></header>'
          f'<div id="DisplayArea">{body}</div>'
          '<footer><p id="bm_module">Help module footer</p></footer></body></html>')


def _switch(mac: str, default: str) -> str:
  return (f'<span id="sw1" class="switchinline"><span hidden="true" id="MACtext1" class="MAC">{mac}</span>'
          f'<span hidden="true" id="defaulttext1">{default}</span></span>')


EN_SORT = _help_page("en-US", f"""
<h1 id="hd_id1"><a name="sort"></a>Sorting data</h1>
<p id="par_id1">Select the   cells &amp; choose <span class="emph">Data - Sort</span>.</p>
<p id="par_id2">Choose {_switch("LibreOffice - Preferences", "Tools - Options")} to change it.</p>
<p id="par_id3">Sort Ascending icon</p>
<p id="par_id4"><img src="media/x.png" alt="Icon"></p>
<p id="par_id5">Ascending</p>
<p id="par_id6" class="code">Sub Main<br>End Sub</p>
<div class="embedded"><p id="par_id1">Select the cells &amp; choose Data - Sort.</p></div>
""")
DE_SORT = _help_page("de", f"""
<h1 id="hd_id1"><a name="sort"></a>Daten sortieren</h1>
<p id="par_id1">Wählen Sie die Zellen &amp; dann
  <span class="emph">Daten - Sortieren</span>.</p>
<p id="par_id2">Wählen Sie {_switch("LibreOffice - Einstellungen", "Extras - Optionen")} zum Ändern.</p>
<p id="par_id3">Sort Ascending icon</p>
<p id="par_id4"><img src="media/x.png" alt="Symbol"></p>
<p id="par_id5">Aufsteigend</p>
<p id="par_id6" class="code">Sub Main<br>End Sub</p>
<div class="embedded"><p id="par_id1">Wählen Sie die Zellen &amp; dann Daten - Sortieren.</p></div>
<p id="par_id7">Nur auf Deutsch vorhanden.</p>
""")


def _help_tree(tmp_path) -> list[pathlib.Path]:
  en, de = tmp_path / "libreoffice-help-en-us", tmp_path / "libreoffice-help-de"
  help_dir = "usr/share/libreoffice/help"
  _write(en / help_dir / "en-US/text/scalc/01/sort.html", EN_SORT)
  _write(de / help_dir / "de/text/scalc/01/sort.html", DE_SORT)
  _write(en / help_dir / "en-US/text/shared/intro.html",
         _help_page("en-US", '<p id="par_id9">Welcome to the help.</p>'))
  # A German page with no English page cannot be checked for untranslated copies.
  _write(de / help_dir / "de/text/shared/only_de.html", _help_page("de", '<p id="x">Nur hier da.</p>'))
  return [en, de]


def test_help_paragraphs_align_by_file_and_id_and_drops_are_counted(tmp_path):
  units, dropped = libreoffice_help.read_help(_help_tree(tmp_path), ["de"], map_fn=_pickling_map)
  sort, intro = "text/scalc/01/sort.html", "text/shared/intro.html"
  en = lambda text, key: TextUnit("libreoffice_help", sort, "en", text, key, "scalc")  # noqa: E731
  de = lambda text, key: TextUnit("libreoffice_help", sort, "de", text, key, "scalc")  # noqa: E731
  assert units == [
      en("Sorting data", "hd_id1"),
      en("Select the cells & choose Data - Sort.", "par_id1"),
      # Only the default of an inline switch is kept; the macOS alternative would run into it.
      en("Choose Tools - Options to change it.", "par_id2"),
      en("Sort Ascending icon", "par_id3"),
      en("Select the cells & choose Data - Sort.", "par_id1#2"),
      de("Daten sortieren", "hd_id1"),
      de("Wählen Sie die Zellen & dann Daten - Sortieren.", "par_id1"),
      de("Wählen Sie Extras - Optionen zum Ändern.", "par_id2"),
      de("Wählen Sie die Zellen & dann Daten - Sortieren.", "par_id1#2"),
      de("Nur auf Deutsch vorhanden.", "par_id7"),
      TextUnit("libreoffice_help", intro, "en", "Welcome to the help.", "par_id9", "shared"),
  ]
  # Per language: the image-only, one-word and code paragraphs; German: the copied English paragraph.
  assert dropped == {"empty": 2, "too_few_words": 2, "code": 2, "untranslated": 1, "no_english_help": 1}
  assert libreoffice_help.aligned_pairs(units, "de") == [
      (sort, "hd_id1", "scalc", "Sorting data", "Daten sortieren"),
      (sort, "par_id1", "scalc", "Select the cells & choose Data - Sort.",
       "Wählen Sie die Zellen & dann Daten - Sortieren."),
      (sort, "par_id2", "scalc", "Choose Tools - Options to change it.",
       "Wählen Sie Extras - Optionen zum Ändern."),
      (sort, "par_id1#2", "scalc", "Select the cells & choose Data - Sort.",
       "Wählen Sie die Zellen & dann Daten - Sortieren.")]


def test_help_without_english_skips_foreign_pages_and_says_so(tmp_path):
  roots = _help_tree(tmp_path)
  with pytest.warns(UserWarning, match="no English help"):
    units, dropped = libreoffice_help.read_help(roots[1:], ["de"])
  assert units == [] and dropped == {"no_english_help": 2}
  assert libreoffice_help.packages(["zh", "de"]) == ["libreoffice-help-en-us", "libreoffice-help-de",
                                                     "libreoffice-help-zh-cn"]


# --- fortunes -----------------------------------------------------------------------------------------------

GERMAN_FORTUNES = """Wer anderen eine Grube gräbt,
fällt selbst hinein.
%
Erster Absatz hier.

Zweiter\tAbsatz   dort.
%
Ja
%
  /\\_/\\
 ( o.o )
  > ^ <
%
Wer anderen eine Grube gräbt,
fällt selbst hinein.
%
"""
CHINESE_FORTUNES = """\x1b[33m要有礼貌\x1b[m

在 Debian 这种规模的项目中，很难避免遇到与你意见不和，或者难以合作
的人。
%
Only English here, no hanzi.
%
"""


def test_fortune_entries_are_whole_texts_and_drops_are_counted(tmp_path):
  top = tmp_path / "fortunes-de" / fortunes.FORTUNE_ROOT
  _write(top / "de/sprueche", GERMAN_FORTUNES)
  _write(top / "de/sprueche.dat", b"\x00\x00\x00\x02\x00\x00\x00\x05")  # strfile index: not text
  _write(top / "de/sprueche.u8", "")                                      # empty marker
  os.symlink("sprueche", top / "de/link")                                 # the same file again
  _write(top / "de/off/boese", "Ein böser Witz steht hier.\n%\n")          # offensive: fortune -o only
  _write(top / "fr/citations", "Une citation en français.\n%\n")           # a language not asked for
  zh_top = tmp_path / "fortunes-zh" / fortunes.FORTUNE_ROOT
  _write(zh_top / "chinese", CHINESE_FORTUNES)
  _write(zh_top / "english-file", "No language folder.\n%\n")
  units, dropped = fortunes.read_fortunes([tmp_path / "fortunes-de", tmp_path / "fortunes-zh"], ["de", "zh"],
                                          map_fn=_pickling_map)
  assert units == [
      TextUnit("fortunes", "chinese", "zh",
               "要有礼貌 在 Debian 这种规模的项目中，很难避免遇到与你意见不和，或者难以合作的人。", "0"),
      TextUnit("fortunes", "de/sprueche", "de", "Wer anderen eine Grube gräbt, fällt selbst hinein.", "0"),
      TextUnit("fortunes", "de/sprueche", "de", "Erster Absatz hier. Zweiter Absatz dort.", "1"),
  ]
  assert dropped == {"wrong_script": 1, "too_few_words": 1, "not_prose": 1, "duplicate": 1,
                     "files_offensive": 1, "files_unknown_language": 1}
  assert fortunes.packages(["en", "zh", "de", "ja"]) == ["fortunes-de", "fortunes-zh"]


# --- man pages ----------------------------------------------------------------------------------------------

DEMO_PAGE = r""".\" Copyright line: a comment
.de XX
Dieser Text steht in einem Makro.
..
.TH DEMO 1 "2024" "demo 1.0" "Benutzerbefehle"
.SH BEZEICHNUNG
demo \- zeigt Beispiele an
.SH BESCHREIBUNG
.PP
\fBdemo\fP liest die \fIDatei\fP und gibt sie aus.
Die Ausgabe erfolgt \(em wie gewohnt \(em auf der
Standardausgabe.  \" ein Kommentar
.PP
Siehe \*(lqHandbuch\*(rq f\[u00FC]r mehr.
.TP
\fB\-v\fR, \fB\-\-verbose\fR
Ausführliche Meldungen ausgeben.
.if n \{\
.sp
Nur im Terminal.
.\}
.nf
demo \-v datei.txt > ausgabe.txt
.fi
.B Wichtig:
.BR ls (1)
ist verwandt.
.IP \(bu 2
Ein Punkt der Liste.
"""
OTHER_PAGE = """.TH OTHER 1
.SH BESCHREIBUNG
Ausführliche Meldungen ausgeben.
Noch ein Satz steht hier.
"""
CHINESE_PAGE = r""".TH DEMO 1
.SH 名称
demo \- 显示例子
.SH 描述
这是第一句。这是
第二句。
.PP
This paragraph was never translated.
"""


def _gz(text: str) -> bytes:
  return gzip.compress(text.encode("utf-8"))


def test_roff_escapes_and_arguments():
  dropped = collections.Counter()
  assert roff.unescape(r"\fB\-a\fR \(em \[u00E4] \*(lqx\*(rq \e \&\s-1small\s0 \N'65'\(zz", dropped) == (
      "-a — ä “x” \\ small A")
  assert dropped == {"roff_unknown_escape": 1}  # \(zz is no glyph
  assert roff.split_arguments(r'"a ""quoted"" arg" plain\ word  (1)') == [
      'a "quoted" arg', r"plain\ word", "(1)"]


def test_man_pages_become_prose_sentences_and_drops_are_counted(tmp_path):
  man = tmp_path / "manpages" / manpages.MAN_ROOT
  _write(man / "de/man1/demo.1.gz", _gz(DEMO_PAGE))
  _write(man / "de/man1/alias.1.gz", _gz(".so man1/demo.1\n"))
  os.symlink("demo.1.gz", man / "de/man1/demo2.1.gz")
  _write(man / "de.UTF-8/man1/other.1.gz", _gz(OTHER_PAGE))
  _write(man / "zh_CN/man1/demo.1.gz", _gz(CHINESE_PAGE))
  _write(man / "zh_TW/man1/demo.1.gz", _gz(CHINESE_PAGE))  # Traditional Chinese: not our zh
  units, dropped = manpages.read_manpages([tmp_path / "manpages"], ["de", "zh"], map_fn=_pickling_map)
  demo = lambda text, key: TextUnit("manpages", "demo.1", "de", text, key, "man1")  # noqa: E731
  assert units == [
      demo("demo - zeigt Beispiele an", "0"),
      demo("demo liest die Datei und gibt sie aus.", "1"),
      demo("Die Ausgabe erfolgt — wie gewohnt — auf der Standardausgabe.", "2"),
      demo("Siehe “Handbuch” für mehr.", "3"),
      demo("Ausführliche Meldungen ausgeben.", "4"),
      demo("Wichtig: ls(1) ist verwandt.", "5"),
      demo("Ein Punkt der Liste.", "6"),
      TextUnit("manpages", "other.1", "de", "Noch ein Satz steht hier.", "1", "man1"),
      TextUnit("manpages", "demo.1", "zh", "demo - 显示例子", "0", "man1"),
      TextUnit("manpages", "demo.1", "zh", "这是第一句。", "1", "man1"),
      TextUnit("manpages", "demo.1", "zh", "这是第二句。", "2", "man1"),
  ]
  assert dropped == {
      "roff_comment": 1, "roff_definition": 3 + 4,  # the .de block; the .if line and its \{ \} block
      "roff_no_fill": 3, "roff_heading": 2 + 1 + 2, "roff_macro_arguments": 3,  # .TH of each page
      "roff_include": 1, "pages_alias": 2,  # the .so page and the symlink
      "code_like": 1,  # "-v, --verbose"
      "not_prose": 1,  # the bullet
      "wrong_script": 1,  # English left in the Chinese page
      "duplicate": 1}  # "Ausführliche Meldungen ausgeben." again in other.1


def test_bad_gzip_names_the_page(tmp_path):
  page = _write(tmp_path / "m" / manpages.MAN_ROOT / "de/man1/broken.1.gz", b"not gzip at all")
  with pytest.raises(ValueError, match="broken.1.gz"):
    manpages.read_manpages([tmp_path / "m"], ["de"])
  assert page.exists()


# --- the real packages (downloads ~8 MB) --------------------------------------------------------------------

@pytest.mark.slow
def test_real_german_packages(tmp_path):
  names = (libreoffice_help.packages(["de"]) + fortunes.packages(["de"]) + manpages.packages(["de"]))
  fetched = debian.fetch_packages(names, cache_dir=tmp_path / "debs")
  assert [p.status for p in fetched] == ["ok"] * len(names), [p.reason for p in fetched]
  roots = [debian.extract_package(p.path, tmp_path / "x" / p.name) for p in fetched]

  units, dropped = libreoffice_help.read_help(roots, ["de"])
  pairs = libreoffice_help.aligned_pairs(units, "de")
  assert 30_000 < len(pairs) < 60_000 and dropped["untranslated"] > 1000
  assert {label for _, _, label, _, _ in pairs} >= set(libreoffice_help.MODULES)
  assert all(en != xx for *_, en, xx in pairs)

  units, dropped = fortunes.read_fortunes(roots, ["de"])
  assert 10_000 < len(units) < 30_000 and len({u.unit for u in units}) > 30
  assert sum(base.word_count(u.text) for u in units) > 300_000

  units, dropped = manpages.read_manpages(roots, ["de"])
  assert 30_000 < len(units) < 100_000 and len({u.unit for u in units}) > 500
  assert {u.label for u in units} >= {"man1", "man5", "man8"}
  assert dropped["duplicate"] > 0 and dropped["code_like"] > 0
