"""`xlm-jax data build` from users' own text (data_prep.user_corpora), alone or added to a Debian recipe.

The same corpus layout and atomic build as build.build_corpus (a `.partial-<pid>` folder renamed into
place, manifest.json written last), but every stage streams, so memory does not grow with the corpus:
  text       build_user_text writes the split, deduplicated text files, a block at a time (with a recipe,
             the recipe's already split text goes into the same files first, and dedup and test-string
             removal run over both sources);
  tokenizer  an alpha-weighted sample of at most max_tokenizer_sentences lines, drawn from the files;
  tfds       the TFDS datasets, written from the files (tfds_writer sorts on disk, not in memory);
  tokens     training tokens per language, counted a chunk of lines at a time, for `stats`.
benchmarks/streaming_memory.py measures each stage's peak memory on generated 0.5 and 2 GB files.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import pathlib
import shutil
import sys

from data_prep import build, debian8, stats, tfds_writer
from data_prep.stages import StageClock
from data_prep.user_corpora import alpha_sample_files, build_user_text, corpus_views
from data_prep.user_corpora.build_text import DEFECT_REASONS, RecipeText
from xlm_jax.data import tokenizer_training
from xlm_jax.data.corpus import FORMAT_VERSION, RECIPES, Corpus, read_manifest
from xlm_jax.atomic_files import check_replaceable
from xlm_jax.data.tokenizer import Tokenizer

USER_REGISTER_NOTE = "users' own text"


def _recipe_text(recipe: str, recipe_options: dict, clock: StageClock, progress: bool):
  """(RecipeText, fetched packages, recipe dropped counts, recipe_data, splits) of a Debian recipe."""
  unknown = sorted(set(recipe_options) - {"languages", "packages", "cache_dir", "workers"})
  if unknown:
    raise ValueError(f"unknown recipe options {unknown}; use languages, packages, cache_dir, workers")
  languages = list(dict.fromkeys(recipe_options.get("languages") or build.DEFAULT_LANGUAGES))
  packages = list(recipe_options.get("packages") or build.GETTEXT_PACKAGES)
  pool = build.worker_pool(recipe_options.get("workers"))
  timings = {}
  try:
    with clock.stage("recipe", f"reading recipe {recipe} for {' '.join(languages)}"):
      fetched, splits, dropped, recipe_data = build.collect_recipe(
          recipe, packages, languages, recipe_options.get("cache_dir"), pool, progress, timings)
  finally:
    if pool is not None:
      pool.shutdown(cancel_futures=True)
  clock.seconds.update({f"recipe_{name}": round(seconds, 1) for name, seconds in timings.items()})
  # The recipe removed its own evaluation strings from its text; users' training text must lose them too.
  eval_strings = recipe_data["evals"].strings() if recipe_data else ()
  text = RecipeText(mono=splits.mono, parallel=splits.parallel, eval_strings=eval_strings)
  return text, fetched, dropped, recipe_data, splits


def _write_tfds(work: pathlib.Path, report: dict, progress: bool) -> None:
  mono, parallel = corpus_views(work, report)
  for lang in report["languages"]:
    if progress:
      print(f"[data build] TFDS {lang}: {sum(map(len, mono[lang].values()))} sentences, "
            f"{sum(map(len, parallel.get(lang, {}).values()))} pairs", file=sys.stderr, flush=True)
    # TFDS cannot describe a dataset whose splits are all empty; such a language reads as empty.
    if any(len(view) for view in mono[lang].values()):
      tfds_writer.write_mono(work / "tfds", lang, mono[lang])
    if lang in parallel and any(len(view) for view in parallel[lang].values()):
      tfds_writer.write_parallel(work / "tfds", lang, parallel[lang])


def training_sentences(counts: dict, lang: str) -> int:
  """Training sentences of `lang` in a report's counts: monolingual plus its side of the pairs (English is
  a side of every language's pairs)."""
  pairs = (sum(c["parallel_train"] for c in counts.values()) if lang == "en"
           else counts[lang]["parallel_train"])
  return counts[lang]["mono_train"] + pairs


def check_users_languages(report: dict, languages, min_sentences: int) -> None:
  """ValueError ("empty language") naming each of `languages` (those only users' text brings) with fewer
  than min_sentences training sentences, with its inputs and the lines they lost."""
  short = {lang: training_sentences(report["counts"], lang) for lang in languages}
  short = {lang: n for lang, n in short.items() if n < min_sentences}
  if not short:
    return
  parts = []
  for lang, n in short.items():
    entries = [e for e in report["inputs"] if e["lang"] == lang or (lang == "en" and e["kind"] == "parallel")]
    sources = "; ".join(e["source"] for e in entries) or "no input"
    parts.append(f"{lang} ({n} training sentences, from {sources})")
  dropped = {k: v for k, v in report["dropped"].items() if k in DEFECT_REASONS}
  lost = f" Lines dropped as unreadable: {dropped}." if dropped else ""
  raise ValueError(f"empty language: too little training text in users' inputs for {', '.join(parts)}; at "
                   f"least {min_sentences} needed (--min-sentences).{lost} Add text for these languages, "
                   "leave them out (--languages), or lower --min-sentences.")


def _say_dropped(report: dict) -> None:
  """Prints the lines dropped as unreadable, by reason, with the first of each (always: lost text is never
  silent; the manifest has them under user_corpora.dropped and user_corpora.first_defects)."""
  dropped = {k: v for k, v in report["dropped"].items() if k in DEFECT_REASONS}
  if dropped:
    print(f"[data build] dropped unreadable lines: {', '.join(f'{k} {v}' for k, v in dropped.items())}",
          file=sys.stderr)
    for reason, first in report["first_defects"].items():
      print(f"[data build]   first {reason}: {first}", file=sys.stderr)


def build_user_corpus(corpus_dir, inputs, *, vocab_size: int = 8000, seed: int = 0, force: bool = False,
                      progress: bool = True, model_type: str = "unigram",
                      alpha: float = tokenizer_training.DEFAULT_ALPHA,
                      max_tokenizer_sentences: int = tokenizer_training.DEFAULT_MAX_SENTENCES,
                      recipe: str | None = None, recipe_options: dict | None = None,
                      min_sentences_per_language: int | None = None,
                      **text_options) -> Corpus:
  """Builds a corpus at corpus_dir from checked user inputs (user_corpora.collect_inputs); returns it.

  With `recipe` ("gettext8" or "debian8") the recipe's packages are read too and both sources go into one
  corpus: the recipe's languages (recipe_options["languages"], default the 8 of build.DEFAULT_LANGUAGES)
  plus any other language of the inputs. recipe_options may also give packages, cache_dir and workers, as
  for build.build_corpus; a recipe language with fewer than min_sentences_per_language training sentences
  (both sources together) fails the build. A language only in users' text fails with fewer than
  min_sentences_per_language training sentences (monolingual, plus its side of pairs) too; when it is None,
  recipe languages need build.DEFAULT_MIN_SENTENCES and users' languages 1. The manifest records the
  packages, the input files with their sha256 and every dropped line, by reason.

  An existing finished corpus is returned as it is unless `force`; an existing folder that is not a corpus
  (no manifest.json) is never replaced. A failed build leaves nothing behind. text_options go to
  build_user_text (test_fraction, max_unit_lines, strict, encoding).
  """
  corpus_dir = pathlib.Path(corpus_dir).expanduser().absolute()
  if recipe is not None and recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; choose one of {list(RECIPES)}")
  want = "user" if recipe is None else f"{recipe}+user"
  if not force and (corpus_dir / "manifest.json").is_file():
    built = read_manifest(corpus_dir).get("recipe", "gettext8")
    if built != want:
      raise ValueError(f"corpus {corpus_dir} was built with recipe {built!r}, not {want!r}; pass force=True "
                       "(--force) to rebuild it, or choose another --corpus-dir")
    if progress:
      print(f"[data build] corpus {corpus_dir} already built; reusing it (--force rebuilds)", file=sys.stderr)
    return Corpus(corpus_dir)
  # Replacing a folder that is not a corpus would delete the user's files in it (--force or not).
  check_replaceable(corpus_dir, ("manifest.json",), "xlm-jax corpus")
  recipe_minimum = build.DEFAULT_MIN_SENTENCES if min_sentences_per_language is None else min_sentences_per_language
  user_minimum = 1 if min_sentences_per_language is None else min_sentences_per_language
  corpus_dir.parent.mkdir(parents=True, exist_ok=True)
  build._remove_stale_partials(corpus_dir)
  work = corpus_dir.parent / f"{corpus_dir.name}.partial-{os.getpid()}"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir()
  clock = StageClock(progress)
  try:
    fetched, recipe_dropped, recipe_data, recipe_text, heldout = [], collections.Counter(), None, None, []
    if recipe is not None:
      recipe_text, fetched, recipe_dropped, recipe_data, splits = _recipe_text(recipe, recipe_options or {},
                                                                               clock, progress)
      heldout, splits = splits.heldout_programs, None
    with clock.stage("text", "splitting and deduplicating the text"):
      report = build_user_text(work, inputs, progress=progress, recipe=recipe_text, **text_options)
    languages = report["languages"]
    _say_dropped(report)
    recipe_languages = recipe_text.languages() if recipe is not None else []
    if recipe is not None:
      build.check_enough_text(report["counts"], recipe_languages, fetched, recipe_minimum)
      recipe_text = None  # in the text files now; the lists are the recipe's largest objects
    check_users_languages(report, [lang for lang in languages if lang not in recipe_languages], user_minimum)
    mono, _ = corpus_views(work, report)
    train = {lang: mono[lang]["train"] for lang in languages if len(mono[lang]["train"])}
    if not train:
      raise ValueError("users' corpora: every input line went to the test split or was dropped "
                       f"(dropped: {report['dropped']}); lower --test-fraction or add text")
    announce = f"training SentencePiece ({model_type}, vocab {vocab_size}, alpha {alpha})"
    with clock.stage("tokenizer", announce):
      sample = alpha_sample_files(train, alpha, max_tokenizer_sentences, seed)
      model = tokenizer_training.train_sentencepiece(sample, vocab_size, model_type, seed)
      tokenizer_sha256 = tokenizer_training.write_tokenizer(model, work / "spm")
      sample_size, sample = len(sample), None  # the sample is the tokenizer stage's largest object
    with clock.stage("tfds", "writing TFDS datasets"):
      _write_tfds(work, report, progress)
    tokenizer = Tokenizer(work / "spm" / "spm.model")
    if recipe_data is not None:
      with clock.stage("extras", "writing evaluation sets, dictionaries and token counts"):
        extra = debian8.write_extras(recipe_data, work, tokenizer)
      extra.pop("recipe")  # "debian8": this corpus is "debian8+user"
    else:
      with clock.stage("tokens", "counting training tokens"):
        extra = {"tokens": {lang: stats.count_tokens(tokenizer, view.path) for lang, view in train.items()}}
    combined = collections.Counter(recipe_dropped) + collections.Counter(report["dropped"])
    user_section = {k: report[k] for k in ("inputs", "skipped_inputs", "changed", "split", "dropped",
                                           "first_defects", "encoding")}
    user_section["min_sentences_per_language"] = user_minimum
    manifest = {
        "name": corpus_dir.name, "languages": languages,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": want,
        "source": "user" if recipe is None else f"{'gettext' if recipe == 'gettext8' else recipe}+user",
        "register": USER_REGISTER_NOTE if recipe is None else
                    f"{build.REGISTER_NOTE if recipe == 'gettext8' else build.DEBIAN8_REGISTER_NOTE}; "
                    f"plus {USER_REGISTER_NOTE}",
        "packages": [p.manifest_entry() for p in fetched],
        "heldout_programs": heldout,
        "counts": report["counts"], "dropped": dict(sorted(combined.items())),
        "tokenizer": {"vocab_size": vocab_size, "model_type": model_type, "alpha": alpha, "seed": seed,
                      "sentences": sample_size, "sha256": tokenizer_sha256},
        "user_corpora": user_section, **extra,
        "build_seconds": {**clock.seconds, "total": clock.total()},
        "format_version": FORMAT_VERSION,
    }
    if recipe is not None:
      manifest["recipe_dropped"] = dict(sorted(recipe_dropped.items()))
      manifest["min_sentences_per_language"] = recipe_minimum
    text = json.dumps(manifest, indent=1, ensure_ascii=False, default=str)
    (work / "manifest.json").write_text(text + "\n", encoding="utf-8")  # last: marks a finished corpus
    build._move_into_place(work, corpus_dir)
  except Exception as err:
    build.raise_if_no_room(err, corpus_dir, work)
    raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  if progress:
    print(f"[data build] corpus ready at {corpus_dir} in {clock.total():.0f} s", file=sys.stderr)
  return Corpus(corpus_dir)
