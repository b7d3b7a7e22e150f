"""Memory per chip of XLM-R MLM steps compiled for TPU slices, with and without the model's
activation sharding constraints (models/encoder.py `_constrain`, mesh.tracing_context).

    # in a venv of its own with libtpu: pip install -e ".[tpu]"
    python benchmarks/activation_memory.py                        # the paper-batch table
    python benchmarks/activation_memory.py --cases base:v5e-256 --without-constraints
    python benchmarks/activation_memory.py --slope                # base, remat: GiB per sequence
    python benchmarks/activation_memory.py --json /tmp/activation_memory.json

Each case is `xlm-jax compile`'s own `compile_run` (the trainer's jitted steps, lowered from
abstract state and batches and compiled by libtpu for compile-only devices), run in a child
process of its own, so each starts from a fresh libtpu. Memory figures of a compiled program are
deterministic: rerunning gives the same bytes. `--without-constraints` turns the constraints
into no-ops (mesh.activation_rules returns no rules), which is the model before them.

Cases are `size:topology[:override,...]`, e.g. `large:v5e-256:train.grad_accum_steps=2`.
`--slope` compiles base at 1 and 4 sequences (512 tokens) per chip of a v5p-128 slice, train step
only, for each remat policy, and prints the temporaries per sequence, (temp(4) - temp(1)) / 3.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
PAPER_CASES = ("base:v5e-256", "base:v5p-128", "large:v5e-256", "large:v5p-128")
SLOPE_TOPOLOGY, SLOPE_CHIPS, SLOPE_ROWS = "v5p-128", 64, (1, 4)

_CHILD = """
import json, sys
from xlm_jax import config as config_lib, mesh as mesh_lib
from xlm_jax.train import compile as compile_lib
size, topology_name, no_constraints, overrides = json.loads(sys.argv[1])
topology = compile_lib.parse_topology(topology_name)
compile_lib.prepare_compile_process(topology)
if no_constraints:  # the model's activation constraints become no-ops
  mesh_lib.activation_rules = lambda: ()
config = config_lib.load_config("experiments/xlmr_mlm.py:" + size, overrides)
report = compile_lib.compile_run(config, topology, size)
hbm = topology.generation.hbm_gib * compile_lib.GIB
print("RESULT " + json.dumps({
    "mesh": report.mesh_shape, "hbm_bytes": hbm,
    "steps": [{"name": s.name, "memory": s.memory, "required_bytes": s.required_bytes,
               "usable_bytes": s.usable_bytes, "error": s.error, "seconds": s.seconds,
               "verdict": compile_lib.verdict(s, hbm)} for s in report.steps]}))
"""


def run_case(size: str, topology: str, overrides: list[str], without_constraints: bool) -> dict:
  """compile_run of one case in a child process; its steps' memory per chip."""
  args = json.dumps([size, topology, without_constraints, overrides])
  done = subprocess.run([sys.executable, "-c", _CHILD, args], cwd=REPO, capture_output=True,
                        text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
  if not lines:
    raise RuntimeError(f"{size} on {topology} {overrides}: no result (exit {done.returncode})\n"
                       + done.stderr[-3000:])
  return json.loads(lines[-1][len("RESULT "):])


def step_text(step: dict, hbm_bytes: float) -> str:
  """'8.08 GiB (50%)' for a step that compiled, 'needs 925.7 GiB' for one too big."""
  if step["error"]:
    return f"failed: {step['error']}"
  if step["required_bytes"]:
    return f"needs {step['required_bytes'] / GIB:.1f} GiB: does not fit"
  peak = step["memory"]["peak"]
  tight = ", tight" if peak > 0.8 * hbm_bytes else ""
  return f"{peak / GIB:.2f} GiB ({peak / hbm_bytes:.0%}{tight})"


def paper_table(cases: list[str], without_constraints: bool) -> tuple[str, list]:
  rows, results = [], []
  for case in cases:
    size, topology, *rest = case.split(":")
    overrides = [o for part in rest for o in part.split(",") if o]
    print(f"compiling {case} ...", file=sys.stderr, flush=True)
    result = run_case(size, topology, overrides, without_constraints)
    results.append({"case": case, **result})
    steps = {s["name"].split("/")[0]: s for s in result["steps"]}
    mesh = ", ".join(str(v) for v in result["mesh"].values())
    cells = [step_text(steps[k], result["hbm_bytes"]) if k in steps else "-"
             for k in ("train", "eval")]
    rows.append(f"| `xlmr_mlm.py:{size}` {' '.join(overrides)} | {topology} | {mesh} | "
                f"{cells[0]} | {cells[1]} |")
  header = ["| experiment | slice | mesh (data, fsdp, tensor) | train step per chip | "
            "held-out step per chip |", "|---|---|---|---|---|"]
  return "\n".join(header + rows), results


def slope_table(policies: list[str], without_constraints: bool) -> tuple[str, list]:
  rows, results = [], []
  for policy in policies:
    temps = {}
    for per_chip in SLOPE_ROWS:
      overrides = [f"train.batch_size={per_chip * SLOPE_CHIPS}", f"model.remat_policy={policy}",
                   "eval.evaluators=('retrieval',)"]
      print(f"compiling base, remat {policy}, {per_chip} sequence(s) per chip ...",
            file=sys.stderr, flush=True)
      result = run_case("base", SLOPE_TOPOLOGY, overrides, without_constraints)
      (step,) = result["steps"]
      results.append({"policy": policy, "per_chip": per_chip, **result})
      temps[per_chip] = step["memory"]
    low, high = SLOPE_ROWS
    per_seq = {k: (temps[high][k] - temps[low][k]) / (high - low) for k in ("temp", "peak")}
    rows.append(f"| {policy} | {temps[low]['temp'] / GIB:.2f} | {temps[high]['temp'] / GIB:.2f} | "
                f"{per_seq['temp'] / GIB:.3f} | {per_seq['peak'] / GIB:.3f} |")
  header = [f"| remat_policy | temp at {SLOPE_ROWS[0]} seq/chip (GiB) | temp at {SLOPE_ROWS[1]} "
            "seq/chip (GiB) | temp per 512-token sequence (GiB) | peak per sequence (GiB) |",
            "|---|---|---|---|---|"]
  return "\n".join(header + rows), results


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default=",".join(PAPER_CASES),
                 help="size:topology[:override,...] separated by spaces or commas between cases")
  p.add_argument("--slope", action="store_true",
                 help="base's temporaries per 512-token sequence instead of the paper table")
  p.add_argument("--policies", default="dots_no_batch,full", help="remat policies of --slope")
  p.add_argument("--without-constraints", action="store_true",
                 help="compile with the activation constraints turned off (the model before)")
  p.add_argument("--json", help="also write the raw results here")
  args = p.parse_args(argv)
  if args.slope:
    table, results = slope_table(args.policies.split(","), args.without_constraints)
  else:
    # A case's overrides are separated by commas too: split cases at a size name.
    parts, cases = args.cases.replace(" ", ",").split(","), []
    for part in parts:
      if part.split(":")[0] in ("tiny", "small", "base", "large") or not cases:
        cases.append(part)
      else:
        cases[-1] += "," + part
    table, results = paper_table(cases, args.without_constraints)
  print(table)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
