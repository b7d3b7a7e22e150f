"""Command-line flags for users' corpora, for `xlm-jax data build` to add to its parser.

    --mono-dir DIR                   CC-100 (<lang>.txt[.gz|.xz]) or Wikipedia-like (<lang>/*.txt) folder
    --parallel-dir DIR               OPUS/Moses pairs (<name>.<l1>-<l2>.<l1> + .<l2>) and <name>.<l1>-<l2>.tsv
    --parallel en:A.en de:A.de       two line-aligned files, each prefixed with its language
    --parallel-tsv FILE L1 L2        a TSV whose first column is L1, second L2
    --tfds [LANG=]tfds:NAME[/CONFIG][:SPLIT]:FIELD    a locally prepared TFDS dataset's text field
All may be repeated; the folder flags and --tfds accept several values.
"""
from __future__ import annotations

import argparse

from data_prep.user_corpora import collect_inputs, reading
from data_prep.user_corpora.build_text import DEFAULT_MAX_UNIT_LINES, DEFAULT_TEST_FRACTION
from data_prep.user_corpora.inputs import UserInputs


def int_at_least(minimum: int):
  """argparse type: an int >= minimum; the error names the flag (argparse adds it) and the value."""
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
    return value
  return parse


def float_in(low: float, high: float, high_inclusive: bool = True):
  """argparse type: a float in [low, high] (or [low, high))."""
  interval = f"[{low:g}, {high:g}{']' if high_inclusive else ')'}"
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}") from None
    if not (low <= value <= high if high_inclusive else low <= value < high):
      raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}")
    return value
  return parse


def text_encoding(name: str) -> str:
  """argparse type of --encoding: reading.check_encoding's canonical codec name."""
  try:
    return reading.check_encoding(name)
  except ValueError as err:
    raise argparse.ArgumentTypeError(str(err)) from None


def add_user_corpus_arguments(parser: argparse.ArgumentParser) -> None:
  """Adds the flags above plus --tfds-data-dir, --extra-language, --test-fraction, --max-unit-lines,
  --strict, --encoding."""
  group = parser.add_argument_group("users' corpora")
  # extend: a repeated flag adds to one list, and each occurrence may name several folders.
  group.add_argument("--mono-dir", action="extend", nargs="+", default=[], metavar="DIR")
  group.add_argument("--parallel-dir", action="extend", nargs="+", default=[], metavar="DIR")
  # append, not extend: each --parallel keeps its two LANG:PATH values together.
  group.add_argument("--parallel", action="append", nargs=2, default=[], metavar="LANG:PATH")
  group.add_argument("--parallel-tsv", action="append", nargs=3, default=[], metavar=("FILE", "L1", "L2"))
  group.add_argument("--tfds", action="extend", nargs="+", default=[], metavar="SPEC",
                     help="[LANG=]tfds:NAME[/CONFIG][:SPLIT]:FIELD, e.g. tfds:wiki40b/de:text")
  group.add_argument("--tfds-data-dir", default=None,
                     help="prepared TFDS datasets (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
  group.add_argument("--extra-language", action="append", default=[], metavar="CODE",
                     help="accept a language code outside ISO 639-1")
  # A test fraction of 1 would leave no training text.
  group.add_argument("--test-fraction", type=float_in(0.0, 1.0, high_inclusive=False),
                     default=DEFAULT_TEST_FRACTION,
                     help="share of documents (by md5) that go to the test split")
  group.add_argument("--max-unit-lines", type=int_at_least(1), default=DEFAULT_MAX_UNIT_LINES,
                     help="longer documents are cut into units of this many lines before splitting")
  group.add_argument("--strict", action="store_true",
                     help="fail on the first bad line (invalid UTF-8, wrong TSV columns) instead of "
                     "skipping and counting it")
  group.add_argument("--encoding", type=text_encoding, default="utf-8",
                     help="encoding of the text files (default utf-8), e.g. latin-1 or cp1252; the "
                     "corpus is written in UTF-8. A file with many lines that do not decode fails")


def _lang_path(value: str) -> tuple[str, str]:
  lang, sep, path = value.partition(":")
  if not sep or not lang or not path:
    raise ValueError(f"--parallel expects LANG:PATH (e.g. en:corpus.en), got {value!r}")
  return lang, path


def inputs_from_args(args: argparse.Namespace, languages=None) -> UserInputs:
  """collect_inputs from parsed flags; `languages` (e.g. --languages) filters the folder inputs."""
  pairs = [dict(map(_lang_path, pair)) for pair in args.parallel]
  return collect_inputs(mono_dirs=args.mono_dir, parallel_dirs=args.parallel_dir, parallel=pairs,
                        parallel_tsvs=args.parallel_tsv, tfds_specs=args.tfds,
                        tfds_data_dir=args.tfds_data_dir, languages=languages,
                        extra_languages=args.extra_language)


def has_user_inputs(args: argparse.Namespace) -> bool:
  return bool(args.mono_dir or args.parallel_dir or args.parallel or args.parallel_tsv or args.tfds)


def build_options(args: argparse.Namespace) -> dict:
  """Keyword arguments of build_user_text from parsed flags."""
  return {"test_fraction": args.test_fraction, "max_unit_lines": args.max_unit_lines, "strict": args.strict,
          "encoding": args.encoding}
