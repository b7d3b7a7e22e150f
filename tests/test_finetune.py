"""`xlm-jax finetune` (xlm_jax/train/finetune.py): a task head and the encoder trained on English
with the pre-training engine, selected on English dev, scored in every language.

A random tiny encoder (1 layer, d 32) with a SentencePiece model of a toy vocabulary, exported
with export_model, learns toy tasks whose label is in the words (fruits vs colours). Each
fine-tuning run compiles a sharded train step (~10 s here), so the runs are shared: one
uninterrupted run is the reference for the loss, the dev selection and the resume.
"""
import json
import pathlib
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xlm_jax import cli
from xlm_jax.data import tasks
from xlm_jax.data.tokenizer import Tokenizer
from xlm_jax.data.tokenizer_training import train_sentencepiece
from xlm_jax.export.export import export_model
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.train import finetune as ft

FRUITS = "apple banana cherry grape lemon mango peach plum".split()
COLORS = "red green blue black white brown pink gray".split()
OTHER = "the a of and with near under over".split()
# 128 training sentences in batches of 16: 8 steps an epoch, 48 in all.
SETTINGS = ["train.batch_size=16", "optimizer.learning_rate=0.01", "train.epochs=6",
            "train.log_every=1", "data.max_len=16", "train.progress_bar=False"]
STOP_AT = 19  # inside epoch 3, after the end-of-epoch-2 checkpoint (best params, dev curve)


def _sentences(rng, count):
  """(text, label): two fruit (0) or two colour (1) words among two filler words."""
  rows = []
  for _ in range(count):
    label = int(rng.integers(2))
    words = [*rng.choice(COLORS if label else FRUITS, 2), *rng.choice(OTHER, 2)]
    rng.shuffle(words)
    rows.append((" ".join(words), label))
  return rows


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
  """A random tiny encoder exported with a toy SentencePiece model; it knows en, de and fr.
  Every word is one piece but "red" ("▁" "r" "e" "d"): its tag sits on the bare "▁"."""
  rng = np.random.default_rng(0)
  corpus = [text for text, _ in _sentences(rng, 400)]
  tokenizer = Tokenizer.from_bytes(train_sentencepiece(corpus, vocab_size=50, num_threads=1))
  config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=1,
                         num_heads=2, mlp_dim=64, max_positions=40, dropout_rate=0.0,
                         attention_dropout_rate=0.0, vocab_multiple=1)
  # Jitted: one compilation, where op-by-op initialisation compiles every random draw.
  params = nn.meta.unbox(jax.jit(Model(config).init)(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 8), jnp.int32))["params"])
  path = tmp_path_factory.mktemp("model") / "export"
  export_model(path, params, config.to_dict(), tokenizer.serialized(),
               extra_metadata={"languages": ["en", "de", "fr"]})
  return path


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
  """A TSV task folder. Dev (and test.en, the same rows) has its labels flipped: the better the
  model learns the task, the worse its dev score, so the first epoch is the best one."""
  rng = np.random.default_rng(1)
  folder = tmp_path_factory.mktemp("task")
  name = lambda label: ("fruit", "color")[label]
  write = lambda file, rows: (folder / file).write_text(
      "".join(f"{text}\t{name(label)}\n" for text, label in rows), encoding="utf-8")
  write("train.tsv", _sentences(rng, 128))
  flipped = [(text, 1 - label) for text, label in _sentences(rng, 32)]
  write("dev.tsv", flipped)
  write("test.en.tsv", flipped)
  write("test.de.tsv", _sentences(rng, 24))
  write("test.ja.tsv", _sentences(rng, 8))  # a language the model does not know: skipped
  return folder


def _fields(model, folder):
  return {"model": (str(model), "--model"), "data.source": (str(folder), "--data")}


@pytest.fixture(scope="module")
def uninterrupted(toy_model, toy_folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  config = ft.make_config("classify", SETTINGS, _fields(toy_model, toy_folder))
  return workdir, ft.finetune(config, workdir)


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def _checkpoint_arrays(workdir, step):
  """Every array of a checkpoint's state (train params, optimizer moments, best params)."""
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    with warnings.catch_warnings():  # "sharding info not provided": numpy arrays are wanted
      warnings.simplefilter("ignore", UserWarning)
      tree = checkpointer.restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")
  finally:
    checkpointer.close()
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_the_head_loss_falls_and_dev_selection_keeps_the_best_epoch(uninterrupted):
  workdir, results = uninterrupted
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 49))
  assert np.mean([losses[s] for s in range(45, 49)]) < 0.35 * losses[1]  # ln 2 at the start
  # The flipped dev falls as the task is learnt: epoch 1 is the best, and the kept parameters
  # are that epoch's, not the last ones (test.en holds the same rows as dev).
  scores = [epoch["accuracy"] for epoch in results["dev_curve"]]
  assert [epoch["epoch"] for epoch in results["dev_curve"]] == [1, 2, 3, 4, 5, 6]
  assert scores[0] > scores[-1] + 0.3
  assert results["best_epoch"] == 1 + int(np.argmax(scores))
  assert results["best_dev_score"] == max(scores)
  assert results["test"]["en"]["accuracy"] == max(scores) != scores[-1]
  assert sorted(results["test"]) == ["de", "en"]
  assert list(results["skipped_languages"]) == ["ja"]
  saved = json.loads((workdir / ft.RESULTS_FILE).read_text())
  assert saved["test"] == results["test"] and saved["selection_metric"] == "accuracy"
  assert "| de | 24 |" in (workdir / ft.RESULTS_MD).read_text()


@pytest.mark.slow  # two more fine-tuning runs of the command: `-m slow`
def test_resume_of_the_command_equals_no_interruption(uninterrupted, toy_model, toy_folder,
                                                      tmp_path, capsys):
  reference_dir, reference = uninterrupted
  workdir = tmp_path / "resumed"
  command = ["finetune", "--model", str(toy_model), "--task", "classify", "--data",
             str(toy_folder), "--workdir", str(workdir),
             *(f"--config.{s}" for s in SETTINGS), f"--config.train.stop_at_step={STOP_AT}"]
  assert cli.main(command) == 0
  assert f"stopped at step {STOP_AT} of 48" in capsys.readouterr().out
  assert not (workdir / ft.RESULTS_FILE).exists()
  assert cli.main(command) == 0  # the same command resumes (stop_at_step is behind it now)
  results = json.loads((workdir / ft.RESULTS_FILE).read_text())
  assert results["dev_curve"] == reference["dev_curve"]
  assert results["test"] == reference["test"]
  assert _losses(workdir) == _losses(reference_dir)  # every step's loss, bit for bit
  # Parameters, optimizer moments and the kept best parameters: bit-identical.
  ours, theirs = _checkpoint_arrays(workdir, 48), _checkpoint_arrays(reference_dir, 48)
  assert ours.keys() == theirs.keys() and len(ours) > 20
  assert all(np.array_equal(ours[k], theirs[k]) for k in ours)
  # A finished workdir trains nothing more and keeps its results.
  before = (workdir / ft.RESULTS_FILE).read_bytes()
  assert cli.main(command) == 0
  assert (workdir / ft.RESULTS_FILE).read_bytes() == before


def test_tagging_head_learns_first_piece_tags(toy_model, tmp_path):
  tag_of = {**{w: "B-FRUIT" for w in FRUITS}, **{w: "B-COLOR" for w in COLORS}}
  rng = np.random.default_rng(2)

  def split(lang, count):
    names = ("O", "B-COLOR", "B-FRUIT")
    sentences = [tuple(rng.choice(FRUITS + COLORS + OTHER, 5)) for _ in range(count)]
    labels = [tuple(names.index(tag_of.get(w, "O")) for w in s) for s in sentences]
    return tasks.TaskSplit(lang, sentences, labels, [str(i) for i in range(count)])

  data = tasks.TaskData("toy-ner", "tag", ("O", "B-COLOR", "B-FRUIT"), split("en", 128),
                        split("en", 24), {"en": split("en", 24), "de": split("de", 24)},
                        {"kind": "in memory"})
  config = ft.make_config("tag", SETTINGS, {"model": (str(toy_model), "--model")})
  results = ft.finetune(config, tmp_path / "tag", data=data)
  losses = _losses(tmp_path / "tag")
  assert np.mean([losses[s] for s in range(45, 49)]) < 0.35 * losses[1]
  assert results["selection_metric"] == "f1"
  for lang in ("en", "de"):
    assert results["test"][lang]["f1"] > 0.8 and results["test"][lang]["accuracy"] > 0.8
    assert results["test"][lang]["words"] == 120


# ------------------------------------------------------------------------------- pure pieces


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
  lengths = np.random.default_rng(0).integers(3, 100, size=203)
  for grouped in (False, True):
    first = ft.epoch_batches(lengths, 16, seed=5, epoch=0, group_by_length=grouped)
    again = ft.epoch_batches(lengths, 16, seed=5, epoch=0, group_by_length=grouped)
    other = ft.epoch_batches(lengths, 16, seed=5, epoch=1, group_by_length=grouped)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert sorted(np.concatenate(first).tolist()) == list(range(203))  # each example once
    assert [len(b) for b in first] == [16] * 12 + [11]  # the short batch last
  # Grouped batches hold similar lengths: far less padding than random ones.
  spread = lambda batches: np.mean([np.ptp(lengths[b]) for b in batches[:-1]])
  assert spread(ft.epoch_batches(lengths, 16, 5, 0, group_by_length=True)) < 0.5 * spread(
      ft.epoch_batches(lengths, 16, 5, 0, group_by_length=False))


def test_bio_chunks_and_entity_f1_by_hand():
  assert ft.bio_chunks(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG", "I-ORG"]) == {
      ("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 7)}
  assert ft.bio_chunks(["O", "I-PER", "I-LOC", "NOUN"]) == {("PER", 1, 2), ("LOC", 2, 3)}
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
  predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
  # 2 of 3 predicted chunks right, 2 of 3 gold chunks found.
  assert ft.entity_f1(gold, predicted) == pytest.approx(
      {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
  assert ft.entity_f1([["O"]], [["O"]])["f1"] == 0.0


def test_defaults_are_xtremes_and_bad_values_name_the_field():
  classify, tag = ft.finetune_config("classify"), ft.finetune_config("tag")
  assert (classify.optimizer.learning_rate, classify.train.batch_size, classify.data.max_len,
          classify.train.epochs, tag.train.epochs) == (2e-5, 32, 128, 5, 10)
  with pytest.raises(ValueError, match=r"--config.train.epochs=0: config field 'train.epochs' "
                                       r"must be >= 1, got 0"):
    ft.make_config("classify", ["train.epochs=0"])
  with pytest.raises(ValueError, match="unknown config key 'train.epoch'.*train.epochs"):
    ft.make_config("classify", ["train.epoch=3"])
  with pytest.raises(ValueError, match=r"--languages: data.languages must list distinct"):
    ft.make_config("classify", [], {"data.languages": (("de", "de"), "--languages")})


# ------------------------------------------------------------------------------- bad input


def _refused(command, capsys, workdir) -> str:
  assert cli.main(command) == 2
  assert not workdir.exists()  # every check runs before anything is written
  return capsys.readouterr().err


def test_a_language_the_model_does_not_know(toy_model, toy_folder, tmp_path, capsys):
  (tmp_path / "task").mkdir()
  for name in ("train.tsv", "dev.tsv", "test.de.tsv"):
    (tmp_path / "task" / name).write_text((toy_folder / name).read_text())
  (tmp_path / "task" / "test.sw.tsv").write_text("apple red\tfruit\n")
  workdir = tmp_path / "w"
  err = _refused(["finetune", "--model", str(toy_model), "--task", "classify", "--data",
                  str(tmp_path / "task"), "--languages", "de,sw", "--workdir", str(workdir)],
                 capsys, workdir)
  assert "--languages ['sw']: the model at" in err and "['en', 'de', 'fr']" in err


def test_tfds_not_prepared_names_the_command(toy_model, tmp_path, capsys):
  workdir = tmp_path / "w"
  err = _refused(["finetune", "--model", str(toy_model), "--task", "tag", "--data",
                  "tfds:wikiann", "--tfds-data-dir", str(tmp_path / "tfds"), "--workdir",
                  str(workdir)], capsys, workdir)
  assert f"not prepared in {tmp_path / 'tfds'}" in err
  assert f"tfds build wikiann/en --data_dir {tmp_path / 'tfds'}" in err


def test_malformed_conll_line_is_named(toy_model, tmp_path, capsys):
  folder = tmp_path / "ner"
  folder.mkdir()
  (folder / "test.de.conll").write_text("apple\tB-FRUIT\n", encoding="utf-8")
  (folder / "train.conll").write_text("apple\tB-FRUIT\nred\tB-COLOR\nbroken\n", encoding="utf-8")
  workdir = tmp_path / "w"
  err = _refused(["finetune", "--model", str(toy_model), "--task", "tag", "--data", str(folder),
                  "--workdir", str(workdir)], capsys, workdir)
  assert f"{folder / 'train.conll'}:3: malformed CoNLL line 'broken'" in err
