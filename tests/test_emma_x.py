"""EMMA-X: losses against naive NumPy, what each step may change, queue, checkpoint round trip.

The step tests here run the switches' non-reference side (`EARLIER`: separate e_step and m_step,
the classifier under its own Adam in extra state); tests/test_emma_reference.py checks the
reference side (the defaults) against NumPy versions of the reference code's formulas.
"""
import dataclasses

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import emma_x
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.emma import classifier as gmm
from xlm_jax.objectives.emma import losses, steps
from xlm_jax.objectives.emma import queue as queue_lib
from xlm_jax.registry import OBJECTIVES
from xlm_jax import mesh as mesh_lib
from xlm_jax.train.checkpoint import Checkpointer
from xlm_jax.train.state import TrainState
from xlm_jax.train.step import BoundObjective

# Tests compile five step/forward programs on shared CPU cores: optimise less, compile faster.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST)


# ----------------------------------------------------------------------------- naive references


def naive_rince(sims, labels, valid, temperatures):
  """The formula, row by row and rank by rank, in float64."""
  total = 0.0
  for i, tau in enumerate(temperatures, start=1):
    rows = []
    for q in range(sims.shape[0]):
      pos = [j for j in range(sims.shape[1]) if valid[q, j] and labels[q, j] == i]
      pool = [j for j in range(sims.shape[1]) if valid[q, j] and labels[q, j] <= i]
      if not pos:
        continue
      num = np.mean([np.exp(sims[q, j] / tau) for j in pos])
      den = np.sum([np.exp(sims[q, j] / tau) for j in pool])
      rows.append(-np.log(num / den))
    if rows:
      total += np.mean(rows)
  return total


def naive_gmm_log_joint(cls, q, f, lam=None, partner=None):
  """Materialises D [Q, M, d] and D - mu [Q, M, N, d]."""
  q, f = q.astype(np.float64), f.astype(np.float64)
  mu, log_var, prior = (np.asarray(cls[k], np.float64)
                        for k in ("means", "log_variances", "prior_logits"))
  if lam is None:
    d = q[:, None, :] - f[None, :, :]
  else:
    d = q[:, None, :] - (lam[..., None] * partner[:, None, :] + (1 - lam[..., None]) * f[None])
  diff = d[:, :, None, :] - mu[None, None]                          # [Q, M, N, d]
  maha = np.sum(diff ** 2 / np.exp(log_var)[None, None], axis=-1)
  log_normal = -0.5 * (q.shape[1] * np.log(2 * np.pi) + log_var.sum(-1) + maha)
  log_prior = prior - np.log(np.sum(np.exp(prior)))
  return log_prior + log_normal


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- loss pieces


def test_rank_temperatures():
  assert losses.rank_temperatures(4, 0.1, 0.05) == pytest.approx((0.1, 0.075, 0.05))
  assert losses.rank_temperatures(2, 0.1, 0.05) == (0.05,)
  with pytest.raises(ValueError, match="num_ranks"):
    losses.rank_temperatures(1, 0.1, 0.05)


def test_rince_equals_naive_numpy():
  rng = np.random.default_rng(0)
  num_pairs, queue = 3, 8
  sims = rng.uniform(-1, 1, (2 * num_pairs, 2 * num_pairs + queue)).astype(np.float32)
  labels = rng.integers(0, 3, sims.shape)              # ranks 0..2 from a "classifier"
  is_self, is_translation = (np.asarray(m) for m in losses.pair_cells(num_pairs, sims.shape[1]))
  labels = np.where(is_translation, 3, labels)
  labels[0, :] = np.where(is_translation[0], 3, 0)     # a row with no rank-1/2 positive
  valid = ~is_self
  temperatures = losses.rank_temperatures(4, 0.1, 0.05)
  rince = jax.jit(losses.rince_loss, static_argnums=(3, 4))
  got, metrics = rince(sims, labels, valid, temperatures, "with_positive")
  assert float(got) == pytest.approx(naive_rince(sims, labels, valid, temperatures), rel=1e-5)
  assert float(metrics["rank3_rows"]) == 2 * num_pairs
  # A rank without any positive contributes 0 (and no NaN, also in the gradient).
  no_rank1 = np.where(labels == 1, 0, labels)
  got, metrics = losses.rince_loss(sims, no_rank1, valid, temperatures, "with_positive")
  assert float(metrics["rank1_loss"]) == 0.0 and float(metrics["rank1_rows"]) == 0.0
  assert float(got) == pytest.approx(naive_rince(sims, no_rank1, valid, temperatures), rel=1e-5)
  grad = jax.grad(lambda s: losses.rince_loss(s, no_rank1, valid, temperatures, "all")[0])(sims)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert np.all(np.asarray(grad)[is_self] == 0.0)      # self cells never enter the loss


def test_ctl_rince_is_plain_infonce():
  rng = np.random.default_rng(1)
  sims = rng.uniform(-1, 1, (4, 10)).astype(np.float32)
  is_self, is_translation = (np.asarray(m) for m in losses.pair_cells(2, 10))
  got, _ = losses.rince_loss(sims, is_translation.astype(np.int32), ~is_self, (0.05,))
  logits = np.where(is_self, -np.inf, sims.astype(np.float64) / 0.05)
  log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
  assert float(got) == pytest.approx(-np.mean(log_softmax[is_translation]), rel=1e-5)


@pytest.mark.parametrize("interpolate", [False, True])
def test_gmm_log_posterior_equals_naive_numpy(interpolate):
  rng = np.random.default_rng(2)
  num_q, num_m, dim, ranks = 6, 11, 7, 4
  q = _unit(rng.standard_normal((num_q, dim))).astype(np.float32)
  f = _unit(rng.standard_normal((num_m, dim))).astype(np.float32)
  cls = {"means": (0.5 * rng.standard_normal((ranks, dim))).astype(np.float32),
         "log_variances": (0.7 * rng.standard_normal((ranks, dim))).astype(np.float32),
         "prior_logits": rng.standard_normal(ranks).astype(np.float32)}
  lam = partner = interpolation = None
  if interpolate:
    lam = rng.uniform(0, 1, (num_q, num_m)).astype(np.float32)
    partner = _unit(rng.standard_normal((num_q, dim))).astype(np.float32)
    interpolation = gmm.Interpolation(lam, partner)
  expected = naive_gmm_log_joint(cls, q, f, lam, partner)
  got = jax.jit(gmm.gmm_log_joint)(cls, q, f, interpolation)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-3)
  posterior = expected - np.log(np.sum(np.exp(expected - expected.max(-1, keepdims=True)),
                                       -1, keepdims=True)) - expected.max(-1, keepdims=True)
  got_post = jax.jit(gmm.gmm_log_posterior)(cls, q, f, interpolation)
  np.testing.assert_allclose(np.asarray(got_post), posterior, atol=1e-3)
  # The expansion never builds the [Q, M, N, d] tensor: no intermediate has Q*M*N*d elements.
  jaxpr = jax.make_jaxpr(gmm.gmm_log_joint)(cls, q, f, interpolation)
  sizes = {int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars}
  assert max(sizes) < num_q * num_m * ranks * dim


def test_interpolation_ranks_and_label_smoothing():
  # Equal priors: edges 0.25, 0.5, 0.75; lam at an edge belongs to the upper rank.
  lam = jnp.array([0.0, 0.1, 0.25, 0.3, 0.5, 0.74, 0.75, 0.99, 1.0])
  got = gmm.interpolation_ranks(lam, jnp.zeros(4))
  np.testing.assert_array_equal(np.asarray(got), [0, 0, 1, 1, 2, 2, 3, 3, 3])
  # Skewed prior: softmax([log 0.7, log 0.1, log 0.1, log 0.1]) -> edges 0.7, 0.8, 0.9.
  prior = jnp.log(jnp.array([0.7, 0.1, 0.1, 0.1]))
  np.testing.assert_array_equal(
      np.asarray(gmm.interpolation_ranks(jnp.array([0.69, 0.71, 0.85, 0.95]), prior)), [0, 1, 2, 3])
  # Label smoothing: target 1 - eps, others eps / (N - 1).
  log_probs = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4]]))
  loss, accuracy = gmm.label_smoothed_nll(log_probs, jnp.array([2]), 0.3)
  expected = -(0.7 * np.log(0.3) + 0.1 * (np.log(0.1) + np.log(0.2) + np.log(0.4)))
  assert float(loss) == pytest.approx(expected, rel=1e-6) and float(accuracy) == 0.0


def test_encoder_ranks_and_rank_mean_ema():
  means = jnp.array([0.0, 0.3, 0.6, 0.9])
  sims = jnp.array([[0.05, 0.44, 0.46, 2.0, -1.0, 0.15]])
  np.testing.assert_array_equal(np.asarray(losses.encoder_ranks(sims, means)),
                                [[0, 1, 2, 3, 0, 0]])           # 0.15: tie -> lower rank
  ranks = jnp.array([[0, 0, 2, 2, 2, 1]])
  vals = jnp.array([[0.2, 0.4, 0.5, 0.6, 0.7, 0.1]])
  got, weight = queue_lib.update_rank_means(jnp.ones(4), jnp.full(4, 0.5), vals, ranks, 0.1)
  # rank 0: mean 0.3, rank 1: 0.1, rank 2: 0.6, rank 3 absent (kept).
  np.testing.assert_allclose(np.asarray(got), [0.93, 0.91, 0.96, 1.0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(weight), [0.55, 0.55, 0.55, 0.5], rtol=1e-6)
  # From the zero start: the raw EMA is 1000x too small, the debiased one is the batch mean,
  # then the alpha-weighted mean of the batches seen (0.3 and 0.5 with weights 0.999 and 1).
  means, weight = jnp.zeros(4), jnp.zeros(4)
  for batch_mean in (0.3, 0.5):
    means, weight = queue_lib.update_rank_means(means, weight, jnp.array([batch_mean]),
                                                jnp.array([1]), 0.001)
  assert float(queue_lib.current_rank_means(means, weight, False)[1]) == pytest.approx(
      0.001 * 0.999 * 0.3 + 0.001 * 0.5)
  debiased = np.asarray(queue_lib.current_rank_means(means, weight, True))
  assert debiased[1] == pytest.approx((0.999 * 0.3 + 0.5) / 1.999, rel=1e-5)
  assert debiased[0] == debiased[2] == debiased[3] == 0.0     # never seen


def test_enqueue_and_pointer_wrap_around():
  queue = jnp.arange(10, dtype=jnp.float32).reshape(5, 2)
  keys = -jnp.arange(1, 9, dtype=jnp.float32).reshape(4, 2)
  new, pointer = queue_lib.enqueue(queue, jnp.int32(3), keys)
  expected = np.asarray(queue).copy()
  expected[[3, 4, 0, 1]] = np.asarray(keys)                    # oldest rows first, then wrap
  np.testing.assert_array_equal(np.asarray(new), expected)
  assert int(pointer) == 2
  new, pointer = queue_lib.enqueue(queue, jnp.int32(1), keys)  # exactly to the end
  assert int(pointer) == 0
  np.testing.assert_array_equal(np.asarray(new)[1:], np.asarray(keys))
  with pytest.raises(ValueError, match="queue_size"):
    queue_lib.enqueue(queue, jnp.int32(0), jnp.zeros((6, 2)))


# ----------------------------------------------------------------------------- the steps

VOCAB, PAIRS, QUEUE = 40, 3, 16
# The switches' other side (this codebase's earlier choices; the defaults are the reference's).
EARLIER = dict(gmm_interpolation="translation", rince_rows="with_positive",
               em_update="alternating", classifier_optimizer="own_adam", classifier_init="scaled")


def _context(stage="itr", **overrides):
  model = Model(EncoderConfig(vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2,
                              mlp_dim=32, max_positions=24))
  cfg = dict(emma_x.default_config(), stage=stage, queue_size=QUEUE, **{**EARLIER, **overrides})
  return ObjectiveContext(model=model, config=cfg, vocab_size=VOCAB, mask_id=4, pad_id=1,
                          special_ids=(0, 1, 2, 3, 4), languages=("en", "de"), name="emma_x")


def _init_boxed(ctx, tx, rng):
  k_model, k_head, k_extra, k_state = jax.random.split(rng, 4)
  ids = jnp.zeros((1, 8), jnp.int32)
  params = dict(ctx.model.init({"params": k_model}, ids,
                               label_positions=jnp.zeros((1, 1), jnp.int32))["params"])
  params["heads"] = {"emma_x": emma_x.init_params(k_head, ctx)}
  extra = emma_x.init_extra_state(k_extra, params, ctx)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(nn.meta.unbox(params)), rng=k_state,
                    extra={"emma_x": extra})


def _batch(seed=0):
  rng = np.random.default_rng(seed)

  def rows():
    ids = np.full((PAIRS, 8), 1, np.int32)
    for i in range(PAIRS):
      n = rng.integers(3, 6)
      ids[i, 0], ids[i, 1:1 + n], ids[i, 1 + n] = 0, rng.integers(5, VOCAB, n), 2
    return ids
  return {"parallel_pairs": {"x_input_ids": rows(), "y_input_ids": rows(),
                             "x_lang_ids": np.zeros(PAIRS, np.int32),
                             "y_lang_ids": np.ones(PAIRS, np.int32)}}


@pytest.fixture(scope="module")
def setup():
  ctx = _context("itr")
  tx, schedule = optax.adamw(1e-2), optax.constant_schedule(1e-2)
  state = _jit(lambda r: nn.meta.unbox(_init_boxed(ctx, tx, r)))(jax.random.PRNGKey(0))
  return ctx, tx, schedule, state, _batch()


@pytest.fixture(scope="module")
def itr_run(setup):
  """One EM iteration: (state before, after e_step, after m_step, m_step metrics)."""
  ctx, tx, schedule, state, batches = setup
  (e_name, e_step), (m_name, m_step) = emma_x.make_steps(
      BoundObjective(OBJECTIVES.get("emma_x"), 1.0, ctx), tx, schedule)
  assert (e_name, m_name) == ("e_step", "m_step")
  after_e, _ = _jit(e_step)(state, batches)
  after_m, metrics = _jit(m_step)(after_e, batches)
  return jax.device_get((state, after_e, after_m, metrics))


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_state_layout_and_key_tower_copied(setup):
  ctx, _, _, state, _ = setup
  extra = state.extra["emma_x"]
  _assert_trees_equal(extra["key_params"], {"encoder": state.params["encoder"],
                                            "head": state.params["heads"]["emma_x"]})
  assert extra["queue"].shape == (QUEUE, 16) and int(extra["queue_pointer"]) == 0
  np.testing.assert_allclose(np.linalg.norm(extra["queue"], axis=1), 1.0, rtol=1e-5)
  assert extra["classifier"]["means"].shape == (4, 16)
  # The queue is the one extra array sharded over the batch (data, fsdp) axes.
  tx = optax.adamw(1e-2)
  boxed = jax.eval_shape(lambda r: _init_boxed(ctx, tx, r), jax.random.PRNGKey(0))
  mesh = mesh_lib.make_mesh(type("M", (), {"data": 2, "fsdp": 2, "tensor": 2})())
  rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("vocab", "tensor"),
           ("heads", "tensor"), ("kv", None), ("positions", None))
  shardings = mesh_lib.shardings_from_boxed(boxed, mesh, rules)
  assert shardings.extra["emma_x"]["queue"].spec == jax.sharding.PartitionSpec(("data", "fsdp"),
                                                                                None)
  # The key tower is sharded exactly like the query tower it copies.
  specs = lambda tree: jax.tree.map(lambda s: s.spec, tree)
  assert specs(shardings.extra["emma_x"]["key_params"]) == specs(
      {"encoder": shardings.params["encoder"], "head": shardings.params["heads"]["emma_x"]})


def test_e_step_changes_only_the_classifier(itr_run):
  before, after, _, _ = itr_run
  assert int(after.step) == int(before.step) == 0
  _assert_trees_equal(after.params, before.params)
  _assert_trees_equal(after.opt_state, before.opt_state)
  old, new = before.extra["emma_x"], after.extra["emma_x"]
  for key in ("key_params", "queue", "queue_pointer", "rank_means", "rank_mean_weight"):
    _assert_trees_equal(new[key], old[key])
  assert _changed(new["classifier"], old["classifier"])
  assert int(new["classifier_opt_state"]["0.count"]) == 1


def test_m_step_changes_only_the_encoder_and_key_moves_by_momentum(setup, itr_run):
  ctx, _, _, _, batches = setup
  _, before, after, metrics = itr_run
  assert int(after.step) == 1
  old, new = before.extra["emma_x"], after.extra["emma_x"]
  _assert_trees_equal(new["classifier"], old["classifier"])
  _assert_trees_equal(new["classifier_opt_state"], old["classifier_opt_state"])
  for part in ("encoder", "lm_head", "heads"):
    assert _changed(after.params[part], before.params[part]), part
  # k' = m k + (1 - m) q' with q' the updated query tower: the key tower gets no gradient.
  m = ctx.config["momentum"]
  query = {"encoder": after.params["encoder"], "head": after.params["heads"]["emma_x"]}
  for k_new, k_old, q in zip(*(jax.tree.leaves(t) for t in (new["key_params"],
                                                            old["key_params"], query))):
    expected = np.float32(m) * k_old + np.float32(1 - m) * q
    np.testing.assert_array_equal(np.asarray(k_new), expected)
  # This step's 2B keys (from the pre-update key tower) went to rows 0..5; the rest kept.
  keys = _jit(lambda e, s: steps.encode_candidates(
      ctx, e, batches, steps.step_rngs(s.rng, s.step), True).keys)(old, before)
  assert int(new["queue_pointer"]) == 2 * PAIRS
  np.testing.assert_allclose(new["queue"][:2 * PAIRS], np.asarray(keys), rtol=1e-6)
  np.testing.assert_array_equal(new["queue"][2 * PAIRS:], old["queue"][2 * PAIRS:])
  assert _changed(new["rank_means"], old["rank_means"])
  assert np.isfinite(float(metrics["loss"])) and metrics["emma_x/mlm_predictions"] > 0


def test_gmm_stage_trains_classifier_on_frozen_encoders(setup):
  _, tx, schedule, state, batches = setup
  ctx = _context("gmm")
  [(name, e_step)] = emma_x.make_steps(BoundObjective(OBJECTIVES.get("emma_x"), 1.0, ctx),
                                       tx, schedule)
  assert name == "e_step"
  after, metrics = jax.device_get(_jit(e_step)(state, batches))
  assert int(after.step) == 1 and "loss" in metrics
  _assert_trees_equal(after.params, state.params)
  _assert_trees_equal(after.opt_state, state.opt_state)
  old, new = state.extra["emma_x"], after.extra["emma_x"]
  _assert_trees_equal(new["key_params"], old["key_params"])
  assert _changed(new["classifier"], old["classifier"])
  assert int(new["queue_pointer"]) == 2 * PAIRS
  assert _changed(new["queue"][:2 * PAIRS], old["queue"][:2 * PAIRS])
  # Interpolated pairs of every rank were seen, so every rank mean moved off zero.
  assert np.all(np.asarray(new["rank_means"]) != 0.0)
  np.testing.assert_allclose(np.asarray(new["rank_mean_weight"]), 0.001, rtol=1e-6)


def test_ctl_stage_is_infonce_plus_mlm_and_eval_loss_has_no_side_effects(setup):
  _, tx, schedule, state, batches = setup
  ctx = _context("ctl")
  assert [n for n, _ in emma_x.make_steps(BoundObjective(OBJECTIVES.get("emma_x"), 1.0, ctx),
                                          tx, schedule)] == ["m_step"]

  def evaluate(params, extra, batch, rng):
    eval_ctx = dataclasses.replace(ctx, extra=extra, train=False)
    loss, metrics, new_extra = emma_x.emma_x_loss(params, batch, rng, eval_ctx)
    cands = steps.encode_candidates(eval_ctx, extra, {"parallel_pairs": batch},
                                    steps.StepRngs(*jax.random.split(rng, 5)), False)
    _, aux = steps.m_objective(eval_ctx, params, None, cands,
                               steps.StepRngs(*jax.random.split(rng, 5)).query_dropout,
                               "ctl", False)
    return loss, metrics, new_extra, aux["similarities"], cands.is_self, cands.is_translation
  loss, metrics, new_extra, sims, is_self, is_trans = jax.device_get(_jit(evaluate)(
      state.params, state.extra["emma_x"], batches["parallel_pairs"], jax.random.PRNGKey(7)))
  _assert_trees_equal(new_extra, state.extra["emma_x"])
  logits = np.where(is_self, -np.inf, sims.astype(np.float64) / 0.05)
  log_softmax = logits - np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), axis=1,
                                       keepdims=True)) - logits.max(1, keepdims=True)
  infonce = -np.mean(log_softmax[is_trans])
  assert float(metrics["contrastive_loss"]) == pytest.approx(infonce, rel=1e-4)
  assert float(loss) == pytest.approx(infonce + float(metrics["mlm_loss"]), rel=1e-4)
  assert float(metrics["weight"]) == 2 * PAIRS and 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_whole_state_survives_checkpoint_restore(itr_run, tmp_path):
  _, _, state, _ = itr_run
  state = jax.device_put(state)
  checkpointer = Checkpointer(tmp_path, async_save=False, data_kinds=())
  checkpointer.save(1, state, {}, {"note": "emma_x"})
  checkpointer.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  restored = checkpointer.restore(1, abstract)
  checkpointer.close()
  _assert_trees_equal(jax.device_get(restored), jax.device_get(state))
  assert int(restored.extra["emma_x"]["queue_pointer"]) == 2 * PAIRS
  # Nested dicts of arrays only (no optax tuples): warm starts match it leaf by leaf by path.
  extra = jax.device_get(state.extra["emma_x"])
  flat = flax.traverse_util.flatten_dict(extra)
  assert all(isinstance(v, np.ndarray) for v in flat.values())
  _assert_trees_equal(flax.traverse_util.unflatten_dict(flat), extra)


def test_bad_config_and_missing_inputs_are_named(setup):
  ctx, tx, schedule, state, batches = setup
  with pytest.raises(ValueError, match="stage"):
    emma_x.make_steps(BoundObjective(OBJECTIVES.get("emma_x"), 1.0, _context("em")), tx, schedule)
  mono_ctx = _context("itr", mono_candidates=2)
  objective = OBJECTIVES.get("emma_x")
  assert objective.batch_kinds(mono_ctx.config) == ("parallel_pairs", "sentences")
  assert objective.batch_kinds(ctx.config) == ("parallel_pairs",)
  [_, (_, m_step)] = emma_x.make_steps(BoundObjective(OBJECTIVES.get("emma_x"), 1.0, mono_ctx),
                                       tx, schedule)
  with pytest.raises(ValueError, match="sentences"):
    jax.eval_shape(m_step, state, batches)
  # With a "sentences" batch its first rows join the candidates (traced, not compiled here).
  ids = np.ones((4, 12), np.int32)
  ids[:, :4] = [0, 7, 8, 2]
  sentences = {"input_ids": ids, "segment_ids": (ids != 1).astype(np.int32),
               "position_ids": np.where(ids != 1, np.arange(12) + 2, 1).astype(np.int32),
               "lang_ids": np.zeros_like(ids)}
  out, _ = jax.eval_shape(m_step, state, dict(batches, sentences=sentences))
  assert out.extra["emma_x"]["queue"].shape == (QUEUE, 16)
  with pytest.raises(ValueError, match="mono_candidates"):
    jax.eval_shape(m_step, state, dict(batches, sentences={k: v[:1] for k, v in sentences.items()}))
  with pytest.raises(ValueError, match="heads"):
    emma_x.init_extra_state(jax.random.PRNGKey(0), {"encoder": {}}, ctx)
