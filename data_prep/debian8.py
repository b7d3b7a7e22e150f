"""The `debian8` recipe's sources: gettext + LibreOffice help + fortunes + man pages + FreeDict.

One apt-get call fetches every package of every source (apt downloads them concurrently); each package is
unpacked into its own folder and handed to the reader of its source. A source whose packages are all
missing simply yields nothing (fetch_packages already warned per package); whether the remaining text is
enough is decided later, on the split text, where the error can name what was missing.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import pathlib
import sys
import tempfile
import time

import tqdm

from data_prep import (debian, dictionaries, eval_writer, gettext_corpus, splits as splits_lib, stats,
                      unit_splits)
from data_prep.sources import base, fortunes, libreoffice_help, manpages
# The recipe names are defined once, in the corpus format (so training can tell a buildable corpus without
# importing this package); the name stays importable here for code that still reads debian8.RECIPES.
from xlm_jax.data.corpus import RECIPES  # noqa: F401
# build_corpus()'s default, which `xlm-jax train` uses to build the quickstart corpus on the fly.
# `xlm-jax data build` asks for the full "debian8" explicitly (data_prep/cli.py).
DEFAULT_RECIPE = "gettext8"
FULL_RECIPE = "debian8"
SOURCES = ("gettext", "libreoffice_help", "fortunes", "manpages", "freedict")


def packages_by_source(languages, gettext_packages) -> dict[str, list[str]]:
  """{source: Debian packages} for `languages`; FreeDict lists both directions of every foreign language
  (apt has no Chinese FreeDict: the name is kept so the manifest records it as missing)."""
  foreign = [lang for lang in languages if lang != "en"]
  return {
      "gettext": list(gettext_packages),
      "libreoffice_help": libreoffice_help.packages(languages),
      "fortunes": fortunes.packages(languages),
      "manpages": manpages.packages(languages),
      "freedict": [p for lang in foreign if lang != "zh" for p in dictionaries.freedict_packages(lang)],
  }


@dataclasses.dataclass
class Collected:
  """Everything read from the packages, before any split.

  messages: gettext pairs; help/fortune/man: TextUnits; dictionaries: {lang: LanguageDictionary};
  package_sources: {package name: source}; dropped: {"<source>_<reason>": count}.
  """
  messages: list[gettext_corpus.Message]
  help: list[base.TextUnit]
  fortune: list[base.TextUnit]
  man: list[base.TextUnit]
  dictionaries: dict
  package_sources: dict[str, str]
  dropped: collections.Counter


def _prefixed(counter, prefix: str) -> collections.Counter:
  return collections.Counter({f"{prefix}_{reason}": n for reason, n in counter.items()})


def _extract(fetched, root: pathlib.Path, progress: bool) -> dict[str, pathlib.Path]:
  """{package name: unpacked tree} of the fetched packages (dpkg-deb runs as subprocesses, so threads)."""
  ok = [p for p in fetched if p.status == "ok"]
  with concurrent.futures.ThreadPoolExecutor(max_workers=debian.DOWNLOAD_WORKERS) as pool:
    jobs = {p.name: pool.submit(debian.extract_package, p.path, root / p.name) for p in ok}
    done = concurrent.futures.as_completed(jobs.values())
    for _ in tqdm.tqdm(done, total=len(jobs), desc="unpack .debs", unit="pkg", disable=not progress):
      pass
  return {name: job.result() for name, job in jobs.items()}


def fetch_all(languages, gettext_packages, cache_dir, progress: bool):
  """(fetched DebPackage list in source order, {package: source}) for every source of the recipe."""
  by_source = packages_by_source(languages, gettext_packages)
  package_sources = {p: source for source, names in by_source.items() for p in names}
  fetched = debian.fetch_packages(list(package_sources), cache_dir or debian.DEFAULT_CACHE_DIR,
                                  progress=progress)
  return fetched, package_sources


def _zh_dictionary(gettext_roots, min_zipf: float):
  """Chinese has no FreeDict in Debian: single-word gettext UI terms stand in (dictionaries module)."""
  messages, skipped = dictionaries.read_gettext_messages(gettext_roots, "zh"), collections.Counter()
  result = dictionaries.build_dictionary("zh", dictionaries.gettext_term_pairs(messages, skipped),
                                         {"gettext_messages": len(messages)}, min_zipf=min_zipf)
  result.dropped.update({f"gettext_{reason}": n for reason, n in skipped.items()})
  return result


def _progress_map(map_fn, desc: str, progress: bool):
  """map_fn with a progress bar over its jobs (the readers pass lists of per-file jobs)."""
  def mapped(fn, jobs):
    jobs = list(jobs)
    return tqdm.tqdm(map_fn(fn, jobs), total=len(jobs), desc=desc, unit="file", disable=not progress)
  return mapped


def read_all(fetched, package_sources, languages, unpack_dir: pathlib.Path, map_fn, progress: bool,
             timings: dict, min_zipf: float = dictionaries.DEFAULT_MIN_ZIPF) -> Collected:
  """Unpacks the fetched packages under unpack_dir and reads every source; `map_fn` may be a pool's map."""
  start = time.perf_counter()
  roots = _extract(fetched, unpack_dir, progress)
  of_source = lambda source: [roots[p] for p, s in package_sources.items() if s == source and p in roots]
  foreign = [lang for lang in languages if lang != "en"]
  dropped = collections.Counter()
  timings["unpack"] = time.perf_counter() - start

  def timed(name, fn, roots, langs, pool_map):
    t0 = time.perf_counter()
    result = fn(roots, langs, _progress_map(pool_map, f"read {name}", progress))
    timings[name] = time.perf_counter() - t0
    if progress:
      print(f"[data build] {name}: {timings[name]:.0f} s", file=sys.stderr, flush=True)
    return result

  # An English-only corpus still needs catalogues to read English from (as in the gettext8 recipe).
  messages, got = timed("gettext", gettext_corpus.extract_messages, of_source("gettext"),
                        foreign or ["de"], map_fn)
  dropped.update(_prefixed(got, "gettext"))
  help_units, got = timed("libreoffice_help", libreoffice_help.read_help, of_source("libreoffice_help"),
                          languages, map_fn)
  dropped.update(_prefixed(got, "help"))
  fortune_units, got = timed("fortunes", fortunes.read_fortunes, of_source("fortunes"), languages, map_fn)
  dropped.update(_prefixed(got, "fortunes"))
  man_units, got = timed("manpages", manpages.read_manpages, of_source("manpages"), languages, map_fn)
  dropped.update(_prefixed(got, "manpages"))

  t0 = time.perf_counter()

  def dictionary(lang):
    if lang == "zh":
      return _zh_dictionary(of_source("gettext"), min_zipf)
    return dictionaries.freedict_dictionary(lang, roots, map_fn, min_zipf=min_zipf)
  # One thread per language: while one language's candidates are filtered here (wordfreq, GIL-bound), the
  # pool's processes parse the next languages' databases (German alone is 40 MB of .debs).
  dicts = {}
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(foreign))) as threads:
    built = threads.map(dictionary, foreign)
    for lang, result in zip(foreign, tqdm.tqdm(built, total=len(foreign), desc="dictionaries", unit="lang",
                                               disable=not progress)):
      dicts[lang] = result
      dropped.update(_prefixed(result.dropped, f"dict_{lang}"))
  timings["freedict"] = time.perf_counter() - t0
  return Collected(messages, help_units, fortune_units, man_units, dicts, package_sources, dropped)


def source_manifest(fetched, package_sources) -> dict:
  """{source: {"packages": [names], "missing": [names]}}: which packages fed which source."""
  result = {source: {"packages": [], "missing": []} for source in SOURCES}
  for p in fetched:
    entry = result[package_sources[p.name]]
    entry["packages" if p.status == "ok" else "missing"].append(p.name)
  return result


def collect_and_split(gettext_packages, languages, cache_dir, map_fn, progress: bool, timings: dict):
  """Fetches, unpacks, reads and splits every source: (fetched, Splits, dropped, recipe_data).

  recipe_data holds what write_extras needs after the tokenizer exists (evaluation sets, dictionaries).
  """
  start = time.perf_counter()
  fetched, package_sources = fetch_all(languages, gettext_packages, cache_dir, progress)
  timings["download"] = time.perf_counter() - start
  with tempfile.TemporaryDirectory(prefix="xlm_jax_unpacked-") as unpacked:
    collected = read_all(fetched, package_sources, languages, pathlib.Path(unpacked), map_fn, progress,
                         timings)
  t0 = time.perf_counter()
  heldout = splits_lib.choose_heldout_programs({m.program for m in collected.messages})
  try:
    splits, evals, dict_train = unit_splits.split_all(collected, languages, heldout)
  except ValueError as err:
    missing = [p.name for p in fetched if p.status != "ok"]
    raise ValueError(f"{err}. Missing packages: {missing or 'none'}") from None
  timings["split"] = time.perf_counter() - t0
  dropped = collected.dropped + splits.dropped
  return fetched, splits, dropped, {"evals": evals, "dict_train": dict_train, "collected": collected,
                                     "sources": source_manifest(fetched, package_sources)}


def write_extras(recipe_data, corpus_dir, tokenizer) -> dict:
  """Writes the evaluation sets and dictionaries; returns the manifest fields that describe them."""
  collected = recipe_data["collected"]
  eval_sizes = eval_writer.write_eval_sets(recipe_data["evals"], corpus_dir)
  dict_sizes = eval_writer.write_dictionaries(recipe_data["dict_train"], collected.dictionaries, tokenizer,
                                              corpus_dir)
  units = {"libreoffice_help": collected.help, "fortunes": collected.fortune, "manpages": collected.man}
  sources = recipe_data["sources"]
  for name, items in units.items():
    files = {(u.source, u.unit) for u in items}
    sources[name]["units"] = len(files)
    sources[name]["test_units"] = sum(unit_splits.is_test_unit(source, unit) for source, unit in files)
    sources[name]["texts"] = dict(sorted(collections.Counter(u.lang for u in items).items()))
  sources["gettext"]["messages"] = len(collected.messages)
  # Recorded once here so that `stats` need not re-tokenize the whole corpus.
  mono_train = pathlib.Path(corpus_dir) / "text" / "mono" / "train"
  tokens = {path.stem: stats.count_tokens(tokenizer, path) for path in sorted(mono_train.glob("*.txt"))}
  return {"recipe": "debian8", "sources": sources, "eval": eval_sizes, "dictionaries": dict_sizes,
          "tokens": tokens}
