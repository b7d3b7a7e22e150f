"""Command line for corpus building: `python -m data_prep build|stats` (and `xlm-jax data build|stats`).

    python -m data_prep build --corpus-dir ~/.cache/xlm_jax/data/gettext8 [--languages en de ...] [--force]
    python -m data_prep stats --corpus-dir ~/.cache/xlm_jax/data/gettext8
"""
from __future__ import annotations

import argparse
import sys

from data_prep import build, tokenizer_training
from data_prep.build import stats_table
from xlm_jax.data.corpus import Corpus, default_corpus_dir


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `build` (shared with `xlm-jax data build`)."""
  parser.add_argument("--corpus-dir", default=str(default_corpus_dir()),
                      help="output folder (default: $XLM_JAX_DATA_DIR/gettext8, "
                      "else ~/.cache/xlm_jax/data/gettext8)")
  parser.add_argument("--languages", nargs="+", default=list(build.DEFAULT_LANGUAGES), help="language codes")
  parser.add_argument("--packages", nargs="+", default=None,
                      help="Debian packages with gettext catalogues (default: the 28 of the default corpus)")
  parser.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size")
  parser.add_argument("--model-type", default="unigram", choices=tokenizer_training.MODEL_TYPES)
  parser.add_argument("--alpha", type=float, default=tokenizer_training.DEFAULT_ALPHA,
                      help="language sampling exponent for the tokenizer's training text")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min-sentences", type=int, default=build.DEFAULT_MIN_SENTENCES,
                      help="fail if a language has fewer training sentences than this")
  parser.add_argument("--cache-dir", default=None,
                      help="where .debs are cached (default ~/.cache/xlm_jax/debs)")
  parser.add_argument("--force", action="store_true", help="rebuild even if the corpus exists")
  parser.add_argument("--quiet", action="store_true", help="no progress output")


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `stats`."""
  parser.add_argument("--corpus-dir", default=str(default_corpus_dir()), help="a built corpus folder")


def build_main(args: argparse.Namespace) -> Corpus:
  """Runs `build` with parsed flags (see add_build_arguments), prints the stats table, returns the corpus."""
  corpus = build.build_corpus(
      args.corpus_dir, languages=args.languages, packages=args.packages, vocab_size=args.vocab_size,
      seed=args.seed, min_sentences_per_language=args.min_sentences, force=args.force,
      progress=not args.quiet, cache_dir=args.cache_dir, model_type=args.model_type, alpha=args.alpha)
  print(stats_table(corpus))
  return corpus


def stats_main(args: argparse.Namespace) -> Corpus:
  corpus = Corpus(args.corpus_dir)
  print(stats_table(corpus))
  return corpus


def run(argv, prog: str = "python -m data_prep") -> Corpus:
  """Parses `build ...` or `stats ...` and runs it; errors (ValueError, FileNotFoundError) propagate."""
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  add_build_arguments(commands.add_parser("build", help="build a corpus from Debian packages"))
  add_stats_arguments(commands.add_parser("stats", help="print per-language counts of a built corpus"))
  args = parser.parse_args(argv)
  return (build_main if args.command == "build" else stats_main)(args)


def main(argv=None) -> int:
  """Entry point of `python -m data_prep`: exit code 0, or 1 with a one-line error."""
  try:
    run(argv)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0
