"""Command line for corpora: `python -m data_prep build|stats|inspect|tokenizers|derive` (and `xlm-jax data ...`).

    python -m data_prep build [--recipe debian8|gettext8] [--corpus-dir DIR] [--languages en de ...] [--force]
    python -m data_prep build --corpus-dir DIR --mono-dir cc100/ --parallel en:a.en de:a.de   (users' text)
    python -m data_prep build --corpus-dir DIR --recipe gettext8 --mono-dir cc100/   (users' text + a recipe)
    python -m data_prep stats --corpus-dir ~/.cache/xlm_jax/data/gettext8
    python -m data_prep inspect --corpus-dir ~/.cache/xlm_jax/data/gettext8
    python -m data_prep tokenizers --corpus-dir DIR --kind union|no_anchors [--vocab-size-per-lang N]
    python -m data_prep derive --corpus-dir DIR --op trans+inv [--lang en] [--overlap FILE] [--seed S]
"""
from __future__ import annotations

import argparse
import sys

from data_prep import build, debian8, inspect_batches, user_build
from data_prep.stats import stats_table
from data_prep.user_corpora import cli_args as user_args
from xlm_jax.data import derived, synthetic, tokenizer_training, tokenizer_variants
from xlm_jax.data.corpus import RECIPES, Corpus, resolve_corpus_dir


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `build` (shared with `xlm-jax data build`)."""
  parser.add_argument("--recipe", default=None, choices=RECIPES,
                      help="debian8 (default): gettext, LibreOffice help, fortunes, man pages, FreeDict, "
                      "with evaluation sets under eval/; gettext8: gettext catalogues only (the "
                      "quickstart's corpus, built on the fly by `xlm-jax train`). With users' corpora "
                      "(--mono-dir, ...) the corpus holds their text only, unless --recipe is given: then "
                      "the recipe's text and theirs go into one corpus")
  parser.add_argument("--corpus-dir", default=None,
                      help="output folder (default: $XLM_JAX_DATA_DIR/<recipe>, "
                      "else ~/.cache/xlm_jax/data/<recipe>)")
  parser.add_argument("--languages", nargs="+", default=list(build.DEFAULT_LANGUAGES), help="language codes")
  parser.add_argument("--packages", nargs="+", default=None,
                      help="Debian packages with gettext catalogues (default: the 28 of the default corpus)")
  parser.add_argument("--vocab-size", type=user_args.int_at_least(1), default=8000,
                      help="SentencePiece vocabulary size")
  parser.add_argument("--model-type", default="unigram", choices=tokenizer_training.MODEL_TYPES)
  parser.add_argument("--alpha", type=user_args.float_in(0.0, 1.0), default=tokenizer_training.DEFAULT_ALPHA,
                      help="language sampling exponent for the tokenizer's training text")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min-sentences", type=user_args.int_at_least(0), default=None,
                      help="fail if a language has fewer training sentences than this (default: "
                      f"{build.DEFAULT_MIN_SENTENCES} for a recipe's languages, 1 for languages only in "
                      "users' text; when given, it applies to every language)")
  parser.add_argument("--cache-dir", default=None,
                      help="where .debs are cached (default ~/.cache/xlm_jax/debs)")
  parser.add_argument("--force", action="store_true", help="rebuild even if the corpus exists")
  parser.add_argument("--quiet", action="store_true", help="no progress output")
  user_args.add_user_corpus_arguments(parser)


def _default_built_corpus() -> str:
  """The debian8 corpus if it was built (the default of `build`), else the quickstart's gettext8."""
  full = resolve_corpus_dir(corpus=debian8.FULL_RECIPE)
  quickstart = resolve_corpus_dir(corpus=debian8.DEFAULT_RECIPE)
  # manifest.json is written last, so only a finished debian8 build counts.
  return str(full if (full / "manifest.json").is_file() else quickstart)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `stats` and `inspect`."""
  parser.add_argument("--corpus-dir", default=_default_built_corpus(),
                      help="a built corpus folder (default: debian8 if built, else gettext8)")


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
  add_stats_arguments(parser)
  parser.add_argument("--seq-len", type=user_args.int_at_least(3), default=inspect_batches.DEFAULT_SEQ_LEN)
  parser.add_argument("--rows", type=user_args.int_at_least(1), default=inspect_batches.DEFAULT_ROWS,
                      help="rows per mono batch")
  parser.add_argument("--pairs", type=user_args.int_at_least(1), default=inspect_batches.DEFAULT_PAIRS,
                      help="pairs per language")


def build_main(args: argparse.Namespace) -> Corpus:
  """Runs `build` with parsed flags (see add_build_arguments), prints the stats table, returns the corpus.

  With any users'-corpus flag the corpus is built from those inputs (user_build): alone, or, if --recipe
  is given, together with that recipe's packages (--languages then names the recipe's languages and
  restricts the inputs to them only if given explicitly).
  """
  common = dict(vocab_size=args.vocab_size, seed=args.seed, force=args.force, progress=not args.quiet,
                model_type=args.model_type, alpha=args.alpha)
  if user_args.has_user_inputs(args):
    if args.corpus_dir is None:
      raise ValueError("users' corpora need --corpus-dir (the default folders belong to the Debian recipes)")
    if args.recipe is None and (args.packages or args.cache_dir):
      raise ValueError("--packages and --cache-dir choose Debian packages, which a build of users' corpora "
                       "reads only with --recipe gettext8|debian8; add --recipe or drop them")
    # argparse cannot tell an explicit --languages from its default: equal means not given.
    inputs = user_args.inputs_from_args(args, None if args.languages == list(build.DEFAULT_LANGUAGES)
                                        else args.languages)
    recipe_options = dict(languages=args.languages, packages=args.packages, cache_dir=args.cache_dir)
    corpus = user_build.build_user_corpus(
        args.corpus_dir, inputs, recipe=args.recipe, recipe_options=recipe_options,
        min_sentences_per_language=args.min_sentences, **common, **user_args.build_options(args))
  else:
    recipe = args.recipe or debian8.FULL_RECIPE
    corpus_dir = resolve_corpus_dir(args.corpus_dir or "", corpus=recipe)
    corpus = build.build_corpus(
        corpus_dir, languages=args.languages, packages=args.packages,
        min_sentences_per_language=(build.DEFAULT_MIN_SENTENCES if args.min_sentences is None
                                    else args.min_sentences), cache_dir=args.cache_dir, recipe=recipe,
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


# --- Vocabulary variants and synthetic languages (Conneau, Wu et al. 2020; Deshpande et al. 2022) ---------

TOKENIZER_KINDS = ("union", "no_anchors")
# Per language, not in all: the union of 8 languages' 4000 pieces is ~15-25k ids once anchors merge.
DEFAULT_VOCAB_SIZE_PER_LANG = 4000


def add_tokenizers_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `tokenizers`."""
  add_stats_arguments(parser)
  parser.add_argument("--kind", required=True, choices=TOKENIZER_KINDS,
                      help="union: one vocabulary, pieces learned by several languages shared (anchors); "
                      "no_anchors: each language in its own id range, nothing shared but ids 0..4")
  parser.add_argument("--vocab-size-per-lang", type=user_args.int_at_least(1), default=DEFAULT_VOCAB_SIZE_PER_LANG,
                      help="pieces of each language's SentencePiece model (lower it for small corpora)")
  # Subword models only, as in the studies these variants reproduce.
  parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--languages", nargs="+", default=None, help="default: all languages of the corpus")


def tokenizers_main(args: argparse.Namespace) -> Corpus:
  """Trains one SentencePiece model per language on its mono training text and writes the `kind` variant
  to <corpus>/tokenizers/<kind>/; prints its size and anchors (union) or id ranges (no_anchors)."""
  corpus = Corpus(args.corpus_dir)
  languages = list(args.languages or corpus.languages)
  repeated = sorted({lang for lang in languages if languages.count(lang) > 1})
  if repeated:
    raise ValueError(f"--languages names {repeated} more than once; give each language once")
  corpus.check_languages(languages)
  texts = {lang: corpus.mono_texts(lang, "train") for lang in languages}
  out_dir = corpus.dir / "tokenizers" / args.kind
  options = dict(vocab_size_per_lang=args.vocab_size_per_lang, model_type=args.model_type, seed=args.seed)
  if args.kind == "union":
    summary = tokenizer_variants.build_union_tokenizer(texts, out_dir, **options)
    print(f"union tokenizer of {' '.join(languages)} ({args.model_type}, {args.vocab_size_per_lang} pieces "
          f"per language, seed {args.seed}) -> {out_dir}")
    print(f"  vocab_size {summary['vocab_size']}; {summary['num_anchors']} anchors (pieces shared by >= 2 "
          f"languages, listed in {out_dir / 'anchors.json'})")
  else:
    tokenizer = tokenizer_variants.build_no_anchors_tokenizer(texts, out_dir, **options)
    print(f"no-anchors tokenizer of {' '.join(languages)} ({args.model_type}, {args.vocab_size_per_lang} "
          f"pieces per language, seed {args.seed}) -> {out_dir}")
    print(f"  vocab_size {tokenizer.vocab_size}; ids 0..4 are the shared specials; per-language id ranges:")
    for lang, (start, end) in tokenizer.language_ranges.items():
      print(f"    {lang:<4} [{start}, {end})")
  return corpus


def add_derive_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of `derive`."""
  add_stats_arguments(parser)
  parser.add_argument("--op", required=True,
                      help=f"one of {', '.join(synthetic.OPS)}; '+' may replace '∘' (trans+inv)")
  parser.add_argument("--lang", default="en", help="source language of the derived one")
  parser.add_argument("--overlap", default=None,
                      help="file of ids or pieces (one a line) that trans leaves shared")
  parser.add_argument("--seed", type=int, default=0)


def derive_main(args: argparse.Namespace) -> Corpus:
  """Derives a synthetic language from `lang`'s training text with the corpus tokenizer and writes it to
  <corpus>/derived/<op with '+'>/ (xlm_jax.data.derived.derive_language, which training also calls when a
  run names a derived language that is not built yet); prints what it wrote."""
  made = derived.derive_language(args.corpus_dir, args.op, args.lang, args.seed, overlap=args.overlap)
  print(made.report())
  return Corpus(args.corpus_dir)


def run(argv, prog: str = "python -m data_prep") -> Corpus:
  """Parses `build|stats|inspect|tokenizers|derive ...` and runs it; errors (ValueError,
  FileNotFoundError) propagate."""
  parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  add_build_arguments(commands.add_parser("build", help="build a corpus from Debian packages"))
  add_stats_arguments(commands.add_parser("stats", help="print per-language counts of a built corpus"))
  add_inspect_arguments(commands.add_parser("inspect", help="show tokenized examples of each batch kind"))
  add_tokenizers_arguments(commands.add_parser(
      "tokenizers", help="train per-language tokenizers: their union, or disjoint id ranges (no anchors)"))
  add_derive_arguments(commands.add_parser(
      "derive", help="derive a synthetic language (trans, inv, perm, ...) from a language's training text"))
  args = parser.parse_args(argv)
  return {"build": build_main, "stats": stats_main, "inspect": inspect_main, "tokenizers": tokenizers_main,
          "derive": derive_main}[args.command](args)


def main(argv=None) -> int:
  """Entry point of `python -m data_prep`: exit code 0, or 1 with a one-line error."""
  try:
    run(argv)
  # Only expected errors become one line; anything else keeps its traceback (a bug).
  except (FileNotFoundError, ValueError) as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  return 0
