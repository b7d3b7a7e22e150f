"""Throughput of the MLM input pipeline on a built corpus: batches/s and tokens/s on this host.

  python benchmarks/input_pipeline.py --corpus-dir ~/.cache/xlm_jax/data/gettext8 \
    --seq-len 128 --batch-size 32 --packing stream --num-batches 200

The pipeline must run >= 10x faster than the train step it feeds (0.1-0.5 s per batch for a tiny model
on 2 CPU cores), so the script also prints the step time it could sustain at 10x headroom.
"""
import argparse
import pathlib
import sys
import time

import numpy as np

from xlm_jax.data import pipeline
from xlm_jax.data.corpus import Corpus, default_corpus_dir


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus-dir", type=pathlib.Path, default=default_corpus_dir())
  parser.add_argument("--split", default="train")
  parser.add_argument("--languages", default="", help="comma-separated; default: all in the manifest")
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--packing", choices=pipeline.PACKING_MODES, default="stream")
  parser.add_argument("--alpha", type=float, default=0.3)
  parser.add_argument("--tokenize-chunk", type=int, default=512)
  parser.add_argument("--read-threads", type=int, default=1)
  parser.add_argument("--prefetch", type=int, default=4)
  parser.add_argument("--num-batches", type=int, default=200)
  parser.add_argument("--warmup-batches", type=int, default=10)
  return parser.parse_args(argv)


def measure(iterator, num_batches: int, warmup_batches: int) -> dict[str, float]:
  """Times `num_batches` batches after `warmup_batches` (thread start-up, first tokenizer calls)."""
  for _ in range(warmup_batches):
    next(iterator)
  tokens = real_tokens = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(iterator)
    tokens += batch["input_ids"].size
    real_tokens += int(np.count_nonzero(batch["segment_ids"]))
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "batches_per_s": num_batches / seconds, "tokens_per_s": tokens / seconds,
          "real_tokens_per_s": real_tokens / seconds, "padding": 1.0 - real_tokens / max(tokens, 1)}


def main(argv=None) -> int:
  args = parse_args(argv)
  corpus = Corpus(args.corpus_dir)
  languages = args.languages.split(",") if args.languages else list(corpus.languages)
  corpus.check_languages(languages)
  tokenizer = corpus.tokenizer()
  sources = {lang: corpus.mono_source(lang, args.split) for lang in languages}
  iterator = pipeline.make_mono_iterator(
    sources, tokenizer, languages=languages, seq_len=args.seq_len, batch_size=args.batch_size,
    alpha=args.alpha, packing=args.packing, shard_index=0, shard_count=1,
    tokenize_chunk=args.tokenize_chunk, read_threads=args.read_threads, prefetch=args.prefetch)
  try:
    result = measure(iterator, args.num_batches, args.warmup_batches)
  finally:
    iterator.close()  # Stops the prefetch thread before interpreter shutdown.
  print(f"corpus {args.corpus_dir} split={args.split} languages={','.join(languages)}")
  print(f"packing={args.packing} seq_len={args.seq_len} batch_size={args.batch_size} "
        f"tokenize_chunk={args.tokenize_chunk} read_threads={args.read_threads} prefetch={args.prefetch}")
  print(f"{args.num_batches} batches in {result['seconds']:.2f} s: {result['batches_per_s']:.1f} batches/s, "
        f"{result['tokens_per_s']:,.0f} tokens/s ({result['real_tokens_per_s']:,.0f} non-pad, "
        f"padding {result['padding']:.1%})")
  print(f"feeds a train step of >= {10.0 / result['batches_per_s']:.3f} s/batch with 10x headroom")
  return 0


if __name__ == "__main__":
  sys.exit(main())
