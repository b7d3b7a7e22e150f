"""Build a corpus directory: Debian packages -> gettext text -> splits -> SentencePiece -> TFDS -> manifest.

The build is atomic. Everything is written into `<corpus_dir>.partial-<pid>`, manifest.json last, and the
folder is renamed into place at the end; a crash leaves only a `.partial-*` folder that no reader mistakes
for a corpus (and that the next build removes once its process is gone).
"""
from __future__ import annotations

import concurrent.futures
import datetime
import functools
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
import tempfile
import time

import tqdm

from data_prep import debian, debian8, gettext_corpus, splits as splits_lib, tfds_writer
from data_prep.stats import stats_table  # noqa: F401  (moved to stats.py; build.stats_table still works)
from xlm_jax.atomic_files import DiskFullError, disk_full_error, no_room
from xlm_jax.data import tokenizer_training
from xlm_jax.data.corpus import FORMAT_VERSION, RECIPES, Corpus, build_command, read_manifest
from xlm_jax.data.tokenizer import Tokenizer

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "ru", "ja", "zh")
# The 28 Debian packages with gettext catalogues (data.md): ~46 MB of .debs, all 8 default languages.
GETTEXT_PACKAGES = (
    "coreutils", "util-linux-locales", "gcc-12-locales", "libc-l10n", "binutils-common", "e2fsprogs-l10n",
    "gnupg-l10n", "tar", "bash", "apt", "dpkg", "git", "libgtk-3-common", "libglib2.0-data", "gettext",
    "findutils", "grep", "sed", "diffutils", "wget", "login", "systemd", "procps", "man-db", "xz-utils",
    "vim-runtime", "debconf-i18n", "make")
# Below this many training sentences a language is treated as empty: too little to learn or evaluate on.
DEFAULT_MIN_SENTENCES = 1000
REGISTER_NOTE = "software/IT user-interface strings (gettext catalogues of Debian programs)"
DEBIAN8_REGISTER_NOTE = ("software/IT: gettext UI strings, LibreOffice help, man pages; plus fortune cookies "
                         "(quotes, jokes, poems) and FreeDict word pairs")


def _say(progress: bool, message: str) -> None:
  if progress:
    print(f"[data build] {message}", file=sys.stderr, flush=True)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_stale_partials(corpus_dir: pathlib.Path) -> None:
  """Deletes `.partial-<pid>` folders left by builds whose process no longer exists."""
  for partial in corpus_dir.parent.glob(f"{corpus_dir.name}.partial-*"):
    pid = partial.name.rsplit("-", 1)[1]
    if pid.isdigit() and not _pid_alive(int(pid)):
      shutil.rmtree(partial, ignore_errors=True)


def _existing_corpus(corpus_dir: pathlib.Path, languages,
                     recipe: str = debian8.DEFAULT_RECIPE) -> Corpus | None:
  """The finished corpus at corpus_dir if it covers `languages`; None if there is none; else ValueError."""
  if not (corpus_dir / "manifest.json").is_file():
    if corpus_dir.exists() and any(corpus_dir.iterdir()):
      raise ValueError(f"{corpus_dir} exists but has no manifest.json, so it is not a finished corpus; "
                       "pass force=True (--force) to replace it, or choose another --corpus-dir")
    return None
  manifest = read_manifest(corpus_dir)
  built = manifest.get("recipe", "gettext8")  # corpora from before recipes existed are gettext8
  if built != recipe:
    raise ValueError(f"corpus {corpus_dir} was built with recipe {built!r}, not {recipe!r}; pass force=True "
                     "(--force) to rebuild it, or choose another --corpus-dir")
  lacking = [lang for lang in languages if lang not in manifest["languages"]]
  if lacking:
    raise ValueError(f"corpus {corpus_dir} was built for {manifest['languages']} and lacks {lacking}; "
                     "pass force=True (--force) to rebuild it, or choose another --corpus-dir")
  return Corpus(corpus_dir)


def _extract_all(packages, root: pathlib.Path, progress: bool) -> list[pathlib.Path]:
  """Unpacks each fetched package into its own folder under root (in parallel: dpkg-deb is a subprocess)."""
  ok = [p for p in packages if p.status == "ok"]
  with concurrent.futures.ThreadPoolExecutor(max_workers=debian.DOWNLOAD_WORKERS) as pool:
    jobs = [pool.submit(debian.extract_package, p.path, root / p.name) for p in ok]
    done = concurrent.futures.as_completed(jobs)
    for _ in tqdm.tqdm(done, total=len(jobs), desc="unpack .debs", unit="pkg", disable=not progress):
      pass
    return [job.result() for job in jobs]


def check_enough_text(counts: dict, languages, packages, min_sentences: int) -> None:
  """ValueError ("empty language") naming each language with fewer than min_sentences training sentences
  in `counts` (the manifest's), and the packages that could not be fetched."""
  short = {lang: counts[lang]["mono_train"] for lang in languages
           if counts[lang]["mono_train"] < min_sentences}
  if not short:
    return
  missing = [p.name for p in packages if p.status != "ok"]
  hint = f" ({debian.APT_UPDATE_HINT})" if missing and len(missing) == len(packages) else ""
  listing = ", ".join(f"{lang} ({n} sentences)" for lang, n in short.items())
  raise ValueError(f"empty language: too little training text for {listing}; at least {min_sentences} "
                   f"needed. Missing packages: {missing or 'none'}{hint}. Add packages with catalogues in "
                   "these languages (--packages), drop the languages, or lower --min-sentences.")


def _write_lines(path: pathlib.Path, lines) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for line in lines:
      f.write(line + "\n")


def _write_text(splits: splits_lib.Splits, out: pathlib.Path) -> None:
  for lang, by_split in splits.mono.items():
    for split, texts in by_split.items():
      _write_lines(out / "text" / "mono" / split / f"{lang}.txt", texts)
  for lang, by_split in splits.parallel.items():
    for split, pairs in by_split.items():
      _write_lines(out / "text" / "parallel" / split / f"en-{lang}.tsv", (f"{en}\t{xx}" for en, xx in pairs))


def _write_tfds_job(job) -> None:
  kind, tfds_dir, lang, by_split = job
  write = tfds_writer.write_mono if kind == "mono" else tfds_writer.write_parallel
  write(tfds_dir, lang, by_split)


def _write_tfds(splits: splits_lib.Splits, out: pathlib.Path, pool, progress: bool) -> None:
  """Writes one TFDS dataset per language and kind; the datasets are independent, so in parallel."""
  jobs = [("mono", out / "tfds", lang, s) for lang, s in splits.mono.items()] + [
      ("parallel", out / "tfds", lang, s) for lang, s in splits.parallel.items()]
  with tqdm.tqdm(total=len(jobs), desc="write TFDS", unit="dataset", disable=not progress) as bar:
    if pool is None:
      for job in jobs:
        _write_tfds_job(job)
        bar.update()
    else:
      for future in concurrent.futures.as_completed([pool.submit(_write_tfds_job, job) for job in jobs]):
        future.result()  # re-raises a worker's error
        bar.update()


def _gettext_splits(packages, languages, cache_dir, pool, progress: bool, timings: dict):
  """Fetches and unpacks the packages, reads their catalogues and splits them: (fetched, splits, dropped)."""
  start = time.perf_counter()
  fetched = debian.fetch_packages(packages, cache_dir or debian.DEFAULT_CACHE_DIR, progress=progress)
  timings["download"] = time.perf_counter() - start
  # English text is the msgid side; an English-only corpus still needs some catalogues to read it from.
  foreign = [lang for lang in languages if lang != "en"] or list(DEFAULT_LANGUAGES[1:])
  with tempfile.TemporaryDirectory(prefix="xlm_jax_unpacked-") as unpacked:
    roots = _extract_all(fetched, pathlib.Path(unpacked), progress)
    _say(progress, f"reading gettext catalogues for {foreign}")
    messages, dropped = gettext_corpus.extract_messages(
        roots, foreign, map_fn=map if pool is None else functools.partial(pool.map, chunksize=4))
  heldout = splits_lib.choose_heldout_programs({m.program for m in messages})
  splits = splits_lib.split_messages(messages, languages, heldout)
  dropped.update(splits.dropped)
  timings["extract"] = time.perf_counter() - start - timings["download"]
  return fetched, splits, dropped


def collect_recipe(recipe: str, packages, languages, cache_dir, pool, progress: bool, timings: dict):
  """Fetches, reads and splits a recipe's packages: (fetched, Splits, dropped, recipe_data or None).

  recipe_data (debian8 only) is what debian8.write_extras needs once the tokenizer exists; `pool` is a
  process pool for the catalogue parsing, or None.
  """
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}")
  if recipe == "debian8":
    map_fn = map if pool is None else functools.partial(pool.map, chunksize=4)
    return debian8.collect_and_split(packages, languages, cache_dir, map_fn, progress, timings)
  return (*_gettext_splits(packages, languages, cache_dir, pool, progress, timings), None)


def worker_pool(workers: int | None):
  """A "spawn" process pool of `workers` (default: one per CPU), or None for one worker.

  "spawn", not fork: the caller may be a training process with JAX initialised, which must not be forked.
  """
  workers = workers or os.cpu_count() or 1
  return None if workers <= 1 else concurrent.futures.ProcessPoolExecutor(
      max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def build_corpus(corpus_dir, languages=DEFAULT_LANGUAGES, packages=None, vocab_size: int = 8000,
                 seed: int = 0, min_sentences_per_language: int = DEFAULT_MIN_SENTENCES, force: bool = False,
                 progress: bool = True, cache_dir=None, model_type: str = "unigram",
                 alpha: float = tokenizer_training.DEFAULT_ALPHA,
                 max_tokenizer_sentences: int = tokenizer_training.DEFAULT_MAX_SENTENCES,
                 workers: int | None = None, recipe: str = debian8.DEFAULT_RECIPE) -> Corpus:
  """Builds (or returns the existing) corpus at corpus_dir and returns it as a Corpus.

  An existing finished corpus whose manifest covers `languages` is returned as it is unless `force`.
  `packages` defaults to GETTEXT_PACKAGES; .debs are cached in `cache_dir` (default ~/.cache/xlm_jax/debs).
  Raises ValueError ("empty language") when a language ends with fewer than `min_sentences_per_language`
  training sentences, naming the languages and the packages that could not be fetched.

  recipe "gettext8" reads gettext catalogues only; "debian8" adds LibreOffice help, fortunes, man pages and
  FreeDict (data_prep.debian8), splits each by its unit and writes evaluation sets under eval/ and
  dictionaries under dictionaries/ (`packages` then names the gettext packages only).

  Catalogue parsing and TFDS writing run in `workers` (default: one per CPU) "spawn" processes, which
  re-import the caller's main module: a script calling this needs the usual `if __name__ == "__main__":`
  guard, or workers=1 (no worker processes).
  """
  corpus_dir = pathlib.Path(corpus_dir).expanduser().absolute()
  languages = list(dict.fromkeys(languages))
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}")
  if not languages:
    raise ValueError("languages is empty; pass at least one language code, e.g. en de")
  packages = list(packages) if packages else list(GETTEXT_PACKAGES)
  if not force:
    existing = _existing_corpus(corpus_dir, languages, recipe)
    if existing is not None:
      _say(progress, f"corpus {corpus_dir} already built for {existing.languages}; reusing it "
           "(--force rebuilds)")
      return existing
  corpus_dir.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_partials(corpus_dir)
  work = corpus_dir.parent / f"{corpus_dir.name}.partial-{os.getpid()}"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir()
  timings, start = {}, time.perf_counter()
  pool = worker_pool(workers)  # for the CPU-bound stages: catalogue parsing, TFDS writing
  try:
    fetched, splits, dropped, recipe_data = collect_recipe(recipe, packages, languages, cache_dir, pool,
                                                           progress, timings)
    check_enough_text(splits.counts(), languages, fetched, min_sentences_per_language)
    _write_text(splits, work)

    _say(progress, f"training SentencePiece ({model_type}, vocab {vocab_size}, alpha {alpha})")
    sample = tokenizer_training.alpha_sample({lang: splits.mono[lang]["train"] for lang in languages},
                                             alpha, max_tokenizer_sentences, seed)
    model = tokenizer_training.train_sentencepiece(sample, vocab_size, model_type, seed)
    tokenizer_sha256 = tokenizer_training.write_tokenizer(model, work / "spm")
    timings["tokenizer"] = time.perf_counter() - start - sum(timings.values())
    _write_tfds(splits, work, pool, progress)
    timings["tfds"] = time.perf_counter() - start - sum(timings.values())
    extra = {}
    if recipe_data is not None:
      extra = debian8.write_extras(recipe_data, work, Tokenizer(work / "spm" / "spm.model"))
      timings["eval_sets"] = time.perf_counter() - start - sum(timings.values())

    manifest = {
        "name": corpus_dir.name, "languages": languages,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe, "source": "gettext" if recipe == "gettext8" else "debian8",
        "register": REGISTER_NOTE if recipe == "gettext8" else DEBIAN8_REGISTER_NOTE,
        "packages": [p.manifest_entry() for p in fetched],
        "heldout_programs": splits.heldout_programs, "counts": splits.counts(),
        "dropped": dict(sorted(dropped.items())),
        "tokenizer": {"vocab_size": vocab_size, "model_type": model_type, "alpha": alpha, "seed": seed,
                      "sentences": len(sample), "sha256": tokenizer_sha256},
        "min_sentences_per_language": min_sentences_per_language,
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
        "format_version": FORMAT_VERSION, **extra,
    }
    # Written last: a folder with a manifest is a finished corpus.
    (work / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
    _move_into_place(work, corpus_dir)
  except Exception as err:
    raise_if_no_room(err, corpus_dir, work)
    raise
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
    shutil.rmtree(work, ignore_errors=True)
  _say(progress, f"corpus ready at {corpus_dir} in {time.perf_counter() - start:.0f} s")
  return Corpus(corpus_dir)


def raise_if_no_room(err: Exception, corpus_dir: pathlib.Path, work: pathlib.Path) -> None:
  """A build that failed for want of room (a full disk, a file-size limit; the TFDS writer and tar report
  it in their own words) raises DiskFullError naming the corpus and saying that its old version is kept."""
  if not no_room(err):
    return
  kept = (f"{corpus_dir} is unchanged (the corpus built before is kept)" if (corpus_dir / "manifest.json").is_file()
          else f"Nothing was written to {corpus_dir}")
  if isinstance(err, DiskFullError):  # it names the place already (the .debs' unpacking folder)
    raise DiskFullError(f"{err}. {kept}") from err
  raise disk_full_error(f"the corpus {corpus_dir} (built in {work}, now deleted)", err,
                        f"{kept}; free some space and run the build again") from err


def _move_into_place(work: pathlib.Path, corpus_dir: pathlib.Path) -> None:
  """Renames the finished build to corpus_dir, replacing an old corpus only after the new one is complete."""
  old = None
  if corpus_dir.exists():
    old = corpus_dir.parent / f"{corpus_dir.name}.old-{os.getpid()}"
    os.replace(corpus_dir, old)
  os.replace(work, corpus_dir)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def ensure_corpus(corpus_dir, languages=DEFAULT_LANGUAGES, build_if_missing: bool = True,
                  build_languages=None, **build_kwargs) -> Corpus:
  """The corpus at corpus_dir checked for `languages`; built first if absent and build_if_missing,
  for `build_languages` (default: `languages`; it must include them).

  Raises FileNotFoundError (naming the folder and the build command) when it is absent and
  build_if_missing is False, and ValueError for a language the corpus lacks or has no training text for.
  """
  corpus_dir = pathlib.Path(corpus_dir).expanduser()
  build_languages = languages if build_languages is None else build_languages
  missing = [lang for lang in languages if lang not in build_languages]
  if missing:
    raise ValueError(f"build_languages {list(build_languages)} lacks {missing}, which the corpus "
                     "must have")
  if not (corpus_dir / "manifest.json").is_file():
    if not build_if_missing:
      raise FileNotFoundError(f"no corpus at {corpus_dir} (manifest.json missing); build it with "
                              f"`{build_command(corpus_dir)} --languages {' '.join(build_languages)}`")
    build_corpus(corpus_dir, build_languages, **build_kwargs)
  return Corpus(corpus_dir, languages)


def build_main(argv) -> int:
  """`xlm-jax data build|stats ...`: argv starts with the sub-command; errors propagate to the caller."""
  from data_prep import cli  # cli imports this module
  cli.run(list(argv), prog="xlm-jax data")
  return 0
