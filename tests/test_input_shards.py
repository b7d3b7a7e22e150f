"""A changed device count: a run checkpointed on 8 devices resumes on 4 with the same params and
the same data order; input shards the new layout cannot split restart the input and say so.

The runs are `xlm-jax train` children (tests/test_chaos.py's tiny model, benchmarks/chaos_resume.py's
helpers) with the global batch read as 2 input shards stacked in one process
(data/input_shards.py). The 2-process cases (2 hosts -> 1, 1 -> 2) are in test_multiprocess.py.
"""
import json
import shutil

import numpy as np
import pytest

from test_chaos import chaos
from xlm_jax.data import input_shards

TOTAL, EVERY = 4, 2
# fp32 tolerance between meshes of 8 and 4 devices: the same program split differently, so only
# the order of the cross-device sums changes (as in test_multiprocess.py). A batch read from
# other sentences moves the loss by far more (test_other_input_shards_restart_the_input_and_say_so
# checks that with the same comparison).
RTOL, ATOL = 1e-5, 1e-6


def _overrides(corpus_dir, **extra):
  return chaos.tiny_overrides(corpus_dir, TOTAL, EVERY, **{
      "mesh.data": -1, "mesh.fsdp": 2, "data.input_shards": 2, "train.keep_checkpoints": 5,
      **extra})


@pytest.fixture(scope="module")
def eight_devices(small_corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("input_shards")
  cache = root / "xla_cache"
  workdir = root / "eight"
  record = chaos.run_child(chaos.train_argv(workdir, _overrides(small_corpus.dir)),
                           chaos.child_env(devices=8, cache_dir=cache), workdir,
                           root / "eight.log")
  assert record["returncode"] == 0, (root / "eight.log").read_text()[-3000:]
  return workdir, cache, small_corpus.dir


def _resume_copy(source, target, corpus_dir, devices, cache, **extra):
  """A copy of `source` cut back to its step-2 checkpoint, resumed on `devices` devices."""
  shutil.copytree(source, target)
  shutil.rmtree(target / "checkpoints" / str(TOTAL))
  (target / "summary.json").unlink(missing_ok=True)
  record = chaos.run_child(chaos.train_argv(target, _overrides(corpus_dir, **extra)),
                           chaos.child_env(devices=devices, cache_dir=cache), target,
                           target.parent / f"{target.name}.log")
  log = (target.parent / f"{target.name}.log").read_text()
  assert record["returncode"] == 0, log[-3000:]
  assert chaos.restored_from(record) == EVERY, log[-3000:]
  return log


def _losses(workdir):
  values, _ = chaos.logged_values(workdir)
  return np.array([values[s]["train/loss"] for s in range(EVERY + 1, TOTAL + 1)])


def _assert_states_close(got, want):
  import jax
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=RTOL,
                               atol=ATOL, err_msg=jax.tree_util.keystr(path))


def test_resume_on_four_devices_keeps_params_and_data_order(eight_devices, tmp_path):
  source, cache, corpus_dir = eight_devices
  log = _resume_copy(source, tmp_path / "four", corpus_dir, 4, cache)
  assert "data order cannot be kept" not in log
  np.testing.assert_allclose(_losses(tmp_path / "four"), _losses(source), rtol=RTOL, atol=ATOL)
  _assert_states_close(chaos.final_state(tmp_path / "four", TOTAL), chaos.final_state(source, TOTAL))


def test_other_input_shards_restart_the_input_and_say_so(eight_devices, tmp_path):
  source, cache, corpus_dir = eight_devices
  log = _resume_copy(source, tmp_path / "one_shard", corpus_dir, 8, cache,
                     **{"data.input_shards": 1})
  assert "data order cannot be kept" in log and "read its input as 2 shard(s)" in log, log[-3000:]
  # Other batches: the comparison that passes above tells them apart.
  assert not np.allclose(_losses(tmp_path / "one_shard"), _losses(source), rtol=RTOL, atol=ATOL)
  meta = json.loads((tmp_path / "one_shard" / "checkpoints" / str(TOTAL) / "meta" /
                     "metadata").read_text())
  assert meta["input_shards"] == 1
  assert meta["data_seed"] == input_shards.resharded_seed(0, EVERY)


# ------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("configured, saved, processes, want", [
    (0, None, 2, (2, True)),      # a fresh start: one shard per process
    (8, None, 2, (8, True)),
    (0, 2, 1, (2, True)),         # 2 hosts -> 1: the one process reads both shards
    (0, 8, 4, (8, True)),
    (0, 1, 2, (2, False)),        # 1 -> 2 hosts: one shard cannot be split
    (0, 4, 3, (3, False)),
    (1, 2, 1, (1, False)),        # asked for another count
])
def test_plan_keeps_the_saved_shards_when_the_processes_divide_them(configured, saved, processes,
                                                                    want):
  plan = input_shards.plan(configured, saved, processes, seed=7, step=100)
  assert (plan.count, plan.keeps_order) == want
  assert plan.seed == (7 if plan.keeps_order else input_shards.resharded_seed(7, 100))
  assert bool(plan.why) != plan.keeps_order


def test_plan_refuses_shards_the_processes_cannot_share():
  with pytest.raises(ValueError, match="multiple of the 2 processes"):
    input_shards.plan(3, None, 2, seed=0, step=0)


def test_a_reshard_seed_is_kept_by_later_resumes():
  first = input_shards.plan(0, 1, 2, seed=0, step=10)
  later = input_shards.plan(0, first.count, 2, seed=0, step=20, saved_seed=first.seed)
  assert later.keeps_order and later.seed == first.seed != 0


class _Counter:
  """A toy dataset: batches [start, start + 1, ...] of one row; its state is the next value."""

  def __init__(self, start):
    self.start = start

  def __iter__(self):
    return self

  def __next__(self):
    self.start += 1
    return {"x": np.array([self.start - 1])}

  def get_state(self):
    return {"next": self.start}

  def set_state(self, state):
    self.start = state["next"]


def _stack(count, processes, index):
  return iter(input_shards.StackedShards(lambda s, n: _Counter(100 * s), count,
                                         input_shards.local_shards(count, index, processes)))


def test_states_written_by_two_hosts_restore_one_host_reading_both_shards(tmp_path):
  hosts = [_stack(4, 2, i) for i in range(2)]
  for it in hosts:
    next(it)
    next(it)
  for i, it in enumerate(hosts):
    (tmp_path / f"process_{i}-of-2.json").write_bytes(it.get_state())
  assert input_shards.saved_layout(tmp_path) == (2, 4)
  one = _stack(4, 1, 0)
  one.set_shard_states(input_shards.states_from_files(tmp_path))
  assert next(one)["x"].tolist() == [2, 102, 202, 302]


def test_positions_saved_before_input_shards_are_one_shard_per_host(tmp_path):
  # The layout of older checkpoints: each host's file is its one pipeline's grain state.
  for i in range(2):
    (tmp_path / f"process_{i}-of-2.json").write_text(json.dumps({"next": 100 * i + 5}))
  assert input_shards.saved_layout(tmp_path) == (2, 2)
  one = _stack(2, 1, 0)
  one.set_shard_states(input_shards.states_from_files(tmp_path))
  assert next(one)["x"].tolist() == [5, 105]
  (tmp_path / "process_1-of-2.json").unlink()
  with pytest.raises(ValueError, match=r"host\(s\) \[1\] of 2 are missing"):
    input_shards.states_from_files(tmp_path)
