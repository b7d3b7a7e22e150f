"""`xlm-jax data build` from users' own text (data_prep.user_corpora) instead of Debian packages.

The same corpus layout and atomic build as build.build_corpus (a `.partial-<pid>` folder renamed into
place, manifest.json written last), but the text is streamed: build_user_text writes the split, deduplicated
text files, and the tokenizer sample and the TFDS datasets are read back from those files (corpus_views,
alpha_sample_files), so memory does not grow with the corpus.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import sys
import time

from data_prep import build, tfds_writer, tokenizer_training
from data_prep.user_corpora import alpha_sample_files, build_user_text, corpus_views
from xlm_jax.data.corpus import FORMAT_VERSION, Corpus


def build_user_corpus(corpus_dir, inputs, *, vocab_size: int = 8000, seed: int = 0, force: bool = False,
                      progress: bool = True, model_type: str = "unigram",
                      alpha: float = tokenizer_training.DEFAULT_ALPHA,
                      max_tokenizer_sentences: int = tokenizer_training.DEFAULT_MAX_SENTENCES,
                      **text_options) -> Corpus:
  """Builds a corpus at corpus_dir from checked user inputs (user_corpora.collect_inputs); returns it.

  An existing finished corpus is returned as it is unless `force`. text_options go to build_user_text
  (test_fraction, max_unit_lines, strict).
  """
  corpus_dir = pathlib.Path(corpus_dir).expanduser().absolute()
  if not force and (corpus_dir / "manifest.json").is_file():
    if progress:
      print(f"[data build] corpus {corpus_dir} already built; reusing it (--force rebuilds)", file=sys.stderr)
    return Corpus(corpus_dir)
  corpus_dir.parent.mkdir(parents=True, exist_ok=True)
  build._remove_stale_partials(corpus_dir)
  work = corpus_dir.parent / f"{corpus_dir.name}.partial-{os.getpid()}"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir()
  start = time.perf_counter()
  try:
    report = build_user_text(work, inputs, progress=progress, **text_options)
    mono, parallel = corpus_views(work, report)
    languages = report["languages"]
    train = {lang: mono[lang]["train"] for lang in languages if len(mono[lang]["train"])}
    if not train:
      raise ValueError("users' corpora: every input line went to the test split or was dropped "
                       f"(dropped: {report['dropped']}); lower --test-fraction or add text")
    sample = alpha_sample_files(train, alpha, max_tokenizer_sentences, seed)
    model = tokenizer_training.train_sentencepiece(sample, vocab_size, model_type, seed)
    tokenizer_sha256 = tokenizer_training.write_tokenizer(model, work / "spm")
    # TFDS cannot write a dataset whose splits are all empty; such a language reads as empty.
    for lang in languages:
      if any(len(view) for view in mono[lang].values()):
        tfds_writer.write_mono(work / "tfds", lang, mono[lang])
      if lang in parallel and any(len(view) for view in parallel[lang].values()):
        tfds_writer.write_parallel(work / "tfds", lang, parallel[lang])
    manifest = {
        "name": corpus_dir.name, "languages": languages,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": "user", "source": "user", "register": "users' own text", "packages": [],
        "heldout_programs": [], "counts": report["counts"], "dropped": report["dropped"],
        "tokenizer": {"vocab_size": vocab_size, "model_type": model_type, "alpha": alpha, "seed": seed,
                      "sentences": len(sample), "sha256": tokenizer_sha256},
        "user_corpora": {k: report[k] for k in ("inputs", "skipped_inputs", "changed", "split", "seconds")},
        "build_seconds": {"total": round(time.perf_counter() - start, 1)},
        "format_version": FORMAT_VERSION,
    }
    text = json.dumps(manifest, indent=1, ensure_ascii=False, default=str)
    (work / "manifest.json").write_text(text + "\n", encoding="utf-8")  # last: marks a finished corpus
    build._move_into_place(work, corpus_dir)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return Corpus(corpus_dir)
