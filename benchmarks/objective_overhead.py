"""Step time of every objective relative to plain MLM, same encoder, same tokens per step, one run.

    python benchmarks/objective_overhead.py [--corpus-dir ~/.cache/xlm_jax/data/debian8] \
      [--rounds 5 --steps-per-round 5] [--json out.json]

Each case is the real jitted update of `xlm_jax/train/trainer.py` (`jit_update_steps`, its pieces
built by benchmarks/run_pieces.py with trainer.py's own functions from the tiny experiment config,
so masks, dictionaries, heads and extra state are the ones training uses) fed with real batches of
its kind from the corpus. Every case sees 32 x 128 = 4096 token slots
per step: mono/parallel/sentences rows of 128, or parallel_pairs sides of 64. Cases take turns
round by round, so all see the same machine conditions; the table gives the median step time and
its ratio to MLM. Input-pipeline time is excluded (batches are drawn before timing), because
benchmarks/input_pipeline.py measures it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import statistics
import sys
import time

import jax

import run_pieces  # benchmarks/ is on sys.path[0]
from machine_load import machine_busy_seconds

from xlm_jax import config as config_lib
from xlm_jax import presets
from xlm_jax.train import trainer

# name -> (objective sections, extra config overrides)
CASES = {
    "mlm": ({"mlm": {}}, {}),
    "tlm": ({"tlm": {}}, {}),
    "dict_mlm target_swap": ({"dict_mlm": {"variant": "target_swap"}}, {}),
    "dict_mlm input_swap": ({"dict_mlm": {"variant": "input_swap"}}, {}),
    "align_mlm (full dictionary)": ({"align_mlm": {}}, {}),
    "mlm_code_switch": ({"mlm_code_switch": {}}, {}),
    "camlm two_pass": ({"camlm": {"camlm_mode": "two_pass"}}, {}),
    "camlm single_pass": ({"camlm": {"camlm_mode": "single_pass"}}, {}),
    "btmlm": ({"btmlm": {}}, {"model.num_languages": 8, "data.sentence_len": 85}),
    "mlm sep_emb + sep_l1_2": ({"mlm": {}}, {"model.num_languages": 8,
                                             "model.separate_embeddings": True,
                                             "model.separate_layers": 2}),
    "ems (xtr + cl)": ({"ems": {}}, {}),
    "emma_x ctl (m_step)": ({"emma_x": {"stage": "ctl", "queue_size": 1024}}, {}),
    "emma_x itr (joint em_step)": ({"emma_x": {"stage": "itr", "queue_size": 1024}}, {}),
}


def case_config(corpus_dir: str, sections: dict, overrides: dict):
  c = config_lib.default_config()
  presets.apply_size(c, "tiny")
  c.data.corpus_dir = corpus_dir
  c.data.build_if_missing = False
  presets.set_objectives(c, **sections)
  c = config_lib.validate(c, source="benchmarks/objective_overhead.py")
  for key, value in overrides.items():
    config_lib.apply_override(c, f"{key}={value}")
  return c


def prepare(config, num_batches: int):
  """Builds the run's pieces, compiles its update and draws `num_batches` batches up front.

  Returns (pieces, fns, batches, state): the state after the first (compiling) step.
  """
  pieces, state = run_pieces.build_pieces(config)
  group = tuple(pieces.bound)
  fns = run_pieces.jit_group(pieces, group)
  batches = [run_pieces.next_batches(pieces, group) for _ in range(num_batches)]
  state, metrics = trainer.run_group(fns, state, batches[0])  # compile + first step
  jax.block_until_ready(metrics)
  return pieces, fns, batches, state


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--corpus-dir", default=os.path.expanduser("~/.cache/xlm_jax/data/debian8"),
                      help="a debian8 corpus (dictionaries are needed by dict_mlm/align_mlm)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps-per-round", type=int, default=5)
  parser.add_argument("--cases", nargs="*", default=list(CASES), help=f"subset of {list(CASES)}")
  parser.add_argument("--json", default="")
  args = parser.parse_args(argv)
  logging.getLogger().setLevel(logging.WARNING)
  unknown = [c for c in args.cases if c not in CASES]
  if unknown:
    parser.error(f"unknown cases {unknown}; known: {list(CASES)}")
  if "mlm" not in args.cases:
    args.cases.insert(0, "mlm")

  prepared, states = {}, {}
  for name in args.cases:
    sections, overrides = CASES[name]
    config = case_config(args.corpus_dir, sections, {"train.progress_bar": False,
                                                      "train.async_checkpointing": False,
                                                      **overrides})
    print(f"compiling {name} ...", file=sys.stderr, flush=True)
    pieces, fns, batches, states[name] = prepare(config, args.steps_per_round)
    prepared[name] = (pieces, fns, batches)

  times = {name: [] for name in args.cases}
  busy = []
  for _ in range(args.rounds):
    for name, (_, fns, batches) in prepared.items():
      busy_start, start = machine_busy_seconds(), time.perf_counter()
      state = states.pop(name)
      for batch in batches:
        state, metrics = trainer.run_group(fns, state, batch)
      jax.block_until_ready(metrics)
      states[name] = state
      elapsed = time.perf_counter() - start
      times[name].append(elapsed / len(batches))
      if busy_start is not None:
        # Our own process uses at most the cores it has; the rest is other load on the machine.
        busy.append((machine_busy_seconds() - busy_start) / elapsed)
  for pieces, _, _ in prepared.values():
    run_pieces.close(pieces)

  base = statistics.median(times["mlm"])
  rows = []
  print(f"\nobjective step time, tiny encoder (2L d128), 4096 token slots/step, median of "
        f"{args.rounds} rounds x {args.steps_per_round} steps")
  print(f"{'case':32s} {'ms/step':>9s} {'vs mlm':>7s}")
  for name in args.cases:
    median = statistics.median(times[name])
    rows.append({"case": name, "ms_per_step": 1e3 * median, "ratio_to_mlm": median / base})
    print(f"{name:32s} {1e3 * median:9.1f} {median / base:7.2f}x")
  if busy:
    print(f"machine busy (all processes, CPU-s per s): median {statistics.median(busy):.2f}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "rounds": args.rounds,
                                                   "steps_per_round": args.steps_per_round},
                                                  indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
