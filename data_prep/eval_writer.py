"""Writes the `debian8` evaluation sets and dictionary artifacts into a corpus folder.

  eval/retrieval.jsonl              {"id", "source", "en": ..., "de": ..., ...} one multi-way item per line
  eval/bli/en-<lang>.tsv            "english<TAB>foreign" BLI test pairs (held-out English headwords)
  eval/classification/train.jsonl   {"id", "label", "text"}: English help paragraphs of training files
  eval/classification/test.jsonl    {"id", "label", "lang", "text"}: paragraphs of held-out files
  dictionaries/en-<lang>.tsv (+ .ids.npy, .json)   training pairs (xlm_jax.data.dictionary's format)
"""
from __future__ import annotations

import json
import pathlib

from xlm_jax.data.dictionary import save_dictionary, word_dictionary_path


def _write_jsonl(path: pathlib.Path, rows) -> int:
  path.parent.mkdir(parents=True, exist_ok=True)
  count = 0
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      count += 1
  return count


def write_eval_sets(evals, corpus_dir) -> dict:
  """Writes the evaluation sets under <corpus_dir>/eval; returns their sizes (for the manifest)."""
  out = pathlib.Path(corpus_dir) / "eval"
  _write_jsonl(out / "retrieval.jsonl", evals.retrieval)
  for lang, pairs in evals.bli.items():
    path = out / "bli" / f"en-{lang}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{en}\t{xx}\n" for en, xx in pairs), encoding="utf-8")
  _write_jsonl(out / "classification" / "train.jsonl", evals.classification["train"])
  _write_jsonl(out / "classification" / "test.jsonl", evals.classification["test"])
  return evals.sizes()


def write_dictionaries(train_pairs: dict, collected_dicts: dict, tokenizer, corpus_dir) -> dict:
  """Writes each language's training pairs as a dictionary artifact (word pairs + token-id pairs);
  returns {lang: {"word_pairs", "token_pairs"}} for the manifest."""
  sizes = {}
  for lang, pairs in train_pairs.items():
    if not pairs:
      continue
    # The path training reads (word_dictionary_path), so the writer and the reader cannot drift apart.
    path = word_dictionary_path(corpus_dir, lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = save_dictionary(path, pairs, tokenizer, metadata=collected_dicts[lang].counts)
    sizes[lang] = {"word_pairs": sidecar["word_pairs"], "token_pairs": sidecar["token_pairs"]}
  return sizes


def read_jsonl(path) -> list[dict]:
  """Rows of a JSONL evaluation file."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
