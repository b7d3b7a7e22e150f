"""Streaming views of the written text, for the stages that follow (TFDS writing, tokenizer sampling).

data_prep.tfds_writer takes {split: texts} and only asks `if texts` and `for text in texts`, so a view that
streams a file line by line can stand in for a list and the TFDS files get written without holding the
corpus in memory. xlm_jax.data.tokenizer_training.alpha_sample indexes lists at random; alpha_sample_files
draws the very same sample with the same generators, but reads each file once, keeping only the sample.
"""
from __future__ import annotations

import pathlib

from data_prep.user_corpora.build_text import text_path
from xlm_jax.data import tokenizer_training
from xlm_jax.data.corpus import SPLITS


class TextLines:
  """Re-iterable lines of a UTF-8 text file (newline removed), with len() known from the build report."""

  def __init__(self, path, count: int):
    self.path = pathlib.Path(path)
    self.count = count

  def __len__(self) -> int:
    return self.count

  def __bool__(self) -> bool:
    return self.count > 0

  def __iter__(self):
    with open(self.path, encoding="utf-8", newline="\n") as f:
      for line in f:
        yield line[:-1] if line.endswith("\n") else line

  def __repr__(self) -> str:
    return f"{type(self).__name__}({str(self.path)!r}, count={self.count})"


class TsvPairs(TextLines):
  """Re-iterable (english, foreign) pairs of a text/parallel/<split>/en-<lang>.tsv file."""

  def __iter__(self):
    for number, line in enumerate(super().__iter__(), start=1):
      en, tab, xx = line.partition("\t")
      if not tab or "\t" in xx:
        raise ValueError(f"{self.path}:{number}: expected 'english<TAB>foreign'; rebuild the corpus")
      yield en, xx


def corpus_views(work_dir, report: dict) -> tuple[dict, dict]:
  """(mono, parallel) as {lang: {split: view}} over <work_dir>/text, sized from the build report.

  The shapes tfds_writer.write_mono / write_parallel take, one language at a time.
  """
  text = pathlib.Path(work_dir) / "text"
  mono, parallel = {}, {}
  for lang, counts in report["counts"].items():
    mono[lang] = {split: TextLines(text_path(text, "mono", lang, split), counts[f"mono_{split}"])
                  for split in SPLITS}
    if lang != "en":
      parallel[lang] = {split: TsvPairs(text_path(text, "parallel", lang, split), counts[f"parallel_{split}"])
                        for split in SPLITS}
  return mono, parallel


def alpha_sample_files(texts_by_lang: dict[str, TextLines], alpha: float, max_sentences: int,
                       seed: int = 0) -> list[str]:
  """tokenizer_training.alpha_sample on files: the same sorted sample, each file read once.

  Draws exactly what alpha_sample draws from the lists of the same lines (same per-language generators,
  same rng.choice calls), so a corpus built from files gets the tokenizer a list-based build would.
  """
  plan = tokenizer_training.alpha_sample_plan(
      {lang: len(texts) for lang, texts in texts_by_lang.items()}, alpha, max_sentences, seed)
  sampled = []
  for lang, (repeats, chosen) in plan.items():
    chosen, pointer = chosen.tolist(), 0
    for number, line in enumerate(texts_by_lang[lang]):
      extra = pointer < len(chosen) and chosen[pointer] == number
      pointer += extra
      sampled.extend([line] * (repeats + extra))
  return sorted(sampled)
