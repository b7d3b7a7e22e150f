"""Where the time of our MLM train step goes, by part of the model, from a jax.profiler trace.

    python benchmarks/profile_step.py [train_step.py's model flags] [--steps 3] [--json out.json]

Builds the same step as benchmarks/train_step.py (its flags: --layers, --hidden, --seq-len, ...),
traces a few steps with `jax.profiler` and reads the trace back: XLA:CPU records one event per
executed thunk (a fusion, a dot, a copy), named as in the compiled HLO. Each HLO instruction
carries the `op_name` of the JAX operation it came from (`jvp(Model)/encoder/layer_3/attention/...`
forward, `transpose(jvp(Model))/...` backward), which puts it in one part: attention projections,
attention core (scores, mask, softmax, probabilities' dropout, weighted sum), FFN, GELU, dropout,
LayerNorm, embeddings, the MLM head (vocabulary logits at the masked positions, loss), masking
(choosing and replacing the masked tokens) and the optimizer (clipping and AdamW, outside the
gradient). The table gives each part's wall time and share, its thunk time, and its dots' FLOPs
and the part's FLOP rate over its wall time.

XLA:CPU runs independent thunks concurrently, and two thunks that share the cores each take
longer, so thunk durations add up to more than the wall time. Wall time is attributed by
splitting every instant evenly among the thunks running then, and a plain dot's queued work to
the dot (`wall_shares`). Other processes on the machine inflate every number: run it on
a quiet machine, and compare shares rather than milliseconds.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

import jax

import train_step  # benchmarks/ is on sys.path[0]

# (part, test on the op_name) in order: the first match wins. The order matters where names
# nest: a dot inside `attention/query` is a projection, everything else in `attention` the core.
PARTS = (
    ("head", lambda o: any(k in o for k in ("lm_head", "log_softmax", "take_along_axis",
                                            "masked_lm_loss"))),
    ("masking", lambda o: "mlm_mask" in o or ("Model" not in o and ("_randint" in o
                                                                     or "_uniform" in o))),
    ("attention projections", lambda o: re.search(r"attention/(query|key|value|out)/", o)),
    ("attention core", lambda o: "/attention/" in o),
    ("ffn", lambda o: re.search(r"/(intermediate|output)/", o)),
    ("gelu", lambda o: "Model" in o and any(k in o for k in ("erf", "gelu"))),
    ("dropout", lambda o: "Dropout" in o),
    ("layernorm", lambda o: "layer_norm" in o),
    ("embeddings", lambda o: "embeddings" in o),
    ("other model", lambda o: "Model" in o),
    ("optimizer and rest", lambda o: True),
)


def part_of(op_name: str) -> str:
  return next(part for part, test in PARTS if test(op_name))


DOT = re.compile(r"= f\d+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %[\w.\-]+\), "
                 r"(?:lhs_batch_dims=\{[\d,]*\}, )?lhs_contracting_dims=\{([\d,]+)\}")


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, float, str]]:
  """instruction name -> (op_name, FLOPs of the dots it runs: its own, or its fusion's, opcode)."""
  bodies = {m.group(1): m.group(2) for m in
            re.finditer(r"^%([\w.\-]+) (.*?\n)}\n", hlo_text, re.M | re.S)}
  # Instruction names are unique in the module, so one table serves every computation.
  shapes = {m.group(1): [int(d) for d in m.group(2).split(",") if d]
            for m in re.finditer(r"%([\w.\-]+) = f\d+\[([\d,]*)\]", hlo_text)}
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+ ([\w\-]+)\(.*)$", hlo_text, re.M):
    name, line, opcode = m.groups()
    op_name = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%([\w.\-]+)", line)
    dots = "= " + line if opcode == "dot" else bodies.get(calls.group(1), "") if calls else ""
    out[name] = (op_name.group(1) if op_name else "", dot_flops(dots, shapes), opcode)
  return out


def dot_flops(text: str, shapes: dict[str, list[int]]) -> float:
  """FLOPs of the dots in `text`: 2 x output elements x the contracted size."""
  flops = 0.0
  for m in DOT.finditer(text):
    out_dims, lhs, contracting = m.groups()
    out_elems = 1
    for d in (int(d) for d in out_dims.split(",") if d):
      out_elems *= d
    lhs_shape = shapes[lhs]
    contracted = 1
    for axis in (int(a) for a in contracting.split(",")):
      contracted *= lhs_shape[axis]
    flops += 2.0 * out_elems * contracted
  return flops


def trace_steps(side, steps: int, folder: pathlib.Path) -> float:
  """Runs `steps` traced steps; returns their wall seconds."""
  jax.profiler.start_trace(str(folder), create_perfetto_trace=True)
  start = time.perf_counter()
  side.run(steps)
  wall = time.perf_counter() - start
  jax.profiler.stop_trace()
  return wall


def thunk_events(folder: pathlib.Path) -> list[dict]:
  traces = sorted(folder.glob("**/*.trace.json.gz"))
  if not traces:
    raise SystemExit(f"profile_step: jax.profiler wrote no perfetto trace under {folder}")
  with gzip.open(traces[-1]) as f:
    return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def wall_shares(spans: list[tuple[float, float, str, bool]]) -> collections.Counter:
  """Wall time of each part: every instant is split evenly among the thunks running then.

  XLA:CPU runs independent thunks concurrently, and two dots that share the cores each take
  about twice as long as either alone: their durations would count that wall time twice. A plain
  `dot` thunk (one XLA:CPU does not hand to YNNPACK, such as a weight gradient whose operand is
  transposed) returns once its work is queued on the thread pool, so its event ends before the
  work does: the idle stretch after it, until the next thunk starts, is its compute and is
  given to its part.
  """
  edges = sorted({t for start, end, _, _ in spans for t in (start, end)})
  starts = collections.defaultdict(list)
  for start, end, part, is_dot in spans:
    starts[start].append((end, part, is_dot))
  running, shares, last = [], collections.Counter(), None
  for left, right in zip(edges, edges[1:]):
    running = [r for r in running if r[0] > left] + starts.get(left, [])
    for _, part, _ in running:
      shares[part] += (right - left) / len(running)
    if running:
      last = max(running, key=lambda r: r[0])
    elif last is not None:
      shares[last[1] if last[2] else "idle between thunks"] += right - left
  return shares


def breakdown(events: list[dict], instructions: dict, steps: int) -> dict:
  time_us, flops = collections.Counter(), collections.Counter()
  dot_time_us = collections.Counter()
  spans = []
  for event in events:
    known = instructions.get(event["name"])
    if known is None:
      continue  # runtime bookkeeping (executor, thread pool), not an HLO instruction
    op_name, f, opcode = known
    part = part_of(op_name)
    time_us[part] += event["dur"]
    spans.append((event["ts"], event["ts"] + event["dur"], part, opcode == "dot"))
    if f:
      flops[part] += f
      dot_time_us[part] += event["dur"]
  wall_us = wall_shares(spans)
  covered = sum(wall_us.values())
  rows = []
  for part in [part for part, _ in PARTS] + ["idle between thunks"]:
    if not wall_us[part]:
      continue
    rows.append({"part": part, "wall_ms_per_step": wall_us[part] / 1e3 / steps,
                 "wall_share": wall_us[part] / covered,
                 "thunk_ms_per_step": time_us[part] / 1e3 / steps,
                 "dot_gflop_per_step": flops[part] / 1e9 / steps,
                 "dot_gflops": (flops[part] / (wall_us[part] / 1e6) / 1e9
                                if flops[part] else None)})
  return {"thunk_ms_per_step": sum(time_us.values()) / 1e3 / steps,
          "covered_ms_per_step": covered / 1e3 / steps, "rows": rows}


def print_table(result: dict) -> None:
  print(f"\nwall {result['wall_ms_per_step']:.0f} ms/step, {result['covered_ms_per_step']:.0f} "
        f"of it from the first thunk to the last; thunk durations add up to "
        f"{result['thunk_ms_per_step']:.0f} (two can run at once)")
  print(f"{'part':24s} {'wall ms':>8s} {'share':>7s} {'thunk ms':>9s} {'dot GFLOP':>10s} "
        f"{'GFLOP/s':>8s}")
  for row in result["rows"]:
    rate = f"{row['dot_gflops']:.0f}" if row["dot_gflops"] else "-"
    print(f"{row['part']:24s} {row['wall_ms_per_step']:8.1f} {100 * row['wall_share']:6.1f}% "
          f"{row['thunk_ms_per_step']:9.1f} {row['dot_gflop_per_step']:10.2f} {rate:>8s}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--json", type=pathlib.Path, default=None)
  own, rest = parser.parse_known_args(argv)
  if own.steps < 1:
    parser.error("--steps must be >= 1")
  args = train_step.parse_args(rest)
  # Compiled as in the timed benchmark (the trainer's own jit of the step), then warmed up.
  side = train_step.OurSide(args, jax.devices("cpu")[0])
  side.run(args.warmup_steps)
  instructions = hlo_instructions(side.step.as_text())
  with tempfile.TemporaryDirectory() as folder:
    wall = trace_steps(side, own.steps, pathlib.Path(folder))
    events = thunk_events(pathlib.Path(folder))
  result = breakdown(events, instructions, own.steps)
  result["wall_ms_per_step"] = wall * 1e3 / own.steps
  result["config"] = {k: getattr(args, k) for k in ("layers", "hidden", "heads", "ffn", "vocab",
                                                    "seq_len", "batch", "dtype", "dropout")}
  print_table(result)
  if own.json:
    own.json.write_text(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
