"""Zero-shot cross-lingual classification with a frozen encoder: LibreOffice help paragraphs by module.

The debian8 build writes the task (data_prep/unit_splits.py `classification_sets`):
  <corpus>/eval/classification/train.jsonl  {"id", "label", "text"}: English paragraphs of training files
  <corpus>/eval/classification/test.jsonl   {"id", "label", "lang", "text"}: paragraphs of held-out
                                            files in every language (English too), split by file

A multinomial logistic regression (metrics.logistic_regression, L2 `eval.classify_l2`) is fitted on
the encoder's vectors of up to `eval.classify_train_items` English paragraphs, standardised with the
English training mean and deviation, and applied unchanged to every language. Up to
`eval.classify_test_items` held-out paragraph ids that have an English version are scored; per
language xx, on the ids xx has:

  accuracy      the classifier on the xx paragraphs
  en_accuracy   the classifier on the English paragraphs of the same ids
  transfer_gap  en_accuracy - accuracy (what is lost by crossing the language)
  majority      always the most frequent training module
  leakage       the same classifier on character 2-4-gram TF-IDF vectors (IDF from the English
                training text): what surface strings shared across languages (function names,
                menu paths, numbers) give away without any cross-lingual representation

Corpora without the task (gettext8) skip the evaluator with a logged reason.
"""
from __future__ import annotations

import logging
import pathlib

import numpy as np
import scipy.sparse

from xlm_jax.data.tasks import read_classification_rows
from xlm_jax.evaluation import metrics
from xlm_jax.evaluation.retrieval import CharNgramTfidf, encode_options
from xlm_jax.registry import EVALUATORS

# Standard deviations below this (a dimension constant over the English training vectors) are
# not divided by: scaling noise up by 1e6 would let it dominate the L2-penalised fit.
STD_FLOOR = 1e-6


def task_dir(corpus_dir) -> pathlib.Path:
  return pathlib.Path(corpus_dir) / "eval" / "classification"


def task_sets(train_rows, test_rows, languages, train_items: int, test_items: int, seed: int) -> dict:
  """{"labels": names, "train": {"texts", "labels"}, "test": {lang: {"texts", "labels", "ids"}}};
  test ids index one seeded sample of the ids with an English paragraph."""
  rng = np.random.default_rng(seed)
  labels = sorted({row["label"] for row in train_rows})
  label_index = {name: i for i, name in enumerate(labels)}
  train = [train_rows[i] for i in np.sort(rng.permutation(len(train_rows))[:train_items])]
  by_id = {}
  for row in test_rows:
    # A module the classifier never saw cannot be predicted: such rows are not scored.
    if row["lang"] in languages and row["label"] in label_index:
      by_id.setdefault(row["id"], {}).setdefault(row["lang"], row)
  with_english = sorted(i for i, rows in by_id.items() if "en" in rows)
  chosen = [with_english[i] for i in np.sort(rng.permutation(len(with_english))[:test_items])]
  test = {}
  for lang in languages:
    present = [(n, by_id[i][lang]) for n, i in enumerate(chosen) if lang in by_id[i]]
    if present:
      test[lang] = {"texts": [row["text"] for _, row in present],
                    "labels": [label_index[row["label"]] for _, row in present],
                    "ids": [n for n, _ in present]}
  return {"labels": labels,
          "train": {"texts": [row["text"] for row in train],
                    "labels": [label_index[row["label"]] for row in train]},
          "test": test}


def transfer_metrics(prefix: str, predict, test: dict) -> dict:
  """Accuracy per language and, beside English, the English accuracy of the same ids and the gap;
  `predict(lang) -> predicted labels of test[lang]`."""
  predictions = {lang: np.asarray(predict(lang)) for lang in test}
  out = {}
  english = test.get("en")
  english_correct = (np.zeros(0, bool) if english is None else
                     predictions["en"] == np.asarray(english["labels"]))
  english_at = {} if english is None else {n: i for i, n in enumerate(english["ids"])}
  for lang, items in test.items():
    correct = predictions[lang] == np.asarray(items["labels"])
    score = float(np.mean(correct))
    out[f"{prefix}{lang}/accuracy"] = score
    if lang != "en" and english is not None:
      same = float(np.mean(english_correct[[english_at[n] for n in items["ids"]]]))
      out[f"{prefix}{lang}/en_accuracy"] = same
      out[f"{prefix}{lang}/transfer_gap"] = same - score
  return out


@EVALUATORS.register("classify")
class Classify:
  """Frozen-encoder logistic regression trained on English, scored on every language."""

  @staticmethod
  def collect(data) -> dict:
    cfg = data.eval_config
    folder = task_dir(data.corpus.dir)
    train_path, test_path = folder / "train.jsonl", folder / "test.jsonl"
    for path in (train_path, test_path):
      if not path.is_file():
        reason = (f"{path} not found: this corpus has no classification task (the debian8 recipe "
                  "builds it: `xlm-jax data build --recipe debian8`)")
        logging.warning("classify: skipped: %s", reason)
        return {"skipped": reason}
    sets = task_sets(read_classification_rows(train_path, ("label", "text")),
                     read_classification_rows(test_path, ("label", "lang", "text")), list(data.languages),
                     cfg.classify_train_items, cfg.classify_test_items, data.seed)
    if len(sets["labels"]) < 2 or "en" not in sets["test"]:
      reason = (f"{folder} has {len(sets['labels'])} module label(s) in train.jsonl and "
                f"{'no' if 'en' not in sets['test'] else 'some'} English test paragraphs; the task "
                "needs two labels and English test items: rebuild the corpus with "
                "`xlm-jax data build --recipe debian8 --force`")
      logging.warning("classify: skipped: %s", reason)
      return {"skipped": reason}
    return sets

  def __init__(self, sets: dict, eval_config):
    self.skipped = sets.get("skipped")
    if self.skipped:
      return
    self.encode_options = encode_options(eval_config)
    self.l2 = float(eval_config.classify_l2)
    self.labels = list(sets["labels"])
    self.train = sets["train"]
    self.test = sets["test"]
    self.train_labels = np.asarray(self.train["labels"], np.int64)
    # Model-independent baselines: computed once, reported every time.
    self.baseline = {f"classify/{lang}/majority": metrics.majority_accuracy(self.train_labels, t["labels"])
                     for lang, t in self.test.items()}
    self.baseline.update({f"classify/{lang}/items": len(t["labels"]) for lang, t in self.test.items()})
    self.baseline["classify/train_items"] = len(self.train_labels)
    # IDF from the English training text, read once for the training and every test language.
    surface_features = CharNgramTfidf(self.train["texts"])
    surface = metrics.logistic_regression(surface_features(self.train["texts"]), self.train_labels,
                                          len(self.labels), self.l2)
    leaked = transfer_metrics(
        "classify/", lambda lang: surface.predict(surface_features(self.test[lang]["texts"])),
        self.test)
    self.baseline.update({k.replace("/accuracy", "/leakage"): v for k, v in leaked.items()
                          if k.endswith("/accuracy")})

  def __call__(self, model) -> dict:
    if self.skipped:
      return {"classify/skipped": self.skipped}
    out = dict(self.baseline)
    train = model.encode(self.train["texts"], lang="en", **self.encode_options)
    if scipy.sparse.issparse(train):
      # Sparse rows (the TF-IDF baseline scored as a model, evaluation/suite.py) are unit rows
      # already, as the leakage baseline fits them; centring would make them dense.
      def standardise(vectors):
        return vectors
    else:
      train = np.asarray(train, np.float64)
      mean, std = train.mean(axis=0), train.std(axis=0)
      std = np.where(std < STD_FLOOR, 1.0, std)

      def standardise(vectors):
        return (np.asarray(vectors, np.float64) - mean) / std
    probe = metrics.logistic_regression(standardise(train), self.train_labels, len(self.labels),
                                        self.l2)
    out["classify/train_accuracy"] = metrics.accuracy(probe.predict(standardise(train)),
                                                      self.train_labels)

    def predict(lang):
      return probe.predict(standardise(
          model.encode(self.test[lang]["texts"], lang=lang, **self.encode_options)))

    out.update(transfer_metrics("classify/", predict, self.test))
    for suffix in ("accuracy", "transfer_gap", "leakage", "majority"):
      values = [v for k, v in out.items()
                if k.endswith("/" + suffix) and not k.startswith(("classify/en/", "classify/mean_"))]
      if values:
        out[f"classify/mean_{suffix}"] = float(np.mean(values))
    return out
