"""Does the grain input pipeline feed batches >= 10x faster than the quickstart train step eats them?

One run, on one built corpus, alternating in rounds so both sides see the same machine conditions:

  (a) step: the quickstart's real train step (experiments/quickstart.py, its pieces built by
      benchmarks/run_pieces.py with xlm_jax/train/trainer.py's own functions and jitted by
      `trainer.jit_update_steps` with the state donated, as training does), timed on batches
      already on the device: the rate at which training consumes batches when input costs nothing.
  (b) pipeline: `make_batch_dataset("mono", config, ...)`, the iterator training reads, with the same
      per-host batch size and seq_len, iterated only (no training) after a short warm-up.

  python benchmarks/input_pipeline.py --corpus-dir ~/.cache/xlm_jax/data/gettext8 \
    --rounds 3 --steps 20 --num-batches 200 --json /tmp/input_pipeline.json

The default corpus is the quickstart's (`$XLM_JAX_DATA_DIR/gettext8`, else
~/.cache/xlm_jax/data/gettext8); it is never built here (`xlm-jax data build` builds it).
`--set field=value` overrides the quickstart config (e.g. `--set data.packing=segments`).

`--pipeline-only` keeps the older pipeline-only measurement with its own shape flags:

  python benchmarks/input_pipeline.py --pipeline-only --corpus-dir ~/.cache/xlm_jax/data/gettext8 \
    --seq-len 128 --batch-size 32 --packing stream --num-batches 200
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import numpy as np

import run_pieces  # benchmarks/ is on sys.path[0]
from machine_load import machine_busy_seconds

REPO = pathlib.Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "experiments" / "quickstart.py"
TARGET = 10.0


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus-dir", type=pathlib.Path, default=None,
                      help="built corpus; default: the quickstart's (gettext8 under the data dir)")
  parser.add_argument("--num-batches", type=int, default=200, help="timed pipeline batches (per round)")
  parser.add_argument("--warmup-batches", type=int, default=20, help="untimed pipeline batches (per round)")
  parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the numbers here")
  # The step-vs-pipeline comparison (default mode).
  parser.add_argument("--config", default=str(QUICKSTART), help="experiment config (path.py[:variant])")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                      help="config override, as --config.FIELD=VALUE on the CLI (repeatable)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=20, help="timed train steps per round")
  parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--device-batches", type=int, default=8,
                      help="distinct batches put on the device before timing the step (cycled)")
  # The pipeline-only mode and its shape flags.
  parser.add_argument("--pipeline-only", action="store_true",
                      help="only time the pipeline, with the shape flags below")
  shape = {"split": "train", "languages": "", "seq_len": 128, "batch_size": 32, "packing": "stream",
           "alpha": 0.3, "tokenize_chunk": 512, "read_threads": 1, "prefetch": 4}
  parser.add_argument("--split", default=None, help=f"default {shape['split']}")
  parser.add_argument("--languages", default=None, help="comma-separated; default: all in the manifest")
  parser.add_argument("--seq-len", type=int, default=None, help=f"default {shape['seq_len']}")
  parser.add_argument("--batch-size", type=int, default=None, help=f"default {shape['batch_size']}")
  parser.add_argument("--packing", choices=("stream", "segments"), default=None, help="default stream")
  parser.add_argument("--alpha", type=float, default=None, help=f"default {shape['alpha']}")
  parser.add_argument("--tokenize-chunk", type=int, default=None, help=f"default {shape['tokenize_chunk']}")
  parser.add_argument("--read-threads", type=int, default=None, help=f"default {shape['read_threads']}")
  parser.add_argument("--prefetch", type=int, default=None, help=f"default {shape['prefetch']}")
  args = parser.parse_args(argv)
  used = [name for name in shape if getattr(args, name) is not None]
  if args.pipeline_only:
    for name, default in shape.items():
      if getattr(args, name) is None:
        setattr(args, name, default)
  elif used:
    flags = ", ".join("--" + name.replace("_", "-") for name in used)
    parser.error(f"{flags}: only with --pipeline-only. The comparison takes its shapes from the config; "
                 "change them with --set (e.g. --set train.batch_size=64)")
  return args


# ---------------------------------------------------------------------------------------------
# Measurement helpers.
# ---------------------------------------------------------------------------------------------


class Sampler:
  """Wall and CPU seconds of a timed phase, and the share of the machine other processes took."""

  def __enter__(self):
    self.busy, self.cpu, self.start = machine_busy_seconds(), time.process_time(), time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.wall = time.perf_counter() - self.start
    self.own_cpu = time.process_time() - self.cpu  # all threads of this process
    self.others = None
    if self.busy is not None:
      self.others = max(0.0, machine_busy_seconds() - self.busy - self.own_cpu) / (self.wall * os.cpu_count())
    return False


def measure(iterator, num_batches: int, warmup_batches: int) -> dict[str, float]:
  """Times `num_batches` batches after `warmup_batches` (thread start-up, first tokenizer calls)."""
  for _ in range(warmup_batches):
    next(iterator)
  tokens = real_tokens = 0
  with Sampler() as s:
    for _ in range(num_batches):
      batch = next(iterator)
      tokens += batch["input_ids"].size
      real_tokens += int(np.count_nonzero(batch["segment_ids"]))
  return {"seconds": s.wall, "batches_per_s": num_batches / s.wall, "tokens_per_s": tokens / s.wall,
          "real_tokens_per_s": real_tokens / s.wall, "padding": 1.0 - real_tokens / max(tokens, 1),
          "cpu_seconds": s.own_cpu, "others_share": s.others}


# ---------------------------------------------------------------------------------------------
# Pipeline-only mode (the original measurement).
# ---------------------------------------------------------------------------------------------


def pipeline_only(args) -> int:
  from xlm_jax.data import pipeline
  from xlm_jax.data.corpus import Corpus, resolve_corpus_dir
  corpus_dir = resolve_corpus_dir(args.corpus_dir or "")
  check_corpus(corpus_dir)
  corpus = Corpus(corpus_dir)
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
  print(f"corpus {corpus_dir} split={args.split} languages={','.join(languages)}")
  print(f"packing={args.packing} seq_len={args.seq_len} batch_size={args.batch_size} "
        f"tokenize_chunk={args.tokenize_chunk} read_threads={args.read_threads} prefetch={args.prefetch}")
  print(f"{args.num_batches} batches in {result['seconds']:.2f} s: {result['batches_per_s']:.1f} batches/s, "
        f"{result['tokens_per_s']:,.0f} tokens/s ({result['real_tokens_per_s']:,.0f} non-pad, "
        f"padding {result['padding']:.1%})")
  print(f"feeds a train step of >= {TARGET / result['batches_per_s']:.3f} s/batch with {TARGET:.0f}x headroom")
  if args.json:
    args.json.write_text(json.dumps({"mode": "pipeline-only", "config": {
        k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()},
        "pipeline": result}, indent=2) + "\n")
  return 0


# ---------------------------------------------------------------------------------------------
# The comparison: quickstart train step against the pipeline that feeds it.
# ---------------------------------------------------------------------------------------------


def check_corpus(path: pathlib.Path) -> None:
  if not (path / "manifest.json").is_file():
    sys.exit(f"input_pipeline.py: no built corpus at {path} (no manifest.json). Build it first with "
             f"`xlm-jax data build` (the quickstart's gettext8), or pass --corpus-dir.")


def load_quickstart(args):
  from xlm_jax.config import load_config
  from xlm_jax.data.corpus import resolve_corpus_dir
  config = load_config(args.config, list(args.set))
  corpus_dir = args.corpus_dir or resolve_corpus_dir(config.data.corpus_dir, config.data.corpus)
  check_corpus(corpus_dir)
  from xlm_jax.config import apply_override
  apply_override(config, f"data.corpus_dir={str(corpus_dir)!r}")
  apply_override(config, "data.build_if_missing=False")
  return config


class StepSide:
  """The real train step, built as xlm_jax/train/trainer.py builds it, fed pre-fetched device batches.

  The objective groups are those of the run's first stage (the quickstart has one: mlm), drawn
  per step by `trainer.group_for_step` as training draws them. The train state is held here,
  passed to and returned by the jitted steps, which donate it.
  """

  def __init__(self, config, args):
    import jax
    self.jax = jax
    pieces, self.state = run_pieces.build_pieces(config, with_data=True)
    self.pieces = pieces
    self.groups = pieces.stages[0].groups
    self.steps = [run_pieces.jit_group(pieces, group) for group in self.groups]
    # Device batches from the run's own training iterator, drawn before any timing; then the
    # iterator's threads are stopped so they take no CPU from the step.
    self.batches = [[run_pieces.next_batches(pieces, group) for _ in range(args.device_batches)]
                    for group in self.groups]
    jax.block_until_ready(self.batches)
    run_pieces.close(pieces)
    self.step = 0
    with Sampler() as s:
      self._run(1)  # compiles
    self.compile_seconds = s.wall
    self._run(args.warmup_steps)

  def _run(self, n: int):
    from xlm_jax.train import trainer
    metrics = None
    for _ in range(n):
      g = run_pieces.group_for_step(self.pieces, self.groups, self.step)
      batch = self.batches[g][self.step % len(self.batches[g])]
      with self.jax.transfer_guard("disallow"):
        self.state, metrics = trainer.run_group(self.steps[g], self.state, batch)
      self.step += 1
    self.jax.block_until_ready((self.state, metrics))
    return metrics

  def timed(self, n: int) -> dict:
    with Sampler() as s:
      metrics = self._run(n)
    return {"steps": n, "seconds": s.wall, "steps_per_s": n / s.wall, "s_per_step": s.wall / n,
            "cpu_seconds": s.own_cpu, "others_share": s.others,
            "loss": float(self.jax.device_get(metrics["loss"]))}

  def close(self):
    run_pieces.close(self.pieces)  # already closed after drawing the batches; closing is idempotent


def compare(args) -> int:
  import jax
  from xlm_jax.train import trainer
  config = load_quickstart(args)
  step = StepSide(config, args)
  try:
    corpus, tokenizer = step.pieces.corpus, step.pieces.tokenizer
    dataset = trainer.make_batch_dataset("mono", config, corpus, tokenizer, "train")
    per_host = config.train.batch_size // jax.process_count()
    print(f"config {args.config} {' '.join(args.set)}".rstrip())
    print(f"corpus {corpus.dir} languages={','.join(config.data.languages)}")
    print(f"batch {per_host} x seq_len {config.data.seq_len}, packing={config.data.packing}, "
          f"read_threads={config.data.prefetch_threads}; model {config.model.num_layers} layers, "
          f"hidden {config.model.hidden_size}; {jax.device_count()} {jax.default_backend()} device(s), "
          f"{os.cpu_count()} CPUs")
    print(f"step compiled in {step.compile_seconds:.1f} s; rounds: {args.steps} steps, then "
          f"{args.warmup_batches} + {args.num_batches} pipeline batches (fresh iterator each round)")
    rounds = []
    for r in range(args.rounds):
      a = step.timed(args.steps)
      iterator = iter(dataset)
      try:
        b = measure(iterator, args.num_batches, args.warmup_batches)
      finally:
        iterator.close()
      ratio = b["batches_per_s"] / a["steps_per_s"]
      rounds.append({"step": a, "pipeline": b, "ratio": ratio})
      others = lambda x: "n/a" if x["others_share"] is None else f"{x['others_share']:.0%}"
      print(f"round {r + 1}: step {a['steps_per_s']:.2f} steps/s ({a['s_per_step'] * 1e3:.0f} ms, "
            f"others {others(a)}, loss {a['loss']:.3f}) | pipeline {b['batches_per_s']:.1f} batches/s "
            f"({b['tokens_per_s']:,.0f} tokens/s, others {others(b)}) | ratio {ratio:.1f}x")
  finally:
    step.close()
  med = lambda key, side: statistics.median(x[side][key] for x in rounds)
  step_rate, pipe_rate = med("steps_per_s", "step"), med("batches_per_s", "pipeline")
  ratio = statistics.median(x["ratio"] for x in rounds)
  ok = ratio >= TARGET
  print(f"median: step {step_rate:.2f} steps/s, pipeline {pipe_rate:.1f} batches/s; "
        f"pipeline/step {ratio:.1f}x (median of per-round ratios; target >= {TARGET:.0f}x: "
        f"{'met' if ok else 'NOT met'})")
  loads = os.getloadavg() if hasattr(os, "getloadavg") else None
  if args.json:
    args.json.write_text(json.dumps({
        "mode": "compare", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": args.config, "overrides": list(args.set), "corpus": str(step.pieces.corpus.dir),
        "batch_size": per_host, "seq_len": config.data.seq_len, "packing": config.data.packing,
        "cpus": os.cpu_count(), "loadavg_end": loads, "compile_seconds": step.compile_seconds,
        "rounds": rounds, "median_steps_per_s": step_rate, "median_batches_per_s": pipe_rate,
        "ratio": ratio, "target": TARGET, "target_met": ok}, indent=2) + "\n")
  return 0


def main(argv=None) -> int:
  args = parse_args(argv)
  return pipeline_only(args) if args.pipeline_only else compare(args)


if __name__ == "__main__":
  sys.exit(main())
