"""Synthetic derived languages (ALIGN-MLM, Deshpande et al. 2022) as training languages.

A derived language is named "<lang>_<op>" in data.languages: "en_trans" is English with every non-special id
i moved to i + V (a disjoint "script"), "en_trans+inv" also reverses each sentence's word order. Its text is
the artifact <corpus>/derived/<op>/ (`xlm_jax.data.synthetic`'s format), already token ids, so the
pipelines read it without a tokenizer call (`DerivedSource.pretokenized`). `derive_language` writes that
folder; both `xlm-jax data derive` and `ensure_derived` (a missing artifact is derived on first use, seed 0
unless asked otherwise) call it, so the two make the same folder. `DerivedPairSource` puts each source
sentence beside its derived form again (the parallel batch kinds: TLM on English and derived English).

The artifact folder is named by op only, so one corpus holds one derived language per op; a folder made
from another source language, another tokenizer or another seed is an error that says how to remake it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import threading

import numpy as np

from xlm_jax.data import synthetic
from xlm_jax.data.corpus import Corpus, build_command

DERIVED_DIR = "derived"
MANIFEST = "derived.json"
TRAIN_FILE = "train.jsonl"
SPLIT_FILES = {"train": TRAIN_FILE, "test": "eval/test.jsonl"}
# One lock per process: two pipelines asking for the same missing language derive it once.
_BUILD_LOCK = threading.Lock()


def canonical_op(op: str) -> str:
  """The synthetic.OPS spelling of an op ("inv+trans" -> "trans∘inv"); ValueError for an unknown op."""
  parsed = synthetic.parse_op(op)
  return next(known for known in synthetic.OPS if synthetic.parse_op(known) == parsed)


def split_derived(name: str) -> tuple[str, str] | None:
  """(source language, canonical op) for a derived language "<lang>_<op>", None for a plain language.

  The op is what follows the last "_" ("en_trans+inv" -> ("en", "trans∘inv")); a suffix that is no op
  ("zh_CN") leaves the name a plain language code.
  """
  # The last "_": a source language code may hold one itself.
  lang, sep, op = name.rpartition("_")
  if not sep or not lang:
    return None
  try:
    return lang, canonical_op(op)
  except ValueError:
    return None


def is_derived(name: str) -> bool:
  return split_derived(name) is not None


def shifts_ids(name: str) -> bool:
  """Whether a language is a derived `trans` language (its ids live in [V, 2V))."""
  parts = split_derived(name)
  return parts is not None and synthetic.parse_op(parts[1])[0]


def derived_dir(corpus, name: str):
  """<corpus>/derived/<op with '+'>/ of a derived language name (the `xlm-jax data derive` folder)."""
  parts = split_derived(name)
  if parts is None:
    raise ValueError(f"{name!r} is not a derived language '<lang>_<op>' (op one of {synthetic.OPS}, "
                     "'+' may replace '∘')")
  return pathlib.Path(corpus.dir) / DERIVED_DIR / parts[1].replace("∘", "+")


def derive_command(corpus, name: str, seed: int) -> str:
  lang, op = split_derived(name)
  return (f"xlm-jax data derive --corpus-dir {corpus.dir} --op {op.replace('∘', '+')} --lang {lang} "
          f"--seed {seed}")


def read_manifest(corpus, name: str) -> dict:
  """The derived.json of a derived language's folder (FileNotFoundError naming the command to run)."""
  path = derived_dir(corpus, name) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: derived language {name!r} is not built; run "
                            f"`{derive_command(corpus, name, 0)}`")
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not valid JSON ({err}); remake it with "
                     f"`{derive_command(corpus, name, 0)}`") from err


def check_manifest(corpus, name: str, manifest: dict, tokenizer=None, seed: int | None = None) -> None:
  """ValueError naming derived.json and the field when the folder is not `name` as asked for."""
  lang, op = split_derived(name)
  path = derived_dir(corpus, name) / MANIFEST
  remake = derive_command(corpus, name, 0 if seed is None else seed)
  for field, want in (("source_language", lang), ("op", op)):
    if manifest.get(field) != want:
      raise ValueError(f"{path}: field {field!r} is {manifest.get(field)!r}, but data.languages asks for "
                       f"{name!r} ({field} {want!r}); one corpus holds one derived language per op. "
                       f"Remake it with `{remake}`")
  if seed is not None and manifest.get("seed") != seed:
    raise ValueError(f"{path}: field 'seed' is {manifest.get('seed')!r}, not the requested {seed}; remake "
                     f"it with `{remake}` or ask for seed {manifest.get('seed')!r}")
  if tokenizer is not None:
    serialized = getattr(tokenizer, "serialized", None)
    if serialized is None:
      raise ValueError(f"derived language {name!r} holds ids of the corpus's joint SentencePiece model; it "
                       "cannot be mixed with a per-language vocabulary (use data.vocabulary 'joint')")
    if manifest.get("tokenizer_sha256") != hashlib.sha256(serialized()).hexdigest():
      raise ValueError(f"{path}: field 'tokenizer_sha256' does not match the tokenizer in use: {name!r} was "
                       f"derived with another vocabulary. Use the joint vocabulary or remake it with "
                       f"`{remake}`")


def classification_test_rows(corpus, lang: str) -> list[dict]:
  """Rows of <corpus>/eval/classification/test.jsonl in `lang`, in file order ([] without the file)."""
  path = pathlib.Path(corpus.dir) / "eval" / "classification" / "test.jsonl"
  if not path.is_file():
    return []
  rows = []
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      if row["lang"] == lang:
        rows.append({"id": row["id"], "text": row["text"]})
    except (ValueError, KeyError, TypeError) as err:
      raise ValueError(f"{path}:{number}: not a classification row with id, lang and text ({err}); "
                       f"rebuild the corpus (`{build_command(corpus.dir)} --force`)") from err
  return rows


@dataclasses.dataclass(frozen=True)
class DerivedLanguage:
  """A derived language that `derive_language` wrote: its folder and what was derived."""
  path: pathlib.Path                 # <corpus>/derived/<op with '+'>/
  lang: str                          # the source language
  seed: int
  derived: synthetic.DerivedCorpus   # train ids, implicit dictionary, eval sets, derived.json fields

  def report(self) -> str:
    """The summary `xlm-jax data derive` prints (and `ensure_derived` logs), several lines."""
    result, out_dir = self.derived, self.path
    source_size = result.vocab_size // 2
    eval_sets = ", ".join(f"{name} {len(seqs)} rows (eval/{name}.jsonl)" for name, seqs in result.eval_ids.items())
    return "\n".join([
        f"derived language {result.op!r} of {self.lang} (seed {self.seed}) -> {out_dir}",
        f"  train {len(result.ids)} sequences; vocab_size {result.vocab_size} (source {source_size} + "
        f"derived); {len(result.manifest['overlap_ids'])} overlap ids",
        "  eval sets: " + eval_sets,
        f"  implicit dictionary: {len(result.dictionary)} pairs (i, i + {source_size}) in "
        f"{out_dir / 'dictionary.npy'} (+ dictionary.json)"])


def derive_language(corpus, op: str, lang: str = "en", seed: int = 0, overlap=None) -> DerivedLanguage:
  """Derives a synthetic language from `lang`'s training text with the corpus's joint tokenizer and writes
  it (atomically, replacing an old one) to <corpus>/derived/<op with '+'>/: shuffled train text, implicit
  dictionary, derived eval sets (the language's test split; its classification test rows when the corpus
  has eval/classification).

  corpus: a Corpus or a corpus folder. op: one of synthetic.OPS ('+' may replace '∘'). overlap: ids, or
  the path of an overlap file (ids or pieces that `trans` leaves shared). ValueError for an unknown op or a
  language the corpus lacks.
  """
  # The op is checked before the corpus is opened, so a typo is reported as such even without a corpus.
  op = canonical_op(op)
  if isinstance(corpus, (str, os.PathLike)):
    corpus = Corpus(corpus)
  corpus.check_languages([lang])
  eval_texts = {"test": corpus.mono_texts(lang, "test")}
  eval_sources = {"test": f"text/mono/test/{lang}.txt"}
  rows = classification_test_rows(corpus, lang)
  if rows:
    eval_texts["classification_test"] = [row["text"] for row in rows]
    # The derived rows keep this order; the ids join them back to their labels in the source file.
    eval_sources["classification_test"] = {"file": "eval/classification/test.jsonl", "lang": lang,
                                           "ids": [row["id"] for row in rows]}
  result = synthetic.derive_corpus(corpus.mono_texts(lang, "train"), corpus.tokenizer(), op, seed,
                                   overlap=overlap, eval_texts=eval_texts, source_language=lang)
  # Recorded so that a reader of the derived eval set can find the rows (and labels) it came from.
  result.manifest["eval_sources"] = eval_sources
  # ASCII folder names: "∘" is awkward in shells and on some file systems.
  out_dir = pathlib.Path(corpus.dir) / DERIVED_DIR / op.replace("∘", "+")
  synthetic.write_derived_corpus(result, out_dir)
  return DerivedLanguage(out_dir, lang, seed, result)


def ensure_derived(corpus, name: str, tokenizer=None, seed: int | None = None) -> pathlib.Path:
  """The checked folder of derived language `name`, derived first if missing (seed 0 unless given).

  Building calls `derive_language`, as `xlm-jax data derive` does, so the folder is exactly what the
  command writes (train text, implicit dictionary, derived test split); its report goes to the log.
  """
  folder = derived_dir(corpus, name)
  lang, op = split_derived(name)
  with _BUILD_LOCK:
    if not (folder / MANIFEST).is_file():
      made = derive_language(corpus, op, lang, seed=0 if seed is None else seed)
      logging.info("derived %s on first use:\n%s", name, made.report())
  # Checked even right after deriving: the folder may predate this run (another seed or tokenizer).
  check_manifest(corpus, name, read_manifest(corpus, name), tokenizer, seed)
  return folder


def num_examples(corpus, name: str, split: str = "train", kind: str = "mono") -> int:
  """Sentences of a language and split, derived ("<lang>_<op>", from derived.json) or not (the manifest).

  A derived language's kind "parallel" counts its pairs with the source language: one per sentence.
  """
  if not is_derived(name):
    return corpus.num_examples(name, split, kind)
  manifest = read_manifest(corpus, name)
  if split == "train":
    return int(manifest["num_sequences"])
  if split not in SPLIT_FILES:
    raise ValueError(f"unknown split {split!r}; use one of {tuple(SPLIT_FILES)}")
  return int(manifest["eval_sets"].get(split, {}).get("num_sequences", 0))


class DerivedSource:
  """Random access to a derived split's rows as {"ids": int32 array, "lang": bytes} (already tokenized).

  All rows are held as one flat int32 array plus offsets: a few bytes per token, not a list per row.
  """
  pretokenized = True

  def __init__(self, path, lang: str):
    self.path = pathlib.Path(path)
    if not self.path.is_file():
      raise FileNotFoundError(f"derived sequence file {self.path} not found; remake the derived language "
                              "with `xlm-jax data derive`")
    self._lang = lang.encode()
    pieces, lengths = [], []
    with open(self.path, encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        try:
          ids = json.loads(line)["ids"]
          row = np.asarray(ids, dtype=np.int64)
          if row.ndim != 1 or (row.size and row.min() < 0):
            raise ValueError("'ids' must be a list of non-negative ints")
        except (ValueError, KeyError, TypeError) as err:
          raise ValueError(f"{self.path}:{number}: field 'ids' is not a list of token ids ({err}); remake "
                           "the file with `xlm-jax data derive`") from err
        pieces.append(row.astype(np.int32))
        lengths.append(len(row))
    self._tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    # int64 offsets: a large train split's token count can pass 2**31.
    self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

  def __len__(self) -> int:
    return len(self._offsets) - 1

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self.path} ({len(self)} rows)")
    return {"ids": self._tokens[self._offsets[index]:self._offsets[index + 1]], "lang": self._lang}

  # grain reads a whole batch of keys in one call where a source defines this.
  def __getitems__(self, keys) -> list[dict]:
    return [self[int(k)] for k in keys]

  def __repr__(self) -> str:
    return f"DerivedSource({str(self.path)!r}, {len(self)} rows)"


def derived_source(corpus, name: str, split: str, tokenizer=None, seed: int | None = None) -> DerivedSource:
  """The rows of a derived language's split ("train" or "test"), derived first if missing."""
  if split not in SPLIT_FILES:
    raise ValueError(f"unknown split {split!r} for derived language {name!r}; use one of {tuple(SPLIT_FILES)}")
  folder = ensure_derived(corpus, name, tokenizer, seed)
  return DerivedSource(folder / SPLIT_FILES[split], name)


class DerivedPairSource:
  """A derived language's sentences beside their source sentences: the pairs that TLM (or EMS) reads.

  Record k is {"en": the source-language text, "xx_ids": int32 ids of its derived form, "lang": name},
  the "en"/"xx" schema of the corpus's en-<lang> pair sources with the derived side already tokenized
  (`foreign_pretokenized`), so the pipeline encodes the source side only. "en" names the pivot side
  of the pair, which is the derived language's source language ("de" for "de_trans").

  The derived training text was shuffled (`synthetic.training_row_order`, by the seed in derived.json);
  its order is inverted here, so row j of train.jsonl meets source sentence order[j]. The derived test
  split kept its source order. Both were made from the corpus's text/mono/<split>/<lang>.txt with this
  tokenizer (checked by `ensure_derived`), so the source side tokenizes to what was derived.
  """
  foreign_pretokenized = True

  def __init__(self, corpus, name: str, split: str, tokenizer=None, seed: int | None = None):
    if split not in SPLIT_FILES:
      raise ValueError(f"unknown split {split!r} for derived language {name!r}; use one of "
                       f"{tuple(SPLIT_FILES)}")
    folder = ensure_derived(corpus, name, tokenizer, seed)
    manifest = read_manifest(corpus, name)
    lang = split_derived(name)[0]
    self._lang = name.encode()
    self._derived = DerivedSource(folder / SPLIT_FILES[split], name)
    self._texts = corpus.mono_texts(lang, split)
    if len(self._texts) != len(self._derived):
      remake = derive_command(corpus, name, manifest.get("seed", 0))
      raise ValueError(f"{folder / SPLIT_FILES[split]} has {len(self._derived)} rows but "
                       f"text/mono/{split}/{lang}.txt has {len(self._texts)} sentences: {name!r} was derived "
                       f"from other text; remake it with `{remake}`")
    # Source sentence of each derived row; the test split was not shuffled.
    self._sources = (synthetic.training_row_order(int(manifest["seed"]), len(self._texts))
                     if split == "train" else np.arange(len(self._texts)))

  def __len__(self) -> int:
    return len(self._derived)

  def __getitem__(self, index: int) -> dict:
    row = self._derived[index]
    return {"en": self._texts[int(self._sources[index])], "xx_ids": row["ids"], "lang": self._lang}

  def __getitems__(self, keys) -> list[dict]:
    return [self[int(k)] for k in keys]

  def __repr__(self) -> str:
    return f"DerivedPairSource({self._derived.path}, {len(self)} pairs)"
