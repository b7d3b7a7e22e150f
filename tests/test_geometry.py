"""Geometry metrics (EMMA-X analysis) against hand computations, and the evaluator's plumbing."""
import json
import math
import pathlib
import types

import ml_collections
import numpy as np
import pytest

from xlm_jax.evaluation import geometry
from xlm_jax.evaluation.base import EvalData, EvalModel, from_data


def test_principal_ratio_hand_example():
  # W^T W = diag(2, 8): eigenvectors e1, e2. Z(e1) = e + 1/e + 1 + 1, Z(e2) = 1 + 1 + e^2 + e^-2.
  w = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
  expected = (2 + 2 * math.cosh(1.0)) / (2 + 2 * math.cosh(2.0))
  assert geometry.principal_ratio(w) == pytest.approx(expected, rel=1e-12)


def test_principal_ratio_isotropic_near_one_and_anisotropic_small():
  rng = np.random.default_rng(0)
  isotropic = rng.standard_normal((20000, 8))
  assert geometry.principal_ratio(isotropic) > 0.9
  # A shared offset (the "common direction" of contextual embeddings) breaks isotropy.
  # Z(+-e1) = n e^{+-3} against ~n elsewhere: ratio e^-3 whichever sign eigh returns.
  shifted = 0.1 * rng.standard_normal((2000, 8)) + 3.0 * np.eye(8)[0]
  assert geometry.principal_ratio(shifted) == pytest.approx(math.exp(-3.0), rel=0.02)
  # Large norms must not overflow (log-space sums).
  assert 0.0 <= geometry.principal_ratio(1000.0 * isotropic[:500]) <= 1.0


def test_calinski_harabasz_hand_example():
  # Clusters {0, 2} and {10, 12}: B = 2*25 + 2*25 = 100, W = 4, n = 4, k = 2 -> (100/1)/(4/2).
  x = np.array([[0.0], [2.0], [10.0], [12.0]])
  assert geometry.calinski_harabasz(x, np.array([0, 0, 1, 1])) == pytest.approx(50.0)
  # Two dimensions, three clusters, compared with the textbook formula written out.
  rng = np.random.default_rng(1)
  y = rng.standard_normal((9, 2))
  labels = np.repeat(np.arange(3), 3)
  means = np.stack([y[labels == c].mean(0) for c in range(3)])
  b = sum(3 * np.sum((means[c] - y.mean(0)) ** 2) for c in range(3))
  w = sum(np.sum((y[labels == c] - means[c]) ** 2) for c in range(3))
  assert geometry.calinski_harabasz(y, labels) == pytest.approx((b / 2) / (w / 6))
  with pytest.raises(ValueError, match="clusters"):
    geometry.calinski_harabasz(x, np.zeros(4))


def test_invariance_kl_hand_values():
  # 1-D: KL(N(0, 1) || N(1, 4)) = 0.5 (1/4 + 1/4 - 1 + ln 4).
  expected = 0.5 * (0.25 + 0.25 - 1.0 + math.log(4.0))
  assert geometry.diagonal_gaussian_kl(np.zeros(1), np.ones(1), np.ones(1), 4 * np.ones(1)) == \
      pytest.approx(expected)
  # The same from data: [-1, 1] has mean 0, var 1; [-1, 3] has mean 1, var 4 (floor ~1e-6).
  got = geometry.invariance_kl(np.array([[-1.0], [1.0]]), np.array([[-1.0], [3.0]]))
  assert got == pytest.approx(expected, abs=1e-5)
  rng = np.random.default_rng(2)
  same = rng.standard_normal((50, 6))
  assert geometry.invariance_kl(same, same.copy()) == 0.0


def test_geometry_metrics_identical_languages():
  rng = np.random.default_rng(3)
  en = rng.standard_normal((12, 5))
  out = geometry.geometry_metrics({"en": en, "de": en.copy(), "fr": en.copy()})
  assert out["geometry/invariance_kl"] == 0.0
  assert out["geometry/de/invariance_kl"] == 0.0
  # Every item's translations coincide: no within-item dispersion (up to float rounding).
  assert out["geometry/canonical_ch"] > 1e12
  assert out["geometry/isotropy"] == pytest.approx(geometry.principal_ratio(np.tile(en, (3, 1))))
  shifted = geometry.geometry_metrics({"en": en, "de": en + 1.0})
  assert shifted["geometry/invariance_kl"] > 1.0


def _fake_run(corpus_dir, pairs, vectors_of, languages=("en", "de", "fr"), items=100):
  config = ml_collections.ConfigDict({
      "data": {"languages": list(languages)},
      "eval": {"retrieval_items": items, "pooling": "mean"}})
  corpus = types.SimpleNamespace(dir=pathlib.Path(corpus_dir),
                                 parallel_pairs=lambda lang, split: pairs[lang])
  calls = []

  class Encoder:
    def encode(self, texts, lang=None, pooling="mean"):
      calls.append((lang, pooling, len(texts)))
      return np.stack([vectors_of(t) for t in texts])

  data = EvalData(corpus=corpus, tokenizer=None, languages=tuple(languages), seed=0, alpha=0.3,
                  model_config=None, eval_config=config.eval)
  model = EvalModel(encode=Encoder().encode, word_embeddings=None, config=None)
  return (data, model), calls


def test_items_built_from_shared_english_side(tmp_path):
  pairs = {"de": [("one", "eins"), ("two", "zwei"), ("three", "drei"), ("one", "ein")],
           "fr": [("two", "deux"), ("one", "un"), ("four", "quatre")]}
  items = geometry.multiway_items(types.SimpleNamespace(dir=tmp_path, parallel_pairs=lambda l, s: pairs[l]),
                                  ["en", "de", "fr"], limit=10)
  assert items == [{"id": "0", "en": "one", "de": "eins", "fr": "un"},
                   {"id": "1", "en": "two", "de": "zwei", "fr": "deux"}]


def test_evaluator_reads_retrieval_jsonl_and_scores(tmp_path):
  (tmp_path / "eval").mkdir()
  rows = [{"id": f"m{i}", "source": "test", "en": f"e{i}", "de": f"d{i}", "fr": f"f{i}"}
          for i in range(6)]
  rows.insert(2, {"id": "partial", "en": "only english"})  # lacks de/fr: skipped
  (tmp_path / "eval" / "retrieval.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  rng = np.random.default_rng(4)
  base = {i: rng.standard_normal(4) for i in range(6)}
  # de is English exactly; fr is English plus a per-item offset.
  table = {f"e{i}": base[i] for i in range(6)}
  table.update({f"d{i}": base[i] for i in range(6)})
  table.update({f"f{i}": base[i] + 0.5 for i in range(6)})
  (data, model), calls = _fake_run(tmp_path, {}, table.__getitem__)
  evaluator = from_data("geometry", data)
  assert [item["id"] for item in evaluator.items] == [f"m{i}" for i in range(6)]
  out = evaluator(model)
  assert sorted(calls) == [("de", "mean", 6), ("en", "mean", 6), ("fr", "mean", 6)]
  en = np.stack([base[i] for i in range(6)])
  assert out["geometry/de/invariance_kl"] == 0.0
  assert out["geometry/fr/invariance_kl"] == pytest.approx(geometry.invariance_kl(en + 0.5, en))
  assert out["geometry/invariance_kl"] == pytest.approx(out["geometry/fr/invariance_kl"] / 2)
  stacked = np.concatenate([en, en, en + 0.5])  # sorted languages: de, en, fr
  labels = np.tile(np.arange(6), 3)
  assert out["geometry/canonical_ch"] == pytest.approx(geometry.calinski_harabasz(stacked, labels))
  assert out["geometry/isotropy"] == pytest.approx(geometry.principal_ratio(stacked))
  assert out["geometry/items"] == 6


def test_bad_jsonl_names_file_and_line(tmp_path):
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "retrieval.jsonl").write_text('{"id": 1, "en": "a", "de": "b"}\n{oops\n')
  (data, _), _ = _fake_run(tmp_path, {}, None, languages=("en", "de"))
  with pytest.raises(ValueError, match=r"retrieval.jsonl:2"):
    from_data("geometry", data)
