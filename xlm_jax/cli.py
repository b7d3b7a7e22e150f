"""`xlm-jax` command line: train, eval, export and data preparation.

    xlm-jax train  --config experiments/quickstart.py[:variant] --workdir DIR [--config.f=v ...]
    xlm-jax eval   --workdir DIR [--config.f=v ...]
    xlm-jax export --workdir DIR [--out DIR]
    xlm-jax data   build|stats|inspect|tokenizers|derive [...]
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

_OVERRIDE_PREFIX = "--config."


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.a.b=v` (or `--config.a.b v`) overrides from the other arguments."""
  rest, overrides, i = [], [], 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_OVERRIDE_PREFIX):
      item = arg[len(_OVERRIDE_PREFIX):]
      if "=" not in item and i + 1 < len(argv):
        item, i = f"{item}={argv[i + 1]}", i + 1
      overrides.append(item)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _workdir_config(workdir: pathlib.Path, overrides: list[str]):
  from xlm_jax import config as config_lib
  import ml_collections
  path = workdir / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {workdir} is not a training workdir "
                            "(run `xlm-jax train --config ... --workdir` first)")
  config = config_lib.validate(ml_collections.ConfigDict(json.loads(path.read_text())),
                               source=str(path))
  for item in overrides:
    config_lib.apply_override(config, item)
  return config


def _restored_run(workdir: pathlib.Path, overrides: list[str]):
  """A Run for an existing workdir with the latest checkpoint's state (no data iterators)."""
  from xlm_jax.train import checkpoint as ckpt_lib
  from xlm_jax.train import experiment
  run = experiment.build_run(_workdir_config(workdir, overrides), workdir, with_data=False)
  step = run.checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {run.checkpointer.directory}; train first")
  meta = run.checkpointer.read_meta(step)
  ckpt_lib.check_same_model(meta["model"], run.model_config.to_dict(), run.checkpointer.directory)
  run.state = run.checkpointer.restore(step, run.abstract_state)
  return run, step


def cmd_train(args, overrides) -> int:
  from xlm_jax import config as config_lib
  from xlm_jax.evaluation import report
  from xlm_jax.train.trainer import train_and_evaluate
  config = config_lib.load_config(args.config, overrides)
  summary = train_and_evaluate(config, pathlib.Path(args.workdir))
  print("\n" + report.table(report.run_summary_rows(summary), title=f"xlm-jax run {args.workdir}"))
  return 0


def cmd_eval(args, overrides) -> int:
  import jax
  from xlm_jax.evaluation import report
  workdir = pathlib.Path(args.workdir)
  run, step = _restored_run(workdir, overrides)
  results = run.evaluate_all(run.state)  # every host takes part in the evaluation ...
  if jax.process_index() == 0:           # ... and one writes the report
    folder = report.write_eval_report(workdir / "eval" / str(step), results,
                                      {"step": step, "config": run.config.to_dict(),
                                       "manifest": run.corpus.manifest})
    print(report.table(sorted(results.items()), title=f"evaluation of {workdir} at step {step}"))
    print(f"\nwritten to {folder}")
  run.checkpointer.close()
  return 0


def cmd_export(args, overrides) -> int:
  workdir = pathlib.Path(args.workdir)
  run, step = _restored_run(workdir, overrides)
  target = run.export(run.state, args.out)
  run.checkpointer.close()
  print(f"exported step {step} to {target}")
  return 0


def cmd_data(args, overrides) -> int:
  from data_prep import build
  return build.build_main(args.data_args) or 0


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest, overrides = _split_overrides(argv)
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
  p.add_argument("--out", default=None, help="export folder (default <workdir>/export)")
  p = sub.add_parser("data", help="build, inspect and derive corpora and tokenizers (`xlm-jax data -h`)",
                     add_help=False)
  p.add_argument("data_args", nargs=argparse.REMAINDER)
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
  commands = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "data": cmd_data}
  try:
    return commands[args.command](args, overrides)
  except (ValueError, FileNotFoundError) as e:
    # Bad input: one clear line instead of a traceback; --log-level=DEBUG shows the traceback.
    logging.debug("error", exc_info=True)
    print(f"xlm-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
