"""Finding users' text inputs on disk and checking them before any text is read.

Everything that can be checked without reading the text is checked here, so a bad path, a missing partner
file, an empty file or an unknown language fails in a second instead of after an hour of streaming:

  mono folder    <dir>/<lang>.txt[.gz|.xz]             (CC-100 layout)
                 <dir>/<lang>/**/*.txt[.gz|.xz]        (Wikipedia-dump-like: one folder per language)
  parallel dir   <dir>/<name>.<l1>-<l2>.<l1> + .<l2>   (OPUS "Moses" layout, line-aligned; .gz/.xz allowed)
                 <dir>/<name>.<l1>-<l2>.tsv            (one "l1<TAB>l2" pair per line)
  explicit       ParallelFiles from {"en": path, "de": path};  ParallelTsv(path, "en", "de")

The corpus layout stores English-centred pairs (text/parallel/<split>/en-<lang>.tsv), so every parallel
input must have English on one side; it is swapped to the front when it comes second. Files in an input
folder that are not read are listed in UserInputs.skipped, with a warning (hidden files are not looked at).
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import warnings

from data_prep.user_corpora.languages import check_language
from data_prep.user_corpora.reading import strip_compression

# Language tags may hold underscores, as OPUS writes them (pt_BR, zh_CN).
_OPUS_NAME = re.compile(r"(?P<name>.+)\.(?P<l1>[A-Za-z_]+)-(?P<l2>[A-Za-z_]+)\.(?P<ext>[A-Za-z_]+)")


@dataclasses.dataclass(frozen=True)
class MonoFiles:
  """Monolingual text of one language: files read in this order, blank lines separating documents."""
  lang: str
  paths: tuple[pathlib.Path, ...]

  def describe(self) -> str:
    return ", ".join(map(str, self.paths))


@dataclasses.dataclass(frozen=True)
class ParallelFiles:
  """Two line-aligned files: line n of `en_path` translates to line n of `xx_path` (language `lang`)."""
  lang: str
  en_path: pathlib.Path
  xx_path: pathlib.Path

  def describe(self) -> str:
    return f"{self.en_path} + {self.xx_path}"


@dataclasses.dataclass(frozen=True)
class ParallelTsv:
  """One file of "<a><TAB><b>" lines; `en_column` (0 or 1) says which column is English."""
  lang: str
  path: pathlib.Path
  en_column: int = 0

  def describe(self) -> str:
    return str(self.path)


@dataclasses.dataclass
class UserInputs:
  """Checked inputs, in the order they are read, plus what was passed over and why."""
  mono: list[MonoFiles] = dataclasses.field(default_factory=list)
  parallel: list[ParallelFiles | ParallelTsv] = dataclasses.field(default_factory=list)
  tfds: list = dataclasses.field(default_factory=list)  # tfds_text.TfdsText
  skipped: list[str] = dataclasses.field(default_factory=list)

  def languages(self) -> list[str]:
    """Every language of the inputs, English first, then sorted."""
    langs = {m.lang for m in self.mono} | {t.lang for t in self.tfds} | {p.lang for p in self.parallel}
    # Every parallel input has English on one side (_english_centred).
    if self.parallel:
      langs.add("en")
    return sorted(langs, key=lambda lang: (lang != "en", lang))


def _is_text_name(name: str) -> bool:
  return strip_compression(name).endswith(".txt")


def _lang_of_name(name: str) -> str:
  return strip_compression(name)[:-len(".txt")]


def check_nonempty(path: pathlib.Path) -> pathlib.Path:
  """FileNotFoundError for a missing file, ValueError for a 0-byte one (a failed download, usually)."""
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist or is not a file; check the path")
  if path.stat().st_size == 0:
    raise ValueError(f"{path} is empty (0 bytes); remove it from the inputs or fill it (a failed download?)")
  return path


def _ignored(inputs: UserInputs, path: pathlib.Path, why: str) -> None:
  """Lists a file that is not read (and warns), so that nothing in an input folder goes unmentioned."""
  inputs.skipped.append(f"{path} ({why})")
  warnings.warn(f"{path}: {why}; not read", stacklevel=3)


def add_mono_dir(inputs: UserInputs, folder, languages=None, extra_languages=()) -> None:
  """Adds every language of a mono folder (both layouts; see the module docstring), sorted by language.

  A .txt file or sub-folder whose name is not a language code is an error (ValueError naming it); other
  files are listed in inputs.skipped with a warning. Languages outside `languages` (if given) are skipped.
  """
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f"mono folder {folder} does not exist; pass a folder holding <lang>.txt files "
                            "or <lang>/ sub-folders of .txt files")
  found: dict[str, list[pathlib.Path]] = {}
  skipped_before = len(inputs.skipped)
  # Sorted: the same folder always gives the same read order, hence the same corpus.
  for entry in sorted(folder.iterdir()):
    if entry.name.startswith("."):
      continue  # .DS_Store, editor files: not corpus files
    if entry.is_dir():
      lang = check_language(entry.name, f"{entry}/", extra_languages)
      all_files = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
      files = [p for p in all_files if _is_text_name(p.name)]
      if not files:
        raise ValueError(f"{entry} holds no .txt, .txt.gz or .txt.xz files; add text or remove the folder "
                         "(files of other names, such as WikiExtractor's wiki_00, need renaming to .txt)")
      if len(files) < len(all_files):
        other = [p for p in all_files if not _is_text_name(p.name)]
        _ignored(inputs, entry, f"{len(other)} files not named *.txt[.gz|.xz], e.g. {other[0].name}")
    elif _is_text_name(entry.name):
      lang = check_language(_lang_of_name(entry.name), str(entry), extra_languages)
      files = [entry]
    else:
      _ignored(inputs, entry, "not <lang>.txt[.gz|.xz] or a <lang>/ folder")
      continue
    if languages is not None and lang not in languages:
      inputs.skipped.append(f"{entry} (language {lang} not requested)")
      continue
    found.setdefault(lang, []).extend(check_nonempty(p) for p in files)
  # Files passed over were listed and warned about; only a folder with no entry is an error.
  if not found and len(inputs.skipped) == skipped_before:
    raise ValueError(f"mono folder {folder} holds no <lang>.txt files or <lang>/ folders")
  inputs.mono.extend(MonoFiles(lang, tuple(paths)) for lang, paths in sorted(found.items()))


def _english_centred(l1: str, l2: str, where: str) -> tuple[str, int]:
  """(foreign language, index of the English side) of a pair, or ValueError if neither side is English."""
  if l1 == l2:
    raise ValueError(f"{where}: both sides are {l1!r}; a parallel input pairs two different languages")
  if "en" not in (l1, l2):
    raise ValueError(f"{where}: pairs {l1}-{l2}, but the corpus stores English-centred pairs "
                     "(text/parallel/<split>/en-<lang>.tsv); pivot the data through English or leave it out")
  return (l2, 0) if l1 == "en" else (l1, 1)


def parallel_files(files: dict, extra_languages=()) -> ParallelFiles:
  """A ParallelFiles from {"en": path, "de": path} (the `--parallel en:PATH de:PATH` form)."""
  if len(files) != 2:
    raise ValueError(f"a parallel input needs exactly two files, one per language; got {files}")
  (l1, p1), (l2, p2) = ((lang, pathlib.Path(p).expanduser()) for lang, p in files.items())
  for lang, path in ((l1, p1), (l2, p2)):
    check_language(lang, str(path), extra_languages)
    check_nonempty(path)
  lang, en_index = _english_centred(l1, l2, f"{p1} + {p2}")
  en_path, xx_path = (p1, p2) if en_index == 0 else (p2, p1)
  return ParallelFiles(lang, en_path, xx_path)


def parallel_tsv(path, l1: str, l2: str, extra_languages=()) -> ParallelTsv:
  """A ParallelTsv whose first column is language l1 and second l2."""
  path = check_nonempty(pathlib.Path(path).expanduser())
  check_language(l1, str(path), extra_languages)
  check_language(l2, str(path), extra_languages)
  lang, en_column = _english_centred(l1, l2, str(path))
  return ParallelTsv(lang, path, en_column)


def add_parallel_dir(inputs: UserInputs, folder, languages=None, extra_languages=()) -> None:
  """Adds every OPUS/Moses pair and <name>.<l1>-<l2>.tsv file of a folder (see the module docstring).

  A Moses file whose partner is missing is an error naming both; files of other shapes (OPUS's .xml and
  .ids, README, LICENSE) are listed in inputs.skipped. Pairs whose foreign language is not in
  `languages` (if given) are skipped.
  """
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f"parallel folder {folder} does not exist; pass a folder of OPUS-style "
                            "<name>.<l1>-<l2>.<l1>/.<l2> files or <name>.<l1>-<l2>.tsv files")
  skipped_before = len(inputs.skipped)
  # (name, l1, l2, compression suffix) -> {extension: path}: the two halves of a Moses pair meet here.
  groups: dict[tuple, dict[str, pathlib.Path]] = {}
  for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
    stem = strip_compression(path.name)
    match = _OPUS_NAME.fullmatch(stem)
    if not match or match["ext"] not in (match["l1"], match["l2"], "tsv"):
      _ignored(inputs, path, "not <name>.<l1>-<l2>.<l1|l2|tsv>")
      continue
    # The compression suffix is in the key: both halves of a Moses pair must be compressed alike.
    key = (match["name"], match["l1"], match["l2"], path.name[len(stem):])
    groups.setdefault(key, {})[match["ext"]] = path
  added = []
  for (name, l1, l2, compression), by_ext in sorted(groups.items()):
    if "tsv" in by_ext:
      added.append(parallel_tsv(by_ext.pop("tsv"), l1, l2, extra_languages))
    if len(by_ext) == 1:
      (ext, path), = by_ext.items()
      partner = folder / f"{name}.{l1}-{l2}.{l2 if ext == l1 else l1}{compression}"
      raise ValueError(f"{path} has no partner {partner}; OPUS/Moses files come in pairs "
                       f"(.{l1} and .{l2}): add it or remove {path.name}")
    if by_ext:
      added.append(parallel_files({l1: by_ext[l1], l2: by_ext[l2]}, extra_languages))
  for item in added:
    if languages is not None and item.lang not in languages:
      inputs.skipped.append(f"{item.describe()} (language {item.lang} not requested)")
    else:
      inputs.parallel.append(item)
  if not groups and len(inputs.skipped) == skipped_before:
    raise ValueError(f"parallel folder {folder} holds no <name>.<l1>-<l2>.<l1|l2|tsv> files")
