"""A long tiny run with frequent checkpoints: does its memory (RSS) or its step time creep?

    python benchmarks/long_run.py                        # 20 minutes, a checkpoint every 8 steps
    python benchmarks/long_run.py --minutes 1 --bucket-seconds 15 --json /tmp/long_run.json

One `xlm-jax train` of the quickstart config (experiments/quickstart.py: the tiny preset, 2 layers,
d 128, batch 32 x 128 tokens, one CPU device) on the tests' small corpus runs in a child process for
`--minutes` of training (train.max_wall_seconds; train.total_steps is set far beyond what the time
allows, and the run reports if it ran out of steps anyway). It checkpoints every `--checkpoint-every`
steps (a few seconds at the quickstart's ~4 steps/s on 2 cores), asynchronously as by default,
keeping `--keep` checkpoints, so orbax writes and deletes a step folder every few seconds for the
whole run. It logs every step's metrics (`--log-every`) and neither evaluates nor exports.

While it runs, the child's RSS (VmRSS of it and of any processes it started, from /proc) is sampled
every `--sample-seconds`, and its checkpoints folder is polled for newly committed steps. Step times
are 1 / train/steps_per_second of metrics.jsonl (the mean over each log window, so with log_every 1
a step's own time, checkpoint steps included); rows are put in buckets of `--bucket-seconds` by
their wall-clock time.

Prints one row per bucket (median and max RSS in MiB, median step time in ms, checkpoints
committed), then the first and last RSS of the training part (RSS saw-tooths by a few hundred MiB
within seconds, so each is the median of a bucket's samples: the first bucket after the first
logged step, i.e. after compiling, and the last bucket), their ratio, the RSS slope after the first
bucket of training (MiB/min, least squares), and the ratio last/first of the buckets' step-time
medians. `--json` writes all of it with every sample. The machine may be
shared: the share of CPU other processes took while it ran is printed too (a step-time trend means
little if that share moved).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from chaos_resume import (REPO, add_folder_args, child_env, committed_steps,  # noqa: E402
                          ensure_small_corpus, metric_rows)
from machine_load import machine_busy_seconds  # noqa: E402

CONFIG = str(REPO / "experiments" / "quickstart.py")
MIB = 1 << 20
# Far more steps than fit in the time (the quickstart does ~4 steps/s on 2 cores): the time budget
# ends the run, not the step count.
STEPS_PER_SECOND_BOUND = 100


def overrides(corpus_dir, minutes: float, checkpoint_every: int, keep: int,
              log_every: int) -> list[str]:
  fields = {
      "data.corpus_dir": str(corpus_dir), "data.build_if_missing": False,
      "train.total_steps": max(1000, int(minutes * 60 * STEPS_PER_SECOND_BOUND)),
      "train.max_wall_seconds": float(minutes * 60), "train.checkpoint_every": checkpoint_every,
      "train.keep_checkpoints": keep, "train.log_every": log_every, "train.eval_every": 0,
      "train.progress_bar": False, "eval.evaluators": (), "export.enabled": False,
  }
  return [f"--config.{k}={v!r}" if isinstance(v, str) else f"--config.{k}={v}"
          for k, v in fields.items()]


# ------------------------------------------------------------------------------- measuring


def _children(pid: int) -> list[int]:
  pids = []
  try:
    for task in os.listdir(f"/proc/{pid}/task"):
      with open(f"/proc/{pid}/task/{task}/children") as f:
        pids += [int(p) for p in f.read().split()]
  except OSError:
    pass
  return pids


def rss_bytes(pid: int) -> int | None:
  """VmRSS of `pid` and its descendants (Linux /proc); None once `pid` is gone."""
  total, todo, seen = 0, [pid], set()
  while todo:
    p = todo.pop()
    if p in seen:
      continue
    seen.add(p)
    try:
      with open(f"/proc/{p}/status") as f:
        for line in f:
          if line.startswith("VmRSS:"):
            total += int(line.split()[1]) * 1024
            break
    except OSError:
      if p == pid:
        return None
      continue
    todo += _children(p)
  return total


def run(argv, env, workdir: pathlib.Path, log_path: pathlib.Path, sample_seconds: float,
        hard_limit_s: float) -> dict:
  """Runs the child to its end, sampling its RSS and its committed checkpoints."""
  samples, committed = [], {}  # [(t, rss bytes)], step -> t first seen (t: seconds since start)
  busy0 = machine_busy_seconds()
  with log_path.open("wb") as log:
    start_wall, start = time.time(), time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    own_cpu = 0.0
    try:
      while proc.poll() is None:
        t = time.monotonic() - start
        rss = rss_bytes(proc.pid)
        if rss is not None:
          samples.append((round(t, 2), rss))
          try:  # the child's CPU time so far (user + system), to tell the machine's other load
            with open(f"/proc/{proc.pid}/stat") as f:
              fields = f.read().rsplit(")", 1)[1].split()
            own_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
          except (OSError, ValueError, IndexError):
            pass
        for step in committed_steps(workdir):
          committed.setdefault(step, round(t, 2))
        if t > hard_limit_s:
          proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and leaves
          try:
            proc.wait(60)
          except subprocess.TimeoutExpired:
            proc.kill()
          break
        time.sleep(sample_seconds)
    finally:
      if proc.poll() is None:
        proc.kill()
      proc.wait()
    seconds = time.monotonic() - start
  for step in committed_steps(workdir):
    committed.setdefault(step, round(seconds, 2))
  busy = machine_busy_seconds()
  others = (None if busy is None or busy0 is None else
            max(0.0, busy - busy0 - own_cpu) / (seconds * (os.cpu_count() or 1)))
  return {"returncode": proc.returncode, "seconds": seconds, "start_wall": start_wall,
          "samples": samples, "committed": committed, "others_cpu_share": others,
          "log": str(log_path)}


# ------------------------------------------------------------------------------- reporting


def _slope(points: list[tuple[float, float]]) -> float | None:
  if len(points) < 2:
    return None
  xs, ys = [p[0] for p in points], [p[1] for p in points]
  mx, my = statistics.fmean(xs), statistics.fmean(ys)
  var = sum((x - mx) ** 2 for x in xs)
  return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else None


def summarize(record: dict, rows: list[dict], bucket_seconds: float) -> dict:
  start_wall = record["start_wall"]
  train_rows = [r for r in rows if r.get("train/steps_per_second")]
  step_ms = [((r["time"] - start_wall), 1000.0 / r["train/steps_per_second"], r["step"])
             for r in train_rows]
  first_logged = step_ms[0][0] if step_ms else None
  buckets = {}
  for t, rss in record["samples"]:
    buckets.setdefault(int(t // bucket_seconds), {"rss": [], "ms": [], "ckpt": 0})["rss"].append(rss)
  for t, ms, _ in step_ms:
    buckets.setdefault(int(t // bucket_seconds), {"rss": [], "ms": [], "ckpt": 0})["ms"].append(ms)
  for _, t in record["committed"].items():
    buckets.setdefault(int(t // bucket_seconds), {"rss": [], "ms": [], "ckpt": 0})["ckpt"] += 1
  table = []
  for b in sorted(buckets):
    v = buckets[b]
    table.append({"from_s": b * bucket_seconds, "to_s": (b + 1) * bucket_seconds,
                  "rss_median_mib": statistics.median(v["rss"]) / MIB if v["rss"] else None,
                  "rss_max_mib": max(v["rss"]) / MIB if v["rss"] else None,
                  "median_step_ms": statistics.median(v["ms"]) if v["ms"] else None,
                  "steps_logged": len(v["ms"]), "checkpoints": v["ckpt"]})
  # RSS saw-tooths by a few hundred MiB within seconds (batches, a save's host copies): the first
  # and last RSS are the medians of the samples of the first bucket of training (after the first
  # logged step, i.e. after compiling) and of the last bucket.
  training = [(t, rss) for t, rss in record["samples"]
              if first_logged is not None and t >= first_logged]
  first_bucket = [rss for t, rss in training
                  if training and int(t // bucket_seconds) == int(training[0][0] // bucket_seconds)]
  last_bucket = [rss for t, rss in training
                 if int(t // bucket_seconds) == int(training[-1][0] // bucket_seconds)]
  first_rss = statistics.median(first_bucket) if first_bucket else None
  last_rss = statistics.median(last_bucket) if last_bucket else None
  medians = [row["median_step_ms"] for row in table if row["median_step_ms"] is not None]
  # The trend after the first bucket of training (start-up's allocations settle in it).
  slope = _slope([(t / 60, rss / MIB) for t, rss in training
                  if int(t // bucket_seconds) > int(training[0][0] // bucket_seconds)])
  return {
      "buckets": table,
      "first_logged_s": first_logged,
      "steps": step_ms[-1][2] if step_ms else 0,
      "rss_first_mib": first_rss / MIB if first_rss else None,
      "rss_last_mib": last_rss / MIB if last_rss else None,
      "rss_max_mib": max(r for _, r in training) / MIB if training else None,
      "rss_last_over_first": last_rss / first_rss if first_rss and last_rss else None,
      "rss_first_sample_mib": training[0][1] / MIB if training else None,
      "rss_last_sample_mib": training[-1][1] / MIB if training else None,
      "rss_slope_mib_per_min": slope,
      "step_ms_first_bucket": medians[0] if medians else None,
      "step_ms_last_bucket": medians[-1] if medians else None,
      "step_ms_last_over_first": medians[-1] / medians[0] if medians else None,
      "checkpoints_committed": len(record["committed"]),
  }


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def print_report(summary: dict, record: dict, args) -> None:
  print(f"\n{'seconds':>11} {'RSS MiB':>9} {'(max)':>7} {'median step ms':>15} {'steps':>6} "
        f"{'checkpoints':>12}")
  for row in summary["buckets"]:
    print(f"{row['from_s']:5.0f}-{row['to_s']:<5.0f} {_fmt(row['rss_median_mib'], '9.1f')} "
          f"{_fmt(row['rss_max_mib'], '7.0f')} "
          f"{_fmt(row['median_step_ms'], '15.1f')} {row['steps_logged']:6d} "
          f"{row['checkpoints']:12d}")
  print()
  print(f"child exited {record['returncode']} after {record['seconds']:.0f} s; "
        f"{summary['steps']} steps, {summary['checkpoints_committed']} checkpoints committed "
        f"(every {args.checkpoint_every} steps, {args.keep} kept); first step logged at "
        f"{_fmt(summary['first_logged_s'], '.0f')} s")
  print(f"RSS (bucket medians) first {_fmt(summary['rss_first_mib'], '.1f')} MiB, last "
        f"{_fmt(summary['rss_last_mib'], '.1f')} MiB (last/first "
        f"{_fmt(summary['rss_last_over_first'], '.3f')}; max {_fmt(summary['rss_max_mib'], '.1f')} "
        f"MiB; slope after the first bucket {_fmt(summary['rss_slope_mib_per_min'], '+.2f')} "
        f"MiB/min)")
  print(f"median step time first bucket {_fmt(summary['step_ms_first_bucket'], '.1f')} ms, last "
        f"{_fmt(summary['step_ms_last_bucket'], '.1f')} ms (last/first "
        f"{_fmt(summary['step_ms_last_over_first'], '.3f')})")
  if record["others_cpu_share"] is not None:
    print(f"other processes used {100 * record['others_cpu_share']:.0f}% of the machine's CPU "
          f"while it ran")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--minutes", type=float, default=20.0, help="of training (max_wall_seconds)")
  parser.add_argument("--checkpoint-every", type=int, default=8, help="train.checkpoint_every")
  parser.add_argument("--keep", type=int, default=2, help="train.keep_checkpoints")
  parser.add_argument("--log-every", type=int, default=1, help="train.log_every")
  parser.add_argument("--sample-seconds", type=float, default=2.0, help="RSS sampling period")
  parser.add_argument("--bucket-seconds", type=float, default=60.0, help="table row width")
  parser.add_argument("--sync-checkpoints", action="store_true",
                      help="train.async_checkpointing=False (default: asynchronous, as by default)")
  add_folder_args(parser, out="the workdir and the child's log", json="the summary and every sample")
  args = parser.parse_args(argv)
  if args.minutes <= 0:
    parser.error("--minutes must be > 0")
  corpus = ensure_small_corpus(args.corpus_dir)
  out = pathlib.Path(args.out or tempfile.mkdtemp(prefix="long_run_"))
  out.mkdir(parents=True, exist_ok=True)
  try:
    workdir = out / "workdir"
    shutil.rmtree(workdir, ignore_errors=True)
    extra = overrides(corpus, args.minutes, args.checkpoint_every, args.keep, args.log_every)
    if args.sync_checkpoints:
      extra.append("--config.train.async_checkpointing=False")
    argv = [sys.executable, "-m", "xlm_jax.cli", "train", "--config", CONFIG, "--workdir",
            str(workdir), *extra]
    env = child_env(1, os.environ.get("JAX_COMPILATION_CACHE_DIR") or out / "xla_cache")
    print(f"training {CONFIG} for {args.minutes:g} min: checkpoint every {args.checkpoint_every} "
          f"steps, keep {args.keep}, {'sync' if args.sync_checkpoints else 'async'} saves; "
          f"workdir {workdir}", flush=True)
    # Start-up (imports, corpus, compiling) comes before the training clock: allow 5 minutes.
    record = run(argv, env, workdir, out / "train.log", args.sample_seconds,
                 hard_limit_s=args.minutes * 60 + 300)
    summary = summarize(record, metric_rows(workdir)[0], args.bucket_seconds)
    print_report(summary, record, args)
    total = max(1000, int(args.minutes * 60 * STEPS_PER_SECOND_BOUND))
    ran_out = summary["steps"] >= total
    if ran_out:
      print(f"the run used all {total} steps before its time: raise STEPS_PER_SECOND_BOUND")
    left = sorted(committed_steps(workdir))
    print(f"checkpoints left in the workdir: {left} (keep {args.keep})")
    failed = record["returncode"] != 0
    if failed:
      print(f"the child failed (status {record['returncode']}); log: {record['log']}")
      print("\n".join(pathlib.Path(record["log"]).read_text(errors="replace").splitlines()[-20:]))
    if args.json:
      pathlib.Path(args.json).write_text(json.dumps(
          {"summary": summary, "record": record, "args": vars(args), "ran_out_of_steps": ran_out,
           "checkpoints_left": left}, indent=1, default=str))
    return 1 if failed or ran_out else 0
  finally:
    if args.out is None:
      shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
