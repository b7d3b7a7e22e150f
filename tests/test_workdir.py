"""The workdir is self-contained, and commands that refuse or only read leave it as it was."""
import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from test_train import QUICKSTART, tiny_config, tiny_overrides
from xlm_jax import cli
from xlm_jax.train import trainer
from xlm_jax.models.encoder import EncoderConfig, convert_params
from xlm_jax.train.checkpoint import Checkpointer


def folder_checksums(path: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(path).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(small_corpus, tmp_path_factory):
  """A 2-step run on its own copy of the corpus (tests delete it)."""
  root = tmp_path_factory.mktemp("trained")
  corpus = root / "corpus"
  shutil.copytree(small_corpus.dir, corpus)
  workdir = root / "w"
  config = tiny_config(corpus, **{"train.total_steps": 2})
  summary = trainer.train_and_evaluate(config, workdir)
  return workdir, corpus, config, summary


def test_eval_and_export_need_only_the_workdir(trained, tmp_path, capsys):
  import xlm_jax
  workdir, corpus, config, summary = trained
  shutil.rmtree(corpus)
  before = {k: v for k, v in folder_checksums(workdir).items() if not k.startswith("eval/")}

  assert cli.main(["eval", "--workdir", str(workdir)]) == 0, capsys.readouterr().err
  results = json.loads((workdir / "eval" / "2" / "results.json").read_text())["results"]
  # The same sets and the same fixed masking key as the end-of-training evaluation.
  for key in ("mlm/accuracy", "mlm/loss", "retrieval/mean_p1", "unigram/loss"):
    assert results[key] == pytest.approx(summary["eval"][key], abs=1e-6), key

  out = tmp_path / "exported"
  assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
  pretrained = xlm_jax.load_pretrained(out)
  checkpointer = Checkpointer(workdir)
  params, _ = checkpointer.restore_params(2)
  # The export holds the checkpoint's arrays without the vocabulary padding rows.
  trained_model = EncoderConfig.from_dict(checkpointer.read_meta(2)["model"])
  assert trained_model.padded_vocab_size > pretrained.model.config.vocab_size
  unpadded = convert_params(jax.device_get(params), trained_model, pretrained.model.config)
  for x, y in zip(jax.tree.leaves(pretrained.params), jax.tree.leaves(unpadded)):
    np.testing.assert_array_equal(np.asarray(x), y)
  # Eval and export wrote their own outputs only: config.json, checkpoints, sets unchanged.
  after = {k: v for k, v in folder_checksums(workdir).items() if not k.startswith("eval/")}
  assert after == before


def test_eval_overrides_are_not_written_back(trained, capsys):
  workdir = trained[0]
  config_json = (workdir / "config.json").read_bytes()
  assert cli.main(["eval", "--workdir", str(workdir), "--config.eval.evaluators=('mlm',)"]) == 0
  assert (workdir / "config.json").read_bytes() == config_json


def test_refused_train_changes_nothing(small_corpus, tmp_path, capsys):
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_config(small_corpus.dir, **{"train.total_steps": 2}), workdir)
  before = folder_checksums(workdir)
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(workdir),
                   *["--config." + o for o in tiny_overrides(small_corpus.dir)],
                   "--config.model.hidden_size=48"])
  assert code == 2 and "different shape" in capsys.readouterr().err
  assert folder_checksums(workdir) == before
  # ... and the untouched checkpoint still evaluates.
  assert cli.main(["eval", "--workdir", str(workdir)]) == 0


def test_finished_run_with_fewer_steps_keeps_its_records(small_corpus, tmp_path, caplog):
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_config(small_corpus.dir, **{"train.total_steps": 4}), workdir)
  before = folder_checksums(workdir)
  summary = trainer.train_and_evaluate(tiny_config(small_corpus.dir, **{"train.total_steps": 2}),
                                       workdir)
  assert summary["already_trained"] is True and summary["step"] == 4
  assert "already trained to step 4" in caplog.text
  assert folder_checksums(workdir) == before


def test_workdir_that_is_a_file_is_refused(small_corpus, tmp_path, capsys):
  path = tmp_path / "not_a_dir"
  path.write_text("notes")
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(path),
                   *["--config." + o for o in tiny_overrides(small_corpus.dir)]])
  assert code == 2 and "is a file" in capsys.readouterr().err
  assert path.read_text() == "notes"
  assert cli.main(["eval", "--workdir", str(path)]) == 2


def test_damaged_checkpoint_names_the_step_and_the_way_back(small_corpus, tmp_path, capsys):
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_config(small_corpus.dir, **{
      "train.total_steps": 4, "train.checkpoint_every": 2}), workdir)
  for data_file in (workdir / "checkpoints" / "4" / "state").rglob("d/*"):
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])  # truncated
  before = folder_checksums(workdir)
  # `eval` reports it and stops; `train` resumes from step 2 instead (tests/test_faults.py).
  assert cli.main(["eval", "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "checkpoint step 4" in err and "cut short" in err and "resume from step 2" in err
  assert "Traceback" not in err and len(err.strip().splitlines()) == 1
  assert folder_checksums(workdir) == before

  shutil.rmtree(workdir / "checkpoints" / "4" / "meta")  # a checkpoint with a missing item
  before = folder_checksums(workdir)
  assert cli.main(["eval", "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err
  assert "checkpoint step 4" in err and "metadata" in err
  assert folder_checksums(workdir) == before


def test_truncated_tfds_shard_names_language_shard_and_recipe(small_corpus, tmp_path):
  from xlm_jax.data.corpus import Corpus
  corpus_dir = tmp_path / "corpus"
  shutil.copytree(small_corpus.dir, corpus_dir)
  shard = next((corpus_dir / "tfds" / "xlmj_mono" / "de").rglob("*train.array_record-00000-*"))
  shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
  recipe = json.loads((corpus_dir / "manifest.json").read_text())["recipe"]
  before = folder_checksums(corpus_dir)
  with pytest.raises(ValueError) as err:
    Corpus(corpus_dir).mono_source("de", "train")
  message = str(err.value)
  assert "train.array_record-00000-of-00001" in message and "language de" in message
  assert f"xlm-jax data build --corpus-dir {corpus_dir} --recipe {recipe} --force" in message
  assert folder_checksums(corpus_dir) == before
