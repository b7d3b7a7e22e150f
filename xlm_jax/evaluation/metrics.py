"""The evaluation suite's metrics in NumPy: nearest neighbours, margin mining, BLI, CKA, linear probes.

Ranking functions work on blocks of query rows. A block's scores against all N candidates
([block, N]) is the largest array they hold, so mining or retrieval over 100k sentences never
materialises the N x N similarity matrix. Dense inputs keep their precision (float32 stays float32,
float64 stays float64). The TF-IDF baselines pass scipy.sparse rows through the same code.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import numpy as np
import scipy.optimize
import scipy.sparse

# Block rows are capped so that one block holds at most this many scores (64 MB in float32),
# whatever `block` says: 100k candidates then get blocks of 167 rows, not 100k x 512.
MAX_BLOCK_ELEMENTS = 1 << 24
DEFAULT_BLOCK = 512
# Floor of vector norms and margin denominators: a zero vector (an empty text's encoding) keeps
# zero similarity instead of NaN.
EPSILON = 1e-12


def _dense_float(x) -> np.ndarray:
  x = np.asarray(x)
  return x.astype(np.result_type(x.dtype, np.float32), copy=False)


def normalize(x) -> np.ndarray:
  """Rows scaled to unit L2 norm: x_i / max(||x_i||_2, 1e-12), so dot products are cosines."""
  x = _dense_float(x)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), EPSILON)


def _unit_rows(x):
  """Dense rows are normalised here; sparse rows (the TF-IDF baselines) arrive normalised."""
  return x if scipy.sparse.issparse(x) else normalize(x)


def _block_rows(num_candidates: int, block: int) -> int:
  return max(1, min(int(block), MAX_BLOCK_ELEMENTS // max(num_candidates, 1)))


def blockwise_topk(queries, candidates, k: int, block: int = DEFAULT_BLOCK,
                   score: Callable[[np.ndarray, slice], np.ndarray] | None = None):
  """(scores [n, k'], indices [n, k']) of the k' = min(k, N) best candidates of every query row,
  best first; the score of a pair is its dot product, or score(dots [rows, N], rows) if given.

  Only one block of rows' scores ([rows, N], rows <= block) exists at a time. With k = 1 the
  best is argmax's (the lowest index wins a tie); with k > 1, ties at the k-th place are cut by
  np.argpartition, and the kept columns are ordered by score, then index.
  """
  n, num_candidates = queries.shape[0], candidates.shape[0]
  k = min(int(k), num_candidates)
  top_scores = np.zeros((n, k), np.float64)  # [n, k] is small: float64 whatever the input
  top_indices = np.zeros((n, k), np.int64)
  if n == 0 or k == 0:
    return top_scores, top_indices
  candidates_t = candidates.T
  step = _block_rows(num_candidates, block)
  for start in range(0, n, step):
    rows = slice(start, min(start + step, n))
    dots = queries[rows] @ candidates_t
    dots = dots.toarray() if scipy.sparse.issparse(dots) else np.asarray(dots)
    scores = dots if score is None else score(dots, rows)
    if k == 1:
      best = np.argmax(scores, axis=1)[:, None]
    else:
      best = (np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < num_candidates
              else np.broadcast_to(np.arange(num_candidates), scores.shape))
      best_scores = np.take_along_axis(scores, best, axis=1)
      # lexsort's last key is the primary one: score descending, then index ascending.
      best = np.take_along_axis(best, np.lexsort((best, -best_scores), axis=1), axis=1)
    top_indices[rows] = best
    top_scores[rows] = np.take_along_axis(scores, best, axis=1)
  return top_scores, top_indices


def mean_topk(queries, candidates, k: int, block: int = DEFAULT_BLOCK) -> np.ndarray:
  """[n] mean of each query row's k largest dot products with the candidates (k <= N), blockwise.

  The neighbourhood terms of CSLS need these values alone: np.partition finds them without the
  indices, the sorting and the gathers of blockwise_topk, twice as fast on a 20k-word BLI pool.
  """
  n, num_candidates = queries.shape[0], candidates.shape[0]
  k = min(int(k), num_candidates)
  out = np.zeros(n, np.float64)
  if n == 0 or k == 0:
    return out
  candidates_t = candidates.T
  step = _block_rows(num_candidates, block)
  for start in range(0, n, step):
    dots = np.asarray(queries[start:start + step] @ candidates_t)
    top = np.partition(dots, num_candidates - k, axis=1)[:, num_candidates - k:]
    out[start:start + step] = top.mean(axis=1, dtype=np.float64)
  return out


def topk_cosine(queries, candidates, k: int, block: int = DEFAULT_BLOCK):
  """(cosines [n, k], indices [n, k]) of each query's k most cosine-similar candidates, best first,
  computed in blocks of query rows (memory O(block x N), never N x N)."""
  return blockwise_topk(_unit_rows(queries), _unit_rows(candidates), k, block)


def precision_at_k(topk_indices: np.ndarray, gold, k: int | None = None) -> float:
  """P@k = (1/n) sum_i [gold_i in the first k of topk_indices[i]].

  gold: one index per query ([n] ints), or a collection of indices per query (any counts, as for
  BLI's dictionaries with several listed translations); a query with no gold counts as a miss.
  """
  topk_indices = np.asarray(topk_indices)
  if k is not None:
    topk_indices = topk_indices[:, :k]
  if len(topk_indices) == 0:
    return 0.0
  if isinstance(gold, np.ndarray) and gold.ndim == 1:
    return float(np.mean((topk_indices == gold[:, None]).any(axis=1)))
  hits = [bool(set(map(int, row)) & set(map(int, answers)))
          for row, answers in zip(topk_indices, gold)]
  return float(np.mean(hits))


# --- Bitext mining: ratio margin (Artetxe & Schwenk 2019, "Margin-based parallel corpus mining
# with multilingual sentence embeddings", ACL; the "max" retrieval of LASER's mine_bitexts) -----


class Margins(NamedTuple):
  """Each sentence's k nearest neighbours in the other language and the pairs' ratio margins."""
  forward_indices: np.ndarray   # [n_src, k] target indices
  forward: np.ndarray           # [n_src, k] margin(x_i, y_forward_indices[i, j])
  backward_indices: np.ndarray  # [n_tgt, k] source indices
  backward: np.ndarray          # [n_tgt, k] margin(x_backward_indices[j, i], y_j)


def ratio_margin(cosine, src_neighbourhood, tgt_neighbourhood):
  """margin(x, y) = cos(x, y) / (sum_{z in NN_k(x)} cos(x, z) / 2k + sum_{z in NN_k(y)} cos(y, z) / 2k),
  given each side's neighbourhood mean (1/k) sum cos; denominators are floored at 1e-12."""
  return cosine / np.maximum((src_neighbourhood + tgt_neighbourhood) / 2, EPSILON)


def margin_scores(src, tgt, k: int = 4, block: int = DEFAULT_BLOCK) -> Margins:
  """Ratio margins of every source sentence with its k nearest targets and of every target with its
  k nearest sources (NN_k(x) are x's k nearest targets, NN_k(y) y's k nearest sources, by cosine),
  found blockwise. Artetxe & Schwenk (2019) use k = 4."""
  src, tgt = _unit_rows(src), _unit_rows(tgt)
  fwd_cos, fwd_idx = blockwise_topk(src, tgt, k, block)
  bwd_cos, bwd_idx = blockwise_topk(tgt, src, k, block)
  src_mean, tgt_mean = fwd_cos.mean(axis=1), bwd_cos.mean(axis=1)
  return Margins(fwd_idx, ratio_margin(fwd_cos, src_mean[:, None], tgt_mean[fwd_idx]),
                 bwd_idx, ratio_margin(bwd_cos, src_mean[bwd_idx], tgt_mean[:, None]))


def mine_pairs(margins: Margins) -> tuple[np.ndarray, np.ndarray]:
  """(pairs [m, 2] of (source, target) indices, margins [m]), best first: every source's best
  target and every target's best source by margin, then kept greedily in margin order while
  neither sentence is taken (one-to-one), as LASER's "max" mining does."""
  if not margins.forward.size or not margins.backward.size:
    return np.zeros((0, 2), np.int64), np.zeros(0)
  fwd_best, bwd_best = np.argmax(margins.forward, axis=1), np.argmax(margins.backward, axis=1)
  num_src, num_tgt = len(margins.forward_indices), len(margins.backward_indices)
  pairs = np.concatenate([
      np.stack([np.arange(num_src), margins.forward_indices[np.arange(num_src), fwd_best]], 1),
      np.stack([margins.backward_indices[np.arange(num_tgt), bwd_best], np.arange(num_tgt)], 1)])
  scores = np.concatenate([margins.forward[np.arange(num_src), fwd_best],
                           margins.backward[np.arange(num_tgt), bwd_best]])
  kept, seen_src, seen_tgt = [], set(), set()
  # Stable: a forward and a backward candidate with equal margins keep their listed order.
  for i in np.argsort(-scores, kind="stable"):
    s, t = int(pairs[i, 0]), int(pairs[i, 1])
    if s not in seen_src and t not in seen_tgt:
      seen_src.add(s)
      seen_tgt.add(t)
      kept.append(i)
  kept = np.asarray(kept, np.int64)
  return pairs[kept].astype(np.int64), scores[kept]


def _gold_set(gold) -> set[tuple[int, int]]:
  return {(int(s), int(t)) for s, t in np.asarray(gold, np.int64).reshape(-1, 2)}


def precision_recall_f1(pairs, scores, gold, threshold: float) -> tuple[float, float, float]:
  """P = |mined & gold| / |mined|, R = |mined & gold| / |gold|, F1 = 2PR / (P + R), mined = the
  pairs whose score is >= threshold (0 where a ratio has no denominator)."""
  gold = _gold_set(gold)
  mined = [tuple(map(int, p)) for p, s in zip(np.asarray(pairs).reshape(-1, 2), scores)
           if s >= threshold]
  hits = sum(p in gold for p in mined)
  precision = hits / len(mined) if mined else 0.0
  recall = hits / len(gold) if gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
  return precision, recall, f1


def best_threshold(pairs, scores, gold) -> tuple[float, float]:
  """(threshold, F1) of the score cut-off that maximises F1 of the pairs scored >= it; only cuts
  between distinct scores are tried (tied pairs are taken or left together). (inf, 0) when
  nothing can be right."""
  gold = _gold_set(gold)
  scores = np.asarray(scores, np.float64)
  if not len(scores) or not gold:
    return float("inf"), 0.0
  order = np.argsort(-scores, kind="stable")
  hits = np.cumsum([tuple(map(int, p)) in gold for p in np.asarray(pairs)[order]])
  taken = np.arange(1, len(order) + 1)
  f1 = 2 * hits / (taken + len(gold))            # 2PR/(P+R) = 2 tp / (mined + gold)
  sorted_scores = scores[order]
  # A cut after position i is possible only where the next score is lower.
  ends = np.append(sorted_scores[1:] < sorted_scores[:-1], True)
  best = int(np.flatnonzero(ends)[np.argmax(f1[ends])])
  if hits[best] == 0:
    return float("inf"), 0.0
  return float(sorted_scores[best]), float(f1[best])


def mine_f1(dev_pairs, dev_scores, dev_gold, test_pairs, test_scores, test_gold) -> dict:
  """BUCC-style evaluation: the threshold maximising F1 on the dev part (best_threshold), then
  precision / recall / F1 of the test part's pairs scored >= it."""
  threshold, dev_f1 = best_threshold(dev_pairs, dev_scores, dev_gold)
  precision, recall, f1 = precision_recall_f1(test_pairs, test_scores, test_gold, threshold)
  return {"threshold": threshold, "dev_f1": dev_f1, "precision": precision, "recall": recall,
          "f1": f1}


# --- Bilingual lexicon induction (Conneau et al. 2018, "Word translation without parallel data") --


def procrustes(x, y) -> np.ndarray:
  """The orthogonal W [d, d] minimising ||x W - y||_F for paired rows x, y [n, d]:
  W = U V^T with U S V^T = SVD(x^T y) (Schoenemann 1966; the MUSE refinement step)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape:
    raise ValueError(f"procrustes needs paired rows of one width, got {x.shape} and {y.shape}")
  u, _, vt = np.linalg.svd(x.T @ y)
  return u @ vt


def csls_topk(mapped_src, tgt, k_csls: int = 10, topk: int = 5, queries=None,
              block: int = DEFAULT_BLOCK):
  """(CSLS scores [q, topk], target indices [q, topk]), best first, of the source rows `queries`
  (default: all) of mapped_src against tgt; both sides are unit-normalised first.

  CSLS(x, y) = 2 cos(x, y) - r_T(x) - r_S(y), r_T(x) = mean cos of x to its k_csls nearest targets,
  r_S(y) = mean cos of y to its k_csls nearest sources over all of mapped_src (Conneau et al. 2018,
  k = 10). Computed in blocks of query rows.
  """
  src, tgt = normalize(mapped_src), normalize(tgt)
  rows = np.arange(len(src)) if queries is None else np.asarray(queries, np.int64)
  # r_T is read for the query rows alone (the rest of mapped_src only enters r_S): a BLI pool of
  # 20k words with 2k queries then costs two pool x pool passes, not three.
  query_r = mean_topk(src[rows], tgt, k_csls, block)
  r_tgt = mean_topk(tgt, src, k_csls, block)
  return blockwise_topk(src[rows], tgt, topk, block,
                        score=lambda cos, part: 2 * cos - query_r[part, None] - r_tgt[None, :])


# --- Representation similarity (Kornblith et al. 2019, "Similarity of neural network
# representations revisited", ICML) ----------------------------------------------------------------


def linear_cka(x, y) -> float:
  """Linear CKA of paired rows x [n, d1], y [n, d2]: with column-centred X, Y,
  CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F); 1 for identical inputs, invariant to orthogonal
  transforms and isotropic scaling of either side; NaN when a side is constant (every row equal)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) != len(y) or len(x) < 2:
    raise ValueError(f"linear_cka needs the same n >= 2 rows on both sides, got {len(x)} and {len(y)}")
  x, y = x - x.mean(axis=0), y - y.mean(axis=0)
  if len(x) < min(x.shape[1], y.shape[1]):
    # Fewer rows than features: the n x n Gram form is the same number, computed faster.
    gx, gy = x @ x.T, y @ y.T
    cross, norm_x, norm_y = np.sum(gx * gy), np.linalg.norm(gx), np.linalg.norm(gy)
  else:
    cross = np.linalg.norm(y.T @ x) ** 2
    norm_x, norm_y = np.linalg.norm(x.T @ x), np.linalg.norm(y.T @ y)
  if norm_x == 0 or norm_y == 0:
    return float("nan")  # a constant representation (every row equal) has no CKA
  return float(cross / (norm_x * norm_y))


# --- Linear probe --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinearClassifier:
  """Class scores x W + b; the predicted class is the highest."""
  weights: np.ndarray  # [features, classes]
  bias: np.ndarray     # [classes]

  def scores(self, x) -> np.ndarray:
    return np.asarray(x @ self.weights) + self.bias

  def predict(self, x) -> np.ndarray:
    return np.argmax(self.scores(x), axis=1)


def logistic_regression(x, labels, num_classes: int | None = None, l2: float = 1e-3,
                        max_iter: int = 500) -> LinearClassifier:
  """Multinomial logistic regression fitted with L-BFGS from zeros:
  min_{W, b} (1/n) sum_i -log softmax(x_i W + b)[y_i] + (l2 / 2) ||W||_F^2 (the bias is not
  penalised). Convex, and strictly so in W for l2 > 0. x: dense [n, d] or scipy.sparse rows."""
  labels = np.asarray(labels, np.int64)
  n, d = x.shape
  if n != len(labels) or n == 0:
    raise ValueError(f"logistic_regression needs one label per row, got {n} rows and {len(labels)} labels")
  if l2 <= 0:
    raise ValueError(f"l2 must be > 0 (separable data has no finite optimum without it), got {l2}")
  classes = int(num_classes or labels.max() + 1)
  x = x.astype(np.float64) if scipy.sparse.issparse(x) else np.asarray(x, np.float64)
  onehot = np.eye(classes)[labels]
  x_t = x.T

  def loss_and_grad(theta):
    w, b = theta[:d * classes].reshape(d, classes), theta[d * classes:]
    logits = np.asarray(x @ w) + b
    logits -= logits.max(axis=1, keepdims=True)  # log-softmax without overflow
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -np.sum(onehot * log_probs) / n + 0.5 * l2 * np.sum(w * w)
    residual = (np.exp(log_probs) - onehot) / n
    grad_w = np.asarray(x_t @ residual) + l2 * w
    return loss, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

  result = scipy.optimize.minimize(loss_and_grad, np.zeros(d * classes + classes), jac=True,
                                   method="L-BFGS-B", options={"maxiter": int(max_iter)})
  theta = result.x
  return LinearClassifier(theta[:d * classes].reshape(d, classes), theta[d * classes:])


def accuracy(predicted, labels) -> float:
  """Share of rows whose predicted class equals the label (0 for no rows)."""
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  return float(np.mean(predicted == labels)) if len(labels) else 0.0


def majority_accuracy(train_labels, test_labels) -> float:
  """Accuracy of always predicting the most frequent training label (the lowest on a tie)."""
  majority = int(np.argmax(np.bincount(np.asarray(train_labels, np.int64))))
  return accuracy(np.full(len(test_labels), majority), test_labels)

