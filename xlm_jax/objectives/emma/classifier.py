"""The semantic-relation classifier of EMMA-X: a diagonal Gaussian mixture over difference vectors.

For a query q_i and a candidate F_j the classifier sees D_ij = stopgrad(q_i) - F_j and gives

    p(r | D) = softmax_r[ log softmax(pi)_r + log N(D; mu_r, diag exp(log_var_r)) ]

over N relation ranks (N-1 = translation ... 0 = unrelated). A batch has Q queries and M = batch
keys + queue candidates, so D is a [Q, M, d] tensor and the naive per-rank difference D - mu_r a
[Q, M, N, d] one: at Q = 512, M = 65k, d = 768 that is 100 G floats. `gmm_log_joint` expands the
quadratic form so only [Q, M, N] and [Q, N, d] arrays ever exist.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# The expanded quadratic subtracts large terms; TF32/bf16 matmul passes (GPU/TPU defaults) would
# lose the difference, so the classifier's contractions run at full float32 precision.
_HIGHEST = jax.lax.Precision.HIGHEST


CLASSIFIER_INITS = ("reference", "scaled")


def init_classifier(rng: jax.Array, num_ranks: int, dim: int, init: str = "reference") -> dict:
  """The GMM's means [N, d], log-variances [N, d] and prior logits [N].

  "reference" (guopingiie/EMMA-X model.py): means and log-variances ~ N(0, 1), prior logits 1.
  "scaled": means ~ N(0, 1/d), log-variances ~ log(1/d) + N(0, 1). D = q - F of unit vectors
  has norm <= 2, about 1/sqrt(d) per dimension, so the reference start puts every component
  ~sqrt(d) away from all data; with its own constant-lr Adam (classifier_optimizer="own_adam")
  that classifier stayed at chance for 200 steps at lr 1e-3..1e-2 on synthetic interpolation
  pairs (d = 128), while this scaled start reached 36-40% (lr 5e-3..1e-2).
  """
  if init not in CLASSIFIER_INITS:
    raise ValueError(f"classifier init must be one of {CLASSIFIER_INITS}, got {init!r}")
  k_means, k_vars = jax.random.split(rng)
  means = jax.random.normal(k_means, (num_ranks, dim), jnp.float32)
  log_variances = jax.random.normal(k_vars, (num_ranks, dim), jnp.float32)
  if init == "scaled":
    means, log_variances = means / math.sqrt(dim), log_variances - math.log(dim)
  return {"means": means, "log_variances": log_variances,
          "prior_logits": jnp.ones((num_ranks,), jnp.float32)}


def classifier_optimizer(learning_rate: float) -> optax.GradientTransformation:
  """The classifier's own optimizer with classifier_optimizer="own_adam" (then the encoder's
  optimizer never sees the classifier)."""
  return optax.adam(learning_rate)


def _path_name(path) -> str:
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
  return ".".join(parts)


def pack_optimizer_state(opt_state) -> dict:
  """optax state -> flat {"0.count": ..., "0.mu.means": ...} of arrays.

  Checkpoints and warm starts match state by dict path and shape; optax's tuples of named
  tuples (and leaf-less EmptyState nodes) do not survive that, a flat dict of arrays does.
  """
  leaves, _ = jax.tree_util.tree_flatten_with_path(opt_state)
  return {_path_name(path): leaf for path, leaf in leaves}


def unpack_optimizer_state(tx: optax.GradientTransformation, params, packed: dict):
  """The inverse of `pack_optimizer_state` for `tx` over `params` (structure from eval_shape)."""
  template = jax.eval_shape(tx.init, params)
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree.unflatten(treedef, [packed[_path_name(path)] for path, _ in paths])


class Interpolation(NamedTuple):
  """D_ij = q_i - (lam_ij * partner_i + (1 - lam_ij) * F_j), the `gmm` warm-up's synthetic pairs."""
  lam: jax.Array        # [Q, M] in [0, 1]
  partner: jax.Array    # [Q, d]: q_i itself (reference) or the query of row i's translation


def _dot(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def _weighted_cross(x: jax.Array, precision: jax.Array, candidates: jax.Array) -> jax.Array:
  """sum_k x_qk W_rk F_mk -> [Q, M, N] through a [Q, N, d] intermediate (never [Q, M, N, d])."""
  return jnp.einsum("qnd,md->qmn", x[:, None, :] * precision[None], candidates,
                    precision=_HIGHEST)


def gmm_log_joint(classifier: dict, queries: jax.Array, candidates: jax.Array,
                  interpolation: Interpolation | None = None) -> jax.Array:
  """log pi_r + log N(D_qm; mu_r, sigma_r) for every (query, candidate, rank): [Q, M, N].

  D_qm = queries_q - candidates_m, or with `interpolation` D = q - lam t - (1 - lam) F. Writing
  W_r = diag(1 / sigma_r^2), V = q - F and U = t' + F with t' = -t, D = V + lam U and

      (D - mu)^T W (D - mu) = V'WV + 2 lam V'WU + lam^2 U'WU - 2 mu'W(V + lam U) + mu'W mu

  where every term is a sum of [Q, N], [M, N] and [Q, M, N] pieces.
  """
  queries = queries.astype(jnp.float32)
  candidates = candidates.astype(jnp.float32)
  means = classifier["means"].astype(jnp.float32)
  log_var = classifier["log_variances"].astype(jnp.float32)
  precision = jnp.exp(-log_var)                                     # [N, d]
  weighted_means = means * precision                                # mu W, [N, d]
  dim = queries.shape[-1]

  qwq = _dot(queries * queries, precision.T)                        # [Q, N]
  fwf = _dot(candidates * candidates, precision.T)                  # [M, N]
  qwf = _weighted_cross(queries, precision, candidates)             # [Q, M, N]
  mwq = _dot(queries, weighted_means.T)                             # [Q, N]
  mwf = _dot(candidates, weighted_means.T)                          # [M, N]
  vwv = qwq[:, None, :] - 2.0 * qwf + fwf[None]                     # V'WV
  mwv = mwq[:, None, :] - mwf[None]                                 # mu'W V
  maha = vwv - 2.0 * mwv
  if interpolation is not None:
    lam = interpolation.lam.astype(jnp.float32)[..., None]          # [Q, M, 1]
    t = -interpolation.partner.astype(jnp.float32)                  # t' = -partner, [Q, d]
    qwt = _dot(queries * t, precision.T)                            # [Q, N]
    twt = _dot(t * t, precision.T)                                  # [Q, N]
    twf = _weighted_cross(t, precision, candidates)                 # [Q, M, N]
    mwt = _dot(t, weighted_means.T)                                 # [Q, N]
    # V'WU = (q - F)'W(t' + F);  U'WU = (t' + F)'W(t' + F);  mu'W U = mu'W t' + mu'W F.
    vwu = qwt[:, None, :] + qwf - twf - fwf[None]
    uwu = twt[:, None, :] + 2.0 * twf + fwf[None]
    mwu = mwt[:, None, :] + mwf[None]
    maha = maha + 2.0 * lam * vwu + lam * lam * uwu - 2.0 * lam * mwu
  maha = maha + jnp.sum(means * weighted_means, axis=-1)            # + mu'W mu, [N]
  log_normal = -0.5 * (dim * math.log(2.0 * math.pi) + jnp.sum(log_var, axis=-1) + maha)
  return jax.nn.log_softmax(classifier["prior_logits"].astype(jnp.float32)) + log_normal


def gmm_log_posterior(classifier: dict, queries: jax.Array, candidates: jax.Array,
                      interpolation: Interpolation | None = None) -> jax.Array:
  """log p(r | D) for every (query, candidate): [Q, M, N]."""
  return jax.nn.log_softmax(gmm_log_joint(classifier, queries, candidates, interpolation), axis=-1)


def interpolation_ranks(lam: jax.Array, prior_logits: jax.Array) -> jax.Array:
  """Rank of an interpolation weight: bucket of lam in [0, 1] by the cumulative softmax(pi).

  Rank r covers [c_{r-1}, c_r) with c_r = sum_{s <= r} softmax(pi)_s and c_{-1} = 0, so a pair
  closer to the translation (larger lam) gets a higher rank.
  """
  edges = jnp.cumsum(jax.nn.softmax(prior_logits.astype(jnp.float32)))[:-1]   # [N-1]
  lam = jnp.clip(lam, 0.0, 1.0)
  ranks = jnp.sum(lam[..., None] >= edges, axis=-1)
  return jnp.minimum(ranks, prior_logits.shape[0] - 1).astype(jnp.int32)


def label_smoothed_nll(log_probs: jax.Array, targets: jax.Array, epsilon: float,
                       weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Mean label-smoothed cross-entropy over cells; returns (loss, accuracy).

  The target rank gets probability 1 - epsilon and each other rank epsilon / (N - 1) (the
  fairseq / EMMA-X reference convention). `weights` [...] select the cells (default: all).
  """
  num_ranks = log_probs.shape[-1]
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  others = -(jnp.sum(log_probs, axis=-1)) - nll
  per_cell = (1.0 - epsilon) * nll + epsilon / max(num_ranks - 1, 1) * others
  if weights is None:
    weights = jnp.ones(per_cell.shape, jnp.float32)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  loss = jnp.sum(per_cell * weights) / total
  correct = (jnp.argmax(log_probs, axis=-1) == targets).astype(jnp.float32)
  return loss, jnp.sum(correct * weights) / total
