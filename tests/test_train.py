"""The training engine end to end on a small real corpus: resume, preemption, bad input."""
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from xlm_jax import cli
from xlm_jax import config as config_lib
from xlm_jax.models.encoder import convert_params
from xlm_jax.train import trainer
from xlm_jax.train.checkpoint import Checkpointer

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")


def tiny_overrides(corpus_dir, **extra):
  """A model and run small enough for a test, on the test corpus (never built here)."""
  fields = {
      "data.corpus_dir": str(corpus_dir), "data.build_if_missing": False, "data.seq_len": 32,
      "data.eval_sentences": 8, "model.hidden_size": 32, "model.num_layers": 2,
      "model.num_heads": 2, "model.mlp_dim": 64, "model.max_positions": 40,
      "train.batch_size": 8, "train.total_steps": 6, "train.log_every": 2,
      "train.checkpoint_every": 100, "train.eval_every": 0, "train.progress_bar": False,
      "train.async_checkpointing": False, "optimizer.warmup_steps": 2,
      "eval.retrieval_items": 16, "export.enabled": False,
  }
  fields.update(extra)
  return [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items()]


def tiny_config(corpus_dir, **extra):
  return config_lib.load_config(QUICKSTART + ":smoke", tiny_overrides(corpus_dir, **extra))


def _record_batches(monkeypatch):
  """Wraps the trainer's batch fetch to keep a host copy of every batch it trains on."""
  seen = []
  original = trainer._next_batches

  def recording(*args):
    batches = original(*args)
    seen.append(np.asarray(jax.device_get(batches["mono"]["input_ids"])))
    return batches
  monkeypatch.setattr(trainer, "_next_batches", recording)
  return seen


def _params(workdir, config):
  del config  # the workdir's checkpoint says what it holds
  checkpointer = Checkpointer(workdir)
  step = checkpointer.latest_step()
  params, _ = checkpointer.restore_params(step)
  checkpointer.close()
  return jax.device_get(params), int(step)


def test_resume_equals_uninterrupted(small_corpus, tmp_path, monkeypatch):
  """N steps straight == N/2 steps, preemption checkpoint, restart, N/2 steps."""
  config = tiny_config(small_corpus.dir)
  straight_batches = _record_batches(monkeypatch)
  trainer.train_and_evaluate(config, tmp_path / "straight")

  monkeypatch.undo()
  resumed_batches = _record_batches(monkeypatch)
  # Preempt after step 3 through the real SIGTERM path (checkpoint, leave the loop).
  monkeypatch.setattr(trainer._StopRequest, "should_stop", lambda self, step: step == 3)
  first = trainer.train_and_evaluate(config, tmp_path / "resumed")
  assert first["step"] == 3 and first["preempted"] is True
  monkeypatch.setattr(trainer._StopRequest, "should_stop", lambda self, step: False)
  second = trainer.train_and_evaluate(config, tmp_path / "resumed")
  assert second["start_step"] == 3 and second["step"] == 6

  assert len(straight_batches) == len(resumed_batches) == 6
  for a, b in zip(straight_batches, resumed_batches):
    np.testing.assert_array_equal(a, b)
  params_a, step_a = _params(tmp_path / "straight", config)
  params_b, step_b = _params(tmp_path / "resumed", config)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_leaves_restorable_checkpoint(small_corpus, tmp_path):
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "xlm_jax.cli", "train", "--config", QUICKSTART + ":smoke",
          "--workdir", str(workdir)]
  args += ["--config." + o for o in tiny_overrides(small_corpus.dir, **{
      "train.total_steps": 100000, "train.log_every": 1})]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read().decode()
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0].decode()
  assert proc.returncode == 0, output

  step = Checkpointer(workdir).latest_step()
  assert step is not None and step >= 3, output
  config = config_lib.validate(
      __import__("ml_collections").ConfigDict(json.loads((workdir / "config.json").read_text())))
  params, restored_step = _params(workdir, config)
  assert restored_step == step
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


# ------------------------------------------------------------------------------- bad input


def test_unknown_config_key_is_named():
  with pytest.raises(ValueError, match=r"unknown config key 'train.total_stepz'.*total_steps"):
    config_lib.load_config(QUICKSTART, ["train.total_stepz=3"])


def test_unknown_key_in_experiment_file_names_the_file(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from xlm_jax.config import default_config\n"
                 "def get_config(arg=None):\n  c = default_config()\n"
                 "  c.model.hiden_size = 8\n  return c\n")
  with pytest.raises(ValueError, match=r"bad.py: unknown config key 'model.hiden_size'"):
    config_lib.load_config(str(bad))


def test_wrong_type_is_named():
  with pytest.raises(ValueError, match=r"train.total_steps.*expects int.*'abc'"):
    config_lib.load_config(QUICKSTART, ["train.total_steps=abc"])
  with pytest.raises(ValueError, match=r"data.packing.*must be one of"):
    config_lib.load_config(QUICKSTART, ["data.packing=zigzag"])


def test_missing_corpus_is_named(tmp_path, capsys):
  missing = tmp_path / "no_corpus"
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(tmp_path / "w"),
                   f"--config.data.corpus_dir={missing}", "--config.data.build_if_missing=False"])
  err = capsys.readouterr().err
  assert code == 2
  assert str(missing) in err and "xlm-jax data build" in err


def test_language_without_data_is_named(small_corpus, tmp_path, capsys):
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(tmp_path / "w"),
                   *["--config." + o for o in tiny_overrides(small_corpus.dir)],
                   "--config.data.languages=('en', 'de', 'sw')"])
  err = capsys.readouterr().err
  assert code == 2 and "'sw'" in err


def test_workdir_with_other_model_shape_is_rejected(small_corpus, tmp_path, capsys):
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_config(small_corpus.dir, **{"train.total_steps": 2}), workdir)
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
                   *["--config." + o for o in tiny_overrides(small_corpus.dir)],
                   "--config.model.hidden_size=48"])
  err = capsys.readouterr().err
  assert code == 2
  assert "different shape" in err and "model.hidden_size: checkpoint 32, config 48" in err


def test_eval_and_export_commands_act_on_a_workdir(small_corpus, tmp_path, capsys):
  import xlm_jax
  workdir = tmp_path / "w"
  config = tiny_config(small_corpus.dir, **{"train.total_steps": 2})
  trainer.train_and_evaluate(config, workdir)
  assert cli.main(["eval", "--workdir", str(workdir)]) == 0
  results = json.loads((workdir / "eval" / "2" / "results.json").read_text())["results"]
  assert 0.0 <= results["mlm/accuracy"] <= 1.0 and results["mlm/predictions"] > 0
  assert "retrieval/mean_p1" in results and (workdir / "eval" / "2" / "results.md").is_file()

  out = tmp_path / "exported"
  assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
  assert f"exported step 2 to {out}" in capsys.readouterr().out
  model, params, tokenizer, export_config = xlm_jax.load_pretrained(out)
  checkpoint_params, _ = _params(workdir, config)
  # The export holds the checkpoint's arrays without the vocabulary padding rows.
  trained_model = dataclasses.replace(model.config, vocab_multiple=config.model.vocab_multiple)
  assert trained_model.padded_vocab_size > model.config.vocab_size
  unpadded = convert_params(checkpoint_params, trained_model, model.config)
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(unpadded)):
    np.testing.assert_array_equal(np.asarray(x), y)
  assert export_config["languages"] == list(config.data.languages)
