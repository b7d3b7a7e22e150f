"""Multi-host training on loopback: 2 processes x 2 CPU devices train like 1 process x 4 devices.

The claim under test: a run whose mesh spans several processes (jax.distributed, gloo collectives)
computes the same training trajectory as one process holding all devices, given the same global
batches; and it survives a preemption that only one host sees.

Why the reference is not a plain 1-process run: the global batch is read as input shards
(data/input_shards.py; sentence i goes to shard i % shards), one per host by default, so a 1-process
run reads other batches unless it reads the same shards: the reference sets
data.input_shards=2, as the 2-host run does (each host then reads one), and stacks both shards'
batches in shard order, where the hosts' rows land in the global batch. Its evaluation sets are the
hosts' too (tests/multiprocess_worker.py --as-hosts 2). Same mesh, same program, same batches: only
the collectives differ (gloo across processes vs in-process), which can reorder fp32 sums.

The mesh is fsdp=4: every weight and Adam moment is split over both hosts, so the all-gathers,
the gradient reduce-scatters, checkpoint writes and the export's gather all cross processes.

Runs (the compilation cache is shared, so later launches mostly skip compiling):
  1. concurrently: the 2-process run, SIGTERM to process 1 only after step 2 (both hosts must agree
     to stop and checkpoint), and the reference (4 steps, checkpoints at 2 and 4);
  2. concurrently: the 2-process run again (resumes at step 2, trains to 4, evaluates (mlm,
     retrieval), exports) and a copy of it resumed by 1 process (2 hosts -> 1);
  3. a copy of the reference cut back to step 2, resumed by 2 processes (1 -> 2 hosts).
"""
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import time

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
import portpicker
import pytest

from test_train import QUICKSTART, tiny_overrides

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "multiprocess_worker.py")
HOSTS, DEVICES_PER_HOST, STEPS = 2, 2, 4
# fp32 tolerance for 2 hosts vs 1: the programs are identical and only the all-reduce summation
# order may differ (observed: <= 1.2e-7 absolute after 4 steps), far below the effect of a wrong
# batch or a wrong restore (Adam moves every weight by about the learning rate, ~1e-3, per step;
# checked below to be >> this tolerance).
RTOL, ATOL = 1e-5, 1e-6
LAUNCH_TIMEOUT_S = 420  # per launch (all its processes together)
FAILURE_GRACE_S = 30    # a host whose peer died may block in a collective: kill it after this


def _overrides(corpus_dir):
  return ["--config." + o for o in tiny_overrides(corpus_dir, **{
      "train.total_steps": STEPS, "train.log_every": 2, "train.checkpoint_every": 2,
      "mesh.data": 1, "mesh.fsdp": 4, "data.input_shards": HOSTS,
      "eval.evaluators": ("mlm", "retrieval"),
      "eval.retrieval_items": 8, "export.enabled": True})]


def _env(devices, cache_dir):
  env = dict(os.environ)
  env.update({
      "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",  # replaces conftest's 8
      "JAX_PLATFORMS": "cpu",
      # Every launch compiles the same few programs; caching them keeps the test inside its budget.
      "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  })
  return env


def _start(name, argv, env, logs):
  log = logs / f"{name}.log"
  with log.open("wb") as out:
    proc = subprocess.Popen([sys.executable, WORKER, *argv], env=env, stdout=out,
                            stderr=subprocess.STDOUT, cwd=REPO)
  return name, proc, log


def _finish(started):
  """Waits for the processes; returns {name: (returncode, output)}.

  Processes still running at the deadline (or FAILURE_GRACE_S after another one failed) are
  killed and reported with their output and a note.
  """
  deadline = time.monotonic() + LAUNCH_TIMEOUT_S
  while any(proc.poll() is None for _, proc, _ in started) and time.monotonic() < deadline:
    if any(proc.returncode not in (None, 0) for _, proc, _ in started):
      deadline = min(deadline, time.monotonic() + FAILURE_GRACE_S)
    time.sleep(0.2)
  results = {}
  for name, proc, log in started:
    note = ""
    if proc.poll() is None:
      proc.kill()
      proc.wait()
      note = "\n[killed by the test: still running at its deadline]"
    results[name] = (proc.returncode, log.read_text(errors="replace") + note)
  return results


def _start_hosts(name, workdir, overrides, env, logs, sigterm=None):
  """One training job as HOSTS processes on a fresh loopback coordinator."""
  port = portpicker.pick_unused_port()
  started = []
  for i in range(HOSTS):
    hooks = ["--sigterm-at-step", str(sigterm[1])] if sigterm and sigterm[0] == i else []
    argv = [*hooks, "train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
            *overrides, "--config.distributed.initialize=yes",
            f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.num_processes={HOSTS}", f"--config.distributed.process_id={i}"]
    started.append(_start(f"{name}.p{i}", argv, env, logs))
  return started


@pytest.fixture(scope="module")
def runs(small_corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("multiprocess")
  logs, cache = root / "logs", root / "jax_cache"
  logs.mkdir()
  overrides = _overrides(small_corpus.dir)
  hosts_env = _env(DEVICES_PER_HOST, cache)
  multi, single = root / "two_hosts", root / "one_host"

  one_env = _env(HOSTS * DEVICES_PER_HOST, cache)

  def one_process(name, workdir, hooks=()):
    return _start(name, [*hooks, "train", "--config", QUICKSTART + ":smoke", "--workdir",
                         str(workdir), *overrides], one_env, logs)

  first = _start_hosts("preempted", multi, overrides, hosts_env, logs, sigterm=(1, 2))
  # Trains on HOSTS input shards (as the hosts do); --as-hosts gives it their evaluation sets.
  first.append(one_process("reference", single, ["--as-hosts", str(HOSTS)]))
  results = _finish(first)
  fewer, more = root / "fewer_hosts", root / "more_hosts"
  if all(rc == 0 for rc, _ in results.values()):
    # A changed host count, from step 2: the 2-host run resumed by 1 process, the 1-process run
    # by 2 hosts. Both keep the input shards of the checkpoint, so both read the same batches.
    shutil.copytree(multi, fewer)
    shutil.copytree(single, more, ignore=shutil.ignore_patterns(str(STEPS), "summary.json"))
    later = _start_hosts("resumed", multi, overrides, hosts_env, logs)
    later.append(one_process("fewer_hosts", fewer))
    results.update(_finish(later))
    # Alone: two 2-process jobs at once on 2 cores can miss gloo's 30 s set-up deadline.
    results.update(_finish(_start_hosts("more_hosts", more, overrides, hosts_env, logs)))
  return {"multi": multi, "single": single, "fewer": fewer, "more": more, "results": results}


def _assert_ok(runs, *names):
  for name in names:
    rc, output = runs["results"].get(name, (None, "not run: an earlier launch failed"))
    assert rc == 0, f"{name} exited {rc}:\n{output[-6000:]}"


def _state(workdir, step):
  """The checkpointed train state of `step` as host numpy arrays (no mesh needed to read it)."""
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, restore_args=restore_args)


def _assert_trees_close(got, want, what):
  got_leaves = jax.tree_util.tree_leaves_with_path(got)
  want_leaves = jax.tree_util.tree_leaves_with_path(want)
  assert [p for p, _ in got_leaves] == [p for p, _ in want_leaves], what
  for (path, a), (_, b) in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL,
                               err_msg=f"{what}: {jax.tree_util.keystr(path)}")


def test_all_processes_exit_cleanly(runs):
  _assert_ok(runs, "preempted.p0", "preempted.p1", "reference", "resumed.p0", "resumed.p1",
             "fewer_hosts", "more_hosts.p0", "more_hosts.p1")


def test_one_host_sigterm_stops_both_hosts_at_the_same_step(runs):
  _assert_ok(runs, "preempted.p0", "preempted.p1")
  # Process 0 got no signal: it stopped because the hosts agree (process_allgather of the flag).
  for i in range(HOSTS):
    assert "preempted at step 2:" in runs["results"][f"preempted.p{i}"][1]
  _assert_ok(runs, "resumed.p0", "resumed.p1")
  data = runs["multi"] / "checkpoints" / "2" / "data_mono"
  # Each host checkpoints its own iterator position.
  assert sorted(p.name for p in data.glob("process_*.json")) == [
      f"process_{i}-of-{HOSTS}.json" for i in range(HOSTS)]
  steps = sorted(int(p.name) for p in (runs["multi"] / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, STEPS]


def test_two_hosts_train_like_one_host(runs):
  _assert_ok(runs, "preempted.p0", "preempted.p1", "reference")
  got, want = _state(runs["multi"], 2), _state(runs["single"], 2)
  assert int(got["step"]) == 2
  # Steps 1-2: batch rows and FSDP shards of params and Adam moments spread over both hosts.
  _assert_trees_close(got, want, "2 hosts vs 1 host after step 2")


def test_two_hosts_resume_like_one_host(runs):
  _assert_ok(runs, "preempted.p0", "preempted.p1", "reference", "resumed.p0", "resumed.p1")
  got, want = _state(runs["multi"], STEPS), _state(runs["single"], STEPS)
  assert int(got["step"]) == STEPS
  # Steps 3-4 after the restart: state restored across hosts, each host's iterator resumed.
  _assert_trees_close(got, want, "2 hosts (resumed) vs 1 host after step 4")
  # The tolerance is meaningful: two optimizer steps move the weights by far more than it, so
  # a host that resumed at the wrong data position or from the wrong state would show.
  before = _state(runs["multi"], 2)["params"]
  moved = max(float(np.max(np.abs(a - b)))
              for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(before)))
  assert moved > 100 * ATOL, moved


def test_a_changed_host_count_resumes_with_the_same_batches(runs):
  """2 hosts -> 1 process and 1 process -> 2 hosts, each from step 2: the resumed run ends where
  the uninterrupted one did (the input positions of both shards are carried over)."""
  _assert_ok(runs, "reference", "resumed.p0", "resumed.p1", "fewer_hosts", "more_hosts.p0",
             "more_hosts.p1")
  for resumed, original, what in ((runs["fewer"], runs["multi"], "2 hosts -> 1"),
                                  (runs["more"], runs["single"], "1 process -> 2 hosts")):
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["start_step"] == 2 and summary["step"] == STEPS, what
    _assert_trees_close(_state(resumed, STEPS), _state(original, STEPS), what)
  # The 2-host run's input positions, read by the one process that resumed it.
  assert sorted(p.name for p in (runs["fewer"] / "checkpoints" / "2" / "data_mono").glob("process_*")) \
      == [f"process_{i}-of-{HOSTS}.json" for i in range(HOSTS)]


def _metric_rows(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_metrics_written_once_and_finite(runs):
  _assert_ok(runs, "preempted.p0", "preempted.p1", "resumed.p0", "resumed.p1")
  rows = _metric_rows(runs["multi"])
  train = [r for r in rows if "train/loss" in r]
  evals = [r for r in rows if "eval/mlm/loss" in r]
  # One line per log point: only process 0 writes (steps 2 before the preemption, 4 after).
  assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in evals] == [STEPS]
  for row in rows:
    for key, value in row.items():
      assert math.isfinite(value), (key, row)
  ref_train = [r for r in _metric_rows(runs["single"]) if "train/loss" in r]
  assert len(ref_train) == len(train)
  for got, want in zip(train, ref_train):
    np.testing.assert_allclose(got["train/loss"], want["train/loss"], rtol=RTOL)


def test_eval_and_export_match_one_host(runs):
  _assert_ok(runs, "reference", "resumed.p0", "resumed.p1")
  summary = json.loads((runs["multi"] / "summary.json").read_text())
  reference = json.loads((runs["single"] / "summary.json").read_text())
  assert summary["start_step"] == 2 and summary["step"] == STEPS
  got, want = summary["eval"], reference["eval"]
  assert set(got) == set(want)
  # The held-out set and its unigram baseline cover every host's sentences, not process 0's share.
  for key in ("eval_tokens", "mlm/predictions"):
    assert got[key] == want[key], key
  for key in ("unigram/loss", "unigram/accuracy", "mlm/loss", "mlm/accuracy"):
    np.testing.assert_allclose(got[key], want[key], rtol=RTOL, err_msg=key)
  for key, value in want.items():
    if key.endswith("tfidf_p1") or key.endswith("/items"):  # host-side: same on every host
      assert got[key] == value, key
    elif key.endswith("p1"):  # a near-tie may flip one item of 8 under fp32 noise
      assert abs(got[key] - value) <= 1 / 8 + 1e-9, key

  # Process 0 wrote the export from parameters gathered over both hosts.
  def params(workdir):
    return flax.serialization.msgpack_restore((workdir / "export" / "params.msgpack").read_bytes())
  _assert_trees_close(params(runs["multi"]), params(runs["single"]), "exported params")
  # The export has no vocabulary padding (vocab_multiple 1): compare the checkpoint's real rows.
  exported = params(runs["multi"])
  checkpoint = jax.tree.map(lambda a, b: np.asarray(a)[tuple(slice(0, n) for n in np.shape(b))],
                            {k: v for k, v in _state(runs["multi"], 4)["params"].items()
                             if k in exported}, exported)
  _assert_trees_close(exported, checkpoint, "export vs checkpoint")
