"""Evaluation metrics (xlm_jax/evaluation/metrics.py) against hand computations and dense references."""
import tracemalloc

import numpy as np
import pytest
import scipy.sparse

from xlm_jax.evaluation import metrics


def random_rotation(rng, d):
  q, r = np.linalg.qr(rng.standard_normal((d, d)))
  return q * np.sign(np.diag(r))  # sign fix: a uniformly random orthogonal matrix


# --- nearest neighbours ----------------------------------------------------------------------------

def test_blockwise_topk_equals_dense_argsort():
  rng = np.random.default_rng(0)
  queries, candidates = rng.standard_normal((53, 7)), rng.standard_normal((41, 7))
  dense = metrics.normalize(queries) @ metrics.normalize(candidates).T
  expected = np.argsort(-dense, axis=1)[:, :5]
  for block in (1, 8, 1000):  # blocks smaller than N, uneven, and one block for all
    scores, indices = metrics.topk_cosine(queries, candidates, 5, block=block)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(dense, expected, 1), rtol=1e-12)
  # k beyond the pool: every candidate, ranked.
  _, everything = metrics.topk_cosine(queries, candidates, 100, block=8)
  np.testing.assert_array_equal(everything, np.argsort(-dense, axis=1))
  # Sparse rows (the TF-IDF baselines) give the dense answer.
  unit_q, unit_c = metrics.normalize(queries), metrics.normalize(candidates)
  _, sparse_top = metrics.blockwise_topk(scipy.sparse.csr_matrix(unit_q), scipy.sparse.csr_matrix(unit_c),
                                         5, block=8)
  np.testing.assert_array_equal(sparse_top, expected)


def test_topk_never_holds_the_full_similarity_matrix():
  rng = np.random.default_rng(1)
  n = 6000
  x = rng.standard_normal((n, 4)).astype(np.float32)
  tracemalloc.start()
  _, indices = metrics.topk_cosine(x, x, 1, block=256)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert (indices[:, 0] == np.arange(n)).all()
  # The dense n x n float32 matrix alone would be 144 MB; blocks of 256 rows hold 6 MB at a time.
  assert peak < 40e6, peak
  # The element cap shrinks blocks whatever `block` asks for.
  assert metrics._block_rows(100_000, 512) * 100_000 <= metrics.MAX_BLOCK_ELEMENTS


def test_precision_at_k_single_and_several_gold():
  top = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2]])
  assert metrics.precision_at_k(top, np.array([2, 2, 1]), k=1) == pytest.approx(1 / 3)
  assert metrics.precision_at_k(top, np.array([2, 2, 1]), k=2) == pytest.approx(1.0)
  # Any listed answer counts; no answer is a miss.
  assert metrics.precision_at_k(top, [{5, 0}, {1}, set()], k=1) == pytest.approx(1 / 3)
  assert metrics.precision_at_k(top, [{5, 0}, {1}, set()], k=2) == pytest.approx(2 / 3)


# --- mining ------------------------------------------------------------------------------------------

# Unit vectors with exact cosines: sources a, b, c and targets d, e, h.
A, B, C = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8)
D, E, H = (0.8, 0.6), (-0.6, 0.8), (0.0, -1.0)


def test_margin_scores_hand_example():
  # cos:      d      e      h          k = 2 neighbourhood means (top-2 cosines):
  #   a     0.8   -0.6    0.0          r(a) = (0.8 + 0.0)/2 = 0.4    r(d) = (0.96 + 0.8)/2 = 0.88
  #   b     0.6    0.8   -1.0          r(b) = (0.8 + 0.6)/2 = 0.7    r(e) = (0.8 + 0.28)/2 = 0.54
  #   c     0.96   0.28  -0.8          r(c) = (0.96 + 0.28)/2 = 0.62 r(h) = (0.0 - 0.8)/2 = -0.4
  # margin(x, y) = cos / ((r(x) + r(y)) / 2)
  m = metrics.margin_scores(np.array([A, B, C]), np.array([D, E, H]), k=2, block=1)
  np.testing.assert_array_equal(m.forward_indices, [[0, 2], [1, 0], [0, 1]])
  np.testing.assert_allclose(m.forward, [[0.8 / 0.64, 0.0], [0.8 / 0.62, 0.6 / 0.79],
                                         [0.96 / 0.75, 0.28 / 0.58]], rtol=1e-12)
  np.testing.assert_array_equal(m.backward_indices, [[2, 0], [1, 2], [0, 2]])
  np.testing.assert_allclose(m.backward, [[0.96 / 0.75, 0.8 / 0.64], [0.8 / 0.62, 0.28 / 0.58],
                                          [0.0, -0.8 / 0.11]], rtol=1e-12)
  # Best per sentence: a->d 1.25, b->e 1.290, c->d 1.28; d<-c, e<-b, h<-a 0. Greedy one-to-one by
  # margin: (b, e), (c, d), then (a, d) is blocked (d taken), (a, h) remains.
  pairs, scores = metrics.mine_pairs(m)
  np.testing.assert_array_equal(pairs, [[1, 1], [2, 0], [0, 2]])
  np.testing.assert_allclose(scores, [0.8 / 0.62, 0.96 / 0.75, 0.0], rtol=1e-12)


def test_f1_threshold_chosen_on_dev_applied_to_test():
  # Dev: the mined list above with gold {a-d, b-e}: cutting after 1 pair gives P = 1, R = 1/2,
  # F1 = 2/3; after 2: P = R = 1/2, F1 = 1/2; after 3: P = 1/3, R = 1/2, F1 = 2/5.
  dev_pairs, dev_scores = np.array([[1, 1], [2, 0], [0, 2]]), np.array([0.8 / 0.62, 0.96 / 0.75, 0.0])
  dev_gold = [[0, 0], [1, 1]]
  threshold, f1 = metrics.best_threshold(dev_pairs, dev_scores, dev_gold)
  assert threshold == pytest.approx(0.8 / 0.62) and f1 == pytest.approx(2 / 3)
  # Test: scores 2.0 (right), 1.2 (wrong), 1.0 (right), three gold pairs. At 1.29 only the 2.0
  # pair is taken: P = 1, R = 1/3, F1 = 1/2.
  test_pairs, test_scores = np.array([[0, 0], [1, 2], [2, 1]]), np.array([2.0, 1.2, 1.0])
  test_gold = [[0, 0], [2, 1], [3, 3]]
  out = metrics.mine_f1(dev_pairs, dev_scores, dev_gold, test_pairs, test_scores, test_gold)
  assert out == pytest.approx({"threshold": 0.8 / 0.62, "dev_f1": 2 / 3, "precision": 1.0,
                               "recall": 1 / 3, "f1": 0.5})
  # Every pair taken (threshold 1.0): P = 2/3, R = 2/3.
  assert metrics.precision_recall_f1(test_pairs, test_scores, test_gold, 1.0) == \
      pytest.approx((2 / 3, 2 / 3, 2 / 3))
  # Tied scores are cut together: the best cut cannot split (0, 0) from the wrong (1, 1).
  threshold, f1 = metrics.best_threshold([[0, 0], [1, 1]], [1.0, 1.0], [[0, 0]])
  assert threshold == 1.0 and f1 == pytest.approx(2 / 3)
  assert metrics.best_threshold([[0, 1]], [1.0], [[0, 0]]) == (float("inf"), 0.0)


def test_identical_translations_are_mined_exactly():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((30, 16))
  pairs, _ = metrics.mine_pairs(metrics.margin_scores(x, x[::-1].copy(), k=4, block=7))
  assert sorted(map(tuple, pairs)) == [(i, 29 - i) for i in range(30)]


# --- BLI ---------------------------------------------------------------------------------------------

def test_procrustes_recovers_a_known_rotation():
  rng = np.random.default_rng(3)
  rotation = random_rotation(rng, 12)
  x = rng.standard_normal((200, 12))
  w = metrics.procrustes(x, x @ rotation)
  np.testing.assert_allclose(w, rotation, atol=1e-10)
  np.testing.assert_allclose(w.T @ w, np.eye(12), atol=1e-10)
  # With noise the map stays orthogonal and close.
  noisy = metrics.procrustes(x, x @ rotation + 0.01 * rng.standard_normal(x.shape))
  np.testing.assert_allclose(noisy.T @ noisy, np.eye(12), atol=1e-10)
  assert np.abs(noisy - rotation).max() < 0.01


def test_csls_matches_a_dense_numpy_reference():
  rng = np.random.default_rng(4)
  src, tgt = rng.standard_normal((37, 6)), rng.standard_normal((45, 6))
  cos = metrics.normalize(src) @ metrics.normalize(tgt).T
  k = 10
  r_src = np.sort(cos, axis=1)[:, -k:].mean(axis=1)   # each source's k nearest targets
  r_tgt = np.sort(cos, axis=0)[-k:, :].mean(axis=0)   # each target's k nearest sources
  csls = 2 * cos - r_src[:, None] - r_tgt[None, :]
  queries = np.array([3, 0, 36, 5])
  scores, indices = metrics.csls_topk(src, tgt, k_csls=k, topk=5, queries=queries, block=3)
  expected = np.argsort(-csls[queries], axis=1)[:, :5]
  np.testing.assert_array_equal(indices, expected)
  np.testing.assert_allclose(scores, np.take_along_axis(csls[queries], expected, 1), rtol=1e-12)
  # CSLS is not cosine: the hubness terms change some rankings on this data.
  assert (np.argmax(csls, 1) != np.argmax(cos, 1)).any()


# --- CKA ---------------------------------------------------------------------------------------------

def test_linear_cka_identity_invariances_and_hand_value():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((40, 8))
  assert metrics.linear_cka(x, x) == pytest.approx(1.0)
  rotated = 3.5 * x @ random_rotation(rng, 8) + 2.0  # orthogonal map, isotropic scale, offset
  assert metrics.linear_cka(x, rotated) == pytest.approx(1.0)
  assert metrics.linear_cka(x, rng.standard_normal((40, 8))) < 0.5
  # Gram form (fewer rows than features) and feature form agree.
  wide = rng.standard_normal((5, 30))
  assert metrics.linear_cka(wide, wide @ random_rotation(rng, 30)) == pytest.approx(1.0)
  # Hand value: x = [1, -1, 0, 0], y columns [1, -1, 0, 0] and [0, 0, 1, -1] (both centred).
  # ||y^T x||^2 = 4, ||x^T x|| = 2, ||y^T y|| = ||diag(2, 2)|| = 2 sqrt 2: CKA = 4 / (4 sqrt 2).
  x1 = np.array([[1.0], [-1.0], [0.0], [0.0]])
  y2 = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  assert metrics.linear_cka(x1, y2) == pytest.approx(1 / np.sqrt(2))
  assert np.isnan(metrics.linear_cka(np.ones((4, 2)), y2))


# --- linear probe ------------------------------------------------------------------------------------

def test_logistic_regression_separates_a_separable_set():
  rng = np.random.default_rng(6)
  centres = 4.0 * np.eye(3)[:, :3]
  labels = np.repeat(np.arange(3), 30)
  x = centres[labels] + 0.5 * rng.standard_normal((90, 3))
  model = metrics.logistic_regression(x, labels, l2=1e-3)
  assert metrics.accuracy(model.predict(x), labels) == 1.0
  # The fitted weights are the optimum: the objective's gradient vanishes there.
  logits = model.scores(x)
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  grad_w = x.T @ (probs - np.eye(3)[labels]) / len(x) + 1e-3 * model.weights
  assert np.abs(grad_w).max() < 1e-4
  # Sparse rows give the same classifier.
  sparse = metrics.logistic_regression(scipy.sparse.csr_matrix(x), labels, l2=1e-3)
  np.testing.assert_allclose(sparse.weights, model.weights, atol=1e-3)
  # Shuffled labels cannot be separated by a strongly regularised model: near chance.
  shuffled = rng.permutation(labels)
  weak = metrics.logistic_regression(x, shuffled, l2=10.0)
  assert metrics.accuracy(weak.predict(x), shuffled) < 0.6
  assert metrics.majority_accuracy([0, 1, 1, 2], [1, 1, 0, 2]) == 0.5
  with pytest.raises(ValueError, match="l2 must be > 0"):
    metrics.logistic_regression(x, labels, l2=0.0)
