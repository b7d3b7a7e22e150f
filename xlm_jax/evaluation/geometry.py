"""Geometry of the sentence space (EMMA-X's analysis): invariance, canonical form, isotropy.

All three are computed on multi-way-parallel items (one sentence in every language, same id):
  invariance      KL(N_lang || N_en) between diagonal Gaussians fitted to each language's
                  vectors; 0 when a language is embedded exactly like English.
  canonical form  Calinski-Harabasz index with each item id as a cluster (its translations):
                  between-item over within-item dispersion, higher = translations closer.
  isotropy        principal ratio min_c Z(c) / max_c Z(c), Z(c) = sum_i exp(c^T w_i), c over the
                  eigenvectors of W^T W (Mu & Viswanath 2018); 1 = no preferred direction.

Items: <corpus>/eval/retrieval.jsonl when the corpus has it (debian8), else built from the
held-out parallel pairs whose English side is translated into every language.
"""
from __future__ import annotations

import json
import logging
import pathlib

import numpy as np

from xlm_jax.registry import EVALUATORS

# Added to fitted variances: a dimension that is constant in a language (or a dead unit) would
# otherwise divide by zero. Small against the unit-scale variances of encoder outputs.
VARIANCE_FLOOR = 1e-6


def fit_diagonal_gaussian(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, variance + VARIANCE_FLOOR) per dimension of vectors [n, d], in float64."""
  vectors = np.asarray(vectors, np.float64)
  return vectors.mean(axis=0), vectors.var(axis=0) + VARIANCE_FLOOR


def diagonal_gaussian_kl(mean_p, var_p, mean_q, var_q) -> float:
  """KL(N(mean_p, diag var_p) || N(mean_q, diag var_q))."""
  return float(0.5 * np.sum(var_p / var_q + (mean_q - mean_p) ** 2 / var_q - 1.0
                            + np.log(var_q) - np.log(var_p)))


def invariance_kl(vectors: np.ndarray, english: np.ndarray) -> float:
  """KL from a language's Gaussian fit to English's fit (0 = same distribution)."""
  return diagonal_gaussian_kl(*fit_diagonal_gaussian(vectors), *fit_diagonal_gaussian(english))


def calinski_harabasz(vectors: np.ndarray, labels: np.ndarray) -> float:
  """[tr(B) / (k - 1)] / [tr(W) / (n - k)] over k clusters of n vectors (sklearn's definition)."""
  vectors = np.asarray(vectors, np.float64)
  labels = np.asarray(labels)
  clusters = np.unique(labels)
  n, k = len(vectors), len(clusters)
  if not 1 < k < n:
    raise ValueError(f"Calinski-Harabasz needs 1 < clusters < points, got {k} clusters of {n} "
                     "points (use more multi-way items or languages)")
  center = vectors.mean(axis=0)
  between = within = 0.0
  for c in clusters:
    members = vectors[labels == c]
    mean = members.mean(axis=0)
    between += len(members) * np.sum((mean - center) ** 2)
    within += np.sum((members - mean) ** 2)
  # Every item's translations on one point: the ratio's limit, not a division by zero.
  if within == 0.0:
    return float("inf")
  return float(between * (n - k) / (within * (k - 1)))


def principal_ratio(vectors: np.ndarray) -> float:
  """min_c Z(c) / max_c Z(c) over the eigenvectors c of W^T W (in log space: no overflow)."""
  w = np.asarray(vectors, np.float64)
  _, eigenvectors = np.linalg.eigh(w.T @ w)
  projections = w @ eigenvectors                        # [n, d]: c^T w_i for every c
  # Log-sum-exp: c^T w_i grows with the vectors' norm and exp overflows; shifted terms are <= 1.
  peak = projections.max(axis=0)
  log_z = peak + np.log(np.sum(np.exp(projections - peak), axis=0))
  return float(np.exp(log_z.min() - log_z.max()))


def multiway_items(corpus, languages, limit: int) -> list[dict]:
  """Up to `limit` items {"id", lang: text for every language}.

  From <corpus>/eval/retrieval.jsonl when present (items missing a language are skipped), else
  from the held-out en-xx pairs: an English test sentence becomes an item when every language
  has a translation of it (its first one).
  """
  languages = list(languages)
  path = pathlib.Path(corpus.dir) / "eval" / "retrieval.jsonl"
  items = []
  if path.is_file():
    with open(path, encoding="utf-8") as f:
      for line_number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as err:
          raise ValueError(f"{path}:{line_number}: not valid JSON ({err}); rebuild the corpus "
                           "with `xlm-jax data build`") from err
        if all(isinstance(row.get(lang), str) for lang in languages):
          items.append({"id": str(row.get("id", line_number)),
                        **{lang: row[lang] for lang in languages}})
        if len(items) == limit:
          break
    return items
  translations = {}
  for lang in languages:
    if lang == "en":
      continue
    first = {}
    for en, xx in corpus.parallel_pairs(lang, "test"):
      first.setdefault(en, xx)
    translations[lang] = first
  if not translations:
    raise ValueError(f"geometry needs English and at least one other language, got {languages}")
  # In the first language's file order, so the items (and what `limit` cuts) are stable across runs.
  shared = [en for en in next(iter(translations.values()))
            if all(en in t for t in translations.values())]
  for index, en in enumerate(shared[:limit]):
    item = {"id": str(index)}
    item.update({lang: (en if lang == "en" else translations[lang][en]) for lang in languages})
    items.append(item)
  return items


def geometry_metrics(vectors: dict[str, np.ndarray]) -> dict:
  """The three metrics from per-language vectors [items, d] whose rows are aligned by item."""
  if "en" not in vectors:
    raise ValueError(f"geometry compares languages with English; got {sorted(vectors)}")
  out = {}
  kls = []
  for lang, vecs in vectors.items():
    out[f"geometry/{lang}/isotropy"] = principal_ratio(vecs)
    if lang != "en":
      kls.append(invariance_kl(vecs, vectors["en"]))
      out[f"geometry/{lang}/invariance_kl"] = kls[-1]
  langs = sorted(vectors)
  stacked = np.concatenate([vectors[lang] for lang in langs])
  # Each language's block has its rows in item order, so row r of every block is item r's cluster.
  labels = np.tile(np.arange(len(vectors["en"])), len(langs))
  out["geometry/invariance_kl"] = float(np.mean(kls)) if kls else 0.0
  out["geometry/canonical_ch"] = calinski_harabasz(stacked, labels)
  out["geometry/isotropy"] = principal_ratio(stacked)
  return out


@EVALUATORS.register("geometry")
class Geometry:
  """Invariance, canonical form and isotropy of the model's sentence vectors."""

  @staticmethod
  def collect(data) -> dict:
    eval_cfg = data.eval_config
    limit = int(getattr(eval_cfg, "geometry_items", eval_cfg.retrieval_items))
    items = multiway_items(data.corpus, data.languages, limit)
    if len(items) < 2:
      logging.warning("geometry: only %d multi-way-parallel items in %s; metrics skipped",
                      len(items), data.corpus.dir)
    return {"languages": list(data.languages), "items": items}

  def __init__(self, sets: dict, eval_config):
    self.pooling = eval_config.pooling
    self.languages = list(sets["languages"])
    self.items = list(sets["items"])

  def __call__(self, model) -> dict:
    if len(self.items) < 2:
      return {"geometry/items": len(self.items)}
    vectors = {lang: np.asarray(model.encode([item[lang] for item in self.items], lang=lang,
                                             pooling=self.pooling), np.float64)
               for lang in self.languages}
    out = geometry_metrics(vectors)
    out["geometry/items"] = len(self.items)
    return out
