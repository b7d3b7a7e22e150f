"""Tatoeba-style sentence retrieval on the held-out parallel set, with a surface baseline.

For each language xx, the first `eval.retrieval_items` unique en-xx test pairs form the pool;
P@1 is the share of sentences whose cosine nearest neighbour in the other language is their own
translation, in both directions. Names and identifiers leak across languages in software text,
so a character 2-4-gram TF-IDF baseline is always reported beside the model, and P@1 is also
reported on the "hard" items of each direction: those whose TF-IDF nearest neighbour is wrong.
Sentences are encoded with `eval.pooling` (and `eval.layer` when it is "layer"); nearest
neighbours are found blockwise (metrics.topk_cosine), so pools of 100k items fit in memory.
"""
from __future__ import annotations

import collections

import numpy as np
import scipy.sparse

from xlm_jax.evaluation import metrics
from xlm_jax.registry import EVALUATORS


def nearest_neighbours(queries, candidates) -> np.ndarray:
  """Index of each query's cosine nearest candidate (the lowest index on a tie), blockwise."""
  return metrics.topk_cosine(queries, candidates, 1)[1][:, 0]


def precision_at_1(queries: np.ndarray, candidates: np.ndarray) -> float:
  """Share of rows i whose most cosine-similar candidate is candidates[i]."""
  return float(np.mean(nearest_neighbours(queries, candidates) == np.arange(len(queries))))


def encode_options(eval_config) -> dict:
  """The encode() keywords of `eval.pooling` and `eval.layer`; `layer` is passed only with
  pooling "layer", the one pooling that reads it (Pretrained.encode refuses it otherwise)."""
  pooling = eval_config.pooling
  layer = int(getattr(eval_config, "layer", -1))
  return {"pooling": pooling, "layer": layer} if pooling == "layer" else {"pooling": pooling}


def char_ngrams(text: str, n_range=(2, 4)) -> collections.Counter:
  """Counts of the character n-grams (n in n_range) of the padded lowercase text."""
  # Space padding gives the first and last characters their own boundary grams.
  text = f" {text.lower()} "
  return collections.Counter(text[i:i + n] for n in range(n_range[0], n_range[1] + 1)
                             for i in range(len(text) - n + 1))


class CharNgramTfidf:
  """Character n-gram TF-IDF vectors with the IDF read once from `idf_texts`: every call maps
  texts into the same columns (the grams of idf_texts; others are dropped), so a baseline scored
  on several sets, or as a model through encode() (evaluation/suite.py), reads its IDF once.

  Vectors are L2-normalised scipy CSR rows: sublinear TF times smoothed IDF, sklearn's
  TfidfVectorizer(sublinear_tf=True) formulas.
  """

  def __init__(self, idf_texts=(), n_range=(2, 4), idf_bags=None):
    self.n_range = tuple(n_range)
    if idf_bags is None:
      idf_bags = [char_ngrams(t, self.n_range) for t in idf_texts]
    df = collections.Counter(g for bag in idf_bags for g in bag)
    self.columns = {g: i for i, g in enumerate(sorted(df))}
    counts = np.fromiter((df[g] for g in self.columns), np.float64, len(self.columns))
    # As arrays: a Python log per gram made this the slowest part of mining's baseline.
    self.idf = np.log((1 + len(idf_bags)) / (1 + counts)) + 1

  def transform_bags(self, bags) -> scipy.sparse.csr_matrix:
    rows, cols, tfs = [], [], []
    for r, bag in enumerate(bags):
      for g, tf in bag.items():
        # Grams never seen by the IDF texts have no document frequency, so they are dropped.
        column = self.columns.get(g)
        if column is not None:
          rows.append(r)
          cols.append(column)
          tfs.append(tf)
    cols = np.asarray(cols, np.int64)
    values = (1 + np.log(np.asarray(tfs, np.float64))) * self.idf[cols]
    matrix = scipy.sparse.csr_matrix((values, (rows, cols)), shape=(len(bags), len(self.columns)))
    # Row-normalised, so the sparse dot products of callers are cosine similarities.
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
    return scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix

  def __call__(self, texts) -> scipy.sparse.csr_matrix:
    return self.transform_bags([char_ngrams(t, self.n_range) for t in texts])


def char_ngram_tfidf(texts: list[str], n_range=(2, 4), idf_texts: list[str] | None = None):
  """L2-normalised TF-IDF vectors (scipy CSR) over character n-grams of the padded lowercase
  text, the IDF read from `idf_texts` (default: `texts` themselves)."""
  bags = [char_ngrams(t, n_range) for t in texts]
  if idf_texts is None:
    return CharNgramTfidf(n_range=n_range, idf_bags=bags).transform_bags(bags)
  return CharNgramTfidf(idf_texts, n_range).transform_bags(bags)


def tfidf_nearest(src: list[str], tgt: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """(nearest target of each source, nearest source of each target) under the character n-gram
  baseline; IDF fitted on both sides."""
  both = char_ngram_tfidf(src + tgt)
  a, b = both[: len(src)], both[len(src):]
  # The rows are unit-normalised already: the blockwise top-1 of their dot products is cosine's.
  return metrics.blockwise_topk(a, b, 1)[1][:, 0], metrics.blockwise_topk(b, a, 1)[1][:, 0]


def unique_pairs(pairs, limit: int) -> list[tuple[str, str]]:
  """First `limit` pairs whose English and foreign sides are both unseen so far (unambiguous gold)."""
  seen_en, seen_xx, out = set(), set(), []
  for en, xx in pairs:
    # A repeated sentence would have two gold partners while P@1 scores only one of them.
    if en in seen_en or xx in seen_xx:
      continue
    seen_en.add(en)
    seen_xx.add(xx)
    out.append((en, xx))
    if len(out) == limit:
      break
  return out


@EVALUATORS.register("retrieval")
class Retrieval:
  """P@1 xx->en and en->xx for every non-English language, model and TF-IDF baseline, and the
  model's P@1 on the items where the baseline is wrong (hard_p1)."""

  @staticmethod
  def collect(data) -> dict:
    """The first `eval.retrieval_items` unambiguous en-xx test pairs of each language."""
    limit = data.eval_config.retrieval_items
    pairs = {lang: unique_pairs(data.corpus.parallel_pairs(lang, "test"), limit)
             for lang in data.languages if lang != "en"}
    return {"pairs": {lang: [list(p) for p in found] for lang, found in pairs.items() if found}}

  def __init__(self, sets: dict, eval_config):
    self.encode_options = encode_options(eval_config)
    self.pairs = {lang: [tuple(p) for p in pairs] for lang, pairs in sets["pairs"].items()}
    # The surface baseline does not depend on the model: computed once, reported every time.
    self.baseline = {}
    # Per direction ("xx-en", "en-xx"): the items whose TF-IDF nearest neighbour is wrong.
    self.hard = {}
    for lang, pairs in self.pairs.items():
      en, xx = zip(*pairs)
      gold = np.arange(len(pairs))
      to_en, from_en = tfidf_nearest(list(xx), list(en))
      for direction, nearest in ((f"{lang}-en", to_en), (f"en-{lang}", from_en)):
        self.baseline[f"retrieval/{direction}/tfidf_p1"] = float(np.mean(nearest == gold))
        self.hard[direction] = nearest != gold
        self.baseline[f"retrieval/{direction}/hard_items"] = int(self.hard[direction].sum())

  def __call__(self, model) -> dict:
    out = dict(self.baseline)
    for lang, pairs in self.pairs.items():
      en, xx = zip(*pairs)
      en_vecs = model.encode(list(en), lang="en", **self.encode_options)
      xx_vecs = model.encode(list(xx), lang=lang, **self.encode_options)
      gold = np.arange(len(pairs))
      for direction, queries, candidates in ((f"{lang}-en", xx_vecs, en_vecs),
                                             (f"en-{lang}", en_vecs, xx_vecs)):
        correct = nearest_neighbours(queries, candidates) == gold
        out[f"retrieval/{direction}/p1"] = float(np.mean(correct))
        hard = self.hard[direction]
        # No hard item (the baseline is always right) leaves hard_p1 undefined: not reported.
        if hard.any():
          out[f"retrieval/{direction}/hard_p1"] = float(np.mean(correct[hard]))
      out[f"retrieval/{lang}/items"] = len(pairs)
    # Macro-averages over languages and both directions, separately for model and baseline.
    for suffix in ("p1", "tfidf_p1", "hard_p1"):
      values = [v for k, v in out.items() if k.endswith("/" + suffix)]
      if values:
        out[f"retrieval/mean_{suffix}"] = float(np.mean(values))
    return out
