"""EMMA-X's reference-code switches against NumPy transcriptions of guopingiie/EMMA-X.

Each switch of the emma_x objective (gmm_interpolation, rince_rows, em_update,
classifier_optimizer / classifier_init) defaults to the reference's behaviour; each test here
writes the reference's formula (model.py, criterion.py, train.py) in NumPy, or in jax.numpy where
a gradient of it is needed, and checks the objective against it. The other side of each switch
(this codebase's earlier choices) is exercised by tests/test_emma_x.py.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlm_jax import mesh as mesh_lib
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import emma_x
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.emma import classifier as gmm
from xlm_jax.objectives.emma import losses, steps, towers
from xlm_jax.registry import OBJECTIVES
from xlm_jax.train.checkpoint import Checkpointer
from xlm_jax.train.step import BoundObjective

# The tiny EMMA-X state and batches of the module beside this one (same sizes).
from test_emma_x import _batch as _batches, _init_boxed

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
N = 4   # relation ranks


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- the reference


def _log_softmax(x, xp):
  x = x - xp.max(x, axis=-1, keepdims=True)
  return x - xp.log(xp.sum(xp.exp(x), axis=-1, keepdims=True))


def ref_gmm_logits(classifier, features, xp=np):
  """model.py gaussian_mixture_module: D [Q, M, d] -> logits_normalize [Q, M, N]."""
  mu, lg_sigma2, pi = (classifier[k] for k in ("means", "log_variances", "prior_logits"))
  lg2pi_d = features.shape[-1] * np.log(2 * np.pi)
  diffs = features[:, :, None, :] - mu[None, None]
  expo = xp.sum(diffs ** 2 / xp.exp(lg_sigma2)[None, None], axis=-1)
  l_prob = -0.5 * (lg2pi_d + xp.sum(lg_sigma2, axis=-1) + expo)
  logits = _log_softmax(pi, xp) + l_prob
  return logits - xp.max(logits, axis=-1, keepdims=True)


def ref_label_smoothed_ce(logits, labels, eps, xp=np):
  """criterion.py calculate_label_smoothed_ce_loss (no ignore index: the GMM loss)."""
  lprob = _log_softmax(logits, xp)
  nll = -xp.take_along_axis(lprob, labels[..., None], axis=-1)
  smooth = -xp.sum(lprob, axis=-1, keepdims=True)
  eps_i = eps / (logits.shape[-1] - 1)
  return ((1.0 - eps - eps_i) * xp.sum(nll) + eps_i * xp.sum(smooth)) / labels.size


def ref_scores_to_ranks(scores, pi):
  """model.py covert_scores_to_ranks: bucket of a score in [0, 1] by the cumulative softmax(pi)."""
  clip = np.clip(scores, 0.0, 1.0)
  ranks = np.zeros(scores.shape, np.int64)
  bar = np.exp(pi - pi.max()) / np.sum(np.exp(pi - pi.max()))
  threshold = 0.0
  for i in range(len(pi)):
    ranks[(clip >= threshold) & (clip < threshold + bar[i])] = i
    threshold += bar[i]
  return ranks


def ref_gold_mask(bs, num_candidates):
  """model.py: eye(bs, M) + golden_mask, the self and translation cells (labelled N-1)."""
  pair_label = np.concatenate([np.arange(bs)[bs // 2:], np.arange(bs)[:bs // 2]])
  golden = np.zeros((bs, num_candidates), bool)
  golden[np.arange(bs), pair_label] = True
  return golden, np.eye(bs, num_candidates, dtype=bool) | golden


def ref_rince(sims, labels, temperatures, eps=1e-7):
  """criterion.py EMContrastive's cts part (calculate_contrastive_loss per rank), float64."""
  logits = sims - sims.max(axis=1, keepdims=True)
  bs = sims.shape[0]
  logits_mask = np.ones_like(sims)
  logits_mask[np.arange(bs), np.arange(bs)] = 0.0
  total = 0.0
  for i in range(1, len(temperatures) + 1):
    rank_mask = (labels == i) * logits_mask
    if rank_mask.sum() == 0:
      continue
    negative_mask = (labels <= i) * logits_mask
    exp_logits = np.exp(logits / temperatures[i - 1]) * negative_mask
    prob = exp_logits / (exp_logits + eps).sum(1, keepdims=True)
    mean_prob_pos = (rank_mask * prob).sum(-1) / (rank_mask + eps).sum(-1)
    total += -np.log(mean_prob_pos + eps).mean()
  return total


def ref_update_rank_mean(rank_mean, sims, ranks, alpha):
  """model.py update_rank_mean: EMA towards each present rank's mean similarity."""
  out = rank_mean.copy()
  for r in range(len(rank_mean)):
    cells = ranks == r
    if cells.any():
      out[r] = (1 - alpha) * rank_mean[r] + alpha * sims[cells].mean()
  return out


# ----------------------------------------------------------------------------- defaults


def test_defaults_are_the_reference_and_bad_combinations_are_refused():
  cfg = emma_x.default_config()
  assert {k: cfg[k] for k in emma_x.SWITCHES} == {
      "gmm_interpolation": "query", "rince_rows": "all", "em_update": "joint",
      "classifier_optimizer": "encoder", "classifier_init": "reference"}
  with pytest.raises(ValueError, match=r"em_update='alternating' needs classifier_optimizer="
                                       r"'own_adam'.*set classifier_optimizer='own_adam'"):
    emma_x.check_config(dict(cfg, em_update="alternating"))
  emma_x.check_config(dict(cfg, em_update="alternating", classifier_optimizer="own_adam"))
  with pytest.raises(ValueError, match=r"objectives\.emma_x\.rince_rows must be one of"):
    emma_x.check_config(dict(cfg, rince_rows="some"))
  # RINCE's temperatures: criterion.py set_each_temp, rank i at temp_list[i - 1].
  gap = (0.1 - 0.05) / (N - 2)
  assert losses.rank_temperatures(N, 0.1, 0.05) == pytest.approx([0.1 - gap * i
                                                                  for i in range(N - 1)])


# ----------------------------------------------------------------------------- rince_rows


def test_rince_rows_all_is_the_reference_criterion():
  rng = np.random.default_rng(0)
  num_pairs, queue = 3, 8
  sims = rng.uniform(-1, 1, (2 * num_pairs, 2 * num_pairs + queue))
  is_self, is_translation = (np.asarray(m) for m in losses.pair_cells(num_pairs, sims.shape[1]))
  labels = rng.integers(0, 2, sims.shape)             # ranks 0 and 1 everywhere ...
  labels[1:3, 4:9] = 2                                 # ... rank 2 in two rows only
  labels = np.where(is_translation, N - 1, labels)
  labels[0] = np.where(is_translation[0], N - 1, 0)   # a row with no rank-1 positive
  temperatures = losses.rank_temperatures(N, 0.1, 0.05)
  valid = ~is_self

  # The reference's 1e-7 guards, shrunk to 1e-30 to compare formulas: a row without a positive
  # of rank i adds the constant -log(eps) / rows (no gradient), which "all" leaves out.
  eps = 1e-30
  expected = ref_rince(sims, labels, temperatures, eps)
  for i in range(1, N):
    positives = (labels == i) & valid
    if positives.any():
      expected -= np.mean(~positives.any(axis=1)) * -np.log(eps)
  rince = jax.jit(losses.rince_loss, static_argnums=(3, 4))
  sims32 = sims.astype(np.float32)
  got, _ = rince(sims32, labels, valid, temperatures, emma_x.default_config()["rince_rows"])
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # Same gradient as the reference (central differences of the float64 transcription).
  grad = np.asarray(jax.grad(lambda s: losses.rince_loss(s, labels, valid, temperatures,
                                                         "all")[0])(sims32))
  h, numeric = 1e-6, np.zeros_like(sims)
  for idx in np.ndindex(sims.shape):
    up, down = sims.copy(), sims.copy()
    up[idx] += h
    down[idx] -= h
    numeric[idx] = (ref_rince(up, labels, temperatures, eps)
                    - ref_rince(down, labels, temperatures, eps)) / (2 * h)
  np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)
  # "with_positive" (the earlier choice) weighs the rare rank 2 by rows / rows-with-positive.
  other, metrics = rince(sims32, labels, valid, temperatures, "with_positive")
  assert float(metrics["rank2_rows"]) == 2.0
  assert float(other) > float(got) + 0.1


# ----------------------------------------------------------------------------- gmm_interpolation


@pytest.mark.parametrize("interpolation", ["query", "translation"])
def test_gmm_warm_up_pairs_follow_the_reference(interpolation):
  """query: EMMA_GMM.interploted_feature, the class stage 2 runs; translation: the itr class's
  interploted_feature (rev_feature_q, never called by the reference)."""
  rng = np.random.default_rng(1)
  num_pairs, queue, dim = 3, 5, 8
  bs, num_candidates = 2 * num_pairs, 2 * num_pairs + queue
  q = _unit(rng.standard_normal((bs, dim))).astype(np.float32)
  features = _unit(rng.standard_normal((num_candidates, dim))).astype(np.float32)
  classifier = gmm.init_classifier(jax.random.PRNGKey(0), N, dim, "reference")
  classifier["prior_logits"] = jnp.array([0.5, 1.0, 1.5, 0.2])   # unequal rank buckets
  config = dict(emma_x.default_config(), stage="gmm")
  if interpolation != "query":
    config["gmm_interpolation"] = interpolation
  ctx = ObjectiveContext(model=None, config=config, vocab_size=10, mask_id=4, pad_id=1,
                         special_ids=(), languages=("en", "de"), name="emma_x")
  is_self, is_translation = losses.pair_cells(num_pairs, num_candidates)
  cands = steps.Candidates(towers.PairInputs(None, None, num_pairs), features[:bs], features,
                           is_self, is_translation)
  lam_rng = jax.random.PRNGKey(3)
  loss, aux = jax.jit(lambda c: steps.e_objective(ctx, c, q, cands, jnp.zeros(N), "gmm",
                                                  lam_rng))(classifier)

  lam = np.asarray(jax.random.uniform(lam_rng, (bs, num_candidates)), np.float64)
  q64, f64 = q.astype(np.float64), features.astype(np.float64)
  anchor = q64 if interpolation == "query" else np.concatenate([q64[bs // 2:], q64[:bs // 2]])
  interpolated = lam[..., None] * anchor[:, None] + (1 - lam[..., None]) * f64[None]
  labels = ref_scores_to_ranks(lam, np.asarray(classifier["prior_logits"], np.float64))
  labels[ref_gold_mask(bs, num_candidates)[1]] = N - 1
  cls64 = {k: np.asarray(v, np.float64) for k, v in classifier.items()}
  logits = ref_gmm_logits(cls64, q64[:, None] - interpolated)
  np.testing.assert_array_equal(np.asarray(aux["targets"]), labels)
  assert float(loss) == pytest.approx(ref_label_smoothed_ce(logits, labels, 0.3), rel=2e-4)
  # The rank means follow the synthetic pairs' similarity sent_q . interpolated.
  np.testing.assert_allclose(np.asarray(aux["similarities"]),
                             np.sum(q64[:, None] * interpolated, axis=-1), atol=1e-5)


# ----------------------------------------------------------------------------- steps on a model

VOCAB, PAIRS, QUEUE, HIDDEN = 40, 3, 16, 16
LR = 0.5


def _context(stage="itr", **overrides):
  model = Model(EncoderConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, num_heads=2,
                              mlp_dim=32, max_positions=24))
  cfg = dict(emma_x.default_config(), stage=stage, queue_size=QUEUE, **overrides)
  return ObjectiveContext(model=model, config=cfg, vocab_size=VOCAB, mask_id=4, pad_id=1,
                          special_ids=(0, 1, 2, 3, 4), languages=("en", "de"), name="emma_x")


@pytest.fixture(scope="module")
def reference_state():
  """(ctx, tx, state) with the default (reference) switches: the GMM is a trained head."""
  ctx = _context("itr")
  tx = optax.sgd(LR)   # linear in the gradient: one update is params - LR * gradient
  state = _jit(lambda r: nn.meta.unbox(_init_boxed(ctx, tx, r)))(jax.random.PRNGKey(0))
  return ctx, tx, jax.device_get(state)


def test_classifier_is_a_head_with_the_reference_start(reference_state, tmp_path):
  ctx, tx, state = reference_state
  head = state.params["heads"]["emma_x"]
  classifier = head["classifier"]
  # model.py: mu, lg_sigma2 = Parameter(randn(N, d)), pi = Parameter(ones(N)).
  for key in ("means", "log_variances"):
    assert classifier[key].shape == (N, HIDDEN)
    assert 0.6 < np.std(classifier[key]) < 1.4    # N(0, 1), not the scaled N(0, 1/d) start
  np.testing.assert_array_equal(classifier["prior_logits"], np.ones(N))
  extra = state.extra["emma_x"]
  assert "classifier" not in extra and "classifier_opt_state" not in extra
  # The key tower copies the sentence head only; the ctl warm-up has no classifier at all.
  assert set(extra["key_params"]["head"]) == {"pooler", "projection"}
  assert "classifier" not in emma_x.init_params(jax.random.PRNGKey(1), _context("ctl"))
  # Replicated on a (2, 2, 2) mesh, and saved and restored with the rest of the params.
  boxed = jax.eval_shape(lambda r: _init_boxed(ctx, tx, r), jax.random.PRNGKey(0))
  mesh = mesh_lib.make_mesh(type("M", (), {"data": 2, "fsdp": 2, "tensor": 2})())
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("vocab", "tensor"),
           ("heads", "tensor"), ("kv", None), ("positions", None))
  shardings = mesh_lib.shardings_from_boxed(boxed, mesh, rules)
  for s in jax.tree.leaves(shardings.params["heads"]["emma_x"]["classifier"]):
    assert s.spec == jax.sharding.PartitionSpec()
  device_state = jax.device_put(state)
  checkpointer = Checkpointer(tmp_path, async_save=False, data_kinds=())
  checkpointer.save(1, device_state, {}, {"note": "emma_x"})
  checkpointer.wait()
  restored = checkpointer.restore(1, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), device_state))
  checkpointer.close()
  for key in classifier:
    np.testing.assert_array_equal(np.asarray(restored.params["heads"]["emma_x"]["classifier"][key]),
                                  classifier[key])


def _ref_e_loss(ctx, queries, features, rank_means, gold):
  """model.py EMMA.forward's E-part as a function of the classifier: D = q - F, targets
  map_scores_to_ranks(S) (argmin |S - rank_mean|), N-1 on self/translation cells."""
  sims = queries @ features.T
  targets = jnp.argmin(jnp.abs(sims[..., None] - rank_means), axis=-1)
  targets = jnp.where(gold, N - 1, targets)
  feature = queries[:, None] - features[None]

  def loss(classifier):
    logits = ref_gmm_logits(classifier, feature, xp=jnp)
    return ref_label_smoothed_ce(logits, targets, ctx.config["classifier_label_smoothing"], jnp)
  return loss


def test_joint_em_step_is_one_update_from_the_pre_step_state(reference_state):
  ctx, tx, state = reference_state
  batches = _batches()
  [(name, em_step)] = emma_x.make_steps(BoundObjective(OBJECTIVES.get("emma_x"), 1.0, ctx), tx,
                                        optax.constant_schedule(LR))
  assert name == "em_step"
  after, metrics = jax.device_get(_jit(em_step)(state, batches))

  def reference_parts(state):
    extra = state.extra["emma_x"]
    rngs = steps.step_rngs(state.rng, state.step)
    cands = steps.encode_candidates(ctx, extra, batches, rngs, True)
    classifier = state.params["heads"]["emma_x"]["classifier"]
    _, m_aux, m_grads = steps.m_gradients(ctx, state.params, classifier, cands,
                                          rngs.query_dropout, "itr")
    gold = cands.is_self | cands.is_translation
    e_loss = _ref_e_loss(ctx, m_aux["queries"], cands.features,
                         steps.current_rank_means(ctx, extra), gold)
    e_value, e_grads = jax.value_and_grad(e_loss)(classifier)
    return m_grads, e_value, e_grads, m_aux["queries"], m_aux["similarities"], cands.features
  m_grads, e_value, e_grads, queries, sims, features = jax.device_get(
      _jit(reference_parts)(state))

  # train.py: one optimizer step on L_cts + L_gmm + L_mlm. The GMM's gradient is L_gmm's (the
  # contrastive targets are argmaxes), the encoder's L_cts + L_mlm's: one sgd update of both.
  grads = dict(m_grads, heads={"emma_x": dict(m_grads["heads"]["emma_x"], classifier=e_grads)})
  expected = jax.tree.map(lambda p, g: p - LR * g, state.params, grads)
  for (path, got), want in zip(jax.tree.leaves_with_path(after.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  assert float(metrics["emma_x/gmm_loss"]) == pytest.approx(float(e_value), rel=1e-4)
  # The M-part's targets and the rank means come from the classifier *before* the step
  # (update_rank_mean(sample_sim, gmm_pred) with gmm_pred of the pre-step GMM).
  before_cls = {k: np.asarray(v, np.float64) for k, v in
                state.params["heads"]["emma_x"]["classifier"].items()}
  after_cls = {k: np.asarray(v, np.float64) for k, v in
               after.params["heads"]["emma_x"]["classifier"].items()}
  diffs = queries.astype(np.float64)[:, None] - features.astype(np.float64)[None]
  pred_before = np.argmax(ref_gmm_logits(before_cls, diffs), axis=-1)
  pred_after = np.argmax(ref_gmm_logits(after_cls, diffs), axis=-1)
  assert np.any(pred_before != pred_after)     # so the two orders are told apart here
  alpha = ctx.config["rank_mean_momentum"]
  np.testing.assert_allclose(after.extra["emma_x"]["rank_means"],
                             ref_update_rank_mean(np.zeros(N), sims, pred_before, alpha),
                             rtol=1e-5, atol=1e-8)
  for r in range(N):
    assert float(metrics[f"emma_x/classifier_rank{r}"]) == pytest.approx(
        np.mean(pred_before == r))


def test_gmm_warm_up_trains_the_classifier_with_the_encoders_optimizer(reference_state):
  """classifier_optimizer="encoder": the trainer's optimizer and schedule (here Adam at 0.02,
  not the own optimizer's 5e-3) moves the GMM by the reference loss's gradient; the frozen
  encoders keep their weights."""
  _, _, state = reference_state
  ctx = _context("gmm")
  tx = optax.adam(optax.constant_schedule(0.02))
  state = state.replace(opt_state=tx.init(state.params))
  batches = _batches(1)
  [(name, e_step)] = emma_x.make_steps(BoundObjective(OBJECTIVES.get("emma_x"), 1.0, ctx), tx,
                                       optax.constant_schedule(0.02))
  assert name == "e_step"
  after, _ = jax.device_get(_jit(e_step)(state, batches))

  def reference_gradient(state):
    extra = state.extra["emma_x"]
    rngs = steps.step_rngs(state.rng, state.step)
    cands = steps.encode_candidates(ctx, extra, batches, rngs, True)
    queries, _ = towers.query_forward(ctx, state.params, cands.pairs, rngs.query_dropout, True)
    lam = jax.random.uniform(rngs.interpolation, (queries.shape[0], cands.features.shape[0]))
    classifier = state.params["heads"]["emma_x"]["classifier"]
    # EMMA_GMM: D = q - (lam q + (1 - lam) F), labels bucketed by cumsum softmax(pi) (fixed).
    interpolated = lam[..., None] * queries[:, None] + (1 - lam[..., None]) * cands.features[None]
    return queries, lam, cands.features, interpolated, classifier
  queries, lam, features, interpolated, classifier = jax.device_get(
      _jit(reference_gradient)(state))
  labels = ref_scores_to_ranks(lam.astype(np.float64),
                               np.asarray(classifier["prior_logits"], np.float64))
  labels[ref_gold_mask(*lam.shape)[1]] = N - 1
  feature = jnp.asarray(queries[:, None] - interpolated)
  grads = jax.grad(lambda c: ref_label_smoothed_ce(ref_gmm_logits(c, feature, xp=jnp),
                                                   jnp.asarray(labels), 0.3, jnp))(classifier)
  # Adam's first step: -lr * m_hat / (sqrt(v_hat) + eps) = -lr * g / (|g| + 1e-8).
  for key, g in jax.device_get(grads).items():
    np.testing.assert_allclose(after.params["heads"]["emma_x"]["classifier"][key],
                               classifier[key] - 0.02 * g / (np.abs(g) + 1e-8),
                               rtol=1e-5, atol=1e-5, err_msg=key)
  for part in ("encoder", "lm_head"):
    for a, b in zip(jax.tree.leaves(after.params[part]), jax.tree.leaves(state.params[part])):
      np.testing.assert_array_equal(a, b)
  for key in ("pooler", "projection"):
    for a, b in zip(jax.tree.leaves(after.params["heads"]["emma_x"][key]),
                    jax.tree.leaves(state.params["heads"]["emma_x"][key])):
      np.testing.assert_array_equal(a, b)
  assert int(after.step) == int(state.step) + 1
