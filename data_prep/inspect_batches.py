"""`xlm-jax data inspect`: what the model will actually see, for each batch kind of a built corpus.

Mono batches come from the real input pipeline (xlm_jax.data.pipeline.make_mono_dataset) in both packing
modes, so a broken tokenizer, packing or position scheme shows up here before a training run is spent on
it. Each row is printed as pieces with <s>/</s> visible, with its segment ids and position ids; parallel
pairs are shown as the tokenizer splits them.
"""
from __future__ import annotations

import numpy as np

from xlm_jax.data.corpus import Corpus
from xlm_jax.data.tokenizer import Tokenizer

# Enough to read at a glance: a few rows per mode, a few pairs per language.
DEFAULT_SEQ_LEN = 48
DEFAULT_ROWS = 2
DEFAULT_PAIRS = 2


def _pieces(tokenizer: Tokenizer, ids) -> str:
  return " ".join(tokenizer.id_to_piece(int(i)) for i in ids)


def format_mono_row(batch: dict, row: int, tokenizer: Tokenizer, languages) -> str:
  """One row of a mono batch: language, pieces (padding cut off), segment ids and position ids."""
  ids = np.asarray(batch["input_ids"][row])
  real = ids != tokenizer.pad_id
  length = int(real.nonzero()[0].max()) + 1 if real.any() else 0
  lang = languages[int(batch["lang_ids"][row][0])] if length else "-"
  segments = np.asarray(batch["segment_ids"][row][:length]).tolist()
  positions = np.asarray(batch["position_ids"][row][:length]).tolist()
  return (f"  row {row} [{lang}] {length}/{len(ids)} tokens, {len(ids) - length} pad\n"
          f"    pieces:    {_pieces(tokenizer, ids[:length])}\n"
          f"    segments:  {segments}\n"
          f"    positions: {positions}")


def mono_examples(corpus: Corpus, tokenizer: Tokenizer, packing: str, seq_len: int, rows: int,
                  seed: int = 0) -> list[str]:
  """Printed rows of the first mono batch in `packing` mode ("stream" or "segments")."""
  from xlm_jax.data.pipeline import make_mono_dataset  # grain: only needed here
  languages = [lang for lang in corpus.languages if corpus.num_examples(lang, "train") > 0]
  sources = {lang: corpus.mono_source(lang, "train") for lang in languages}
  dataset = make_mono_dataset(sources, tokenizer, languages=languages, seq_len=seq_len, batch_size=rows,
                              seed=seed, packing=packing, num_epochs=1)
  batch = next(iter(dataset))
  return [format_mono_row(batch, row, tokenizer, languages) for row in range(rows)]


def parallel_examples(corpus: Corpus, tokenizer: Tokenizer, pairs: int) -> list[str]:
  """The first `pairs` training pairs of every language, as pieces (<s> en </s></s> xx </s>, TLM style)."""
  out = []
  for lang in corpus.languages:
    if lang == "en":
      continue
    for en, xx in corpus.parallel_pairs(lang, "train")[:pairs]:
      en_ids, xx_ids = tokenizer.encode([en, xx])
      ids = ([tokenizer.bos_id] + en_ids + [tokenizer.eos_id, tokenizer.eos_id] + xx_ids
             + [tokenizer.eos_id])
      out.append(f"  en-{lang}: {en!r} | {xx!r}\n    pieces: {_pieces(tokenizer, ids)}")
  return out


def inspect_text(corpus_dir, seq_len: int = DEFAULT_SEQ_LEN, rows: int = DEFAULT_ROWS,
                 pairs: int = DEFAULT_PAIRS) -> str:
  """The whole `inspect` report for the corpus at corpus_dir."""
  corpus = Corpus(corpus_dir)
  tokenizer = Tokenizer(corpus.tokenizer_path)
  lines = [f"corpus {corpus.dir}: languages {corpus.languages}, vocab {tokenizer.vocab_size}"]
  for packing in ("stream", "segments"):
    lines.append(f"mono batch, packing={packing!r}, seq_len {seq_len}:")
    lines += mono_examples(corpus, tokenizer, packing, seq_len, rows)
  lines.append("parallel pairs (train):")
  lines += parallel_examples(corpus, tokenizer, pairs)
  return "\n".join(lines)
