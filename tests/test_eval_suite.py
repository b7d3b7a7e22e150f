"""`xlm-jax eval --model PATH` (the evaluation suite) and `xlm-jax plot`, end to end.

The suite runs on a random tiny export, a tiny trained workdir and the TF-IDF baseline, over the
small real corpus of conftest.py. That corpus is gettext text only, so the BLI dictionaries and
the classification task that a debian8 build writes under eval/ are made here from its own text
(word pairs and labels that exercise the pipeline; they are not real translations or modules).
"""
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train import tiny_config
from xlm_jax import cli
from xlm_jax.evaluation import retrieval, suite
from xlm_jax.export import export_model
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.train import trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORD = re.compile(r"[^\W\d_]{2,}")
# Small sets: the suite's code paths, not its statistics.
SMALL_SETS = ["--config.eval.retrieval_items=24", "--config.eval.mining_items=16",
              "--config.eval.mining_distractors=24", "--config.eval.bli_candidates=40",
              "--config.eval.bli_train_pairs=40", "--config.eval.classify_train_items=48",
              "--config.eval.classify_test_items=16", "--config.eval.cka_items=16"]


def _strict_json(path: pathlib.Path) -> dict:
  """results.json, parsed so that NaN or Infinity (not JSON) fail the test."""
  def refuse(constant):
    raise AssertionError(f"{path} holds {constant}, which strict JSON does not allow")
  return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def eval_corpus(small_corpus, tmp_path_factory):
  """The small corpus (linked, never written) plus the eval/ and dictionaries/ files of a debian8
  build, made from its text: BLI pairs of first words, paragraphs labelled by whether they hold a
  printf placeholder ("%"), a surface feature that TF-IDF sees."""
  folder = tmp_path_factory.mktemp("eval_corpus") / "corpus"
  folder.mkdir()
  for entry in small_corpus.dir.iterdir():
    (folder / entry.name).symlink_to(entry)
  (folder / "eval" / "bli").mkdir(parents=True)
  (folder / "eval" / "classification").mkdir()
  (folder / "dictionaries").mkdir()
  for lang in ("de", "fr"):
    for split, target in (("test", folder / "eval" / "bli" / f"en-{lang}.tsv"),
                          ("train", folder / "dictionaries" / f"en-{lang}.tsv")):
      pairs = {}
      for en, xx in small_corpus.parallel_pairs(lang, split):
        en_words, xx_words = WORD.findall(en), WORD.findall(xx)
        if en_words and xx_words:
          pairs.setdefault(en_words[0], xx_words[0])
      target.write_text("".join(f"{en}\t{xx}\n" for en, xx in list(pairs.items())[:60]),
                        encoding="utf-8")

  def label(text):
    return "format" if "%" in text else "plain"
  with open(folder / "eval" / "classification" / "train.jsonl", "w", encoding="utf-8") as f:
    for i, text in enumerate(small_corpus.mono_texts("en", "train")[:200]):
      f.write(json.dumps({"id": f"train{i}", "label": label(text), "text": text}) + "\n")
  with open(folder / "eval" / "classification" / "test.jsonl", "w", encoding="utf-8") as f:
    for lang in ("de", "fr"):
      for i, (en, xx) in enumerate(small_corpus.parallel_pairs(lang, "test")[:40]):
        for row_lang, text in (("en", en), (lang, xx)):
          f.write(json.dumps({"id": f"{lang}{i}", "label": label(en), "lang": row_lang,
                              "text": text}) + "\n")
  return folder


def _export_random_model(small_corpus, target, num_languages=0, languages=("en", "de", "fr"),
                         **fields):
  """A random tiny encoder with the corpus's tokenizer, exported as `xlm-jax export` writes it."""
  tokenizer = small_corpus.tokenizer()
  config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=2,
                         num_heads=2, mlp_dim=32, max_positions=40, num_languages=num_languages,
                         **fields)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = jax.jit(Model(config).init)(jax.random.key(1), ids, lang_ids=ids)["params"]
  return export_model(target, params, config.to_dict(), tokenizer.serialized(),
                      {"languages": list(languages)})


@pytest.fixture(scope="module")
def tiny_export(small_corpus, tmp_path_factory):
  return _export_random_model(small_corpus, tmp_path_factory.mktemp("exports") / "tiny")


def test_suite_on_an_export_writes_every_task(tiny_export, eval_corpus, tmp_path, capsys):
  out = tmp_path / "results"
  assert cli.main(["eval", "--model", str(tiny_export), "--corpus-dir", str(eval_corpus),
                   "--languages", "en", "de", "fr", "--out", str(out), *SMALL_SETS]) == 0
  printed = capsys.readouterr().out
  assert f"written to {out}" in printed and "encode sentences/s" in printed
  assert sorted(os.listdir(out)) == ["cka_heatmap.png", "results.json", "results.md",
                                     "retrieval_per_layer.png"]
  document = _strict_json(out / "results.json")
  results = document["results"]
  for key in ("retrieval/de-en/p1", "retrieval/en-fr/tfidf_p1", "retrieval/mean_p1",
              "mining/de-en/f1", "mining/fr-en/tfidf_f1", "bli/en-de/unmapped_p1", "bli/en-fr/p5",
              "classify/de/accuracy", "classify/fr/leakage", "classify/fr/transfer_gap",
              "cka/de-en/layer0/cka", "cka/fr-en/layer2/p1", "cka/best_layer",
              "geometry/isotropy", "geometry/de/invariance_kl"):
    assert key in results, key
  # Two layers and the embeddings, each language against English.
  assert {k for k in results if re.fullmatch(r"cka/de-en/layer\d/cka", k)} == {
      "cka/de-en/layer0/cka", "cka/de-en/layer1/cka", "cka/de-en/layer2/cka"}
  for key, value in results.items():
    if key.endswith(("/p1", "/f1", "/accuracy", "/leakage")) and not key.startswith("alignment/"):
      assert 0.0 <= value <= 1.0, (key, value)
  assert 0.0 <= results["alignment/de/accuracy"] <= 100.0  # a percentage, as ALIGN-MLM reports
  # Per task: seconds, and sentences encoded with their rate (alignment reads the table only).
  timing = document["timing"]["tasks"]
  assert list(timing) == ["retrieval", "mining", "bli", "classify", "cka", "layers", "geometry",
                          "alignment"]
  assert timing["layers"] == {"shared_with": "cka"}  # one evaluator reads every layer once
  # 24 pairs, both sides, de and fr; English sides shared by both languages are encoded once.
  assert timing["retrieval"]["sentences_requested"] == 2 * 2 * 24
  assert 3 * 24 <= timing["retrieval"]["sentences_encoded"] < 2 * 2 * 24
  assert timing["retrieval"]["sentences_per_second"] > 0 and timing["bli"]["seconds"] > 0
  assert timing["alignment"]["sentences_encoded"] == 0
  assert document["timing"]["sentences_per_second"] > 0
  assert document["model"]["kind"] == "xlm-jax export"
  assert document["model"]["config"]["hidden_size"] == 16
  assert document["corpus"]["manifest"]["languages"][:1] == ["en"]
  assert document["languages"] == ["en", "de", "fr"] and document["eval_config"]["cka_items"] == 16
  assert document["command"].startswith(f"xlm-jax eval --model {tiny_export} --tasks all")
  for name in ("cka_heatmap.png", "retrieval_per_layer.png"):
    assert (out / name).read_bytes()[:8] == PNG_MAGIC
  markdown = (out / "results.md").read_text()
  # The baseline stands right beside the model's number.
  assert "| p1 | tfidf_p1 |" in markdown and "| f1 | tfidf_f1 |" in markdown
  assert "| accuracy | leakage |" in markdown and "## cka and layers" in markdown
  assert "| de-en |" in markdown and "| layer 0 | layer 1 | layer 2 |" in markdown

  # Run again into the same folder: an earlier suite output is replaced, not merged.
  assert cli.main(["eval", "--model", str(tiny_export), "--corpus-dir", str(eval_corpus),
                   "--languages", "en", "de", "--tasks", "geometry", "--out", str(out),
                   *SMALL_SETS]) == 0
  assert sorted(os.listdir(out)) == ["results.json", "results.md"]
  assert set(_strict_json(out / "results.json")["timing"]["tasks"]) == {"geometry"}


def test_suite_on_a_hugging_face_folder_scores_like_its_export(tiny_export, eval_corpus, tmp_path):
  from xlm_jax.export import hf
  folder = hf.convert_to_hf(tiny_export, tmp_path / "hf_model")
  scores = {}
  for name, path in (("export", tiny_export), ("hf", folder)):
    out = tmp_path / name
    assert cli.main(["eval", "--model", str(path), "--corpus-dir", str(eval_corpus), "--languages",
                     "en", "de", "--tasks", "retrieval", "--out", str(out), *SMALL_SETS]) == 0
    scores[name] = _strict_json(out / "results.json")
  assert scores["hf"]["model"]["kind"] == "huggingface"
  assert scores["hf"]["model"]["name"] == "hf_model"
  # The same weights in another format: the same vectors, the same numbers.
  assert scores["hf"]["results"] == scores["export"]["results"]


def test_suite_on_the_tfidf_baseline(eval_corpus, tmp_path):
  out = tmp_path / "tfidf"
  assert cli.main(["eval", "--model", "tfidf", "--corpus-dir", str(eval_corpus), "--languages",
                   "en", "de", "fr", "--out", str(out), *SMALL_SETS]) == 0
  document = _strict_json(out / "results.json")
  results = document["results"]
  assert list(document["timing"]["tasks"]) == ["retrieval", "mining", "classify"]
  assert set(document["not_run"]) == {"bli", "cka", "layers", "geometry", "alignment"}
  assert results["bli/skipped"].startswith("the tfidf baseline has no bli analogue")
  assert "## Not run" in (out / "results.md").read_text()
  assert document["model"]["kind"] == "tfidf" and document["model"]["config"]["columns"] > 0
  # Scored through encode, the baseline lands near the evaluators' own TF-IDF numbers (which fit
  # the IDF on each pool instead of the held-out text), and far above chance (1/24).
  assert results["retrieval/mean_p1"] > 0.3
  assert abs(results["retrieval/mean_p1"] - results["retrieval/mean_tfidf_p1"]) < 0.2
  assert results["classify/de/accuracy"] > 0.5  # "%" is a surface feature


def test_tfidf_vectorizer_reads_its_idf_once_and_matches_hand_computed_values():
  # Reference grams: "ab" -> " a", "ab", "b ", " ab", "ab ", " ab "; "b" -> " b", "b ", " b ".
  # "b " is in both (df 2, idf log(3/3) + 1 = 1); the others in one (idf log(3/2) + 1).
  vectorizer = retrieval.CharNgramTfidf(["ab", "b"])
  rare = np.log(1.5) + 1
  column = vectorizer.columns
  vectors = vectorizer(["abab", "b", "qxq", ""]).toarray()
  # "abab": "ab" twice (sublinear tf 1 + log 2), " a", "b ", " ab", "ab " once; "ba", "aba",
  # "bab", " aba", "abab", "bab " were never seen by the reference and are dropped.
  expected = np.zeros(len(column))
  for gram, value in ((" a", rare), ("ab", (1 + np.log(2)) * rare), ("b ", 1.0), (" ab", rare),
                      ("ab ", rare)):
    expected[column[gram]] = value
  np.testing.assert_allclose(vectors[0], expected / np.linalg.norm(expected), rtol=1e-12)
  expected = np.zeros(len(column))
  for gram, value in ((" b", rare), ("b ", 1.0), (" b ", rare)):
    expected[column[gram]] = value
  np.testing.assert_allclose(vectors[1], expected / np.linalg.norm(expected), rtol=1e-12)
  assert not vectors[2].any() and not vectors[3].any()  # nothing in common with the reference
  # The one-shot function is the same vectoriser, its IDF from the texts themselves by default.
  np.testing.assert_array_equal(
      retrieval.char_ngram_tfidf(["abab", "b"], idf_texts=["ab", "b"]).toarray(), vectors[:2])
  np.testing.assert_array_equal(retrieval.char_ngram_tfidf(["ab", "b"]).toarray(),
                                vectorizer(["ab", "b"]).toarray())


def test_mean_topk_is_the_mean_of_the_sorted_neighbours():
  from xlm_jax.evaluation import metrics
  rng = np.random.default_rng(0)
  queries, candidates = rng.standard_normal((37, 5)), rng.standard_normal((23, 5))
  dots = queries @ candidates.T
  for k in (1, 4, 23, 40):  # k past the candidates means all of them
    want = np.sort(dots, axis=1)[:, ::-1][:, :min(k, 23)].mean(axis=1)
    np.testing.assert_allclose(metrics.mean_topk(queries, candidates, k, block=8), want,
                               rtol=1e-12)


def test_suite_encoder_sorts_keeps_and_counts():
  calls = []

  def encode(texts, lang=None, pooling="mean", layer=-1):
    calls.append((list(texts), lang, pooling, layer))
    # A vector that names its text, language and layer: any mix-up shows.
    return np.array([[len(t), ord(t[0]) if t else 0, lang == "de", layer] for t in texts],
                    np.float32).reshape(len(texts), 4)

  encoder = suite.SuiteEncoder(encode)
  first = encoder(["ccc", "a", "bb", "a"], lang="en")
  np.testing.assert_array_equal(first, encode(["ccc", "a", "bb", "a"], lang="en"))
  assert calls[0] == (["a", "bb", "ccc"], "en", "mean", -1)  # distinct texts, shortest first
  second = encoder(["bb", "dddd"], lang="en")
  assert calls[2][0] == ["dddd"]  # "bb" was kept from the first call
  np.testing.assert_array_equal(second[0], first[2])
  encoder(["bb"], lang="de")
  encoder(["bb"], lang="en", pooling="layer", layer=1)
  assert [c[1:] for c in calls[3:]] == [("de", "mean", -1), ("en", "layer", 1)]  # not the same
  assert encoder.requested == 8 and encoder.sentences == 6 and encoder.seconds > 0
  assert encoder([], lang="en").shape == (0, 4)

  # A full cache still returns every row in order; sparse rows (TF-IDF) are never kept.
  small = suite.SuiteEncoder(encode, cache_bytes=0)
  np.testing.assert_array_equal(small(["bb", "a", "bb"], lang="en"),
                                encode(["bb", "a", "bb"], lang="en"))
  vectorizer = retrieval.CharNgramTfidf(["file not found", "datei"])
  sparse = suite.SuiteEncoder(lambda texts, lang=None: vectorizer(texts))
  rows = sparse(["datei", "file", "datei"], lang="de")
  np.testing.assert_array_equal(rows.toarray(), vectorizer(["datei", "file", "datei"]).toarray())
  sparse(["datei"], lang="de")
  assert sparse.sentences == 3


def _fails(argv, capsys) -> str:
  """The one-line error of a refused command (exit status 2)."""
  capsys.readouterr()  # progress bars of earlier commands
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert "Traceback" not in err and err.count("\n") == 0, err
  return err


def test_bad_input_is_one_line_and_writes_nothing(tiny_export, eval_corpus, small_corpus,
                                                  tmp_path, capsys):
  out = tmp_path / "never"
  common = ["--corpus-dir", str(eval_corpus), "--out", str(out)]
  err = _fails(["eval", "--model", str(tiny_export), "--tasks", "retrieval,parsing", *common],
               capsys)
  assert "unknown task 'parsing'" in err and "retrieval, mining, bli, classify, cka" in err
  err = _fails(["eval", "--model", str(tiny_export), "--tasks", "finetune", *common], capsys)
  assert "xlm-jax finetune" in err
  err = _fails(["eval", "--model", "tfidf", "--tasks", "bli", *common], capsys)
  assert "'bli' does not run on the tfidf baseline" in err and "retrieval, mining, classify" in err

  notes = tmp_path / "notes"
  notes.mkdir()
  (notes / "thesis.tex").write_text("not a model")
  err = _fails(["eval", "--model", str(notes), *common], capsys)
  assert "not a model of a known kind (it holds thesis.tex)" in err
  for kind in ("xlm-jax export", "workdir", "Hugging Face XLM-R folder", "'tfidf'"):
    assert kind in err
  err = _fails(["eval", "--model", str(tmp_path / "missing"), *common], capsys)
  assert "does not exist" in err and "Hugging Face" in err

  # A model with language embeddings for en and de only does not know fr.
  bilingual = _export_random_model(small_corpus, tmp_path / "bilingual", num_languages=2,
                                   languages=("en", "de"))
  err = _fails(["eval", "--model", str(bilingual), "--languages", "en", "fr", *common], capsys)
  assert "does not know language(s) ['fr']" in err and "['en', 'de']" in err
  separate = _export_random_model(small_corpus, tmp_path / "separate", num_languages=2,
                                  languages=("en", "de"), separate_embeddings=True)
  err = _fails(["eval", "--model", str(separate), "--tasks", "alignment", *common], capsys)
  assert "task 'alignment' does not run on" in err and "separate_embeddings" in err
  err = _fails(["eval", "--model", str(tiny_export), "--languages", "en", "xx", *common], capsys)
  assert "['xx'] are not in the corpus" in err

  err = _fails(["eval", "--model", str(tiny_export), "--config.train.total_steps=3", *common],
               capsys)
  assert "--config.train.total_steps=3 does not apply to `xlm-jax eval --model`" in err
  err = _fails(["eval", "--model", str(tiny_export), "--layer", "1", "--pooling", "cls", *common],
               capsys)
  assert "eval.layer=1 is read only with eval.pooling='layer'" in err
  err = _fails(["eval", "--model", str(tiny_export), "--corpus-dir", str(tmp_path / "nocorpus"),
                "--out", str(out)], capsys)
  assert "is not built; build it with `xlm-jax data build --corpus-dir" in err
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  err = _fails(["eval", "--model", "tfidf", "--corpus-dir", str(eval_corpus), "--out", str(mine)],
               capsys)
  assert "is not empty and is not an xlm-jax eval results folder" in err
  assert os.listdir(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
  err = _fails(["eval", "--workdir", str(tmp_path), "--tasks", "retrieval"], capsys)
  assert "--tasks apply to `xlm-jax eval --model PATH`" in err
  assert not out.exists()


@pytest.mark.slow  # trains a workdir first: `-m slow`
def test_plot_and_suite_on_a_trained_workdir(small_corpus, eval_corpus, tmp_path, capsys):
  workdir = tmp_path / "w"
  # Two logged steps; the training run's own evaluation is the held-out loss alone (quicker).
  trainer.train_and_evaluate(tiny_config(small_corpus.dir, **{
      "train.total_steps": 2, "train.log_every": 1, "eval.evaluators": ("mlm",)}), workdir)
  assert cli.main(["plot", "--workdir", str(workdir)]) == 0
  png = workdir / "plots" / "training_curves.png"
  assert png.read_bytes()[:8] == PNG_MAGIC and f"written to {png}" in capsys.readouterr().out

  out = tmp_path / "suite"
  assert cli.main(["eval", "--model", str(workdir), "--corpus-dir", str(eval_corpus),
                   "--languages", "en", "de", "--tasks", "retrieval,layers", "--out", str(out),
                   *SMALL_SETS]) == 0
  document = _strict_json(out / "results.json")
  assert document["model"]["kind"] == "workdir" and document["model"]["step"] == 2
  assert document["model"]["name"] == "w-step2"
  assert sorted(os.listdir(out)) == ["results.json", "results.md", "retrieval_per_layer.png"]
  assert "retrieval/de-en/p1" in document["results"] and "cka/best_layer" in document["results"]

  err = _fails(["plot", "--workdir", str(tmp_path / "nothing")], capsys)
  assert "metrics.jsonl not found" in err
