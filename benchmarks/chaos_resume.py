"""kill -9 at random moments, restart until done: the run must end bit for bit as an uninterrupted.

    python benchmarks/chaos_resume.py                       # 5 kills, 40 steps, checkpoint every 4
    python benchmarks/chaos_resume.py --kills 8 --seed 3 --json /tmp/chaos.json

One uninterrupted `xlm-jax train` of a tiny model (2 layers, d 32, batch 8 x 32 tokens, one CPU
device) runs first, in a child process, with asynchronous checkpointing on (as by default),
`log_every=1` and a checkpoint every `--checkpoint-every` steps. Then the same command runs in a
second workdir and is killed with SIGKILL `--kills` times, and restarted after each kill until it
exits by itself. The kills land at random moments of the run, spread over its steps and the final
evaluation and export (`random_plan`): kill i waits for a drawn step, then a drawn share of the time
the next step took in the uninterrupted run. With a tiny model a step takes milliseconds and a save
a few tenths of a second, so many kills land while an asynchronous save is being written (the table
says, from the `*.orbax-checkpoint-tmp` folders present at the kill). Start-up (imports, compiling,
restoring) is not a target: it writes nothing but config.json and the tokenizer, both replaced
atomically.

The two runs are then compared:

- the final checkpoint's whole train state (params, optimizer state, RNG, step), array by array,
  bit for bit;
- every logged value of every step in metrics.jsonl except wall-clock ones (time, steps/s,
  tokens/s, TFLOP/s). A resumed run logs again the steps after its checkpoint, so the chaos run's
  file holds some steps twice or more: the last value logged for each step is the one compared.

Prints one table row per child process: when it was killed, the step it had logged, the saves in
flight and the checkpoints committed at that moment, and the step the next process resumed from
(the step before the first one it logged). A restart that fails (not killed, nonzero status) ends
the run: its row quotes the last line it printed, and the comparison is still made. Wall-clock
numbers are only meaningful as ratios within one run (`restart/reference`): the machine may be
shared.

`tests/test_chaos.py` drives the same functions with fewer kills.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")
# The small real corpus of the tests (tests/conftest.py: SMALL_CORPUS_PACKAGES).
SMALL_CORPUS_PACKAGES = ("sed", "grep", "diffutils", "make", "apt", "coreutils")
TMP_MARK = ".orbax-checkpoint-tmp"
# metrics.jsonl keys that measure the wall clock: they differ between any two runs.
CLOCK_KEYS = {"time", "train/steps_per_second", "train/tokens_per_second",
              "train/tokens_per_second_per_device", "train/tflops_per_device"}


def tiny_overrides(corpus_dir, total_steps: int, checkpoint_every: int, **extra) -> list[str]:
  """The tests' tiny model (tests/test_train.py: tiny_overrides) with async checkpointing on."""
  fields = {
      "data.corpus_dir": str(corpus_dir), "data.build_if_missing": False, "data.seq_len": 32,
      "data.eval_sentences": 8, "model.hidden_size": 32, "model.num_layers": 2,
      "model.num_heads": 2, "model.mlp_dim": 64, "model.max_positions": 40,
      "train.batch_size": 8, "train.total_steps": total_steps, "train.log_every": 1,
      "train.checkpoint_every": checkpoint_every, "train.keep_checkpoints": 3,
      "train.eval_every": 0, "train.progress_bar": False, "train.async_checkpointing": True,
      "optimizer.warmup_steps": 2, "eval.evaluators": (), "export.enabled": False,
  }
  fields.update(extra)
  return [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items()]


def train_argv(workdir, overrides: list[str]) -> list[str]:
  return [sys.executable, "-m", "xlm_jax.cli", "train", "--config", QUICKSTART + ":smoke",
          "--workdir", str(workdir), *("--config." + o for o in overrides)]


def child_env(devices: int = 1, cache_dir=None) -> dict:
  """The environment of a training child: `devices` CPU devices; XLA's persistent compilation
  cache in `cache_dir` (restarts then skip compiling; the executables are the same)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", ""))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip())
  if cache_dir is not None:
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


# ------------------------------------------------------------------------------- the workdir


def committed_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def saves_in_flight(workdir, since: float = 0.0) -> list[str]:
  """Orbax's temporary folders changed at or after `since` (time.time()): a save begun and not yet
  committed (renamed). One a killed child left stays until its step is saved again."""
  folder = pathlib.Path(workdir) / "checkpoints"
  names = []
  try:
    for p in folder.iterdir():
      if TMP_MARK in p.name and p.stat().st_mtime >= since:
        names.append(p.name)
  except FileNotFoundError:  # the folder, or a save just committed (renamed)
    pass
  return sorted(names)


class MetricsTail:
  """The steps a child appends to metrics.jsonl from the moment it starts (whole lines only)."""

  def __init__(self, workdir):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.offset = self.path.stat().st_size if self.path.exists() else 0
    self.steps: list[int] = []
    self._rest = b""

  def poll(self) -> list[int]:
    if not self.path.exists():
      return self.steps
    with self.path.open("rb") as f:
      f.seek(self.offset)
      data = f.read()
    self.offset += len(data)
    *lines, self._rest = (self._rest + data).split(b"\n")
    for line in lines:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if "train/loss" in row:
        self.steps.append(int(row["step"]))
    return self.steps


def metric_rows(workdir) -> tuple[list[dict], int]:
  """metrics.jsonl's rows, and how many of its lines are not JSON (cut by a kill, or being
  written); ([], 0) when there is no file yet."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  rows, cut = [], 0
  for line in (path.read_text().splitlines() if path.is_file() else []):
    try:
      rows.append(json.loads(line))
    except ValueError:
      cut += 1
  return rows, cut


def logged_values(workdir, prefix: str = "") -> tuple[dict[int, dict], dict]:
  """({step: {key: last value logged}}, counts) of metrics.jsonl, wall-clock keys left out, and
  keys not starting with `prefix`. counts: "lines", "train_lines" (rows with train/loss),
  "cut_lines" (not JSON: cut by a kill)."""
  rows, cut = metric_rows(workdir)
  values = {}
  counts = {"lines": len(rows) + cut, "train_lines": 0, "cut_lines": cut}
  for row in rows:
    counts["train_lines"] += "train/loss" in row
    step = values.setdefault(int(row["step"]), {})
    step.update({k: v for k, v in row.items()
                 if k not in CLOCK_KEYS and k != "step" and k.startswith(prefix)})
  return values, counts


def final_state(workdir, step: int):
  """Every array of checkpoint `step`'s train state, on the host (import of jax and orbax here:
  the rest of this module runs without them)."""
  import jax
  import orbax.checkpoint as ocp
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  with ocp.PyTreeCheckpointer() as checkpointer:
    return jax.device_get(checkpointer.restore(path))


def compare(reference, chaos, total_steps: int, prefix: str = "") -> dict:
  """Whether the chaos workdir ends as the reference did: final state and per-step values (of
  the keys starting with `prefix`)."""
  import jax
  import numpy as np
  ref_values, _ = logged_values(reference, prefix)
  got_values, counts = logged_values(chaos, prefix)
  wanted = set(range(1, total_steps + 1))
  missing = sorted(wanted - {s for s, v in got_values.items() if "train/loss" in v})
  differing_steps = sorted(
      s for s in set(ref_values) | set(got_values)
      if json.dumps(ref_values.get(s), sort_keys=True) != json.dumps(got_values.get(s),
                                                                      sort_keys=True))
  a, b = final_state(reference, total_steps), final_state(chaos, total_steps)
  paths_a = jax.tree_util.tree_flatten_with_path(a)[0]
  paths_b = jax.tree_util.tree_flatten_with_path(b)[0]
  differing_arrays = [jax.tree_util.keystr(p) for (p, x), (_, y) in zip(paths_a, paths_b)
                      if not np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)]
  if [p for p, _ in paths_a] != [p for p, _ in paths_b]:
    differing_arrays.append("(the trees differ)")
  return {"same_state": not differing_arrays, "differing_arrays": differing_arrays,
          "arrays": len(paths_a), "same_values": not differing_steps and not missing,
          "differing_steps": differing_steps, "missing_steps": missing,
          "metrics_lines": counts["lines"], "cut_lines": counts["cut_lines"],
          # Train rows of steps logged before, by a child killed before its next checkpoint.
          "relogged_lines": counts["train_lines"] - (total_steps - len(missing))}


# ------------------------------------------------------------------------------- children


def run_child(argv, env, workdir, log_path, kill_when: Callable[[dict], bool] | None = None,
              offset: float | Callable[[dict], float] = 0.0, timeout: float = 900.0,
              poll: float = 0.005) -> dict:
  """Runs one training child. With `kill_when`, polls `kill_when(progress)` (progress: "steps"
  logged by this child, "in_flight" saves it began, "committed" steps, "elapsed" s) and, once
  true, waits `offset` s more (or `offset(progress)` s) and kills the child with SIGKILL. Returns
  what happened, the workdir as the kill left it included, and when the child logged each step
  ("step_s": {step: seconds from its start}, to within `poll`)."""
  tail = MetricsTail(workdir)
  started, since = time.monotonic(), time.time() - 0.01  # (mtimes may be rounded down)
  record = {"killed": False, "step_s": {}}
  with open(log_path, "wb") as log:
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
      deadline = started + timeout
      fire_at = None
      while proc.poll() is None and time.monotonic() < deadline:
        now = time.monotonic()
        steps = tail.poll()
        for step in steps[len(record["step_s"]):]:
          record["step_s"].setdefault(step, now - started)
        if fire_at is None and kill_when is not None:
          progress = {"steps": steps, "in_flight": saves_in_flight(workdir, since),
                      "committed": committed_steps(workdir), "elapsed": now - started}
          if kill_when(progress):
            wait = offset(progress) if callable(offset) else offset
            record["offset"] = wait
            fire_at = now + wait
        if fire_at is not None and now >= fire_at:
          in_flight = saves_in_flight(workdir, since)  # just before the signal
          proc.send_signal(signal.SIGKILL)
          proc.wait()
          record.update(killed=True, kill_after_s=now - started, in_flight=in_flight)
          break
        time.sleep(poll)
      if proc.poll() is None:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"training child still running after {timeout:.0f} s; log: {log_path}")
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  steps = tail.poll()
  record.update(returncode=proc.returncode, seconds=time.monotonic() - started,
                first_logged=steps[0] if steps else None, last_logged=max(steps) if steps else None,
                committed=committed_steps(workdir), log=str(log_path))
  return record


def restored_from(record: dict) -> int | None:
  """The step a child resumed from: the one before the first step it logged (log_every=1)."""
  return None if record["first_logged"] is None else record["first_logged"] - 1


@dataclasses.dataclass
class Kill:
  """One planned kill: once `when(progress)` (see run_child), wait `offset` s (or
  `offset(progress)` s) and send SIGKILL. `what` describes it for the table."""
  when: Callable[[dict], bool]
  offset: float | Callable[[dict], float] = 0.0
  what: str | Callable[[], str] = ""


def chaos_run(argv, env, workdir, logs, plan: list[Kill], max_runs: int = 20,
              timeout: float = 900.0, raise_on_failure: bool = True) -> list[dict]:
  """Runs the training child with one kill per entry of `plan`, then restarts it unkilled until
  it exits by itself. A child that exits before its kill fires ends the plan early (its row says
  so). A child that exits with an error raises RuntimeError, or with `raise_on_failure=False`
  ends the run (its record has "error")."""
  logs = pathlib.Path(logs)
  logs.mkdir(parents=True, exist_ok=True)
  records = []
  for i in range(max_runs):
    kill = plan[i] if i < len(plan) else None
    record = run_child(argv, env, workdir, logs / f"child_{i}.log", kill and kill.when,
                       kill.offset if kill else 0.0, timeout)
    record["target"] = (kill.what() if callable(kill.what) else kill.what) if kill else ""
    records.append(record)
    if not record["killed"]:
      if record["returncode"] != 0:
        output = pathlib.Path(record["log"]).read_text()
        if raise_on_failure:
          raise RuntimeError(f"training child {i} failed with status {record['returncode']}:\n"
                             + output[-4000:])
        record["error"] = (output.strip().splitlines() or ["(no output)"])[-1]
      return records
  raise RuntimeError(f"training not finished after {max_runs} children")


def while_saving(min_step: int = 0) -> Callable[[dict], bool]:
  """True once a save of a step >= min_step is in flight (its temporary folder exists)."""
  def fire(progress):
    return any(int(name.split(".")[0]) >= min_step for name in progress["in_flight"]
               if name.split(".")[0].isdigit())
  return fire


def final_checkpoint_committed(total_steps: int) -> Callable[[dict], bool]:
  """True once the last step's checkpoint is committed: the child is evaluating and exporting."""
  return lambda progress: total_steps in progress["committed"]


def step_seconds(record: dict) -> dict[int, float]:
  """{s: seconds from step s-1's log line to step s's} of a finished child (saves included),
  and {last step + 1: seconds from the last step's line to the exit}."""
  times = sorted(record["step_s"].items())
  durations = {s: t - t_prev for (_, t_prev), (s, t) in zip(times, times[1:])}
  durations[times[-1][0] + 1] = record["seconds"] - times[-1][1]
  return durations


def random_plan(kills: int, total_steps: int, durations: dict[int, float], seed: int,
                after_last_step: bool = True) -> list[Kill]:
  """Kills at random moments of the run: x_1 < ... < x_n drawn uniformly in [1, total + 1)
  (without `after_last_step`: [1, total)), in steps. Kill i comes once its child has logged step
  floor(x_i) (or its first step, if it resumed past that), after a share x_i - floor(x_i) of the
  time the next step took in the uninterrupted run (`durations`, from `step_seconds`; the "step"
  after the last is the final evaluation, export and exit)."""
  rng = random.Random(seed)
  xs = sorted(rng.uniform(1, total_steps + int(after_last_step)) for _ in range(kills))
  plan = []
  for x in xs:
    step, share = int(x), x - int(x)
    what = (f"step {step} + {share:.2f}" if step < total_steps else
            f"after step {total_steps}: {share:.2f} of the way to the exit")
    plan.append(Kill(lambda progress, step=step: bool(progress["steps"]) and
                     max(progress["steps"]) >= step,
                     share * durations.get(step + 1, 0.0), what))
  return plan


def table(records: list[dict], reference_seconds: float) -> str:
  rows = ["| child | kill at | killed after (s) | restart/reference time | last step logged | "
          "save in flight at the kill | committed then | next child resumed from |",
          "|---|---|---|---|---|---|---|---|"]
  for i, r in enumerate(records):
    nxt = restored_from(records[i + 1]) if i + 1 < len(records) else None
    killed = (f"{r['kill_after_s']:.2f}" if r["killed"]
              else f"not killed: exit {r['returncode']} after {r['seconds']:.1f} s"
              + (f" (`{r['error'][:120]}`)" if r.get("error") else ""))
    in_flight = (", ".join(r["in_flight"]) or "none") if r["killed"] else ""
    rows.append(f"| {i} | {r['target'] or '-'} | {killed} | "
                f"{r['seconds'] / reference_seconds:.2f} | {r['last_logged']} | {in_flight} | "
                f"{r['committed']} | {'-' if nxt is None else nxt} |")
  return "\n".join(rows)


def add_folder_args(parser, out: str, json: str) -> None:
  """--corpus-dir, --out and --json, as this benchmark and long_run.py take them."""
  parser.add_argument("--corpus-dir", default=os.environ.get("XLM_JAX_TEST_CORPUS") or
                      str(pathlib.Path.home() / ".cache" / "xlm_jax" / "data" / "chaos_small"),
                      help="a corpus; the tests' small one is built there if missing")
  parser.add_argument("--out", default=None, help=f"folder for {out} (default: a temporary "
                      "folder, deleted afterwards)")
  parser.add_argument("--json", default=None, help=f"also write {json} here")


def ensure_small_corpus(corpus_dir) -> pathlib.Path:
  sys.path.insert(0, str(REPO))
  from data_prep import build
  return build.ensure_corpus(corpus_dir, build.DEFAULT_LANGUAGES, build_if_missing=True,
                             packages=SMALL_CORPUS_PACKAGES, vocab_size=2000,
                             min_sentences_per_language=100, progress=False).dir


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--steps", type=int, default=40, help="train.total_steps")
  parser.add_argument("--checkpoint-every", type=int, default=4)
  parser.add_argument("--seed", type=int, default=0, help="draws the kill steps and offsets")
  parser.add_argument("--devices", type=int, default=1, help="CPU devices of each child")
  add_folder_args(parser, out="the two workdirs and the logs", json="the records and the verdict")
  args = parser.parse_args(argv)
  if not 1 <= args.kills < args.steps:
    parser.error("--kills must be in [1, --steps)")
  corpus = ensure_small_corpus(args.corpus_dir)
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="chaos_resume_"))
  out.mkdir(parents=True, exist_ok=True)
  try:
    overrides = tiny_overrides(corpus, args.steps, args.checkpoint_every)
    env = child_env(args.devices, os.environ.get("JAX_COMPILATION_CACHE_DIR") or out / "xla_cache")
    reference, chaos = out / "uninterrupted", out / "chaos"
    for workdir in (reference, chaos):
      shutil.rmtree(workdir, ignore_errors=True)
    print(f"uninterrupted run: {args.steps} steps, checkpoint every {args.checkpoint_every}, "
          f"async saves, {args.devices} CPU device(s)", flush=True)
    ref = run_child(train_argv(reference, overrides), env, reference, out / "uninterrupted.log")
    if ref["returncode"] != 0:
      raise RuntimeError("the uninterrupted run failed:\n" + pathlib.Path(ref["log"]).read_text())
    plan = random_plan(args.kills, args.steps, step_seconds(ref), args.seed)
    print(f"chaos run: {args.kills} kills (seed {args.seed})", flush=True)
    records = chaos_run(train_argv(chaos, overrides), env, chaos, out / "logs", plan,
                        raise_on_failure=False)
    failed = records[-1].get("error")
    verdict = compare(reference, chaos, args.steps)
    kills = sum(r["killed"] for r in records)
    during_save = sum(bool(r.get("in_flight")) for r in records)
    print()
    print(table(records, ref["seconds"]))
    print()
    print(f"kills: {kills} ({during_save} while a save was in flight); children: {len(records)}; "
          f"wall time of all children / uninterrupted run: "
          f"{sum(r['seconds'] for r in records) / ref['seconds']:.2f}")
    print(f"final train state ({verdict['arrays']} arrays: params, optimizer state, rng, step) "
          "identical: " + ("yes" if verdict["same_state"] else f"NO {verdict['differing_arrays']}"))
    print(f"logged values of steps 1-{args.steps} (last value per step, wall-clock keys left out) "
          f"identical: {'yes' if verdict['same_values'] else 'NO'}"
          + ("" if verdict["same_values"] else f" (differing steps {verdict['differing_steps']}, "
             f"missing {verdict['missing_steps']})"))
    print(f"metrics.jsonl: {verdict['metrics_lines']} lines, {verdict['relogged_lines']} of them "
          f"steps logged again after a resume, {verdict['cut_lines']} cut short by a kill")
    if failed:
      print(f"the last child failed (status {records[-1]['returncode']}): {failed}; log: "
            f"{records[-1]['log']}")
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(
          {"reference": ref, "children": records, "verdict": verdict, "args": vars(args)},
          indent=1, default=str))
    return 0 if verdict["same_state"] and verdict["same_values"] and not failed else 1
  finally:
    if args.out is None:
      shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
