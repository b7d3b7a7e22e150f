"""Bilingual lexicon induction (BLI) from the encoder's word vectors: Procrustes + CSLS, P@1 / P@5.

A word's vector is the encoder's vector of the word as a one-word text (`encode([word], lang)`
with `eval.pooling` / `eval.layer`), so any model kind, and words of several pieces, are scored
alike. For each language xx (Conneau et al. 2018, MUSE's protocol):

  queries     the English headwords of <corpus>/eval/bli/en-<xx>.tsv (held-out headwords)
  pools       fixed per language: the `eval.bli_candidates` most frequent words of the training
              text plus every gold answer (foreign side); the English pool likewise plus every
              query. CSLS's hubness term r_S(y) is taken over the whole English pool.
  map         the orthogonal W (metrics.procrustes) fitted on up to `eval.bli_train_pairs` pairs of
              the training dictionary <corpus>/dictionaries/en-<xx>.tsv, on unit vectors
  score       CSLS (k = `eval.csls_k`) top-5 of each mapped query; a hit when any listed
              translation is among the first 1 / 5

bli/en-<xx>/p1, p5 are the Procrustes scores; unmapped_p1, unmapped_p5 use W = I (the encoder's
shared space as it is). With fewer training pairs than vector dimensions W is arbitrary on the rest
of the space, so p1 / p5 are then left out (logged), as the alignment evaluator does. Corpora
without BLI test dictionaries (gettext8) skip the evaluator with a logged reason.
"""
from __future__ import annotations

import collections
import logging
import pathlib
import re

import numpy as np

from xlm_jax.data.dictionary import load_dictionary, word_dictionary_path
from xlm_jax.evaluation import metrics
from xlm_jax.evaluation.retrieval import encode_options
from xlm_jax.registry import EVALUATORS

# A word: letters, with inner apostrophes or hyphens ("don't", "e-mail"); digits and
# underscores (identifiers, numbers) never start or end one.
WORD = re.compile(r"[^\W\d_](?:[\w'\u2019-]*[^\W\d_])?")
# Training sentences read per language for word frequencies: enough to rank 20k words.
FREQUENCY_SENTENCES = 200_000
TOPK = 5


def frequent_words(texts, limit: int) -> list[str]:
  """The `limit` most frequent words of `texts` (ties in first-seen order)."""
  counts = collections.Counter()
  for text in texts[:FREQUENCY_SENTENCES]:
    counts.update(WORD.findall(text))
  return [word for word, _ in counts.most_common(limit)]


def bli_test_dir(corpus_dir) -> pathlib.Path:
  """<corpus>/eval/bli: the test dictionaries en-<lang>.tsv of the debian8 build
  (data_prep/eval_writer.py)."""
  return pathlib.Path(corpus_dir) / "eval" / "bli"


def language_set(test_pairs, train_pairs, candidates: int, frequent: list[str],
                 train_limit: int, seed: int) -> dict:
  """{"queries": English headwords, "gold": [[candidate index, ...] per query], "candidates":
  foreign pool, "train": [[en, xx], ...] (seeded sample)}."""
  answers = collections.defaultdict(list)
  for en, xx in test_pairs:
    answers[en].append(xx)
  queries = sorted(answers)
  pool = list(dict.fromkeys(frequent[:candidates] + sorted({xx for _, xx in test_pairs})))
  index = {word: i for i, word in enumerate(pool)}
  train = [list(p) for p in dict.fromkeys(map(tuple, train_pairs))]
  if len(train) > train_limit:
    keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:train_limit])
    train = [train[i] for i in keep]
  return {"queries": queries, "gold": [sorted({index[xx] for xx in answers[en]}) for en in queries],
          "candidates": pool, "train": train}


def bli_scores(queries, english_pool, candidates, gold, k_csls: int, mapping=None) -> dict:
  """P@1 / P@5 of CSLS retrieval of the query rows of `english_pool` (indices `queries`) among
  `candidates`, after `english_pool @ mapping` when a mapping is given."""
  if mapping is None:
    source = english_pool
  else:
    source = metrics.normalize(english_pool)
    # In the vectors' precision: a float64 map would make every pool x pool pass float64 (2x).
    source = source @ mapping.astype(source.dtype)
  _, top = metrics.csls_topk(source, candidates, k_csls, TOPK, queries=queries)
  return {"p1": metrics.precision_at_k(top, gold, 1), "p5": metrics.precision_at_k(top, gold, TOPK)}


@EVALUATORS.register("bli")
class BLI:
  """Procrustes + CSLS word translation P@1 / P@5, English to every other language."""

  @staticmethod
  def collect(data) -> dict:
    cfg = data.eval_config
    corpus_dir = pathlib.Path(data.corpus.dir)
    sets = {"languages": [], "skipped": {}}
    if not bli_test_dir(corpus_dir).is_dir():
      reason = (f"{bli_test_dir(corpus_dir)} not found: this corpus has no BLI test "
                "dictionaries (the debian8 recipe builds them: `xlm-jax data build --recipe debian8`)")
      logging.warning("bli: skipped: %s", reason)
      sets["skipped"]["all"] = reason
      return sets
    english_frequent = None
    for lang in data.languages:
      if lang == "en":
        continue
      path = bli_test_dir(corpus_dir) / f"en-{lang}.tsv"
      if not path.is_file():
        sets["skipped"][lang] = (f"{path} not found: this corpus has no BLI test dictionary for {lang} "
                                 "(the debian8 recipe builds them: `xlm-jax data build --recipe debian8`)")
        logging.warning("bli: skipping %s: %s", lang, sets["skipped"][lang])
        continue
      test_pairs = load_dictionary(path).pairs
      train_path = word_dictionary_path(corpus_dir, lang)
      # Without a training dictionary only the unmapped scores exist.
      train_pairs = load_dictionary(train_path).pairs if train_path.is_file() else []
      if not train_pairs:
        logging.warning("bli: %s has no training dictionary (%s): unmapped scores only", lang, train_path)
      if english_frequent is None:
        english_frequent = frequent_words(data.corpus.mono_texts("en", "train"), cfg.bli_candidates)
      sets[lang] = language_set(test_pairs, train_pairs, cfg.bli_candidates,
                                frequent_words(data.corpus.mono_texts(lang, "train"), cfg.bli_candidates),
                                cfg.bli_train_pairs, data.seed)
      sets["languages"].append(lang)
    if sets["languages"]:
      queries = sorted({q for lang in sets["languages"] for q in sets[lang]["queries"]})
      sets["english_pool"] = list(dict.fromkeys(english_frequent + queries))
    return sets

  def __init__(self, sets: dict, eval_config):
    self.encode_options = encode_options(eval_config)
    self.k_csls = int(eval_config.csls_k)
    self.skipped = dict(sets.get("skipped", {}))
    self.languages = list(sets["languages"])
    self.sets = {lang: sets[lang] for lang in self.languages}
    self.english_pool = list(sets.get("english_pool", []))
    self.english_index = {word: i for i, word in enumerate(self.english_pool)}

  def __call__(self, model) -> dict:
    if not self.languages:
      reasons = "; ".join(self.skipped.values()) or "no language besides English"
      return {"bli/skipped": reasons}
    english = model.encode(self.english_pool, lang="en", **self.encode_options)
    out = {f"bli/en-{lang}/skipped": reason for lang, reason in self.skipped.items()}
    for lang in self.languages:
      s = self.sets[lang]
      prefix = f"bli/en-{lang}/"
      queries = np.asarray([self.english_index[q] for q in s["queries"]], np.int64)
      candidates = model.encode(s["candidates"], lang=lang, **self.encode_options)
      for name, value in bli_scores(queries, english, candidates, s["gold"], self.k_csls).items():
        out[f"{prefix}unmapped_{name}"] = value
      out[f"{prefix}queries"] = len(queries)
      out[f"{prefix}candidates"] = len(s["candidates"])
      out[f"{prefix}train_pairs"] = len(s["train"])
      dims = english.shape[1]
      if len(s["train"]) < dims:
        logging.info("bli: no Procrustes score for %s: %d training pairs leave the %d-dimensional map "
                     "arbitrary on the rest of the space", lang, len(s["train"]), dims)
        continue
      train_en, train_xx = zip(*s["train"])
      mapping = metrics.procrustes(
          metrics.normalize(model.encode(list(train_en), lang="en", **self.encode_options)),
          metrics.normalize(model.encode(list(train_xx), lang=lang, **self.encode_options)))
      for name, value in bli_scores(queries, english, candidates, s["gold"], self.k_csls,
                                    mapping).items():
        out[f"{prefix}{name}"] = value
    for suffix in ("p1", "p5", "unmapped_p1", "unmapped_p5"):
      values = [v for k, v in out.items() if k.endswith("/" + suffix)]
      if values:
        out[f"bli/mean_{suffix}"] = float(np.mean(values))
    return out
