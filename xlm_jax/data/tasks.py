"""Labelled tasks for fine-tuning (`xlm-jax finetune`): sentence classification and word tagging.

Every source gives the same plain-Python shape, `TaskData`:

    kind          "classify" (one label per text or text pair) | "tag" (one tag per word)
    label_names   labels are indices into this tuple
    train, dev    English: zero-shot transfer trains and selects on English alone (XTREME, Hu et
                  al. 2020, section 3)
    test          {lang: TaskSplit}: every language is scored
    source        where the data came from (JSON, copied into results.json)

Sources (`load_task(spec, kind, ...)`):

  corpus | a corpus folder   the LibreOffice-help module task of a debian8 corpus,
      <corpus>/eval/classification/{train,test}.jsonl (data_prep/unit_splits.py
      `classification_sets`: test paragraphs come from held-out help files, in every language).
      The English dev set is carved from train by help file, so dev paragraphs never share a
      file with training ones (as test does not): md5(seed:file) decides, `dev_fraction` of files.
  tfds:NAME   a TFDS dataset already prepared under a data_dir, never downloaded here:
      xnli          train = multi_nli "train" (XTREME trains XNLI on MNLI), dev = xnli
                    "validation" in English, test = xnli "test" in each of its 15 languages
                    (`premise` is a Translation, `hypothesis` a TranslationVariableLanguages)
      paws_x_wiki   configs per language; train/validation of "en", test of every language
      xtreme_pawsx  the same task: TFDS's xtreme_pawsx holds only XTREME's machine-translated
                    training sets (translate-train, no English, no test), so the zero-shot task
                    reads paws_x_wiki, as XTREME's PAWS-X does
      wikiann       configs per language ("en", "de", ...): tokens + BIO `tags`
      xtreme_pos    configs "xtreme_pos_<lang>": tokens + `upos`; splits train/dev/test
  DIR   a user's folder. Classification: train.tsv, optional dev.tsv, test.<lang>.tsv, one
      example a line, `text<TAB>label` or `text_a<TAB>text_b<TAB>label`. Tagging: train.conll,
      optional dev.conll, test.<lang>.conll, `token<TAB>tag` a line (or token ... tag separated
      by spaces, the last column being the tag), a blank line between sentences. Without a dev
      file, dev is carved from train (md5(seed:index), `dev_fraction` of the examples).

`encode_split` turns a split into token ids the way XLM-R / XTREME do: `<s> A </s>`,
`<s> A </s></s> B </s>` for pairs (longest side cut first), and for tagging each word's pieces
with its tag on the first piece and -100 on the others.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from xlm_jax.data import derived, synthetic
from xlm_jax.data.corpus import Corpus
from xlm_jax.data.tokenizer import encode_texts

KINDS = ("classify", "tag")
TRAIN_LANGUAGE = "en"
IGNORED_LABEL = -100  # a piece without a label (not a word's first piece), as XTREME/HF
CLASSIFICATION_DIR = ("eval", "classification")


@dataclasses.dataclass(frozen=True)
class TaskSplit:
  """The examples of one split in one language.

  inputs: classify: str or (str, str); tag: tuple of words.
  labels: classify: int; tag: tuple of ints, one per word.
  ids: an item's id; translations of one item share it where the source says so
       (`TaskData.parallel_ids`), which is what the transfer gap compares.
  pretokenized: inputs are token-id sequences without <s>/</s> (a derived language's test set,
       `add_derived_tests`), which `encode_split` frames instead of tokenizing.
  """
  lang: str
  inputs: list
  labels: list
  ids: list
  pretokenized: bool = False

  def __len__(self) -> int:
    return len(self.inputs)


@dataclasses.dataclass(frozen=True)
class TaskData:
  name: str
  kind: str
  label_names: tuple[str, ...]
  train: TaskSplit
  dev: TaskSplit
  test: dict[str, TaskSplit]
  source: dict
  parallel_ids: bool = False  # test ids name one item across languages

  @property
  def is_bio(self) -> bool:
    """True when the tags are BIO chunks (O, B-X, I-X): entity F1 is then meaningful."""
    return self.kind == "tag" and all(
        name == "O" or re.fullmatch(r"[BI]-.+", name) for name in self.label_names)

  def select_languages(self, languages: Sequence[str] | None) -> TaskData:
    """This task with only `languages` tested; ValueError naming the languages it has."""
    if not languages:
      return self
    missing = [lang for lang in languages if lang not in self.test]
    if missing:
      raise ValueError(f"task {self.name} has no test data in {missing}; its languages are "
                       f"{sorted(self.test)}")
    return dataclasses.replace(self, test={lang: self.test[lang] for lang in languages})

  def subsample(self, max_train: int = 0, max_eval: int = 0, seed: int = 0) -> TaskData:
    """At most `max_train` training examples and `max_eval` dev and per-language test examples
    (0 = all), as HF's run scripts' max_train_samples / max_eval_samples: for quick runs.

    The kept examples are the first in a stable order of md5(seed:id), so translations that share
    an id are kept (or dropped) together in every language and the transfer gap stays defined.
    """
    def cut(split: TaskSplit, limit: int) -> TaskSplit:
      if not limit or len(split) <= limit:
        return split
      order = sorted(range(len(split)), key=lambda k: (_bucket(seed, str(split.ids[k])),
                                                       str(split.ids[k])))
      keep = sorted(order[:limit])
      return dataclasses.replace(split, inputs=[split.inputs[k] for k in keep],
                                 labels=[split.labels[k] for k in keep],
                                 ids=[split.ids[k] for k in keep])
    return dataclasses.replace(self, train=cut(self.train, max_train), dev=cut(self.dev, max_eval),
                               test={lang: cut(split, max_eval) for lang, split in self.test.items()})


def _bucket(seed: int, key: str) -> float:
  """A stable draw in [0, 1) from (seed, key): the same on every machine and Python run."""
  digest = hashlib.md5(f"{seed}:{key}".encode("utf-8")).hexdigest()
  return int(digest[:15], 16) / 16 ** 15


def carve_dev(split: TaskSplit, seed: int, fraction: float, unit_of=None) -> tuple[TaskSplit,
                                                                                   TaskSplit]:
  """(train, dev) of `split`: whole units (unit_of(id); default each example) go to dev when
  their draw is below `fraction`. At least one unit goes to dev and one stays in train."""
  unit_of = unit_of or (lambda example_id: example_id)
  units = sorted({unit_of(i) for i in split.ids}, key=lambda u: (_bucket(seed, u), u))
  if len(units) < 2:
    raise ValueError(f"{split.lang} training data has {len(units)} unit(s); at least 2 are needed "
                     "to carve a dev set from it (or give a dev file)")
  chosen = {u for u in units if _bucket(seed, u) < fraction} or {units[0]}
  if len(chosen) == len(units):
    chosen.discard(units[-1])
  def part(keep):
    rows = [k for k, i in enumerate(split.ids) if (unit_of(i) in chosen) == keep]
    return TaskSplit(split.lang, [split.inputs[k] for k in rows], [split.labels[k] for k in rows],
                     [split.ids[k] for k in rows])
  return part(False), part(True)


# =============================================================================================
# The corpus's classification task (debian8: LibreOffice help paragraphs by module)
# =============================================================================================


def read_classification_rows(path: pathlib.Path, fields: Sequence[str]) -> list[dict]:
  """Rows of the corpus's classification JSONL, each checked for the string `fields` (errors name
  file and line). Fine-tuning and the frozen classification evaluator both read them here."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{number}: not valid JSON ({err}); rebuild the corpus with "
                         "`xlm-jax data build --recipe debian8 --force`") from err
      missing = [k for k in fields if not isinstance(row.get(k), str)]
      if missing:
        raise ValueError(f"{path}:{number}: no text field(s) {missing}; rebuild the corpus with "
                         "`xlm-jax data build --recipe debian8 --force`")
      rows.append(row)
  return rows


def corpus_task(corpus_dir, seed: int = 0, dev_fraction: float = 0.1) -> TaskData:
  """The module classification of LibreOffice help paragraphs written by the debian8 build."""
  corpus_dir = pathlib.Path(corpus_dir).expanduser()
  folder = corpus_dir.joinpath(*CLASSIFICATION_DIR)
  paths = {name: folder / f"{name}.jsonl" for name in ("train", "test")}
  for path in paths.values():
    if not path.is_file():
      raise FileNotFoundError(
          f"{path} not found: corpus {corpus_dir} has no classification task. The debian8 recipe "
          f"builds it: `xlm-jax data build --recipe debian8 --corpus-dir {corpus_dir}`")
  train_rows = read_classification_rows(paths["train"], ("id", "label", "text"))
  test_rows = read_classification_rows(paths["test"], ("id", "label", "lang", "text"))
  labels = tuple(sorted({row["label"] for row in train_rows}))
  if len(labels) < 2:
    raise ValueError(f"{paths['train']} has {len(labels)} label(s); classification needs two. "
                     "Rebuild the corpus with `xlm-jax data build --recipe debian8 --force`")
  index = {name: i for i, name in enumerate(labels)}
  full = TaskSplit(TRAIN_LANGUAGE, [r["text"] for r in train_rows],
                   [index[r["label"]] for r in train_rows], [r["id"] for r in train_rows])
  # Ids are "<help file>#<paragraph>": dev takes whole files, as the test split does.
  train, dev = carve_dev(full, seed, dev_fraction, unit_of=lambda i: i.split("#", 1)[0])
  by_lang: dict[str, list[dict]] = {}
  unseen = 0
  for row in test_rows:
    if row["label"] not in index:  # a module never trained on cannot be predicted
      unseen += 1
      continue
    by_lang.setdefault(row["lang"], []).append(row)
  test = {lang: TaskSplit(lang, [r["text"] for r in rows], [index[r["label"]] for r in rows],
                          [r["id"] for r in rows]) for lang, rows in sorted(by_lang.items())}
  source = {"kind": "corpus", "corpus": str(corpus_dir), "files": [str(p) for p in paths.values()],
            "dev": f"{dev_fraction:g} of the training help files (md5 of seed:file, seed {seed})",
            "test_rows_with_unseen_labels": unseen}
  return TaskData("corpus-classification", "classify", labels, train, dev, test, source,
                  parallel_ids=True)


def add_derived_tests(data: TaskData, languages: Sequence[str]) -> TaskData:
  """`data` plus a test split for each derived language among `languages` ("en_trans+inv") whose
  source language `data` tests: zero-shot transfer to a synthetic language (ALIGN-MLM's setting,
  fine-tune on English, test on its derived form).

  The split is the derived folder's `classification_test` set: the source language's test rows put
  through the derived op when the language was made (xlm_jax.data.derived.derive_language), as
  token ids. Labels and ids are joined from the source split by id, so the transfer gap compares
  the same items. Only a corpus task has these sets; other tasks are returned as they are.
  """
  wanted = [name for name in languages if derived.is_derived(name)
            and derived.split_derived(name)[0] in data.test]
  if not wanted or data.source.get("kind") != "corpus":
    return data
  corpus = Corpus(data.source["corpus"])
  test = dict(data.test)
  for name in wanted:
    source = data.test[derived.split_derived(name)[0]]
    manifest = derived.read_manifest(corpus, name)
    folder = derived.derived_dir(corpus, name)
    sources = manifest.get("eval_sources", {}).get("classification_test")
    if not sources:
      raise ValueError(f"{folder / derived.MANIFEST} has no classification_test set: {name} was "
                       f"derived before the corpus had a classification task; remake it with "
                       f"`{derived.derive_command(corpus, name, manifest.get('seed', 0))}`")
    ids, _ = synthetic.read_sequences(folder / "eval" / "classification_test.jsonl")
    if len(ids) != len(sources["ids"]):
      raise ValueError(f"{folder}: eval/classification_test.jsonl has {len(ids)} rows but "
                       f"derived.json lists {len(sources['ids'])} source ids; remake it with "
                       f"`{derived.derive_command(corpus, name, manifest.get('seed', 0))}`")
    label_of = dict(zip(source.ids, source.labels))   # rows of unseen labels are not in `source`
    kept = [(tuple(seq), label_of[i], i) for seq, i in zip(ids, sources["ids"]) if i in label_of]
    test[name] = TaskSplit(name, [k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept],
                           pretokenized=True)
  return dataclasses.replace(data, test=test)


# =============================================================================================
# TFDS datasets (prepared by the user; never downloaded here)
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class TfdsTask:
  kind: str
  builder: str                # the dataset holding dev and test
  config: str                 # per-language config name ("{lang}"), "" for one multilingual one
  splits: tuple[str, str, str]  # train, dev, test split names
  fields: tuple[str, ...]     # text fields (classify) or (tokens, tags) (tag)
  label: str = "label"
  train_builder: str = ""     # English training data from another dataset (xnli: multi_nli)


TFDS_TASKS = {
    "xnli": TfdsTask("classify", "xnli", "", ("train", "validation", "test"),
                     ("premise", "hypothesis"), train_builder="multi_nli"),
    "paws_x_wiki": TfdsTask("classify", "paws_x_wiki", "{lang}", ("train", "validation", "test"),
                            ("sentence1", "sentence2")),
    "wikiann": TfdsTask("tag", "wikiann", "{lang}", ("train", "validation", "test"),
                        ("tokens", "tags"), label="tags"),
    "xtreme_pos": TfdsTask("tag", "xtreme_pos", "xtreme_pos_{lang}", ("train", "dev", "test"),
                           ("tokens", "upos"), label="upos"),
}
TFDS_ALIASES = {"xtreme_pawsx": "paws_x_wiki"}


def tfds_data_dir(data_dir=None) -> pathlib.Path:
  """`data_dir`, else TFDS's own default ($TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  if data_dir:
    return pathlib.Path(data_dir).expanduser()
  from tensorflow_datasets.core import constants
  return pathlib.Path(constants.get_default_data_dir()).expanduser()


def _version_key(name: str) -> tuple:
  return tuple(int(p) if p.isdigit() else -1 for p in name.split("."))


def _prepared_dir(data_dir: pathlib.Path, name: str, config: str) -> pathlib.Path | None:
  """The newest prepared version folder of name[/config] under data_dir (with a
  dataset_info.json), or None."""
  folder = data_dir / name / config if config else data_dir / name
  if not folder.is_dir():
    return None
  versions = [d for d in folder.iterdir()
              if d.is_dir() and re.fullmatch(r"\d+\.\d+\.\d+", d.name)
              and (d / "dataset_info.json").is_file()]
  return max(versions, key=lambda d: _version_key(d.name)) if versions else None


def _not_prepared(data_dir: pathlib.Path, name: str, config: str, real: str,
                  why: str = "") -> ValueError:
  full = f"{name}/{config}" if config else name
  real_full = f"{real}/{config}" if config else real
  return ValueError(
      f"TFDS dataset {full!r}{why} is not prepared in {data_dir} (no {data_dir / full}/<version>/"
      "dataset_info.json). xlm-jax reads prepared TFDS data and never downloads it. Prepare it "
      f"once with `tfds build {real_full} --data_dir {data_dir} --file_format array_record`, or in "
      f"Python `tfds.builder({real_full!r}, data_dir={str(data_dir)!r}, "
      "file_format='array_record').download_and_prepare()`; then pass --tfds-data-dir "
      f"{data_dir}")


def _open_tfds(data_dir: pathlib.Path, name: str, config: str, real: str, why: str = ""):
  """The TFDS builder of a prepared dataset folder.

  Read with `builder_from_directory` rather than `tfds.builder(name)`: without TensorFlow,
  TFDS does not register its older text builders (xnli, wikiann, ...), but it reads any
  prepared folder, and so test-only builders of the same features too.
  """
  path = _prepared_dir(data_dir, name, config)
  if path is None:
    raise _not_prepared(data_dir, name, config, real, why)
  import tensorflow_datasets as tfds  # deferred: only TFDS tasks pay for the import
  try:
    return tfds.builder_from_directory(str(path))
  except Exception as err:  # TFDS raises many types for a damaged dataset_info.json
    raise ValueError(f"TFDS dataset {path} cannot be opened ({type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else ''}); prepare it again") from err


def _records(builder, split: str, where: str) -> list[dict]:
  """Every record of a split as numpy/bytes dicts (array_record without TensorFlow)."""
  if split not in builder.info.splits:
    raise ValueError(f"TFDS dataset {where} has no split {split!r} (it has "
                     f"{sorted(builder.info.splits)}); prepare it again with its full splits")
  file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
  if file_format == "array_record":
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]
  # tfrecord (TFDS's default format) needs TensorFlow to read.
  try:
    import tensorflow_datasets as tfds
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  except ImportError as err:
    raise ValueError(f"TFDS dataset {where} was prepared as {file_format}, which only TensorFlow "
                     "reads; install tensorflow, or prepare it again with --file_format "
                     "array_record (read without TensorFlow)") from err


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _translation(record: dict, field: str, lang: str):
  """A Translation ({lang: text}) or TranslationVariableLanguages ({language, translation})
  value in `lang`, or None when the record has no such translation."""
  value = record[field]
  if not isinstance(value, dict):
    return _text(value)
  if "language" in value and "translation" in value:
    languages = [_text(x) for x in value["language"]]
    return _text(value["translation"][languages.index(lang)]) if lang in languages else None
  return _text(value[lang]) if lang in value else None


def _classify_split(records, spec: TfdsTask, lang: str, multilingual: bool) -> TaskSplit:
  inputs, labels, ids = [], [], []
  for index, record in enumerate(records):
    texts = [(_translation(record, f, lang) if multilingual else _text(record[f]))
             for f in spec.fields]
    if any(t is None for t in texts):
      continue
    inputs.append(texts[0] if len(texts) == 1 else tuple(texts))
    labels.append(int(record[spec.label]))
    ids.append(str(index))
  return TaskSplit(lang, inputs, labels, ids)


def _tag_split(records, spec: TfdsTask, lang: str) -> TaskSplit:
  tokens_field, tags_field = spec.fields
  inputs = [tuple(_text(t) for t in r[tokens_field]) for r in records]
  labels = [tuple(int(t) for t in r[tags_field]) for r in records]
  return TaskSplit(lang, inputs, labels, [str(i) for i in range(len(records))])


def _label_names(builder, field: str) -> tuple[str, ...]:
  feature = builder.info.features[field]
  feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
  return tuple(feature.names)


def _prepared_languages(data_dir: pathlib.Path, name: str, pattern: str) -> list[str]:
  """The languages of `name`'s per-language configs prepared under data_dir."""
  folder = data_dir / name
  if not folder.is_dir():
    return []
  regex = re.compile(re.escape(pattern).replace(re.escape("{lang}"), "(.+)"))
  found = []
  for config in sorted(d.name for d in folder.iterdir() if d.is_dir()):
    match = regex.fullmatch(config)
    if match and _prepared_dir(data_dir, name, config) is not None:
      found.append(match.group(1))
  return found


def tfds_task(name: str, data_dir=None, languages: Sequence[str] | None = None,
              builder_names: dict[str, str] | None = None) -> TaskData:
  """A TFDS task (TFDS_TASKS) read from `data_dir`; every prepared test language by default.

  builder_names maps TFDS's builder names to others (tests prepare small datasets with the
  same features under test-only names, e.g. {"xnli": "xlmj_test_xnli"}).
  """
  real = TFDS_ALIASES.get(name, name)
  if real not in TFDS_TASKS:
    raise ValueError(f"unknown TFDS task {name!r}; known: "
                     f"{sorted([*TFDS_TASKS, *TFDS_ALIASES])}, or pass a folder of TSV/CoNLL files")
  spec = TFDS_TASKS[real]
  data_dir = tfds_data_dir(data_dir)
  rename = lambda builder: (builder_names or {}).get(builder, builder)
  train_split, dev_split, test_split = spec.splits
  builder_name = rename(spec.builder)

  def open_config(lang: str):
    config = spec.config.format(lang=lang) if spec.config else ""
    return _open_tfds(data_dir, builder_name, config, spec.builder), f"{builder_name}/{config}"

  if spec.config:  # one prepared config per language
    english, where = open_config(TRAIN_LANGUAGE)
    train_records = _records(english, train_split, where)
    dev_records = _records(english, dev_split, where)
    available = _prepared_languages(data_dir, builder_name, spec.config)
    wanted = list(languages) if languages else available
    tests = {}
    for lang in wanted:
      builder, where = open_config(lang)  # an unprepared language: the message says how
      tests[lang] = (builder, _records(builder, test_split, where))
    labels = _label_names(english, spec.label)
    for lang, (builder, _) in tests.items():
      if _label_names(builder, spec.label) != labels:
        raise ValueError(f"TFDS {builder_name} config of {lang!r} has other labels than 'en': "
                         f"{_label_names(builder, spec.label)} vs {labels}")
    make = ((lambda records, lang: _classify_split(records, spec, lang, False))
            if spec.kind == "classify" else (lambda records, lang: _tag_split(records, spec, lang)))
    train, dev = make(train_records, TRAIN_LANGUAGE), make(dev_records, TRAIN_LANGUAGE)
    test = {lang: make(records, lang) for lang, (_, records) in tests.items()}
    parallel = False
  else:  # xnli: one multilingual dataset; English training data from another
    train_name = rename(spec.train_builder)
    multi = _open_tfds(data_dir, builder_name, "", spec.builder)
    train_builder = _open_tfds(data_dir, train_name, "", spec.train_builder,
                               f" (the English training data of {real}, as in XTREME)")
    labels = _label_names(multi, spec.label)
    if _label_names(train_builder, spec.label) != labels:
      raise ValueError(f"TFDS {train_name} and {builder_name} label their classes differently: "
                       f"{_label_names(train_builder, spec.label)} vs {labels}")
    train = _classify_split(_records(train_builder, train_split, train_name), spec,
                            TRAIN_LANGUAGE, False)
    dev = _classify_split(_records(multi, dev_split, builder_name), spec, TRAIN_LANGUAGE, True)
    available = list(multi.info.features[spec.fields[0]].languages)
    unknown = [lang for lang in (languages or []) if lang not in available]
    if unknown:
      raise ValueError(f"TFDS {builder_name} has no language {unknown}; it has {available}")
    records = _records(multi, test_split, builder_name)
    test = {lang: _classify_split(records, spec, lang, True) for lang in (languages or available)}
    parallel = True  # every language translates the same test items
  if not test:
    raise ValueError(f"no test language of TFDS {builder_name} is prepared in {data_dir}; "
                     f"prepare at least one config ({spec.config.format(lang='<lang>')})")
  source = {"kind": "tfds", "name": name, "task": real, "data_dir": str(data_dir),
            "builders": sorted({builder_name, *([rename(spec.train_builder)]
                                                if spec.train_builder else [])})}
  if name != real:
    source["note"] = (f"{name} holds XTREME's translate-train sets only; the zero-shot task "
                      f"reads {real}")
  return TaskData(f"tfds:{name}", spec.kind, labels, train, dev, test, source, parallel)


# =============================================================================================
# A user's folder of TSV (classification) or CoNLL (tagging) files
# =============================================================================================

FOLDER_SUFFIX = {"classify": ".tsv", "tag": ".conll"}


def _read_tsv(path: pathlib.Path) -> list[tuple[int, list[str]]]:
  """(line number, fields) of each non-blank line: text<TAB>label or text_a<TAB>text_b<TAB>label."""
  rows, arity = [], None
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      fields = line.split("\t")
      if len(fields) not in (2, 3) or not all(x.strip() for x in fields):
        raise ValueError(f"{path}:{number}: expected 'text<TAB>label' or "
                         f"'text_a<TAB>text_b<TAB>label', got {len(fields)} tab-separated field(s)"
                         f"{' (one is empty)' if len(fields) in (2, 3) else ''}: {line!r:.80}")
      if arity is not None and len(fields) != arity:
        raise ValueError(f"{path}:{number}: {len(fields)} fields, but the lines above have "
                         f"{arity}; a file holds either single texts or text pairs")
      arity = len(fields)
      rows.append((number, fields))
  return rows


def _read_conll(path: pathlib.Path) -> list[tuple[int, list[str], list[str]]]:
  """(first line number, words, tags) of each sentence of a CoNLL file."""
  sentences, words, tags, start = [], [], [], 0
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        if words:
          sentences.append((start, words, tags))
        words, tags = [], []
        continue
      if line.startswith("-DOCSTART-"):  # CoNLL-2003 document markers carry no word
        continue
      fields = line.split("\t") if "\t" in line else line.split()
      if len(fields) < 2 or not fields[0].strip() or not fields[-1].strip():
        raise ValueError(f"{path}:{number}: malformed CoNLL line {line!r:.80}: expected "
                         "'token<TAB>tag' (a blank line ends a sentence)")
      if not words:
        start = number
      words.append(fields[0].strip())
      tags.append(fields[-1].strip())
  if words:
    sentences.append((start, words, tags))
  return sentences


def folder_task(folder, kind: str, seed: int = 0, dev_fraction: float = 0.1) -> TaskData:
  """A user's task folder (module docstring): train, optional dev, test.<lang>."""
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f"task folder {folder} does not exist; pass --data corpus, "
                            "tfds:NAME or a folder of TSV/CoNLL files")
  suffix = FOLDER_SUFFIX[kind]
  train_path, dev_path = folder / f"train{suffix}", folder / f"dev{suffix}"
  test_paths = {m.group(1): p for p in sorted(folder.iterdir())
                if (m := re.fullmatch(rf"test\.(.+){re.escape(suffix)}", p.name))}
  if not train_path.is_file() or not test_paths:
    other_kind = "tag" if kind == "classify" else "classify"
    other = FOLDER_SUFFIX[other_kind]
    hint = (f" (it holds {other} files: is this a {other_kind} task? pass --task {other_kind})"
            if list(folder.glob(f"*{other}")) else "")
    raise FileNotFoundError(f"task folder {folder} needs train{suffix} and at least one "
                            f"test.<lang>{suffix} for --task {kind}; it holds "
                            f"{sorted(p.name for p in folder.iterdir())[:8]}{hint}")
  if kind == "classify":
    parsed = {"train": _read_tsv(train_path)}
    names = tuple(sorted({fields[-1] for _, fields in parsed["train"]}))
  else:
    parsed = {"train": _read_conll(train_path)}
    seen = dict.fromkeys(t for _, _, tags in parsed["train"] for t in tags)
    # "O" first: a word the model never sees (cut off by max_len) is predicted as index 0.
    names = tuple(sorted(seen, key=lambda t: (t != "O", t)))
  index = {name: i for i, name in enumerate(names)}

  def split_of(path: pathlib.Path, lang: str) -> TaskSplit:
    inputs, labels, ids = [], [], []
    if kind == "classify":
      for number, fields in (_read_tsv(path) if path != train_path else parsed["train"]):
        if fields[-1] not in index:
          raise ValueError(f"{path}:{number}: label {fields[-1]!r} does not occur in {train_path}"
                           f" (its labels: {list(names)}); a classifier cannot predict it")
        inputs.append(fields[0] if len(fields) == 2 else (fields[0], fields[1]))
        labels.append(index[fields[-1]])
        ids.append(str(number))
    else:
      for number, words, tags in (_read_conll(path) if path != train_path else parsed["train"]):
        unknown = [t for t in tags if t not in index]
        if unknown:
          raise ValueError(f"{path}: the sentence at line {number} has tag {unknown[0]!r}, which "
                           f"does not occur in {train_path} (its tags: {list(names)})")
        inputs.append(tuple(words))
        labels.append(tuple(index[t] for t in tags))
        ids.append(str(number))
    if not inputs:
      raise ValueError(f"{path} holds no example")
    return TaskSplit(lang, inputs, labels, ids)

  train = split_of(train_path, TRAIN_LANGUAGE)
  if dev_path.is_file():
    dev, dev_note = split_of(dev_path, TRAIN_LANGUAGE), str(dev_path)
  else:
    train, dev = carve_dev(train, seed, dev_fraction)
    dev_note = f"{dev_fraction:g} of {train_path.name} (md5 of seed:line, seed {seed})"
  test = {lang: split_of(path, lang) for lang, path in test_paths.items()}
  if len(names) < 2 and kind == "classify":
    raise ValueError(f"{train_path} has {len(names)} label(s); classification needs two")
  source = {"kind": "folder", "folder": str(folder), "dev": dev_note,
            "test_files": {lang: str(p) for lang, p in test_paths.items()}}
  return TaskData(f"folder:{folder.name}", kind, names, train, dev, test, source)


# =============================================================================================
# One entry point
# =============================================================================================


def load_task(spec: str, kind: str, *, seed: int = 0, dev_fraction: float = 0.1,
              tfds_data_dir=None, languages: Sequence[str] | None = None,
              corpus_dir=None, builder_names: dict[str, str] | None = None) -> TaskData:
  """`--data` of `xlm-jax finetune`: "corpus", "tfds:NAME" or a folder (module docstring).

  "corpus" is the debian8 corpus ($XLM_JAX_DATA_DIR/debian8 or ~/.cache/xlm_jax/data/debian8,
  or `corpus_dir`); a folder holding manifest.json is read as a corpus too.
  """
  if kind not in KINDS:
    raise ValueError(f"--task must be one of {KINDS}, got {kind!r}")
  if spec == "corpus" or (os.path.isdir(os.path.expanduser(spec))
                          and os.path.isfile(os.path.join(os.path.expanduser(spec),
                                                          "manifest.json"))):
    if kind != "classify":
      raise ValueError("the corpus has a classification task only (LibreOffice help modules); "
                       "for tagging pass --data tfds:wikiann, tfds:xtreme_pos or a folder of "
                       "CoNLL files")
    if spec == "corpus":
      from xlm_jax.data.corpus import resolve_corpus_dir
      path = pathlib.Path(corpus_dir) if corpus_dir else resolve_corpus_dir("", "debian8")
    else:
      path = pathlib.Path(spec)
    data = corpus_task(path, seed=seed, dev_fraction=dev_fraction)
  elif spec.startswith("tfds:"):
    name = spec[len("tfds:"):]
    real = TFDS_ALIASES.get(name, name)
    if real in TFDS_TASKS and TFDS_TASKS[real].kind != kind:
      raise ValueError(f"tfds:{name} is a {TFDS_TASKS[real].kind} task, not {kind}; pass "
                       f"--task {TFDS_TASKS[real].kind}")
    data = tfds_task(name, tfds_data_dir, languages, builder_names)
  else:
    data = folder_task(spec, kind, seed=seed, dev_fraction=dev_fraction)
  if not len(data.train) or not len(data.dev):
    raise ValueError(f"task {data.name}: {len(data.train)} training and {len(data.dev)} dev "
                     "examples; both must be non-empty")
  return data.select_languages(languages)


# =============================================================================================
# Token ids, as XLM-R / XTREME build them
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  """A split as token-id rows (each `<s> ... </s>`, unpadded).

  labels: classify: int [N]; tag: per row int32 [len(row)] with IGNORED_LABEL off first pieces.
  word_positions (tag): per row, each word's first-piece position, -1 where max_len cut it off.
  """
  lang: str
  rows: list[np.ndarray]
  labels: Any
  word_positions: list[np.ndarray] | None = None

  @property
  def lengths(self) -> np.ndarray:
    return np.asarray([len(r) for r in self.rows], np.int64)


def _truncate_pair(a: list[int], b: list[int], room: int) -> tuple[list[int], list[int]]:
  """Cuts the longer side first until both fit in `room` ids (Hugging Face's longest_first)."""
  a, b = list(a), list(b)
  while len(a) + len(b) > room:
    if len(a) >= len(b):
      a.pop()
    else:
      b.pop()
  return a, b


def encode_split(split: TaskSplit, kind: str, tokenizer, max_len: int) -> EncodedSplit:
  """Token ids of a split, at most max_len each with <s> and </s>."""
  bos, eos = tokenizer.bos_id, tokenizer.eos_id
  if split.pretokenized:
    if kind != "classify":
      raise ValueError(f"{split.lang}: pre-tokenized test sets exist for classification only")
    rows = [np.asarray([bos, *ids[:max_len - 2], eos], np.int32) for ids in split.inputs]
    return EncodedSplit(split.lang, rows, np.asarray(split.labels, np.int32))
  if kind == "classify":
    pairs = [x if isinstance(x, tuple) else (x,) for x in split.inputs]
    first = encode_texts(tokenizer, [p[0] for p in pairs], split.lang)
    second_texts = [p[1] for p in pairs if len(p) == 2]
    second = iter(encode_texts(tokenizer, second_texts, split.lang)) if second_texts else iter(())
    rows = []
    for pair, a in zip(pairs, first):
      if len(pair) == 1:
        rows.append(np.asarray([bos, *a[:max_len - 2], eos], np.int32))
      else:
        # XLM-R's pair format: <s> A </s></s> B </s> (four special ids).
        a, b = _truncate_pair(a, next(second), max_len - 4)
        rows.append(np.asarray([bos, *a, eos, eos, *b, eos], np.int32))
    return EncodedSplit(split.lang, rows, np.asarray(split.labels, np.int32))
  # Tagging: every word encoded on its own ("▁word" pieces, as a word-level tokenizer call of
  # XTREME's utils_tag.py), the word's tag on its first piece.
  words = [w for sentence in split.inputs for w in sentence]
  pieces = iter(encode_texts(tokenizer, words, split.lang)) if words else iter(())
  rows, labels, positions = [], [], []
  for sentence, tags in zip(split.inputs, split.labels):
    ids, row_labels, first = [bos], [IGNORED_LABEL], []
    for tag in tags:
      word = next(pieces) or [tokenizer.unk_id]  # a word of no piece still gets a slot (XTREME)
      if len(ids) + 1 > max_len - 1:  # no room for its first piece before </s>
        first.append(-1)
        continue
      word = word[:max_len - 1 - len(ids)]
      first.append(len(ids))
      ids.extend(word)
      row_labels.extend([tag] + [IGNORED_LABEL] * (len(word) - 1))
    rows.append(np.asarray(ids + [eos], np.int32))
    labels.append(np.asarray(row_labels + [IGNORED_LABEL], np.int32))
    positions.append(np.asarray(first, np.int32))
  return EncodedSplit(split.lang, rows, labels, positions)
