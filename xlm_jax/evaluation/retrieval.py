"""Tatoeba-style sentence retrieval on the held-out parallel set, with a surface baseline.

For each language xx, the first `eval.retrieval_items` unique en-xx test pairs form the pool;
P@1 is the share of sentences whose cosine nearest neighbour in the other language is their own
translation, in both directions. Names and identifiers leak across languages in software text,
so a character 2-4-gram TF-IDF baseline is always reported beside the model.
"""
from __future__ import annotations

import collections
import math

import numpy as np
import scipy.sparse

from xlm_jax.registry import EVALUATORS


def precision_at_1(queries: np.ndarray, candidates: np.ndarray) -> float:
  """Share of rows i whose most cosine-similar candidate is candidates[i]."""
  # The 1e-12 floor keeps an all-zero vector at zero similarity instead of turning it into NaN.
  q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
  c = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
  nearest = np.argmax(q @ c.T, axis=1)
  return float(np.mean(nearest == np.arange(len(q))))


def char_ngram_tfidf(texts: list[str], n_range=(2, 4), idf_texts: list[str] | None = None):
  """L2-normalised TF-IDF vectors (scipy CSR) over character n-grams of the padded lowercase text."""
  def grams(text):
    # Space padding gives the first and last characters their own boundary grams.
    text = f" {text.lower()} "
    return collections.Counter(text[i:i + n] for n in range(n_range[0], n_range[1] + 1)
                               for i in range(len(text) - n + 1))
  bags = [grams(t) for t in texts]
  idf_bags = bags if idf_texts is None else [grams(t) for t in idf_texts]
  df = collections.Counter(g for bag in idf_bags for g in bag)
  vocab = {g: i for i, g in enumerate(sorted(df))}
  n_docs = len(idf_bags)
  rows, cols, vals = [], [], []
  for r, bag in enumerate(bags):
    for g, tf in bag.items():
      # Grams never seen by the IDF texts have no document frequency, so they are dropped.
      if g in vocab:
        rows.append(r)
        cols.append(vocab[g])
        # Sublinear TF times smoothed IDF: sklearn's TfidfVectorizer(sublinear_tf=True) formulas.
        vals.append((1 + math.log(tf)) * (math.log((1 + n_docs) / (1 + df[g])) + 1))
  matrix = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(vocab)))
  # Row-normalised, so the sparse dot products below are cosine similarities.
  norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1))).ravel()
  return scipy.sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ matrix


def tfidf_precision_at_1(src: list[str], tgt: list[str]) -> tuple[float, float]:
  """(src->tgt, tgt->src) P@1 of the character n-gram baseline; IDF fitted on both sides."""
  both = char_ngram_tfidf(src + tgt)
  a, b = both[: len(src)], both[len(src):]
  sims = (a @ b.T).toarray()
  gold = np.arange(len(src))
  # argmax over axis 0 picks the best source for each target: the tgt->src direction.
  return float(np.mean(sims.argmax(1) == gold)), float(np.mean(sims.argmax(0) == gold))


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
  """P@1 xx->en and en->xx for every non-English language, model and TF-IDF baseline."""

  @staticmethod
  def collect(data) -> dict:
    """The first `eval.retrieval_items` unambiguous en-xx test pairs of each language."""
    limit = data.eval_config.retrieval_items
    pairs = {lang: unique_pairs(data.corpus.parallel_pairs(lang, "test"), limit)
             for lang in data.languages if lang != "en"}
    return {"pairs": {lang: [list(p) for p in found] for lang, found in pairs.items() if found}}

  def __init__(self, sets: dict, eval_config):
    self.pooling = eval_config.pooling
    self.pairs = {lang: [tuple(p) for p in pairs] for lang, pairs in sets["pairs"].items()}
    # The surface baseline does not depend on the model: computed once, reported every time.
    self.baseline = {}
    for lang, pairs in self.pairs.items():
      en, xx = zip(*pairs)
      to_en, from_en = tfidf_precision_at_1(list(xx), list(en))
      self.baseline[f"retrieval/{lang}-en/tfidf_p1"] = to_en
      self.baseline[f"retrieval/en-{lang}/tfidf_p1"] = from_en

  def __call__(self, model) -> dict:
    out = dict(self.baseline)
    for lang, pairs in self.pairs.items():
      en, xx = zip(*pairs)
      en_vecs = model.encode(list(en), lang="en", pooling=self.pooling)
      xx_vecs = model.encode(list(xx), lang=lang, pooling=self.pooling)
      out[f"retrieval/{lang}-en/p1"] = precision_at_1(xx_vecs, en_vecs)
      out[f"retrieval/en-{lang}/p1"] = precision_at_1(en_vecs, xx_vecs)
      out[f"retrieval/{lang}/items"] = len(pairs)
    # Macro-averages over languages and both directions, separately for model and baseline.
    for suffix in ("p1", "tfidf_p1"):
      values = [v for k, v in out.items() if k.endswith("/" + suffix)]
      if values:
        out[f"retrieval/mean_{suffix}"] = float(np.mean(values))
    return out
