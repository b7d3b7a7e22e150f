"""Faults a long run must survive: non-finite steps and damaged checkpoints.

One tiny run (the `poisoned_run` fixture) trains 4 steps with a checkpoint after each; the batch of
step 3 holds token ids past the vocabulary, whose embeddings are NaN (`jnp.take` fills out-of-range
rows with NaN), so its loss and gradients are NaN. The damaged-checkpoint tests corrupt copies of
its workdir.
"""
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from test_train import QUICKSTART, tiny_config, tiny_overrides
from xlm_jax import cli
from xlm_jax import mesh as mesh_lib
from xlm_jax.data import input_shards
from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax.train import nonfinite
from xlm_jax.train import trainer
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import TrainState, create_train_state
from xlm_jax.train.step import BoundObjective

POISONED_STEP = 3
OUT_OF_VOCABULARY = 10**6


def poison_batches(monkeypatch, steps):
  """The trainer's batches of the given steps (counted from 1 in this run) get token ids past the
  vocabulary; a host-side change, as a corrupt input shard would be."""
  original, calls = trainer._next_batches, []

  def poisoned(*args):
    batches = original(*args)
    calls.append(None)
    if len(calls) in steps:
      ids = batches["mono"]["input_ids"]
      batches["mono"]["input_ids"] = jax.device_put(
          np.full(ids.shape, OUT_OF_VOCABULARY, ids.dtype), ids.sharding)
    return batches
  monkeypatch.setattr(trainer, "_next_batches", poisoned)


def read_state(workdir, step):
  """Every array of a checkpoint's train state (params, opt_state, rng, extra, step) on the host."""
  path = workdir / ckpt_lib.CHECKPOINT_DIR / str(step) / "state"
  with ocp.PyTreeCheckpointer() as checkpointer:
    return jax.device_get(checkpointer.restore(path))


def logged(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def poisoned_run(small_corpus, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("poisoned") / "w"
  with pytest.MonkeyPatch.context() as monkeypatch:
    poison_batches(monkeypatch, {POISONED_STEP})
    # Asynchronous saves, as by default: each step's file record is written at the next save.
    config = tiny_config(small_corpus.dir, **{
        "train.total_steps": 4, "train.checkpoint_every": 1, "train.keep_checkpoints": 10,
        "train.async_checkpointing": True, "eval.evaluators": ()})
    summary = trainer.train_and_evaluate(config, workdir)
  return workdir, config, summary


# ------------------------------------------------------------------------- non-finite steps


def _toy_loss(params, batch, rng, ctx):
  # sqrt(w * x): x = NaN gives a NaN loss; x = 0 a finite loss (0) with NaN gradients (0/0).
  loss = jnp.sum(jnp.sqrt(params["w"] * batch["x"]))
  return loss, {"loss": loss}, {"seen": ctx.extra["seen"] + 1}


def _toy_run(batches):
  """The trainer's jitted update (jit_update_steps: the non-finite guard included) of a
  one-parameter objective with extra state, on a 1-device mesh; returns the host state after
  each batch and each step's metrics."""
  toy = Objective(name="toy", batch_kind="mono", loss_fn=_toy_loss, default_config=dict)
  context = ObjectiveContext(model=None, config={}, vocab_size=0, mask_id=0, pad_id=0,
                             special_ids=(), languages=(), name="toy")
  bound = {"toy": BoundObjective(toy, 1.0, context)}
  config = tiny_config("/unused")
  tx, schedule = make_optimizer(config.optimizer, 100)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  params = {"w": jnp.ones((4,), jnp.float32)}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0), extra={"toy": {"seen": jnp.zeros((), jnp.int32)}})
  shardings = jax.tree.map(lambda _: mesh_lib.replicated(mesh), state)
  fns = trainer.jit_update_steps(bound, tx, schedule, shardings, mesh)
  states, metrics = [], []
  for x in batches:
    batch = {"mono": {"x": jax.device_put(np.full((2, 4), x, np.float32),
                                          mesh_lib.batch_sharding(mesh))}}
    state, step_metrics = trainer.run_group(fns, state, batch)
    states.append(jax.device_get(state))
    metrics.append(jax.device_get(step_metrics))
  return states, metrics


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_nonfinite_step_leaves_the_state_as_it_was():
  states, metrics = _toy_run([1.0, float("nan"), 0.0, 2.0])
  assert [m["nonfinite_skipped"] for m in metrics] == [0.0, 1.0, 1.0, 0.0]
  assert math.isnan(metrics[1]["loss"]) and metrics[2]["loss"] == 0.0  # 0.0: the gradient alone
  assert math.isnan(metrics[2]["grad_norm"])
  # The step counter follows the batches drawn; nothing else moved on the skipped steps.
  assert [int(s.step) for s in states] == [1, 2, 3, 4]
  for skipped in states[1:3]:
    _assert_same((skipped.params, skipped.opt_state, skipped.rng, skipped.extra),
                 (states[0].params, states[0].opt_state, states[0].rng, states[0].extra))
  assert not np.array_equal(states[3].params["w"], states[0].params["w"])  # applied again
  # Optax's count stayed too: the next update is exactly the one made without the skipped steps.
  without, _ = _toy_run([1.0, 2.0])
  _assert_same((states[3].params, states[3].opt_state, states[3].extra),
               (without[1].params, without[1].opt_state, without[1].extra))


def _step_metrics(loss=1.0, grad_norm=1.0, **objective_losses):
  skipped = not all(math.isfinite(v) for v in (loss, grad_norm, *objective_losses.values()))
  return {"loss": np.float32(loss), "grad_norm": np.float32(grad_norm),
          "nonfinite_skipped": np.float32(skipped),
          **{f"{name}/loss": np.float32(v) for name, v in objective_losses.items()}}


def test_consecutive_nonfinite_steps_stop_the_run_past_the_limit():
  watch = nonfinite.NonFiniteWatch("skip", max_consecutive=2)
  nan = float("nan")
  flags = [False, True, True, False, True, True, True]
  reasons = [watch.observe(step, ("mlm",), _step_metrics(mlm=nan if bad else 1.0,
                                                         loss=nan if bad else 1.0))
             for step, bad in enumerate(flags, start=1)]
  assert reasons[:6] == [None] * 6  # two in a row are allowed, twice
  assert "3 steps in a row (steps 5-7) while train.max_consecutive_nonfinite is 2" in reasons[6]
  assert "step 7: loss of objective 'mlm' is not finite" in reasons[6]
  assert watch.total == 5


def test_nonfinite_message_names_the_objective_at_fault():
  nan = float("nan")
  stop = nonfinite.NonFiniteWatch("stop", max_consecutive=10)
  reason = stop.observe(12, ("mlm", "tlm"), _step_metrics(loss=nan, grad_norm=nan, mlm=2.0,
                                                          tlm=nan))
  assert reason.startswith("step 12: loss of objective 'tlm' is not finite")
  assert "tlm/loss=nan" in reason and "mlm/loss" not in reason
  # Finite losses with a non-finite gradient name every objective of the step.
  reason = stop.observe(13, ("mlm", "tlm"), _step_metrics(grad_norm=float("inf"), mlm=2.0, tlm=1.0))
  assert reason.startswith("step 13: gradient of objectives 'mlm', 'tlm' is not finite")


def test_skipped_step_keeps_params_and_optimizer_state(poisoned_run):
  workdir, _, summary = poisoned_run
  assert summary["step"] == 4 and summary["nonfinite_skipped"] == 1
  before, skipped, after = (read_state(workdir, s) for s in (2, 3, 4))
  assert int(skipped["step"]) == 3
  for key in ("params", "opt_state", "rng"):
    _assert_same(skipped[key], before[key])
  embeddings = lambda state: state["params"]["encoder"]["embeddings"]  # noqa: E731
  assert not np.array_equal(embeddings(after)["word_embeddings"]["embedding"],
                            embeddings(skipped)["word_embeddings"]["embedding"])
  # The log of steps 3-4 counts the skip; its loss is the mean over the applied step alone.
  row = next(r for r in logged(workdir) if r["step"] == 4 and "train/loss" in r)
  assert row["train/nonfinite_skipped"] == 1.0 and math.isfinite(row["train/loss"])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after["params"]))


def test_nonfinite_stop_exits_keeping_the_checkpoint_before_it(small_corpus, tmp_path, monkeypatch,
                                                               capsys):
  workdir = tmp_path / "w"
  poison_batches(monkeypatch, {POISONED_STEP})
  # Logs only at the end: the check before the save of step 4 is what catches step 3.
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
                   *["--config." + o for o in tiny_overrides(small_corpus.dir, **{
                       "train.nonfinite": "stop", "train.checkpoint_every": 2,
                       "train.log_every": 5, "eval.evaluators": ()})]])
  err = capsys.readouterr().err
  assert code == 2, err
  message = err.strip().splitlines()[-1]
  assert "step 3: loss of objective 'mlm' is not finite" in message
  assert "train.nonfinite='stop'" in message and "the last checkpoint, step 2" in message
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [2]  # nothing after the bad step saved
  assert logged(workdir)[-1]["train/nonfinite_skipped"] == 1.0
  assert not (workdir / "summary.json").exists()


@pytest.mark.slow
def test_consecutive_limit_stops_a_real_run(small_corpus, tmp_path, monkeypatch):
  poison_batches(monkeypatch, {3, 4})
  config = tiny_config(small_corpus.dir, **{
      "train.max_consecutive_nonfinite": 1, "train.checkpoint_every": 2,
      "eval.evaluators": ()})
  with pytest.raises(nonfinite.NonFiniteError, match=r"2 steps in a row \(steps 3-4\)"):
    trainer.train_and_evaluate(config, tmp_path / "w")
  assert ckpt_lib.Checkpointer(tmp_path / "w").all_steps() == [2]


# ------------------------------------------------------------------------- damaged checkpoints


def _largest_array_file(step_dir):
  return max((p for p in (step_dir / "state").rglob("d/*") if p.is_file()),
             key=lambda p: p.stat().st_size)


def _cut_short(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  return path


def _same_size_garbage(path):
  path.write_bytes(b"#" * path.stat().st_size)
  return path


DAMAGE = {
    # name: (damage(step_dir) -> the damaged file, what the report says about it)
    "missing file": (lambda d: (d / "state" / "manifest.ocdbt").unlink() or
                     d / "state" / "manifest.ocdbt", "is missing"),
    "truncated array file": (lambda d: _cut_short(_largest_array_file(d)),
                             "when written (cut short)"),
    "garbage metadata": (lambda d: _same_size_garbage(d / "meta" / "metadata"),
                         "has other content than when written"),
    # No file record (a run killed between orbax's commit and the record): restoring is the check.
    "truncated, unrecorded": (lambda d: (d / ckpt_lib.FILES_MANIFEST).unlink() or
                              _cut_short(_largest_array_file(d)),
                              "its state (state/) cannot be read"),
}


@pytest.fixture(scope="module")
def restore_target(poisoned_run):
  """What a resume restores into, built as the trainer builds it (no train step compiled)."""
  _, config, _ = poisoned_run
  corpus = trainer.open_corpus(config)
  tokenizer = trainer.open_tokenizer(config, corpus)
  mcfg = trainer.model_config(config, tokenizer)
  model = trainer.Model(mcfg)
  mesh = mesh_lib.make_mesh(config.mesh)
  bound = trainer.bind_objectives(config, model, tokenizer, {},
                                  data_parallel_size=mesh_lib.data_parallel_size(mesh))
  tx, _ = make_optimizer(config.optimizer, config.train.total_steps)
  _, _, abstract = create_train_state(model, tx, bound, config.data.seq_len, mesh,
                                      mesh_lib.logical_rules(config.mesh), config.seed,
                                      initialize=False)
  shards = input_shards.plan(config.data.input_shards, None, 1, config.seed, 0)
  return abstract, mcfg, lambda: {"mono": iter(trainer.make_batch_dataset(
      "mono", config, corpus, tokenizer, "train", shards=shards))}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_is_named_and_the_previous_restored(poisoned_run, restore_target,
                                                                      tmp_path, damage):
  source, _, _ = poisoned_run
  workdir = tmp_path / "w"
  shutil.copytree(source, workdir)
  step_dir = workdir / ckpt_lib.CHECKPOINT_DIR / "4"
  damage_fn, report = DAMAGE[damage]
  damaged_file = damage_fn(step_dir)
  abstract, mcfg, iterators = restore_target

  checkpointer = ckpt_lib.Checkpointer(workdir, data_kinds=("mono",))
  step, meta = checkpointer.newest_intact()
  state, step = trainer._restore_newest(checkpointer, step, abstract, iterators(), mcfg)
  assert step == 3 and int(state.step) == 3
  _assert_same(jax.device_get(state.params), read_state(workdir, 3)["params"])
  [err] = checkpointer.damaged
  assert err.step == 4 and str(step_dir) in str(err) and report in err.problem
  if damage != "truncated, unrecorded":  # the record names the file itself
    assert str(damaged_file.relative_to(step_dir)) in err.problem
  moved = checkpointer.set_aside(4)
  assert moved == workdir / ckpt_lib.DAMAGED_DIR / "4" and (moved / "state").is_dir()
  assert checkpointer.all_steps() == [1, 2, 3] and not step_dir.exists()
  checkpointer.close()


def test_resume_skips_a_damaged_checkpoint_and_rotation_keeps_intact_ones(
    poisoned_run, small_corpus, tmp_path, capsys, caplog):
  source, _, _ = poisoned_run
  workdir = tmp_path / "w"
  shutil.copytree(source, workdir)
  truncated = _cut_short(_largest_array_file(workdir / ckpt_lib.CHECKPOINT_DIR / "4"))
  # keep_checkpoints=1 from here on: rotation must never count the damaged step.
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
                   *["--config." + o for o in tiny_overrides(small_corpus.dir, **{
                       "train.checkpoint_every": 2, "train.keep_checkpoints": 1,
                       "eval.evaluators": ()})]])
  assert code == 0, capsys.readouterr().err
  name = str(truncated.relative_to(workdir / ckpt_lib.CHECKPOINT_DIR / "4"))
  warnings = caplog.text  # logging.warning: on stderr outside pytest
  assert f"checkpoint step 4 ({workdir / 'checkpoints' / '4'}) is damaged: {name}" in warnings
  assert "training resumes from step 3" in warnings
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["start_step"] == 3 and summary["step"] == 6
  assert [d["step"] for d in summary["damaged_checkpoints"]] == [4]
  assert (workdir / ckpt_lib.DAMAGED_DIR / "4" / name).is_file()  # kept for the user to inspect
  checkpointer = ckpt_lib.Checkpointer(workdir)
  assert checkpointer.all_steps() == [6]
  checkpointer.check_files(6)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(checkpointer.restore_params(6)[0]))
  checkpointer.close()


def test_no_intact_checkpoint_is_refused_and_nothing_moved(poisoned_run, small_corpus, tmp_path):
  source, config, _ = poisoned_run
  workdir = tmp_path / "w"
  shutil.copytree(source, workdir)
  for step_dir in (workdir / ckpt_lib.CHECKPOINT_DIR).iterdir():
    _same_size_garbage(step_dir / "meta" / "metadata")
  with pytest.raises(ValueError, match=r"no checkpoint in .* can be restored \(step 4: "
                                       r"meta/metadata has other content.*step 1: "):
    trainer.train_and_evaluate(config, workdir)
  assert not (workdir / ckpt_lib.DAMAGED_DIR).exists()
  assert sorted(int(p.name) for p in (workdir / ckpt_lib.CHECKPOINT_DIR).iterdir()) == [1, 2, 3, 4]
