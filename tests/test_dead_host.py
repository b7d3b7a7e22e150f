"""A dead host: kill -9 one of two training processes; the survivor must exit, not hang.

The claim under test (issue 15): in a multi-process run, when one process dies without a word
(SIGKILL, a lost VM), the other exits with an error within a stated time instead of blocking
forever in a collective the dead one never joins; and rerunning every process resumes from the
newest checkpoint exactly.

The stated time is `distributed.heartbeat_timeout_seconds` (xlm_jax/mesh.py passes it to
jax.distributed.initialize): the coordination service declares a process dead when its heartbeats
stop for that long and terminates the others (SIGABRT, a fatal log line naming the lost task).
Measured on loopback (2 loaded cores): the survivor of a kill of process 1 exits 6.7-9.3 s after it
with 10 s (this test), 97 s after it with JAX's default 100 s (its collective either fails at once,
gloo seeing the closed socket, and jax.distributed's shutdown at exit then waits for the dead task,
or blocks until the service's error ends it); a kill of process 0 (which hosts the coordination
service) ends the survivor at once (its connection to the service closes). Before
distributed.heartbeat_timeout_seconds existed the survivor already ended, but after JAX's 100 s.

Wall time: 2-4 min (135-227 s measured on 2 cores shared with other jobs): marked slow.

The run is tests/test_multiprocess.py's (2 processes x 2 CPU devices, fsdp=4 over both, 4 steps,
a checkpoint every 2) with a heartbeat timeout of HEARTBEAT_S. Process 1 sleeps STEP_SECONDS at
every step boundary, before the hosts' stop agreement (a collective: tests/multiprocess_worker.py
--step-seconds), so once checkpoint 2 is committed the test kills it while process 0 waits for it
inside that collective. Then:
  - process 0 must exit non-zero within HEARTBEAT_S + MARGIN_S of the kill, its log naming the
    lost task;
  - both processes rerun: the run resumes at step 2 and ends at step 4 with the state of the
    1-process reference (same global batches, tests/multiprocess_worker.py --as-hosts 2, run
    concurrently with the first launch), within test_multiprocess's fp32 tolerance.
"""
import json
import os
import re
import signal
import time

import portpicker
import pytest

import test_multiprocess as mp
from test_train import QUICKSTART

pytestmark = pytest.mark.slow  # ~3 min on 2 loaded cores: three launches, each compiling

HEARTBEAT_S = 10    # the tests' distributed.heartbeat_timeout_seconds (default 100, JAX's)
MARGIN_S = 20       # detection and propagation (<~3 s measured) plus a loaded 2-core machine
STEP_SECONDS = 3.0  # process 1's pause at each step boundary: the window the kill lands in
KILL_WAIT_S = 300   # the first checkpoint must be committed within this (compiling included)


def _overrides(corpus_dir):
  # test_multiprocess's run with a short heartbeat timeout, evaluating the held-out MLM loss
  # only and exporting nothing (the claim is about training); later overrides win.
  return [*mp._overrides(corpus_dir), "--config.eval.evaluators=('mlm',)",
          "--config.export.enabled=False",
          f"--config.distributed.heartbeat_timeout_seconds={HEARTBEAT_S}"]


def _start_hosts(name, workdir, overrides, env, logs, hooks=None):
  """One training job as mp.HOSTS processes on a fresh loopback coordinator; `hooks` maps a
  process index to worker hooks. INFO logging: the distributed set-up states its timeout."""
  port = portpicker.pick_unused_port()
  return [mp._start(f"{name}.p{i}", [*(hooks or {}).get(i, ()), "--log-level", "INFO", "train",
                                      "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
                                      *overrides, "--config.distributed.initialize=yes",
                                      f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                                      f"--config.distributed.num_processes={mp.HOSTS}",
                                      f"--config.distributed.process_id={i}"], env, logs)
          for i in range(mp.HOSTS)]


def _committed(workdir):
  """Checkpoint steps committed and recorded (process 0 writes the file list after the commit)."""
  folder = workdir / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir()
                if p.name.isdigit() and (p / "xlm_jax_files.json").is_file())


def _kill_after_first_checkpoint(started, workdir):
  """SIGKILLs process 1 once a checkpoint is committed; returns (seconds until process 0 exited,
  its return code, the steps committed at the kill), or fails if something exits first."""
  (_, p0, _), (_, p1, _) = started
  deadline = time.monotonic() + KILL_WAIT_S
  while not _committed(workdir):
    if p0.poll() is not None or p1.poll() is not None or time.monotonic() > deadline:
      return None, None, []
    time.sleep(0.05)
  steps = _committed(workdir)
  p1.send_signal(signal.SIGKILL)
  killed = time.monotonic()
  limit = killed + HEARTBEAT_S + MARGIN_S + 60  # measured beyond the bound, to report by how much
  while p0.poll() is None and time.monotonic() < limit:
    time.sleep(0.05)
  return time.monotonic() - killed, p0.poll(), steps


@pytest.fixture(scope="module")
def runs(small_corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("dead_host")
  logs = root / "logs"
  logs.mkdir()
  # The session's compilation cache (tests/conftest.py) when there is one: test_multiprocess's
  # programs are these.
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or root / "jax_cache"
  overrides = _overrides(small_corpus.dir)
  hosts_env = mp._env(mp.DEVICES_PER_HOST, cache)
  multi, single = root / "two_hosts", root / "one_host"

  first = _start_hosts("killed", multi, overrides, hosts_env, logs,
                       hooks={1: ["--step-seconds", str(STEP_SECONDS)]})
  reference = mp._start("reference", ["--as-hosts", str(mp.HOSTS), "train", "--config",
                                      QUICKSTART + ":smoke", "--workdir", str(single), *overrides],
                        mp._env(mp.HOSTS * mp.DEVICES_PER_HOST, cache), logs)
  try:
    exit_s, exit_rc, at_kill = _kill_after_first_checkpoint(first, multi)
  finally:
    results = mp._finish(first)  # kills whatever still runs, collects the logs
  results.update(mp._finish([reference]))
  if exit_rc not in (None, 0) and results["reference"][0] == 0:
    results.update(mp._finish(_start_hosts("restarted", multi, overrides, hosts_env, logs)))
  return {"multi": multi, "single": single, "results": results, "exit_s": exit_s,
          "exit_rc": exit_rc, "at_kill": at_kill}


def test_survivor_exits_with_an_error_within_the_heartbeat_timeout(runs):
  rc, log = runs["results"]["killed.p0"]
  assert runs["at_kill"], f"no checkpoint before a process exited:\n{log[-6000:]}"
  assert runs["exit_rc"] is not None, (
      f"process 0 still ran {runs['exit_s']:.0f} s after its peer's death:\n{log[-6000:]}")
  assert runs["exit_rc"] != 0, log[-6000:]
  assert runs["exit_s"] <= HEARTBEAT_S + MARGIN_S, (runs["exit_s"], log[-6000:])
  print(f"survivor exited {runs['exit_s']:.1f} s after the kill (rc {runs['exit_rc']}), "
        f"checkpoints {runs['at_kill']}")
  # It was waiting for the dead process, not done: nothing past the checkpoint was committed.
  assert runs["at_kill"] == [2]
  # The set-up states the bound; the coordination service's fatal line names the lost task.
  assert (f"a host silent for {HEARTBEAT_S} s (distributed.heartbeat_timeout_seconds)"
          in log), log[-6000:]
  assert re.search(r"stopped sending heartbeats\):\s*1\b|Task 1 heartbeat timeout", log), \
      log[-6000:]


def test_restart_resumes_exactly(runs):
  mp._assert_ok(runs, "reference", "restarted.p0", "restarted.p1")
  summary = json.loads((runs["multi"] / "summary.json").read_text())
  assert summary["start_step"] == 2 and summary["step"] == mp.STEPS
  assert "resumed from" in runs["results"]["restarted.p0"][1]
  for step in (2, mp.STEPS):
    got, want = mp._state(runs["multi"], step), mp._state(runs["single"], step)
    assert int(got["step"]) == step
    mp._assert_trees_close(got, want, f"2 hosts (one killed, both restarted) vs 1 host, step {step}")
