"""The evaluation suite on any model: `xlm-jax eval --model PATH --tasks ...`.

    tasks = parse_tasks("all", tfidf=False)                   # names -> Task, checked
    model = encoder_eval_model(xlm_jax.load_pretrained(path))  # or tfidf_eval_model(corpus, langs)
    results = run_suite(tasks, model, data, out_dir, command, model_info)

This module owns the task names, which evaluator scores each, and which tasks the character
n-gram baseline (`--model tfidf`) can take. Every task reads its sets from the corpus now
(base.from_data) and scores the model through its one `encode(texts, lang, pooling=, layer=)`, so
an xlm-jax export, a restored workdir, a Hugging Face XLM-R folder and the TF-IDF baseline are
scored on the same items by the same code. `run_suite` times every task (reading the sets and the
model-independent baselines apart from scoring the model), counts the sentences encoded and their
rate, and writes results.json (strict JSON), results.md and the PNG plots into one folder,
atomically.

Nothing here imports xlm_jax.train: the command layer restores workdirs and hands the suite an
encoder (`Pretrained`) like any other.
"""
from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
import time
import types
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.sparse
import tqdm

from xlm_jax.atomic_files import check_replaceable, write_directory_atomically
from xlm_jax.evaluation import base, cka, plots, report
from xlm_jax.evaluation.base import EvalData, EvalModel
from xlm_jax.evaluation.retrieval import CharNgramTfidf

TFIDF = "tfidf"  # `--model tfidf`: the character n-gram baseline, no trained model


@dataclasses.dataclass(frozen=True)
class Task:
  """One name of `--tasks`: the evaluator that scores it, whether the TF-IDF baseline can take
  it, the metric columns of its results.md table (in reading order; others follow, sorted) and
  the plots it draws."""
  name: str
  evaluator: str
  tfidf: bool
  columns: tuple[str, ...] = ()
  plots: tuple[str, ...] = ()


# The one list of tasks. `tfidf` is True where the task has a surface baseline to score as a
# model: sentence vectors compared by cosine (retrieval, mining) or fed to a linear probe (classify:
# the leakage baseline). BLI reads word vectors through a learned map, CKA and geometry read layers
# and the shape of a dense space, alignment reads a word-embedding table: none has a TF-IDF
# analogue.
TASKS = {task.name: task for task in (
    Task("retrieval", "retrieval", True, ("p1", "hard_p1", "hard_items", "items")),
    Task("mining", "mining", True, ("f1", "precision", "recall", "threshold", "dev_f1", "items",
                                    "distractors")),
    Task("bli", "bli", False, ("p1", "p5", "unmapped_p1", "unmapped_p5", "queries", "candidates",
                               "train_pairs")),
    Task("classify", "classify", True, ("accuracy", "leakage", "majority", "en_accuracy",
                                        "transfer_gap", "items")),
    # One evaluator reads every layer once; the two names choose which picture is drawn.
    Task("cka", "cka", False, ("cka", "p1"), plots=("cka_heatmap",)),
    Task("layers", "cka", False, ("cka", "p1"), plots=("retrieval_per_layer",)),
    Task("geometry", "geometry", False, ("invariance_kl", "isotropy")),
    Task("alignment", "alignment", False, ("accuracy", "procrustes_accuracy", "pairs")),
)}
# Tasks of the evaluation plan that are not run by `xlm-jax eval`, and where they live instead.
# Both train the encoder, so each is a training run of its own and not part of `--tasks all`.
OWN_COMMAND = {
    "finetune": "xlm-jax finetune --model PATH --task classify|tag --workdir DIR",
    "tag": "xlm-jax finetune --model PATH --task tag --workdir DIR (tagging is scored after "
           "fine-tuning)",
}

RESULTS_FILE = "results.json"
MARKDOWN_FILE = "results.md"
# An existing output folder is replaced only if it holds these (an earlier suite's output).
RESULTS_MARKERS = (RESULTS_FILE, MARKDOWN_FILE)
RESULTS_WHAT = "xlm-jax eval results folder"
# Held-out sentences per language that the TF-IDF baseline's IDF is read from.
TFIDF_REFERENCE_SENTENCES = 5000


def parse_tasks(spec: str, tfidf: bool = False) -> list[Task]:
  """The tasks of `--tasks` ("all" or comma-separated names), in the order given.

  "all" is every task (finetune has its own command); with `tfidf`, "all" keeps the tasks the
  baseline can take and an explicit task it cannot take is refused. ValueError names the task.
  """
  names = [name.strip() for name in spec.split(",") if name.strip()]
  if not names:
    raise ValueError(f"--tasks is empty; pass 'all' or some of {', '.join(TASKS)}")
  if names == ["all"]:
    return [t for t in TASKS.values() if t.tfidf or not tfidf]
  tasks = []
  for name in dict.fromkeys(names):
    if name == "all":
      raise ValueError("--tasks all cannot be combined with named tasks; pass 'all' alone")
    if name in OWN_COMMAND:
      raise ValueError(f"task {name!r} is not run by `xlm-jax eval`: use {OWN_COMMAND[name]}")
    if name not in TASKS:
      raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)} (or 'all')")
    task = TASKS[name]
    if tfidf and not task.tfidf:
      takes = ", ".join(t.name for t in TASKS.values() if t.tfidf)
      raise ValueError(f"task {name!r} does not run on the {TFIDF} baseline (it has no surface "
                       f"analogue); the {TFIDF} baseline takes {takes}")
    tasks.append(task)
  return tasks


def not_applicable(tasks: Sequence[Task], model_config) -> dict[str, str]:
  """{task: reason} of the tasks this model cannot take (checked before any set is read)."""
  reasons = {}
  for task in tasks:
    if task.evaluator == "alignment" and getattr(model_config, "separate_embeddings", False):
      reasons[task.name] = ("the model has one word-embedding table per language "
                            "(separate_embeddings): there is no shared table to align")
  return reasons


def eval_languages(requested: Sequence[str] | None, corpus_languages: Sequence[str],
                   model_languages: Sequence[str]) -> tuple[str, ...]:
  """The languages to evaluate: `requested` (checked), else the corpus's languages the model knows.

  model_languages: the languages the model was trained with (its lang ids, or the languages an
  xlm-jax export encodes); empty for a model that takes any text (Hugging Face XLM-R, TF-IDF).
  Every task pairs languages with English, so "en" and one other language are needed.
  """
  corpus_languages, model_languages = list(corpus_languages), list(model_languages)
  if requested:
    languages = list(dict.fromkeys(requested))
    missing = [lang for lang in languages if lang not in corpus_languages]
    if missing:
      raise ValueError(f"language(s) {missing} are not in the corpus (it has {corpus_languages}); "
                       "choose others with --languages, or another corpus with --corpus-dir")
    unknown = [lang for lang in languages if model_languages and lang not in model_languages]
    if unknown:
      raise ValueError(f"the model does not know language(s) {unknown}: it was trained with "
                       f"{model_languages}; drop them from --languages")
  else:
    languages = [lang for lang in corpus_languages
                 if not model_languages or lang in model_languages]
  if "en" not in languages or len(languages) < 2:
    raise ValueError(f"every task pairs a language with English, so the languages need 'en' and "
                     f"one more; got {languages} (corpus {corpus_languages}, model "
                     f"{model_languages or 'any'})")
  return tuple(languages)


# ---------------------------------------------------------------------------------------------
# Models: an encoder (export, workdir, Hugging Face) or the character n-gram baseline
# ---------------------------------------------------------------------------------------------


def encoder_eval_model(pretrained) -> EvalModel:
  """The EvalModel of a loaded encoder (`xlm_jax.load_pretrained(...)` or a restored workdir's
  model, params and tokenizer as `Pretrained`)."""
  from xlm_jax.objectives.align_mlm import word_embedding_table
  model = pretrained.model
  return EvalModel(
      encode=pretrained.encode, config=model.config,
      word_embeddings=lambda: np.asarray(word_embedding_table(pretrained.params, model.config)))


def tfidf_eval_model(corpus, languages: Sequence[str],
                     reference_sentences: int = TFIDF_REFERENCE_SENTENCES) -> EvalModel:
  """The character 2-4-gram TF-IDF baseline as an EvalModel: `encode` returns sparse unit rows
  (every task it takes compares them by cosine or fits a linear probe on them). The IDF is read
  from the first `reference_sentences` held-out sentences of each language, the text the
  retrieval and mining items come from; pooling and layer mean nothing to it and are ignored."""
  reference = [text for lang in languages
               for text in corpus.mono_texts(lang, "test")[:reference_sentences]]
  vectorizer = CharNgramTfidf(reference)

  def encode(texts, lang=None, pooling="mean", layer=-1):
    del lang, pooling, layer  # the same grams in every language: that is the baseline
    return vectorizer(list(texts))

  def no_table():
    raise ValueError(f"the {TFIDF} baseline has no word-embedding table")

  config = types.SimpleNamespace(kind=TFIDF, n_range=list(vectorizer.n_range),
                                 columns=len(vectorizer.columns), idf_texts=len(reference))
  return EvalModel(encode=encode, word_embeddings=no_table, config=config)


class SuiteEncoder:
  """The model's `encode` as the suite calls it, counting sentences and seconds.

  Each call encodes its distinct texts in length order, so a batch holds texts of like length and
  pads little (a batch is as wide as its longest text). Dense vectors are kept for the rest of the
  run, up to `cache_bytes`: tasks and languages share many texts (every language's mining and
  retrieval pools have English sides; BLI's English words recur in its seed dictionaries), and a
  kept text is never encoded again. Sparse vectors (the TF-IDF baseline) are cheap and not kept.
  `sentences` counts the texts the model encoded, `requested` those the tasks asked for.
  """

  def __init__(self, encode: Callable, cache_bytes: int = 512 << 20):
    self._encode = encode
    self._cache: dict[tuple, dict[str, np.ndarray]] = {}
    self._room = cache_bytes
    self.sentences = self.requested = 0
    self.seconds = 0.0
    self.bar = None

  def __call__(self, texts, lang=None, **options):
    texts = list(texts)
    kept = self._cache.setdefault((lang, tuple(sorted(options.items()))), {})
    # Sorted by length, ties in first-seen order: deterministic batches.
    todo = sorted(dict.fromkeys(t for t in texts if t not in kept), key=len)
    vectors = None
    if todo or not texts:
      start = time.perf_counter()
      vectors = self._encode(todo, lang=lang, **options)
      self.seconds += time.perf_counter() - start
      self.sentences += len(todo)
    self.requested += len(texts)
    if self.bar is not None:
      self.bar.update(len(texts))
    if not texts:
      return vectors
    if scipy.sparse.issparse(vectors):
      # Nothing sparse is kept, so every text of this call was encoded now.
      at = {text: i for i, text in enumerate(todo)}
      return vectors[[at[t] for t in texts]]
    fresh = {}
    if vectors is not None:
      vectors = np.asarray(vectors)
      if vectors.nbytes <= self._room:
        self._room -= vectors.nbytes
        kept.update(zip(todo, vectors))
      else:
        fresh = dict(zip(todo, vectors))  # the cache is full: this call's rows only
    return np.stack([fresh[t] if t in fresh else kept[t] for t in texts])


# ---------------------------------------------------------------------------------------------
# Running the tasks
# ---------------------------------------------------------------------------------------------


def check_out_dir(out_dir) -> pathlib.Path:
  """`out_dir` if the suite may write it (absent, empty, or an earlier suite output); else a
  ValueError naming it. Only reads: called before any task runs, not after minutes of work."""
  out_dir = pathlib.Path(out_dir).expanduser()
  check_replaceable(out_dir, RESULTS_MARKERS, RESULTS_WHAT)
  return out_dir


def run_suite(tasks: Sequence[Task], model: EvalModel, data: EvalData, out_dir, command: str,
              model_info: Mapping, progress: bool = True, skipped: Mapping[str, str] | None = None
              ) -> dict:
  """Scores `model` on every task and writes `out_dir` (results.json, results.md, PNG plots).

  data: where the tasks read their sets (the corpus, the languages, config.eval); its tokenizer
    and model_config are the model's (the alignment task reads token ids), None for TF-IDF.
  command: the command line, recorded in results.json. model_info: what the model is ({"kind",
    "path", "config", ...}), recorded too.
  skipped: {task: reason} of tasks named but not run (the TF-IDF baseline under "all").
  Returns the document written to results.json.
  """
  out_dir = check_out_dir(out_dir)
  meter = SuiteEncoder(model.encode)
  metered = dataclasses.replace(model, encode=meter)
  results, timing = {}, {}
  scored_by = {}  # evaluator -> the task that ran it (cka and layers share one)
  suite_start = time.perf_counter()
  for task in tasks:
    if task.evaluator in scored_by:
      timing[task.name] = {"shared_with": scored_by[task.evaluator]}
      continue
    scored_by[task.evaluator] = task.name
    with tqdm.tqdm(desc=f"{task.name}: sets", unit="sent", dynamic_ncols=True,
                   disable=not progress) as bar:
      start = time.perf_counter()
      # Reading the sets includes the baselines that do not depend on the model (TF-IDF
      # retrieval and mining, the leakage probe): timed apart from scoring the model.
      evaluator = base.from_data(task.evaluator, data)
      sets_seconds = time.perf_counter() - start
      bar.set_description_str(f"{task.name}: encode")
      bar.reset()  # the rate shown is the scoring's, not diluted by reading the sets
      meter.bar, meter.sentences, meter.requested, meter.seconds = bar, 0, 0, 0.0
      results.update(evaluator(metered))
      meter.bar = None
      seconds = time.perf_counter() - start
    timing[task.name] = {
        "seconds": seconds, "sets_seconds": sets_seconds, "score_seconds": seconds - sets_seconds,
        "encode_seconds": meter.seconds, "sentences_requested": meter.requested,
        "sentences_encoded": meter.sentences,
        "sentences_per_second": meter.sentences / meter.seconds if meter.seconds else None}
  for name, reason in (skipped or {}).items():
    results[f"{name}/skipped"] = reason
  encoded = sum(t.get("sentences_encoded", 0) for t in timing.values())
  requested = sum(t.get("sentences_requested", 0) for t in timing.values())
  encode_seconds = sum(t.get("encode_seconds", 0.0) for t in timing.values())
  document = {
      "results": results,
      "tasks": [t.name for t in tasks],
      "timing": {"tasks": timing, "total_seconds": time.perf_counter() - suite_start,
                 "sentences_requested": requested, "sentences_encoded": encoded,
                 "encode_seconds": encode_seconds,
                 "sentences_per_second": encoded / encode_seconds if encode_seconds else None},
      "model": dict(model_info),
      "languages": list(data.languages),
      "eval_config": data.eval_config.to_dict() if hasattr(data.eval_config, "to_dict")
                     else dict(data.eval_config),
      "corpus": {"dir": str(data.corpus.dir), "manifest": getattr(data.corpus, "manifest", {})},
      "command": command,
      "not_run": dict(skipped or {}),
  }
  write_results(out_dir, document, tasks)
  return document


def write_results(out_dir: pathlib.Path, document: dict, tasks: Sequence[Task]) -> None:
  """results.json, results.md and the tasks' PNG plots, as one folder written atomically (an
  existing folder is replaced only when it is an earlier suite output)."""
  results = document["results"]
  files = {RESULTS_FILE: report.strict_json(document).encode("utf-8"),
           MARKDOWN_FILE: suite_markdown(document, tasks).encode("utf-8")}
  for task in tasks:
    for plot in task.plots:
      png = PLOTS[plot](results, document["model"].get("name", ""))
      if png is not None:
        files[f"{plot}.png"] = png
  write_directory_atomically(out_dir, files, markers=RESULTS_MARKERS, what=RESULTS_WHAT)


def _layer_heatmap(results, model_name):
  languages, layers, values = cka.layer_table(results, "cka")
  if not languages:
    return None
  return plots.cka_heatmap(languages, layers, values, title=(
      f"Linear CKA with English per layer, {results.get('cka/items')} parallel items: "
      f"{model_name}"))


def _layer_lines(results, model_name):
  languages, layers, values = cka.layer_table(results, "p1")
  if not languages:
    return None
  return plots.layer_lines(languages, layers, values, title=(
      f"Retrieval P@1 per layer (mean of xx->en and en->xx, {results.get('cka/items')} items): "
      f"{model_name}"))


PLOTS = {"cka_heatmap": _layer_heatmap, "retrieval_per_layer": _layer_lines}


# ---------------------------------------------------------------------------------------------
# results.md
# ---------------------------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"^[^/]+/[^/]+/layer\d+/[^/]+$")


def _ordered_columns(found: set[str], preferred: Sequence[str]) -> list[str]:
  """`preferred` first, then the rest sorted; each baseline column (tfidf_<metric>) right after
  the model's <metric>, so the two read side by side."""
  plain = [c for c in preferred if c in found]
  plain += sorted(c for c in found if c not in plain and not c.startswith("tfidf_"))
  columns = []
  for column in plain:
    columns.append(column)
    if f"tfidf_{column}" in found:
      columns.append(f"tfidf_{column}")
  return columns + sorted(c for c in found if c not in columns)


def _row_order(row: str) -> tuple[str, int, str]:
  """Rows by language, each language's xx-en before its en-xx: "de-en", "en-de", "es-en", ..."""
  source, _, target = row.partition("-")
  if target == "en":
    return source, 0, row
  return (target, 1, row) if source == "en" and target else (row, 2, row)


def task_tables(results: Mapping, task: Task) -> list[str]:
  """The Markdown of one task: its summary numbers, then a table of rows (languages, pairs or
  layers) by metric, then, for the per-layer tasks, languages by layers."""
  prefix = task.evaluator + "/"
  own = {k: v for k, v in results.items() if k.startswith(prefix)}
  blocks = []
  summary = [(k[len(prefix):], v) for k, v in sorted(own.items()) if k.count("/") == 1]
  if summary:
    blocks.append(report.markdown_table(["metric", "value"], summary))
  cells = collections.defaultdict(dict)
  for key, value in own.items():
    if key.count("/") == 2:
      _, row, metric = key.split("/")
      cells[row][metric] = value
  # A language's own row (retrieval/de/items) joins the rows of its pairs (de-en, en-de).
  for lang in [row for row in cells if "-" not in row]:
    pairs = [row for row in cells if lang in row.split("-") and row != lang]
    if pairs:
      for row in pairs:
        cells[row].update(cells[lang])
      del cells[lang]
  if cells:
    columns = _ordered_columns({m for row in cells.values() for m in row}, task.columns)
    rows = [[row] + [cells[row].get(c, "") for c in columns]
            for row in sorted(cells, key=_row_order)]
    blocks.append(report.markdown_table(["", *columns], rows))
  if any(_LAYER_KEY.match(k) for k in own):
    for metric in task.columns:
      languages, layers, values = cka.layer_table(results, metric)
      rows = [[f"{lang}-en"] + list(values[i]) for i, lang in enumerate(languages)]
      blocks.append(f"{metric} per layer (0 = embeddings)\n\n" + report.markdown_table(
          ["", *[f"layer {layer}" for layer in layers]], rows))
  return blocks


def suite_markdown(document: Mapping, tasks: Sequence[Task]) -> str:
  """results.md: what was evaluated, the time each task took, and a section per task."""
  model, timing = document["model"], document["timing"]
  lines = [f"# Evaluation of {model.get('name', '')}", "",
           f"- model: {model.get('kind', '')} {model.get('path', '')}",
           f"- corpus: {document['corpus']['dir']}",
           f"- languages: {', '.join(document['languages'])}",
           f"- pooling: {document['eval_config'].get('pooling')}"
           + (f", layer {document['eval_config'].get('layer')}"
              if document["eval_config"].get("pooling") == "layer" else ""),
           f"- command: `{document['command']}`", ""]
  def rate(t):
    return round(t["sentences_per_second"]) if t["sentences_per_second"] else ""
  rows = []
  for name, t in timing["tasks"].items():
    if "shared_with" in t:
      rows.append([name, f"(with {t['shared_with']})", "", "", "", ""])
    else:
      rows.append([name, f"{t['seconds']:.1f}", f"{t['sets_seconds']:.1f}",
                   t["sentences_requested"], t["sentences_encoded"], rate(t)])
  rows.append(["all", f"{timing['total_seconds']:.1f}", "", timing["sentences_requested"],
               timing["sentences_encoded"], rate(timing)])
  lines += ["## Time", "", report.markdown_table(
      ["task", "seconds", "of which sets and baselines", "sentences asked for",
       "sentences encoded (not cached)", "encoded sentences/s"], rows), ""]
  shown = set()
  for task in tasks:
    if task.evaluator in shown:
      continue
    shown.add(task.evaluator)
    lines += [f"## {task.name}" + (" and layers" if task.evaluator == "cka" and
                                   {"cka", "layers"} <= {t.name for t in tasks} else ""), ""]
    for block in task_tables(document["results"], task) or ["(no results)"]:
      lines += [block, ""]
  if document.get("not_run"):
    lines += ["## Not run", ""] + [f"- {name}: {reason}"
                                   for name, reason in document["not_run"].items()]
  return "\n".join(lines).rstrip() + "\n"
