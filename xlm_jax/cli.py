"""`xlm-jax` command line: train, eval, export and data preparation.

    xlm-jax train  --config experiments/quickstart.py[:variant] --workdir DIR [--config.f=v ...]
    xlm-jax eval   --workdir DIR [--config.f=v ...]
    xlm-jax eval   --model PATH|tfidf [--tasks all|retrieval,mining,...] [--out DIR]
                   [--corpus-dir DIR] [--languages en de ...] [--pooling P] [--layer N]
    xlm-jax plot   --workdir DIR [--out DIR]
    xlm-jax export --workdir DIR [--out DIR] [--format xlm-jax|hf]
    xlm-jax convert --from hf|xlm-jax PATH --out DIR
    xlm-jax finetune --model PATH --task classify|tag [--data corpus|tfds:NAME|DIR]
                   [--tfds-data-dir DIR] [--languages de fr ...] --workdir DIR [--config.f=v ...]
    xlm-jax data   build|stats|inspect|tokenizers|derive [...]
    xlm-jax compile --config experiments/xlmr_mlm.py:base --topology v5e-256|v5p-128|v4-32|v6e-64
                   [--config.f=v ...]
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
    # A recipe's folder is shared by every run that names the recipe, so a first build makes the
    # recipe's whole language set (and any other language this run asks for), not only this
    # run's: a first run on en/fr must not leave a corpus that the next run on 8 languages
    # cannot open, with a tokenizer trained on 2 languages under the 8-language corpus's name.
    recipe_languages = tuple(dict.fromkeys(corpus_build.DEFAULT_LANGUAGES + base_languages))
    corpus_build.ensure_corpus(resolve_corpus_dir(config.data.corpus_dir, config.data.corpus),
                               languages=base_languages, build_languages=recipe_languages,
                               build_if_missing=True,
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
  if args.model is not None:
    return _eval_model(args, overrides)
  given = [flag for flag, value in (("--tasks", args.tasks), ("--out", args.out),
                                    ("--corpus-dir", args.corpus_dir),
                                    ("--languages", args.languages), ("--pooling", args.pooling),
                                    ("--layer", args.layer)) if value is not None]
  if given:
    raise ValueError(f"{', '.join(given)} apply to `xlm-jax eval --model PATH`; `--workdir` runs "
                     "the workdir's own evaluators (eval.evaluators) on its stored sets. For the "
                     "suite on a workdir's latest checkpoint, pass --model WORKDIR")
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


# `xlm-jax eval --model`: the config fields it reads; any other override is refused.
_SUITE_FIELDS = ("data.corpus", "data.corpus_dir", "data.languages", "seed", "eval.", "mesh.")
# The corpus of `--model` runs: the one with every task's sets (BLI dictionaries, the
# classification task, multi-way retrieval items), whatever corpus the model was trained on.
SUITE_CORPUS = "debian8"


def _suite_config(args, overrides, tasks):
  """default_config() with the suite's corpus, the flags and the overrides applied and checked."""
  from xlm_jax import config as config_lib
  outside = [o for o in overrides if not o.split("=", 1)[0].startswith(_SUITE_FIELDS)]
  if outside:
    raise ValueError(f"--config.{outside[0]} does not apply to `xlm-jax eval --model`; it reads "
                     "data.corpus, data.corpus_dir, data.languages, seed, eval.* and mesh.*")
  config = config_lib.default_config()
  config.data.corpus = SUITE_CORPUS
  # The pivot check of the config (every language is paired with English) reads the evaluators.
  config.eval.evaluators = tuple(dict.fromkeys(t.evaluator for t in tasks))
  if args.corpus_dir is not None:
    config.data.corpus_dir = args.corpus_dir
  if args.languages is not None:
    config.data.languages = tuple(args.languages)
  if args.pooling is not None:
    config.eval.pooling = args.pooling
  if args.layer is not None:
    config.eval.layer = args.layer
    if args.pooling is None:
      config.eval.pooling = "layer"  # --layer N alone means "mean of hidden state N"
  config_lib.apply_overrides(config, overrides, source="xlm-jax eval --model")
  return config


def _load_eval_model(path: str):
  """(kind, name, Pretrained or None, info) of `--model PATH`, the kind told by the files."""
  import pathlib
  from xlm_jax.evaluation import suite
  if path == suite.TFIDF:
    return suite.TFIDF, suite.TFIDF, None, {"kind": suite.TFIDF, "path": "", "name": suite.TFIDF}
  from xlm_jax.train.workdir_jobs import load_model
  folder = pathlib.Path(path).expanduser()
  kind, pretrained, extra = load_model(
      folder, other_kinds=f"{suite.TFIDF!r} (the character n-gram baseline)")
  name = folder.resolve().name
  # `<workdir>/export` is the usual place: "export" alone would not say whose.
  if kind == "xlm-jax export" and name in ("export", "export_hf"):
    name = f"{folder.resolve().parent.name}-{name}"
  elif kind == "workdir":
    name = f"{name}-step{extra['step']}"
  info = {"kind": kind, "path": str(folder.resolve()), "name": name,
          "config": pretrained.model.config.to_dict(),
          "languages": list(pretrained.config.get("languages", [])), **extra}
  return kind, name, pretrained, info


def _eval_model(args, overrides) -> int:
  """`xlm-jax eval --model PATH`: the evaluation suite (xlm_jax/evaluation/suite.py)."""
  import pathlib
  import shlex
  from xlm_jax.data.corpus import Corpus, build_command, resolve_corpus_dir
  from xlm_jax.evaluation import report, suite
  from xlm_jax.evaluation.base import EvalData
  from xlm_jax import mesh as mesh_lib
  # Every check that reads no model comes first: a typo costs no model load.
  is_tfidf = args.model == suite.TFIDF
  tasks = suite.parse_tasks(args.tasks or "all", tfidf=is_tfidf)
  config = _suite_config(args, overrides, tasks)
  corpus_dir = resolve_corpus_dir(config.data.corpus_dir, config.data.corpus)
  if not (corpus_dir / "manifest.json").is_file():
    recipe = config.data.corpus if not config.data.corpus_dir else None
    raise FileNotFoundError(
        f"corpus {corpus_dir} is not built; build it with `{build_command(corpus_dir, recipe)}` "
        f"(debian8: about 2.5 min), or name a built one with --corpus-dir DIR")
  if args.out is not None:
    suite.check_out_dir(args.out)  # before minutes of work, not after
  corpus = Corpus(corpus_dir)
  kind, name, pretrained, info = _load_eval_model(args.model)
  explicit = args.languages is not None or any(o.startswith("data.languages=") for o in overrides)
  languages = suite.eval_languages(config.data.languages if explicit else None, corpus.languages,
                                   info.get("languages", []))
  if is_tfidf:
    model = suite.tfidf_eval_model(corpus, languages)
    info["config"] = vars(model.config)
  else:
    # Sharded as training shards (config.mesh, default: all devices on the data axis); a model
    # too big for one chip takes --config.mesh.fsdp=-1 --config.mesh.data=1.
    mesh = mesh_lib.make_mesh(config.mesh)
    if mesh.size > 1:
      pretrained = pretrained.shard(mesh, mesh_lib.logical_rules(config.mesh))
      info["mesh"] = dict(mesh.shape)
    model = suite.encoder_eval_model(pretrained)
  skipped = {}
  if is_tfidf and (args.tasks or "all") == "all":
    skipped = {t.name: f"the {suite.TFIDF} baseline has no {t.name} analogue"
               for t in suite.TASKS.values() if not t.tfidf}
  elif not is_tfidf:
    unfit = suite.not_applicable(tasks, pretrained.model.config)
    if unfit and (args.tasks or "all") != "all":
      name, reason = next(iter(unfit.items()))
      raise ValueError(f"task {name!r} does not run on {args.model}: {reason}")
    # Under "all" such a task is listed as not run, and the others run.
    skipped, tasks = unfit, [t for t in tasks if t.name not in unfit]
  data = EvalData(corpus=corpus, tokenizer=None if pretrained is None else pretrained.tokenizer,
                  languages=languages, seed=config.seed, alpha=config.data.alpha,
                  model_config=None if pretrained is None else pretrained.model.config,
                  eval_config=config.eval)
  out = pathlib.Path(args.out or pathlib.Path("eval_results") / name)
  # The command as parsed (flags in one order, every override kept): it reruns this evaluation.
  words = ["xlm-jax", "eval", "--model", args.model, "--tasks", args.tasks or "all"]
  for flag, value in (("--corpus-dir", args.corpus_dir), ("--pooling", args.pooling),
                      ("--layer", args.layer), ("--out", args.out)):
    if value is not None:
      words += [flag, str(value)]
  if args.languages is not None:
    words += ["--languages", *args.languages]
  command = shlex.join(words + [f"--config.{o}" for o in overrides])
  document = suite.run_suite(tasks, model, data, out, command, info, progress=True,
                             skipped=skipped)
  timing = document["timing"]
  rows = [(f"{task} seconds", t["seconds"]) for task, t in timing["tasks"].items()
          if "seconds" in t]
  rows += [("total seconds", timing["total_seconds"]),
           ("encode sentences/s", timing["sentences_per_second"] or 0.0)]
  # The headline numbers: each task's means (per-language rows are in results.md).
  rows += sorted((k, v) for k, v in document["results"].items()
                 if k.count("/") == 1 and "/mean_" in k)
  print(report.table(rows, title=f"evaluation suite: {name} ({kind}) on {corpus_dir.name}"))
  print(f"\nwritten to {out}")
  return 0


def cmd_plot(args, overrides) -> int:
  """`xlm-jax plot --workdir W`: training curves of W/metrics.jsonl as a PNG."""
  import pathlib
  from xlm_jax.atomic_files import write_directory_atomically
  from xlm_jax.evaluation import plots
  if overrides:
    raise ValueError("xlm-jax plot takes no --config overrides")
  workdir = pathlib.Path(args.workdir).expanduser()
  metrics_file = workdir / "metrics.jsonl"
  if not metrics_file.is_file():
    raise FileNotFoundError(f"{metrics_file} not found: {workdir} is not a workdir that has "
                            "logged training metrics (`xlm-jax train --workdir ...` writes it)")
  png = plots.training_curves(metrics_file, title=f"training run {workdir.resolve().name}")
  if png is None:
    raise ValueError(f"{metrics_file} holds no training metrics (train/loss, ...) to plot")
  out = pathlib.Path(args.out).expanduser() if args.out else workdir / "plots"
  write_directory_atomically(out, {"training_curves.png": png},
                             markers=("training_curves.png",), what="xlm-jax plot folder")
  print(f"written to {out / 'training_curves.png'}")
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


def cmd_finetune(args, overrides) -> int:
  from xlm_jax.train import finetune as finetune_lib
  from xlm_jax.train import workdir as workdir_lib
  workdir = workdir_lib.check_path(args.workdir)  # before the model is read
  # The command's flags set config fields; --config.* overrides may set any other.
  fields = {"model": (args.model, "--model"), "data.source": (args.data, "--data")}
  if args.tfds_data_dir:
    fields["data.tfds_data_dir"] = (args.tfds_data_dir, "--tfds-data-dir")
  if args.languages:
    languages = tuple(l for item in args.languages for l in item.split(",") if l)
    fields["data.languages"] = (languages, "--languages")
  config = finetune_lib.make_config(args.task, overrides, fields)
  results = finetune_lib.finetune(config, workdir)
  if results.get("preempted"):
    print(f"stopped at step {results['step']} of {results['steps']} (checkpointed); run the same "
          "command again to resume")
    return 0
  print((workdir / finetune_lib.RESULTS_MD).read_text(encoding="utf-8"))
  print(f"written to {workdir / finetune_lib.RESULTS_FILE}")
  return 0


def cmd_compile(args, overrides) -> int:
  """`xlm-jax compile`: every jitted step of the run compiled for a TPU slice, with memory per
  chip, FLOPs and collectives (xlm_jax/train/compile.py). Needs libtpu, not a TPU."""
  from xlm_jax import config as config_lib
  from xlm_jax.train import compile as compile_lib
  topology = compile_lib.parse_topology(args.topology)  # the cheap checks first
  compile_lib.require_libtpu()
  compile_lib.prepare_compile_process(topology)
  config = config_lib.load_config(args.config, overrides)
  report = compile_lib.compile_run(config, topology, args.config,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
  print(compile_lib.format_report(report))
  return compile_lib.exit_status(report)


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
  p = sub.add_parser("eval", help="evaluate a workdir's latest checkpoint with its own evaluators, "
                     "or run the evaluation suite on any model (--model)")
  target = p.add_mutually_exclusive_group(required=True)
  target.add_argument("--workdir", help="run the workdir's eval.evaluators on its stored sets -> "
                      "WORKDIR/eval/<step>/")
  target.add_argument("--model", help="the suite on PATH: an xlm-jax export, a workdir (latest "
                      "checkpoint), a Hugging Face XLM-R folder, or 'tfidf' (the character "
                      "n-gram baseline)")
  p.add_argument("--tasks", default=None, help="'all' (default) or some of retrieval, mining, bli, "
                 "classify, cka, layers, geometry, alignment, comma-separated (--model only)")
  p.add_argument("--out", default=None, help="results folder (default eval_results/<model name>; "
                 "--model only)")
  p.add_argument("--corpus-dir", default=None, help="the corpus the sets are read from (default "
                 "the debian8 corpus, ~/.cache/xlm_jax/data/debian8; --model only)")
  p.add_argument("--languages", nargs="+", default=None, help="languages to evaluate, 'en' "
                 "among them (default: the corpus's languages the model knows; --model only)")
  p.add_argument("--pooling", default=None, choices=("mean", "cls", "layer"),
                 help="sentence vector: mean of the last layer (default), <s>, or a layer's mean")
  p.add_argument("--layer", default=None, type=int,
                 help="hidden state of --pooling layer (0 = embeddings, -1 = last)")
  p = sub.add_parser("plot", help="training curves of a workdir's metrics.jsonl as a PNG")
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", default=None,
                 help="folder of training_curves.png (default WORKDIR/plots)")
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
  p = sub.add_parser("finetune", help="fine-tune an encoder and a task head on English (XTREME "
                     "defaults), select on English dev, score every language")
  p.add_argument("--model", required=True, help="an xlm-jax export, a Hugging Face XLM-R folder "
                 "or a pretraining workdir")
  p.add_argument("--task", required=True, choices=("classify", "tag"),
                 help="sentence (pair) classification or word tagging")
  p.add_argument("--data", default="corpus", help="'corpus' (the debian8 corpus's LibreOffice "
                 "help modules; the default), tfds:xnli|paws_x_wiki|xtreme_pawsx|wikiann|"
                 "xtreme_pos (prepared TFDS data), or a folder of TSV/CoNLL files")
  p.add_argument("--tfds-data-dir", default="", help="where the TFDS data is prepared (default "
                 "$TFDS_DATA_DIR or ~/tensorflow_datasets); never downloaded")
  p.add_argument("--languages", nargs="+", default=None, help="test languages (default: every "
                 "language of the data the model knows)")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics and results.{json,md}; "
                 "rerun to resume")
  p = sub.add_parser("compile", help="compile every jitted step of an experiment for a TPU slice "
                     "ahead of time (needs libtpu, not a TPU): memory per chip, FLOPs, "
                     "collectives, and whether it fits")
  p.add_argument("--config", required=True, help="experiments/<file>.py[:variant]")
  p.add_argument("--topology", required=True, help="a Cloud TPU accelerator type (v5e-256, "
                 "v5p-128, v4-32, v6e-64) or a slice shape (v5e:16x16, v5p:4x4x12)")
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
              "convert": cmd_convert, "plot": cmd_plot, "finetune": cmd_finetune,
              "compile": cmd_compile}
  try:
    return commands[args.command](args, overrides)
  except (ValueError, FileNotFoundError) as e:
    # Bad input: one clear line instead of a traceback; --log-level=DEBUG shows the traceback.
    logging.debug("error", exc_info=True)
    print(f"xlm-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
