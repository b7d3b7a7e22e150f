"""`xlm-jax data inspect`: what the model will actually see, for every batch kind of a built corpus.

Rows come from the real input pipelines (xlm_jax.data.batch_kinds.make_dataset): mono in both packing modes,
parallel, parallel_pairs and sentences, at least one row per language, so a broken tokenizer, packing,
side order or position scheme shows up here before a training run is spent on it. Each row is printed as a
table, one column per token: its piece (<s>/</s> visible), id, segment id, position id and language.
"""
from __future__ import annotations

import unicodedata

import numpy as np

from xlm_jax.data.corpus import Corpus

# Enough to read at a glance: a short sequence, one row per language and kind.
DEFAULT_SEQ_LEN = 48
DEFAULT_ROWS = 1   # rows per language, mono and sentences
DEFAULT_PAIRS = 1  # rows per language pair, parallel and parallel_pairs
COLUMNS = 12       # tokens per printed line
BATCH = 8
MAX_BATCHES = 64   # stop looking for a language's row after this many batches


def _width(text: str) -> int:
  """Terminal columns of text: East Asian wide characters take two."""
  return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
  return text + " " * (width - _width(text))


def piece_of(tokenizer, token_id: int) -> str:
  """The piece of an id; ids of a derived `trans` language (>= V) show as "T:" + their source piece."""
  size = tokenizer.vocab_size
  return tokenizer.id_to_piece(token_id) if token_id < size else "T:" + tokenizer.id_to_piece(token_id - size)


def format_table(tokenizer, ids, fields: dict[str, list]) -> list[str]:
  """Lines of a token table: a "piece" and an "id" line plus one line per field, columns aligned."""
  labels = {"piece": [piece_of(tokenizer, int(i)) for i in ids], "id": [str(int(i)) for i in ids]}
  labels.update({name: [str(v) for v in values] for name, values in fields.items()})
  lines = []
  for start in range(0, len(ids), COLUMNS):
    widths = [max(_width(column[k]) for column in labels.values()) for k in range(start, min(start + COLUMNS,
                                                                                             len(ids)))]
    for name, column in labels.items():
      cells = [_pad(column[k], w) for k, w in zip(range(start, start + COLUMNS), widths)]
      lines.append(f"      {name:<6}" + " ".join(cells).rstrip())
    lines.append("")
  return lines[:-1]


def format_row(tokenizer, languages, row: dict, prefix: str = "") -> list[str]:
  """A mono / parallel / sentences row: its tokens up to the padding with segment, position and language."""
  ids = np.asarray(row[prefix + "input_ids"])
  real = ids != tokenizer.pad_id
  length = int(real.nonzero()[0].max()) + 1 if real.any() else 0
  segments = np.asarray(row["segment_ids"])[:length].tolist()
  fields = {"seg": segments, "pos": np.asarray(row["position_ids"])[:length].tolist(),
            "lang": [languages[int(l)] if s else "-" for l, s in zip(row["lang_ids"][:length], segments)]}
  header = f"    {length}/{len(ids)} tokens, {len(ids) - length} padding"
  return [header] + format_table(tokenizer, ids[:length], fields)


def format_side(tokenizer, languages, row: dict, side: str) -> list[str]:
  """One side of a parallel_pairs row; positions are the model's XLM-R default (pad_id+1, ...)."""
  ids = np.asarray(row[f"{side}_input_ids"])
  length = int(np.sum(ids != tokenizer.pad_id))
  lang = languages[int(row[f"{side}_lang_ids"])]
  positions = list(range(tokenizer.pad_id + 1, tokenizer.pad_id + 1 + length))
  header = f"    {side}: [{lang}] {length}/{len(ids)} tokens (positions: the model's default)"
  return [header] + format_table(tokenizer, ids[:length], {"pos": positions})


def _rows_of(batch: dict):
  size = len(next(iter(batch.values())))
  for r in range(size):
    yield {key: value[r] for key, value in batch.items()}


def row_language(kind: str, row: dict, languages, en_id: int | None) -> str | None:
  """The language a row stands for: its own (mono, sentences) or the non-English side of a pair."""
  if kind == "parallel_pairs":
    ids = {int(row["x_lang_ids"]), int(row["y_lang_ids"])} - {en_id}
  else:
    real = np.asarray(row["segment_ids"]) > 0
    ids = set(np.asarray(row["lang_ids"])[real].tolist())
    if kind == "parallel":
      ids -= {en_id}
  return languages[min(ids)] if ids else None


def kind_examples(corpus, tokenizer, kind: str, languages, seq_len: int, per_language: int,
                  packing: str = "stream", seed: int = 0) -> list[str]:
  """Printed rows of one batch kind: the first `per_language` rows of each language (or language pair).

  Languages are sampled uniformly (alpha 0), so every one shows up within a few batches.
  """
  from xlm_jax.data import batch_kinds, pairs  # grain: only needed here
  dataset = batch_kinds.make_dataset(kind, corpus, tokenizer, languages=languages, seq_len=seq_len,
                                     batch_size=BATCH, alpha=0.0, seed=seed, packing=packing,
                                     shard_index=0, shard_count=1, prefetch=0)
  wanted = pairs.pair_languages(languages) if kind in pairs.PAIR_KINDS else list(languages)
  en_id = languages.index(pairs.ENGLISH) if pairs.ENGLISH in languages else None
  found = {lang: [] for lang in wanted}
  iterator = iter(dataset)
  for _ in range(MAX_BATCHES):
    for row in _rows_of(next(iterator)):
      lang = row_language(kind, row, languages, en_id)
      if lang in found and len(found[lang]) < per_language:
        found[lang].append(row)
    if all(len(rows) == per_language for rows in found.values()):
      break
  iterator.close()
  lines = []
  for lang, rows in found.items():
    for row in rows:
      lines.append(f"  {lang if kind not in pairs.PAIR_KINDS else 'en-' + lang}:")
      if kind == "parallel_pairs":
        lines += format_side(tokenizer, languages, row, "x") + format_side(tokenizer, languages, row, "y")
      else:
        lines += format_row(tokenizer, languages, row)
    if not rows:
      lines.append(f"  {lang}: no row in the first {MAX_BATCHES} batches")
  skipped = dataset.example_counts.skipped()
  if skipped:
    lines.append(f"  ({skipped} examples read so far were dropped: empty after tokenization)")
  return lines


def inspect_text(corpus_dir, seq_len: int = DEFAULT_SEQ_LEN, rows: int = DEFAULT_ROWS,
                 pairs: int = DEFAULT_PAIRS, vocabulary: str = "joint", languages=None) -> str:
  """The whole `inspect` report for the corpus at corpus_dir: every batch kind, every language.

  rows: rows per language for mono (each packing) and sentences; pairs: rows per language pair for
  parallel and parallel_pairs. vocabulary: "joint", "union" or "no_anchors" (`load_tokenizer`).
  languages: default every corpus language with training text; derived "<lang>_<op>" names allowed.
  """
  from xlm_jax.data import pairs as pairs_lib
  from xlm_jax.data.tokenizer import load_tokenizer
  corpus = Corpus(corpus_dir)
  languages = list(languages or [lang for lang in corpus.languages if corpus.num_examples(lang, "train") > 0])
  tokenizer = load_tokenizer(corpus, vocabulary, languages=languages)
  lines = [f"corpus {corpus.dir}: languages {languages}, vocabulary {vocabulary!r} ({tokenizer.vocab_size} ids)"]
  for packing in ("stream", "segments"):
    lines.append(f"mono, packing={packing!r}, seq_len {seq_len}:")
    lines += kind_examples(corpus, tokenizer, "mono", languages, seq_len, rows, packing=packing)
  lines.append(f"sentences (one <s> s </s> per row), seq_len {seq_len}:")
  lines += kind_examples(corpus, tokenizer, "sentences", languages, seq_len, rows)
  if pairs_lib.ENGLISH in languages and pairs_lib.pair_languages(languages):
    lines.append(f"parallel (<s> x </s> </s> y </s>, sides in random order), seq_len {seq_len}:")
    lines += kind_examples(corpus, tokenizer, "parallel", languages, seq_len, pairs)
    lines.append(f"parallel_pairs (x and y in separate rows), pair_seq_len {seq_len // 2}:")
    lines += kind_examples(corpus, tokenizer, "parallel_pairs", languages, seq_len, pairs)
  else:
    lines.append("parallel kinds: need 'en' and another corpus language in the languages shown")
  return "\n".join(lines)
