"""Faults from outside the process: kill -9 at any moment, and a disk that fills up.

Every training run here is a real `xlm-jax train` child process (one CPU device, the tiny model of
test_train.py, asynchronous checkpoints as by default, a log line per step), driven by
`benchmarks/chaos_resume.py`, which runs the same with 5 random kills. The module's uninterrupted
run (`reference`) is what every interrupted one must end as, bit for bit: the final checkpoint's
whole train state and the last value logged for each step in metrics.jsonl (a resumed run logs the
steps after its checkpoint again).

A full disk is a file-size limit (RLIMIT_FSIZE, `ulimit -f`) set in the child before it starts;
SIGXFSZ is ignored (as Python does anyway), so a write past the limit fails with EFBIG as a write
to a full disk fails with ENOSPC. Each such child gets its own copy of the XLA compilation cache,
so that no cache entry it cuts short is read by another test.
"""
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chaos_resume",
                                               REPO / "benchmarks" / "chaos_resume.py")
chaos = sys.modules["chaos_resume"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chaos)

TOTAL, EVERY = 12, 3  # checkpoints at steps 3, 6, 9, 12; three kept


class Run:
  """The module's training command and environment."""

  def __init__(self, corpus_dir, cache_dir):
    self.overrides = chaos.tiny_overrides(corpus_dir, TOTAL, EVERY, **{"export.enabled": True})
    self.cache_dir = cache_dir
    self.env = chaos.child_env(devices=1, cache_dir=cache_dir)

  def argv(self, workdir):
    return chaos.train_argv(workdir, self.overrides)

  def limited_env(self, tmp_path):
    """The environment of a child under a file-size limit: a copy of the compilation cache."""
    cache = tmp_path / "xla_cache_copy"
    shutil.copytree(self.cache_dir, cache)
    return chaos.child_env(devices=1, cache_dir=cache)


@pytest.fixture(scope="module")
def reference(small_corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("chaos")
  run = Run(small_corpus.dir, root / "xla_cache")
  workdir = root / "uninterrupted"
  record = chaos.run_child(run.argv(workdir), run.env, workdir, root / "uninterrupted.log")
  assert record["returncode"] == 0, pathlib.Path(record["log"]).read_text()[-3000:]
  assert chaos.committed_steps(workdir) == [6, 9, 12]
  run.step_seconds = chaos.step_seconds(record)
  return workdir, run


def _assert_same_as(reference_dir, workdir):
  verdict = chaos.compare(reference_dir, workdir, TOTAL)
  assert verdict["same_state"], verdict["differing_arrays"]
  assert verdict["same_values"], (verdict["differing_steps"], verdict["missing_steps"])
  return verdict


# ------------------------------------------------------------------------------- kill -9


def test_kill_while_a_checkpoint_is_written_resumes_bit_identical(reference, tmp_path):
  """SIGKILL the moment the asynchronous save of step 6 has begun (its temporary folder exists):
  the restart resumes from step 3 and ends as the uninterrupted run."""
  reference_dir, run = reference
  workdir = tmp_path / "w"
  plan = [chaos.Kill(chaos.while_saving(min_step=2 * EVERY))]
  killed, resumed = chaos.chaos_run(run.argv(workdir), run.env, workdir, tmp_path / "logs", plan)
  assert killed["killed"] and killed["returncode"] == -signal.SIGKILL
  assert "6" + chaos.TMP_MARK in killed["in_flight"], killed
  assert killed["committed"] == [3]
  assert killed["last_logged"] >= 6
  assert chaos.restored_from(resumed) == 3 and resumed["returncode"] == 0
  verdict = _assert_same_as(reference_dir, workdir)
  assert verdict["relogged_lines"] >= 3  # steps 4-6 at least, logged by both children


@pytest.mark.slow
def test_random_kills_resume_bit_identical(reference, tmp_path):
  """Two kills at random moments of the training (benchmarks/chaos_resume.py with --kills 2)."""
  reference_dir, run = reference
  workdir = tmp_path / "w"
  # Before the last step is logged: a kill after it is the next test.
  plan = chaos.random_plan(2, TOTAL, run.step_seconds, seed=1, after_last_step=False)
  records = chaos.chaos_run(run.argv(workdir), run.env, workdir, tmp_path / "logs", plan)
  assert sum(r["killed"] for r in records) >= 1, records
  assert records[-1]["returncode"] == 0
  _assert_same_as(reference_dir, workdir)


@pytest.mark.slow
def test_kill_after_the_final_checkpoint_then_the_rerun_evaluates_and_exports(reference, tmp_path):
  """SIGKILL right after the last step's checkpoint is committed, while the run evaluates (the
  held-out MLM evaluator: seconds, where evaluating nothing and exporting a tiny model take
  milliseconds) and exports: the rerun must finish the job (summary.json, export/)."""
  reference_dir, run = reference
  workdir = tmp_path / "w"
  argv = chaos.train_argv(workdir, run.overrides + ["eval.evaluators=('mlm',)"])
  plan = [chaos.Kill(chaos.final_checkpoint_committed(TOTAL))]
  killed, rerun = chaos.chaos_run(argv, run.env, workdir, tmp_path / "logs", plan,
                                  raise_on_failure=False)
  assert killed["killed"] and killed["last_logged"] == TOTAL
  assert rerun["returncode"] == 0, rerun.get("error")
  summary = json.loads((workdir / "summary.json").read_text())  # written by the rerun
  assert summary["start_step"] == summary["step"] == TOTAL and "mlm/loss" in summary["eval"]
  assert (workdir / "export" / "params.msgpack").is_file()
  verdict = chaos.compare(reference_dir, workdir, TOTAL, prefix="train/")
  assert verdict["same_state"] and verdict["same_values"], verdict


# ------------------------------------------------------------------------------- disk full


# Sets the limit, then execs the command: no preexec_fn, which would fork this (JAX, threaded)
# process and run Python in the child before exec.
_LIMIT_THEN_EXEC = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG\n"
    "_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), hard))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n")


def _run_limited(argv, env, limit, timeout=600):
  """Runs `argv` with no file allowed past `limit` bytes: a disk that fills up at that size."""
  return subprocess.run([sys.executable, "-c", _LIMIT_THEN_EXEC, str(limit), *argv], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _error_line(stderr, command):
  """The command's one-line error. Orbax's and TensorStore's threads print tracebacks of the
  failed writes meanwhile, so the line may begin with the end of one of theirs."""
  marker = f"xlm-jax {command}: error:"
  lines = [line[line.index(marker):] for line in stderr.splitlines() if marker in line]
  assert len(lines) == 1, stderr[-5000:]
  return lines[0]


def _hashes(folder):
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def test_disk_full_during_a_checkpoint_names_it_and_the_previous_one_resumes(reference, tmp_path):
  reference_dir, run = reference
  workdir = tmp_path / "w"
  shutil.copytree(reference_dir, workdir)
  for step in (9, 12):  # the workdir of a run stopped at step 6
    shutil.rmtree(workdir / "checkpoints" / str(step))
  shutil.rmtree(workdir / "export")
  kept = _hashes(workdir / "checkpoints" / "6")
  # 64 KiB: config.json, the log lines and TensorBoard's events fit (the tokenizer is already
  # there); the checkpoint's array files do not.
  proc = _run_limited(run.argv(workdir), run.limited_env(tmp_path), 64 * 1024)
  assert proc.returncode == 2, proc.stderr[-5000:]
  line = _error_line(proc.stderr, "train")
  checkpoints = workdir / "checkpoints"
  assert f"could not write checkpoint step 9 ({checkpoints / '9'})" in line
  assert "File too large" in line and "the disk may be full" in line, line
  assert f"The checkpoint before it, step 6 ({checkpoints / '6'}), is intact" in line
  assert chaos.committed_steps(workdir) == [6] and _hashes(checkpoints / "6") == kept
  # With room again, the run resumes from step 6 and ends as if nothing had happened.
  record = chaos.run_child(run.argv(workdir), run.env, workdir, tmp_path / "resume.log")
  assert record["returncode"] == 0 and chaos.restored_from(record) == 6
  assert not chaos.saves_in_flight(workdir)  # the save cut short was replaced
  _assert_same_as(reference_dir, workdir)


def test_disk_full_during_an_export_keeps_the_previous_export(reference, tmp_path):
  from xlm_jax.export.export import load_pretrained
  reference_dir, run = reference
  out = tmp_path / "export"
  shutil.copytree(reference_dir / "export", out)
  before = _hashes(out)
  params_bytes = (out / "params.msgpack").stat().st_size
  assert all(p.stat().st_size < params_bytes for p in out.iterdir() if p.name != "params.msgpack")
  argv = [sys.executable, "-m", "xlm_jax.cli", "export", "--workdir", str(reference_dir),
          "--out", str(out)]
  proc = _run_limited(argv, run.limited_env(tmp_path), params_bytes - 1)
  assert proc.returncode == 2, proc.stderr[-5000:]
  line = _error_line(proc.stderr, "export")
  assert f"could not write {out / 'params.msgpack'}: [Errno 27] File too large" in line
  assert "the disk may be full" in line
  assert f"{out} is unchanged (it still holds the earlier xlm-jax export)" in line
  assert _hashes(out) == before
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []
  model = load_pretrained(out)
  assert model.encode(["hello world"], lang="en").shape[0] == 1


def test_disk_full_while_building_a_corpus_keeps_the_old_corpus(small_corpus, tmp_path):
  from xlm_jax.data.corpus import Corpus
  corpus_dir = tmp_path / "corpus"
  shutil.copytree(small_corpus.dir, corpus_dir)
  before = _hashes(corpus_dir)
  # Just below the largest TFDS file: the build fails at the TFDS stage (the .debs' files and
  # the text files are smaller), or earlier if the packages have grown.
  limit = max(p.stat().st_size for p in (corpus_dir / "tfds").rglob("*") if p.is_file()) - 1
  manifest = json.loads((corpus_dir / "manifest.json").read_text())
  argv = [sys.executable, "-m", "xlm_jax.cli", "data", "build", "--recipe", "gettext8",
          "--corpus-dir", str(corpus_dir), "--languages", *manifest["languages"],
          "--packages", *(p["name"] for p in manifest["packages"]),
          "--vocab-size", str(manifest["tokenizer"]["vocab_size"]),
          "--min-sentences", str(manifest["min_sentences_per_language"]), "--force", "--quiet"]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  proc = _run_limited(argv, dict(env, JAX_PLATFORMS="cpu"), limit)
  assert proc.returncode == 2, proc.stderr[-5000:]
  line = _error_line(proc.stderr, "data")
  assert "could not write" in line and "the disk may be full" in line
  assert f"{corpus_dir} is unchanged (the corpus built before is kept)" in line
  assert _hashes(corpus_dir) == before
  assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []
  assert Corpus(corpus_dir).languages == manifest["languages"]


_METRICS_UNTIL_FULL = (
    "import sys\n"
    "from xlm_jax.atomic_files import DiskFullError\n"
    "from xlm_jax.train.metrics import MetricWriter\n"
    "writer = MetricWriter(sys.argv[1], tensorboard=False)\n"
    "try:\n"
    "  for step in range(1, 10000):\n"
    "    writer.write(step, {'loss': 1.0 / step, 'grad_norm': 0.5}, prefix='train/')\n"
    "except DiskFullError as err:\n"
    "  print(err)\n"
    "  sys.exit(2)\n")


def test_disk_full_while_logging_metrics_keeps_whole_lines(tmp_path):
  # The limit falls inside a line: the write takes part of it, then fails.
  limit = 1000
  proc = _run_limited([sys.executable, "-c", _METRICS_UNTIL_FULL, str(tmp_path)],
                      dict(os.environ, JAX_PLATFORMS="cpu"), limit)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
  assert lines and all(line.endswith("\n") for line in lines)
  steps = [json.loads(line)["step"] for line in lines]
  assert steps == list(range(1, len(steps) + 1))
  assert sum(len(line) for line in lines) <= limit
  assert f"could not write {tmp_path / 'metrics.jsonl'} (the metrics of step {len(steps) + 1})" \
      in proc.stdout and "the disk may be full" in proc.stdout, proc.stdout
