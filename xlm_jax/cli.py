"""`xlm-jax` command line: train, eval, export and data preparation.

    xlm-jax train  --config experiments/quickstart.py[:variant] --workdir DIR [--config.f=v ...]
    xlm-jax eval   --workdir DIR [--config.f=v ...]
    xlm-jax export --workdir DIR [--out DIR] [--format xlm-jax|hf]
    xlm-jax convert --from hf|xlm-jax PATH --out DIR
    xlm-jax data   build|stats|inspect|tokenizers|derive [...]
"""
from __future__ import annotations

import argparse
import logging
import sys

_OVERRIDE_PREFIX = "--config."


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) overrides from the other arguments.

  ValueError for an override without a value (`--config.a.b` last, or followed by another flag):
  taking the next flag as its value would silently drop that flag.
  """
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_OVERRIDE_PREFIX):
      item = arg[len(_OVERRIDE_PREFIX):]
      field = item.split("=", 1)[0]
      if not field:
        raise ValueError(f"override {arg!r} names no field; write --config.<field>=<value>, e.g. "
                         "--config.train.total_steps=300")
      if "=" not in item:
        following = argv[i + 1] if i + 1 < len(argv) else None
        if following is None or following.startswith("--"):
          got = "nothing follows it" if following is None else f"it is followed by {following!r}"
          raise ValueError(f"override {arg} has no value ({got}); write {arg}=<value>, e.g. "
                           "--config.train.total_steps=300")
        item, i = f"{item}={following}", i + 1
      overrides.append(item)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _ensure_corpus(config) -> None:
  """Builds the configured Debian recipe on first use (the one place training reaches data_prep).

  Only the Debian recipes (`data.corpus` = gettext8 | debian8) can be built on the fly; any other
  corpus must exist (`xlm-jax data build ...` with your own text), and the trainer names the
  command when it is missing.
  """
  import jax
  from xlm_jax.data import derived
  from xlm_jax.data.corpus import RECIPES, resolve_corpus_dir
  if not (config.data.build_if_missing and config.data.corpus in RECIPES):
    return
  if jax.process_index() == 0:
    from data_prep import build as corpus_build
    # Derived languages ("en_trans") are made from a built language on first use, not built here.
    base_languages = tuple(dict.fromkeys(
        derived.split_derived(l)[0] if derived.is_derived(l) else l for l in config.data.languages))
    corpus_build.ensure_corpus(resolve_corpus_dir(config.data.corpus_dir, config.data.corpus),
                               languages=base_languages, build_if_missing=True,
                               vocab_size=config.data.vocab_size, seed=config.seed,
                               recipe=config.data.corpus)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("corpus ready")  # other hosts wait for host 0's build


def cmd_train(args, overrides) -> int:
  from xlm_jax import config as config_lib
  from xlm_jax.evaluation import report
  from xlm_jax.train import workdir as workdir_lib
  from xlm_jax.train.trainer import train_and_evaluate
  workdir = workdir_lib.check_path(args.workdir)  # before a corpus build, not after
  config = config_lib.load_config(args.config, overrides)
  _ensure_corpus(config)
  summary = train_and_evaluate(config, workdir)
  print("\n" + report.table(report.run_summary_rows(summary), title=f"xlm-jax run {args.workdir}"))
  return 0


def cmd_eval(args, overrides) -> int:
  from xlm_jax.evaluation import report
  from xlm_jax.train.workdir_jobs import evaluate_workdir
  restored, results = evaluate_workdir(args.workdir, overrides)
  folder = report.write_eval_report(
      restored.workdir / "eval" / str(restored.step), results,
      {"step": restored.step, "config": restored.config.to_dict(),
       "corpus": restored.meta.get("corpus", ""),
       "corpus_packages": restored.meta.get("corpus_packages", [])})
  print(report.table(sorted(results.items()),
                     title=f"evaluation of {restored.workdir} at step {restored.step}"))
  print(f"\nwritten to {folder}")
  return 0


def cmd_export(args, overrides) -> int:
  from xlm_jax.train.workdir_jobs import export_workdir
  if overrides:
    raise ValueError("xlm-jax export takes no --config overrides: it writes the checkpoint as "
                     "trained (choose the folder with --out)")
  restored, target = export_workdir(args.workdir, args.out, args.format)
  print(f"exported step {restored.step} to {target} ({args.format} format)")
  return 0


def cmd_convert(args, overrides) -> int:
  from xlm_jax.export import hf
  if overrides:
    raise ValueError("xlm-jax convert takes no --config overrides")
  if args.source_format == "hf":
    target = hf.convert_from_hf(args.path, args.out)
    print(f"converted the Hugging Face model {args.path} to the xlm-jax export {target}")
  else:
    target = hf.convert_to_hf(args.path, args.out)
    print(f"converted the xlm-jax export {args.path} to the Hugging Face folder {target}")
  return 0


def cmd_data(args, overrides) -> int:
  from data_prep import build
  return build.build_main(args.data_args) or 0


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = argparse.ArgumentParser(prog="xlm-jax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--log-level", default="WARNING")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("train", help="train (or resume) an experiment, then evaluate and export")
  p.add_argument("--config", required=True, help="experiments/<file>.py[:variant]")
  p.add_argument("--workdir", required=True)
  p = sub.add_parser("eval", help="evaluate the latest checkpoint of a workdir")
  p.add_argument("--workdir", required=True)
  p = sub.add_parser("export", help="export the latest checkpoint of a workdir")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default=None,
                 help="export folder (default <workdir>/export, or <workdir>/export_hf)")
  p.add_argument("--format", default="xlm-jax", choices=("xlm-jax", "hf"),
                 help="xlm-jax (load_pretrained) or hf (an XLMRobertaForMaskedLM folder)")
  p = sub.add_parser("convert", help="convert between Hugging Face XLM-R folders and xlm-jax "
                     "exports")
  p.add_argument("--from", dest="source_format", required=True, choices=("hf", "xlm-jax"),
                 help="what PATH is: a Hugging Face XLM-R folder or an xlm-jax export")
  p.add_argument("path", help="the folder to convert")
  p.add_argument("--out", required=True, help="the folder to write")
  p = sub.add_parser("data", help="build, inspect and derive corpora and tokenizers (`xlm-jax data -h`)",
                     add_help=False)
  p.add_argument("data_args", nargs=argparse.REMAINDER)
  try:
    rest, overrides = _split_overrides(argv)
  except ValueError as e:
    parser.error(str(e))  # usage and the message, exit status 2
  command_at = next((i for i, a in enumerate(rest) if not a.startswith("-")), len(rest))
  if rest[command_at:command_at + 1] == ["data"]:
    # `xlm-jax data ...` hands every later argument (its own -h too) to data_prep's parser.
    args = parser.parse_args(rest[:command_at + 1])
    args.data_args = rest[command_at + 1:]
  else:
    args = parser.parse_args(rest)
  logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
  if overrides and args.command == "data":
    parser.error("--config.* overrides do not apply to `xlm-jax data`")
  commands = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "data": cmd_data,
              "convert": cmd_convert}
  try:
    return commands[args.command](args, overrides)
  except (ValueError, FileNotFoundError) as e:
    # Bad input: one clear line instead of a traceback; --log-level=DEBUG shows the traceback.
    logging.debug("error", exc_info=True)
    print(f"xlm-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
