"""Multi-stage schedules, warm starts between workdirs, and runs whose vocabulary is split by
language: the trainer features that the cross-lingual recipes (ERNIE-M, EMMA-X, Emerging
structure) are built from, end to end on the small real corpus."""
import json
import shutil

import jax
import numpy as np
import pytest

from xlm_jax import config as config_lib
from xlm_jax import presets
from xlm_jax.data.corpus import Corpus
from xlm_jax.export.export import load_pretrained
from xlm_jax.models.encoder import Model
from xlm_jax import mesh as mesh_lib
from xlm_jax.train import trainer, warm_start
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state


def _config(small_corpus, objectives, steps, **fields):
  c = config_lib.default_config()
  presets.apply_size(c, "tiny")
  c.data.corpus_dir = str(small_corpus.dir)
  c.data.languages = ("en", "de", "fr")
  c.data.seq_len = 32
  c.data.eval_sentences = 8
  c.model.max_positions = 34
  c.model.num_layers = 1
  c.train.batch_size = 8
  c.train.total_steps = steps
  c.train.log_every = 1
  c.train.checkpoint_every = steps
  c.train.max_wall_seconds = 0.0
  c.train.progress_bar = False
  c.train.async_checkpointing = False
  c.eval.evaluators = ("mlm",)
  c.export.enabled = False
  presets.set_objectives(c, **objectives)
  for key, value in fields.items():
    section, _, name = key.rpartition("__")
    (c[section] if section else c)[name] = value
  return config_lib.validate(c, source="test_stages")


def _fresh_state(config):
  """(bound objectives, freshly initialised state, shardings) as the trainer builds them."""
  corpus = trainer.open_corpus(config)
  tokenizer = trainer.open_tokenizer(config, corpus)
  model = Model(trainer.model_config(config, tokenizer))
  mesh = mesh_lib.make_mesh(config.mesh)
  bound = trainer.bind_objectives(config, model, tokenizer,
                                  trainer.load_objective_resources(config, corpus, tokenizer),
                                  mesh_lib.data_parallel_size(mesh))
  tx, _ = make_optimizer(config.optimizer, config.train.total_steps)
  state, shardings, _ = create_train_state(model, tx, bound, config.data.seq_len, mesh,
                                           mesh_lib.logical_rules(config.mesh), config.seed)
  return bound, state, shardings


def _logged(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_stages_switch_objectives_at_their_boundaries(small_corpus, tmp_path):
  stages = (dict(name="mono", fraction=0.5, objectives=("mlm",)),
            dict(name="pairs", fraction=0.5, objectives=("mlm", "tlm"), mixing="sum"))
  config = _config(small_corpus, {"mlm": {}, "tlm": {}}, 4, stages=stages)
  summary = trainer.train_and_evaluate(config, tmp_path)
  assert summary["step"] == 4
  steps = {row["step"]: row for row in _logged(tmp_path) if "train/loss" in row}
  assert sorted(steps) == [1, 2, 3, 4]
  for step in (1, 2):  # stage 1: MLM alone
    assert "train/mlm/loss" in steps[step] and "train/tlm/loss" not in steps[step]
  for step in (3, 4):  # stage 2: both, summed
    both = steps[step]["train/mlm/loss"] + steps[step]["train/tlm/loss"]
    assert np.isclose(steps[step]["train/loss"], both, rtol=1e-5)
  # Held-out numbers cover every objective of the experiment, each on its own batch kind.
  assert {"mlm/accuracy", "tlm/accuracy"} <= set(summary["eval"])


def test_stage_validation_names_the_problem(small_corpus):
  bad = (dict(name="a", fraction=0.5, objectives=("mlm", "camlm")),)
  with pytest.raises(ValueError, match=r"stages\[0\]: objectives \['camlm'\] are not configured"):
    _config(small_corpus, {"mlm": {}}, 4, stages=bad)
  with pytest.raises(ValueError, match="add up to train.total_steps"):
    _config(small_corpus, {"mlm": {}}, 4, stages=(dict(name="a", steps=3, objectives=("mlm",)),))
  summed = (dict(name="a", fraction=1.0, objectives=("mlm", "emma_x"), mixing="sum"),)
  config = _config(small_corpus, {"mlm": {}, "emma_x": {"queue_size": 64}}, 2, stages=summed)
  with pytest.raises(ValueError, match="runs its own update steps"):
    trainer.train_and_evaluate(config, small_corpus.dir.parent / "never_written")


def test_warm_start_copies_matching_weights_and_rebuilds_momentum_copies(small_corpus, tmp_path):
  source = tmp_path / "mlm"
  trainer.train_and_evaluate(_config(small_corpus, {"mlm": {}}, 2), source)
  saved, step = warm_start.read_state(source)
  assert step == 2

  config = _config(small_corpus, {"emma_x": {"stage": "ctl", "queue_size": 64}}, 2,
                   init_from=str(source))
  bound, state, shardings = _fresh_state(config)
  fresh_head = jax.device_get(state.params["heads"]["emma_x"])
  state, info = warm_start.warm_start(state, shardings, bound, config.seed, source)
  params = jax.device_get(state.params)
  # Encoder and MLM head come from the MLM run, bit for bit ...
  for a, b in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(saved["params"]["encoder"])):
    np.testing.assert_array_equal(a, b)
  assert any(p.startswith("lm_head") for p in info["copied"])
  # ... the new sentence head keeps its initialisation ...
  for a, b in zip(jax.tree.leaves(params["heads"]["emma_x"]), jax.tree.leaves(fresh_head)):
    np.testing.assert_array_equal(a, b)
  assert all(p.startswith("heads/") for p in info["kept"])
  # ... and the momentum key encoder, absent from the MLM run, restarts as a copy of the loaded one.
  key = jax.device_get(state.extra["emma_x"]["key_params"]["encoder"])
  for a, b in zip(jax.tree.leaves(key), jax.tree.leaves(saved["params"]["encoder"])):
    np.testing.assert_array_equal(a, b)


def test_warm_start_from_a_folder_without_checkpoints_is_a_clear_error(small_corpus, tmp_path):
  config = _config(small_corpus, {"mlm": {}}, 2, init_from=str(tmp_path / "nothing"))
  with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
    trainer.train_and_evaluate(config, tmp_path / "run")


def test_no_anchors_vocabulary_trains_exports_and_encodes_by_language(small_corpus, tmp_path):
  # A copy: the tokenizer variant is built inside the corpus folder, which other tests share.
  shutil.copytree(small_corpus.dir, tmp_path / "corpus", ignore=shutil.ignore_patterns("tokenizers"))
  small_corpus = Corpus(tmp_path / "corpus")
  config = _config(small_corpus, {"mlm": {}}, 2, data__vocabulary="no_anchors",
                   data__vocab_size_per_lang=1000, export__enabled=True)
  summary = trainer.train_and_evaluate(config, tmp_path / "run")
  pretrained = load_pretrained(summary["export_dir"])
  ranges = pretrained.tokenizer.language_ranges
  assert ranges["en"][1] <= ranges["de"][0]  # disjoint id ranges: nothing shared but specials
  assert pretrained.model.config.vocab_size >= ranges["fr"][1]
  de = pretrained.encode(["Datei nicht gefunden"], lang="de")
  fr = pretrained.encode(["Datei nicht gefunden"], lang="fr")
  assert de.shape == (1, pretrained.model.config.hidden_size)
  assert not np.allclose(de, fr)  # the same text is other ids in another language's vocabulary
