"""Command line for corpora: `python -m data_prep build|stats|inspect` (and `xlm-jax data ...`).

    python -m data_prep build [--recipe gettext8|debian8] [--corpus-dir DIR] [--languages en de ...] [--force]
    python -m data_prep build --corpus-dir DIR --mono-dir cc100/ --parallel en:a.en de:a.de   (users' text)
    python -m data_prep stats --corpus-dir ~/.cache/xlm_jax/data/gettext8
    python -m data_prep inspect --corpus-dir ~/.cache/xlm_jax/data/gettext8
"""
from __future__ import annotations

import argparse
import sys

from data_prep import build, debian8, inspect_batches, tokenizer_training, user_build
from data_prep.stats import stats_table
from data_prep.user_corpora import cli_args as user_args
from xlm_jax.data.corpus import Corpus, default_corpus_dir


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `build` (shared with `xlm-jax data build`)."""
  parser.add_argument("--recipe", default=debian8.DEFAULT_RECIPE, choices=debian8.RECIPES,
                      help="gettext8: gettext catalogues only (default); debian8: + LibreOffice help, "
                      "fortunes, man pages, FreeDict, with evaluation sets under eval/")
  parser.add_argument("--corpus-dir", default=None,
                      help="output folder (default: $XLM_JAX_DATA_DIR/<recipe>, "
                      "else ~/.cache/xlm_jax/data/<recipe>)")
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
  user_args.add_user_corpus_arguments(parser)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `stats` and `inspect`."""
  parser.add_argument("--corpus-dir", default=str(default_corpus_dir()), help="a built corpus folder")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
  add_stats_arguments(parser)
  parser.add_argument("--seq-len", type=int, default=inspect_batches.DEFAULT_SEQ_LEN)
  parser.add_argument("--rows", type=int, default=inspect_batches.DEFAULT_ROWS, help="rows per mono batch")
  parser.add_argument("--pairs", type=int, default=inspect_batches.DEFAULT_PAIRS, help="pairs per language")


def build_main(args: argparse.Namespace) -> Corpus:
  """Runs `build` with parsed flags (see add_build_arguments), prints the stats table, returns the corpus.

  With any users'-corpus flag the corpus is built from those inputs alone (user_build), not from Debian.
  """
  common = dict(vocab_size=args.vocab_size, seed=args.seed, force=args.force, progress=not args.quiet,
                model_type=args.model_type, alpha=args.alpha)
  if user_args.has_user_inputs(args):
    if args.corpus_dir is None:
      raise ValueError("users' corpora need --corpus-dir (the default folders belong to the Debian recipes)")
    inputs = user_args.inputs_from_args(args, None if args.languages == list(build.DEFAULT_LANGUAGES)
                                        else args.languages)
    corpus = user_build.build_user_corpus(args.corpus_dir, inputs, **common, **user_args.build_options(args))
  else:
    corpus_dir = args.corpus_dir or str(default_corpus_dir(args.recipe))
    corpus = build.build_corpus(
        corpus_dir, languages=args.languages, packages=args.packages,
        min_sentences_per_language=args.min_sentences, cache_dir=args.cache_dir, recipe=args.recipe,
        **common)
  print(stats_table(corpus))
  return corpus


def stats_main(args: argparse.Namespace) -> Corpus:
  corpus = Corpus(args.corpus_dir)
  print(stats_table(corpus))
  return corpus


def inspect_main(args: argparse.Namespace) -> Corpus:
  print(inspect_batches.inspect_text(args.corpus_dir, args.seq_len, args.rows, args.pairs))
  return Corpus(args.corpus_dir)


def run(argv, prog: str = "python -m data_prep") -> Corpus:
  """Parses `build|stats|inspect ...` and runs it; errors (ValueError, FileNotFoundError) propagate."""
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  add_build_arguments(commands.add_parser("build", help="build a corpus from Debian packages"))
  add_stats_arguments(commands.add_parser("stats", help="print per-language counts of a built corpus"))
  add_inspect_arguments(commands.add_parser("inspect", help="show tokenized examples of each batch kind"))
  args = parser.parse_args(argv)
  return {"build": build_main, "stats": stats_main, "inspect": inspect_main}[args.command](args)


def main(argv=None) -> int:
  """Entry point of `python -m data_prep`: exit code 0, or 1 with a one-line error."""
  try:
    run(argv)
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0
