"""A train step sharded over (data=2, fsdp=2, tensor=2) equals the single-device step, and its
activations are split by batch rows over the devices."""
import re

import jax
import numpy as np

from xlm_jax import config as config_lib
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.registry import OBJECTIVES
from xlm_jax import mesh as mesh_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.step import BoundObjective, make_train_step

# fp32 everywhere; sharded matmuls sum in a different order, so allow float rounding only.
RTOL, ATOL = 2e-5, 2e-6


def _batch(step, rows=8, length=32, vocab=300):
  rng = np.random.default_rng(step)
  ids = rng.integers(5, vocab, (rows, length)).astype(np.int32)
  ids[:, 0] = 0
  ids[1, 20:] = 1                      # a padded row: its keys must stay masked out
  segments = np.ones_like(ids)
  segments[1, 20:] = 0
  segments[2, 16:] = 2                 # a packed row with two segments
  positions = np.tile(np.arange(2, 2 + length, dtype=np.int32), (rows, 1))
  positions[2, 16:] = np.arange(2, 2 + length - 16)
  positions[1, 20:] = 1
  return {"input_ids": ids, "segment_ids": segments, "position_ids": positions,
          "lang_ids": np.zeros_like(ids)}


def _train(mesh_shape, steps=2, accum=1, batch_fn=_batch, dropout=0.1, **mlm):
  config = config_lib.default_config()
  config.objectives.mlm.update(mlm)
  config.optimizer.warmup_steps = 0
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  model = Model(EncoderConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                              mlp_dim=64, max_positions=40, dropout_rate=dropout,
                              attention_dropout_rate=0.0))
  objective = OBJECTIVES.get("mlm")
  bound = {"mlm": BoundObjective(objective, 1.0, ObjectiveContext(
      model=model, config=config.objectives.mlm.to_dict(), vocab_size=300, mask_id=4, pad_id=1,
      special_ids=(0, 1, 2, 3, 4), languages=("en",)))}
  tx, schedule = make_optimizer(config.optimizer, 100)
  devices = jax.devices()[: int(np.prod(mesh_shape))]
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.logical_rules(config.mesh)
  state, shardings, _ = create_train_state(model, tx, {"mlm": objective}, 32, mesh, rules, seed=0)
  lead = 1 if accum > 1 else 0
  # As the trainer jits it: traced in the mesh's context, so the activations are constrained.
  step = mesh_lib.jit_in_mesh(
      make_train_step(bound, tx, schedule, accum), mesh, rules, donate_argnums=0,
      in_shardings=(shardings, {"mono": mesh_lib.batch_sharding(mesh, lead)}),
      out_shardings=(shardings, mesh_lib.replicated(mesh)))
  history = []
  for i in range(steps):
    batch = batch_fn(i)
    if accum > 1:
      batch = {k: v.reshape(accum, -1, *v.shape[1:]) for k, v in batch.items()}
    state, metrics = step(state, {"mono": mesh_lib.to_global_batch(batch, mesh, lead)})
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history, state


def _assert_trees_close(a, b):
  flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves(b)
  for (path, x), y in zip(flat_a, flat_b):
    np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=jax.tree_util.keystr(path))


def test_sharded_step_equals_single_device():
  assert jax.device_count() >= 8, "conftest.py must give 8 CPU devices"
  single_params, single_metrics, _ = _train((1, 1, 1))
  sharded_params, sharded_metrics, state = _train((2, 2, 2))
  # The state really is sharded: the word embedding is split over tensor (vocab) and fsdp (embed).
  emb = state.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  # 300 ids padded to 384 rows (vocab_multiple 128), half on each tensor shard.
  assert len(emb.addressable_shards) == 8 and emb.addressable_shards[0].data.shape == (192, 16)
  _assert_trees_close(sharded_params, single_params)
  for m1, m8 in zip(single_metrics, sharded_metrics):
    for key in ("loss", "mlm/accuracy", "grad_norm"):
      np.testing.assert_allclose(m8[key], m1[key], rtol=RTOL, err_msg=key)
  # And training moved the parameters (the comparison is not between two untouched inits).
  assert single_metrics[-1]["loss"] != single_metrics[0]["loss"]


def _unpadded_batch(step, rows=8, length=32, vocab=300):
  rng = np.random.default_rng(100 + step)
  ids = rng.integers(5, vocab, (rows, length)).astype(np.int32)
  ids[:, 0] = 0
  return {"input_ids": ids, "segment_ids": np.ones_like(ids),
          "position_ids": np.tile(np.arange(2, 2 + length, dtype=np.int32), (rows, 1)),
          "lang_ids": np.zeros_like(ids)}


def test_gradient_accumulation_equals_full_batch():
  """4 micro-batches of 2 rows == one batch of 8 rows.

  With dropout off, masking every token with <mask> makes the loss independent of the RNG (which differs per
  micro-batch by design), and every row has the same number of predictions, so the mean of the
  micro-batch means is the full-batch mean: gradients, Adam updates and params must agree.
  """
  deterministic = dict(dropout=0.0, mask_rate=1.0, mask_token_rate=1.0, random_token_rate=0.0)
  full, full_metrics, _ = _train((1, 1, 1), steps=2, batch_fn=_unpadded_batch, **deterministic)
  accum, accum_metrics, _ = _train((1, 1, 1), steps=2, accum=4, batch_fn=_unpadded_batch,
                                   **deterministic)
  _assert_trees_close(accum, full)
  for m_full, m_accum in zip(full_metrics, accum_metrics):
    np.testing.assert_allclose(m_accum["loss"], m_full["loss"], rtol=RTOL)
    np.testing.assert_allclose(m_accum["grad_norm"], m_full["grad_norm"], rtol=1e-4)


# Sizes chosen apart from each other: the batch's 48 rows appear in no parameter shape.
ROWS, LENGTH = 48, 24


def _activations_of_all_rows(hlo_text: str) -> set[str]:
  """Shapes of the float [rows, tokens, features...] arrays in a compiled (per-device) program
  whose rows are all the global batch's ROWS, where a device should hold ROWS / 8 of them.
  (2-D [rows, tokens] arrays are left out: the MLM objective's masking scores, a top_k over
  each row, are gathered whole, 16 MiB at XLM-R's batch.)"""
  return {m.group(0) for m in re.finditer(r"(?:f32|bf16)\[" + str(ROWS) + r"(?:,\d+){2,}\]",
                                          hlo_text)}


def test_activations_are_split_by_rows_over_the_mesh():
  """FSDP over 8 devices: traced in mesh.tracing_context (as every jitted step is), each device
  computes the hidden states, FFN activations and MLM logits of its own 6 rows; traced without
  it, XLA's propagation gives every device those of all 48 rows. The loss is the same."""
  config = config_lib.default_config()
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 8, 1
  config.optimizer.warmup_steps = 0
  model = Model(EncoderConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4,
                              mlp_dim=64, max_positions=40, scan_layers=True,
                              remat_policy="full"))
  objective = OBJECTIVES.get("mlm")
  bound = {"mlm": BoundObjective(objective, 1.0, ObjectiveContext(
      model=model, config=config.objectives.mlm.to_dict(), vocab_size=300, mask_id=4, pad_id=1,
      special_ids=(0, 1, 2, 3, 4), languages=("en",)))}
  tx, schedule = make_optimizer(config.optimizer, 100)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.logical_rules(config.mesh)
  state, shardings, _ = create_train_state(model, tx, {"mlm": objective}, LENGTH, mesh, rules,
                                           seed=0)
  kwargs = dict(in_shardings=(shardings, {"mono": mesh_lib.batch_sharding(mesh)}),
                out_shardings=(shardings, mesh_lib.replicated(mesh)))
  constrained = mesh_lib.jit_in_mesh(make_train_step(bound, tx, schedule, 1), mesh, rules,
                                     **kwargs)
  unconstrained = jax.jit(make_train_step(bound, tx, schedule, 1), **kwargs)
  batch = {"mono": mesh_lib.to_global_batch(_batch(0, rows=ROWS, length=LENGTH), mesh)}

  programs = {name: fn.lower(state, batch).compile()
              for name, fn in (("constrained", constrained), ("unconstrained", unconstrained))}
  # No device holds a float array of all 48 rows: not the hidden states [48, 24, 32], the FFN's
  # [48, 24, 64], nor the logits at the predicted positions [48, P, 384].
  assert _activations_of_all_rows(programs["constrained"].as_text()) == set()
  assert "f32[6,24,32]" in programs["constrained"].as_text()  # its own rows' hidden states
  # The check would see them: without the context every device computes all rows.
  assert f"f32[{ROWS},{LENGTH},64]" in _activations_of_all_rows(
      programs["unconstrained"].as_text())
  temp = {name: p.memory_analysis().temp_size_in_bytes for name, p in programs.items()}
  assert temp["constrained"] < 0.6 * temp["unconstrained"], temp

  # Where the rows are computed changes no number: one step, the same loss and gradients.
  metrics = {name: jax.device_get(p(jax.tree.map(lambda x: x.copy(), state), batch)[1])
             for name, p in programs.items()}
  for key in ("loss", "mlm/accuracy", "grad_norm"):
    np.testing.assert_allclose(metrics["constrained"][key], metrics["unconstrained"][key],
                               rtol=1e-5, err_msg=key)
