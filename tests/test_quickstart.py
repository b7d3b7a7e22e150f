"""The README's main job, end to end (slow: builds the full corpus and trains for minutes).

    python -m pytest -q -m slow tests/test_quickstart.py
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import xlm_jax

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_beats_unigram_and_exports(tmp_path):
  workdir = tmp_path / "quickstart"
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  subprocess.run([sys.executable, "-m", "xlm_jax.cli", "train", "--config",
                  str(REPO / "experiments" / "quickstart.py"), "--workdir", str(workdir)],
                 check=True, env=env, timeout=1200)
  summary = json.loads((workdir / "summary.json").read_text())
  evaluation = summary["eval"]
  # "Clearly beats": at least twice the unigram accuracy and a full nat lower loss.
  assert evaluation["mlm/accuracy"] > 2 * evaluation["unigram/accuracy"], evaluation
  assert evaluation["mlm/loss"] < evaluation["unigram/loss"] - 1.0, evaluation
  assert evaluation["retrieval/de/items"] >= 500

  model, params, tokenizer, config = xlm_jax.load_pretrained(workdir / "export")
  vectors = xlm_jax.load_pretrained(workdir / "export").encode(
      ["File not found", "Datei nicht gefunden"], lang="de")
  assert vectors.shape == (2, model.config.hidden_size) and np.isfinite(vectors).all()
