"""Synthetic derived languages (ALIGN-MLM, Deshpande et al. 2022) as training languages.

A derived language is named "<lang>_<op>" in data.languages: "en_trans" is English with every non-special id
i moved to i + V (a disjoint "script"), "en_trans+inv" also reverses each sentence's word order. Its text is
`data_prep.synthetic`'s artifact <corpus>/derived/<op>/ (written by `xlm-jax data derive`), already token
ids, so the pipelines read it without a tokenizer call (`DerivedSource.pretokenized`). A missing artifact is
derived on first use with the same code and defaults as the command.

The artifact folder is named by op only, so one corpus holds one derived language per op; a folder made
from another source language, another tokenizer or another seed is an error that says how to remake it.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import pathlib
import threading

import numpy as np

from data_prep import synthetic

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


def ensure_derived(corpus, name: str, tokenizer=None, seed: int | None = None) -> pathlib.Path:
  """The checked folder of derived language `name`, derived first if missing (seed 0 unless given).

  Building runs `xlm-jax data derive` in-process (data_prep.cli.derive_main, so the folder is exactly what
  the command writes: train text, implicit dictionary, derived test split); its report goes to the log.
  """
  folder = derived_dir(corpus, name)
  lang, op = split_derived(name)
  with _BUILD_LOCK:
    if not (folder / MANIFEST).is_file():
      from data_prep import cli  # deferred: the build tools are only needed to derive
      corpus.check_languages([lang])
      report = io.StringIO()
      with contextlib.redirect_stdout(report):
        cli.derive_main(argparse.Namespace(corpus_dir=str(corpus.dir), op=op, lang=lang, overlap=None,
                                           seed=0 if seed is None else seed))
      logging.info("derived %s on first use:\n%s", name, report.getvalue().rstrip())
  check_manifest(corpus, name, read_manifest(corpus, name), tokenizer, seed)
  return folder


def num_examples(corpus, name: str, split: str = "train", kind: str = "mono") -> int:
  """Sentences of a language and split, derived ("<lang>_<op>", from derived.json) or not (the manifest).

  Derived languages have monolingual text only: kind "parallel" is 0 for them.
  """
  if not is_derived(name):
    return corpus.num_examples(name, split, kind)
  if kind == "parallel":
    return 0
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
    self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

  def __len__(self) -> int:
    return len(self._offsets) - 1

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {self.path} ({len(self)} rows)")
    return {"ids": self._tokens[self._offsets[index]:self._offsets[index + 1]], "lang": self._lang}

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
