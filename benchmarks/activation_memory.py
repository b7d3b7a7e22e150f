"""Memory per chip of the paper-batch experiments' steps compiled for TPU slices (XLM-R MLM,
ERNIE-M stage 2, EMS paper, EMMA-X itr), with and without the model's activation sharding
constraints (models/encoder.py `_constrain`, mesh.tracing_context).

    # in a venv of its own with libtpu: pip install -e ".[tpu]"
    python benchmarks/activation_memory.py                        # the paper-batch table
    python benchmarks/activation_memory.py --cases base:v5e-256 --without-constraints
    python benchmarks/activation_memory.py --cases "emma_x.py:itr,size=base:v5p-128"
    python benchmarks/activation_memory.py --slope                # base, remat: GiB per sequence
    python benchmarks/activation_memory.py --json /tmp/activation_memory.json --reports /tmp/aot

Each case is `xlm-jax compile`'s own `compile_run` (the trainer's jitted steps, lowered from
abstract state and batches and compiled by libtpu for compile-only devices), run in a child
process of its own, so each starts from a fresh libtpu. Memory figures of a compiled program are
deterministic: rerunning gives the same bytes. `--without-constraints` turns the constraints
into no-ops (mesh.activation_rules returns no rules), which is the model before them.

Cases are `size:topology[:override,...]` for experiments/xlmr_mlm.py, e.g.
`large:v5e-256:train.grad_accum_steps=2`, or `file.py:arg:topology[:override,...]` for another
experiment file, e.g. `ernie_m.py:base,stage2:v5e-256` (write a size first in `arg`: a comma-joined
part that starts with a size name and a colon starts a new case). Cases are separated by spaces,
or by commas before such a part. `--reports DIR` keeps each case's full `xlm-jax compile` report.
`--slope` compiles base at 1 and 4 sequences (512 tokens) per chip of a v5p-128 slice, train step
only, for each remat policy, and prints the temporaries per sequence, (temp(4) - temp(1)) / 3.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
GIB = 1024 ** 3
SIZES = ("tiny", "small", "base", "large")
# The README's table: XLM-R MLM, then ERNIE-M stage 2, EMS paper and EMMA-X itr at the batches their
# experiment files define (8192 x 512 for ERNIE-M; 8 GPUs' 1216 pairs of 122 tokens for EMS;
# 8192 pairs of 256 tokens for EMMA-X). EMS's 1216 = 64 x 19 rows do not split over 256 chips
# (nor over v5e-256's 64 hosts with mesh.tensor=4: jax.make_mesh lays a tensor group of 4 across 2
# hosts), so v5e-256 runs 32 GPUs' worth (gpus=32: 4864 pairs, the same 152-pair negative groups);
# its XTR head (1152 wide) and projection (128) split over at most 128 fsdp shards.
PAPER_CASES = ("base:v5e-256", "base:v5p-128", "large:v5e-256", "large:v5p-128",
               "ernie_m.py:base,stage2:v5e-256", "ernie_m.py:base,stage2:v5p-128",
               "ems.py:paper,gpus=32:v5e-256:mesh.data=2,mesh.fsdp=128", "ems.py:paper:v5p-128",
               "emma_x.py:itr,size=base:v5e-256", "emma_x.py:itr,size=base:v5p-128")
SLOPE_TOPOLOGY, SLOPE_CHIPS, SLOPE_ROWS = "v5p-128", 64, (1, 4)

_CHILD = """
import json, sys
from xlm_jax import config as config_lib, mesh as mesh_lib
from xlm_jax.train import compile as compile_lib
spec, topology_name, no_constraints, overrides = json.loads(sys.argv[1])
topology = compile_lib.parse_topology(topology_name)
compile_lib.prepare_compile_process(topology)
if no_constraints:  # the model's activation constraints become no-ops
  mesh_lib.activation_rules = lambda: ()
config = config_lib.load_config(spec, overrides)
hbm = topology.generation.hbm_gib * compile_lib.GIB
try:
  report = compile_lib.compile_run(config, topology, spec)
except Exception as e:  # a run the trainer would refuse (e.g. a batch the mesh cannot split)
  print("RESULT " + json.dumps({"mesh": {}, "hbm_bytes": hbm, "steps": [],
                                "error": f"{type(e).__name__}: {e}"}))
  sys.exit(0)
print(compile_lib.format_report(report), flush=True)
print("RESULT " + json.dumps({
    "mesh": report.mesh_shape, "hbm_bytes": hbm,
    "steps": [{"name": s.name, "memory": s.memory, "required_bytes": s.required_bytes,
               "usable_bytes": s.usable_bytes, "error": s.error, "seconds": s.seconds,
               "verdict": compile_lib.verdict(s, hbm)} for s in report.steps]}))
"""


def config_spec(case_config: str) -> tuple[str, str]:
  """(load_config spec, the table's label) of a case's config: `base` or `ernie_m.py:base,stage2`."""
  if case_config in SIZES:
    return f"experiments/xlmr_mlm.py:{case_config}", f"xlmr_mlm.py:{case_config}"
  return f"experiments/{case_config}", case_config


def parse_case(case: str) -> tuple[str, str, list[str]]:
  """`size:topology[:overrides]` or `file.py:arg:topology[:overrides]` -> (config, topology,
  overrides), config as config_spec takes it."""
  fields = case.split(":")
  n = 2 if fields[0].endswith(".py") else 1
  config, topology, rest = ":".join(fields[:n]), fields[n], fields[n + 1:]
  return config, topology, [o for part in rest for o in part.split(",") if o]


def split_cases(text: str) -> list[str]:
  """Cases separated by spaces, or by a comma before a part that starts a case (`base:...`,
  `file.py:...`); other commas belong to a case's arg or overrides."""
  cases = []
  for item in text.split():
    for part in item.split(","):
      head = part.split(":")[0]
      if not cases or (":" in part and (head in SIZES or head.endswith(".py"))):
        cases.append(part)
      else:
        cases[-1] += "," + part
  return cases


def run_case(config: str, topology: str, overrides: list[str], without_constraints: bool,
             reports: str | None = None) -> dict:
  """compile_run of one case in a child process; its steps' memory per chip. With `reports`, the
  case's full `xlm-jax compile` report is written to that folder."""
  spec, label = config_spec(config)
  args = json.dumps([spec, topology, without_constraints, overrides])
  done = subprocess.run([sys.executable, "-c", _CHILD, args], cwd=REPO, capture_output=True,
                        text=True, check=False)
  lines = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
  if not lines:
    raise RuntimeError(f"{label} on {topology} {overrides}: no result (exit {done.returncode})\n"
                       + done.stderr[-3000:])
  if reports:
    name = "_".join(re.sub(r"[^\w.=-]+", "-", part) for part in (label, topology, *overrides))
    folder = pathlib.Path(reports)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.txt").write_text(done.stdout.split("RESULT ")[0])
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


def steps_cell(steps: list[dict], hbm_bytes: float) -> str:
  """One step's text, or several named by what follows the group: 'e_step X; m_step Y' for
  EMMA-X's own steps, 'mono X; parallel Y' for held-out steps of several batch kinds."""
  if not steps:
    return "-"
  if len(steps) == 1:
    return step_text(steps[0], hbm_bytes)
  return "; ".join(f"{s['name'].split('/')[-1]} {step_text(s, hbm_bytes)}" for s in steps)


def paper_table(cases: list[str], without_constraints: bool,
                reports: str | None = None) -> tuple[str, list]:
  rows, results = [], []
  for case in cases:
    config, topology, overrides = parse_case(case)
    print(f"compiling {case} ...", file=sys.stderr, flush=True)
    try:
      result = run_case(config, topology, overrides, without_constraints, reports)
    except RuntimeError as e:  # the child died (e.g. killed for memory): the other cases go on
      print(e, file=sys.stderr, flush=True)
      result = {"mesh": {}, "hbm_bytes": 0, "steps": [], "error": str(e).splitlines()[0]}
    results.append({"case": case, **result})
    label = f"`{config_spec(config)[1]}` {' '.join(overrides)}".strip()
    if result.get("error"):
      rows.append(f"| {label} | {topology} | - | {result['error']} | - |")
      continue
    mesh = ", ".join(str(v) for v in result["mesh"].values())
    cells = [steps_cell([s for s in result["steps"] if s["name"].split("/")[0] == k],
                        result["hbm_bytes"]) for k in ("train", "eval")]
    rows.append(f"| {label} | {topology} | {mesh} | {cells[0]} | {cells[1]} |")
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
  p.add_argument("--cases", default=" ".join(PAPER_CASES),
                 help="[file.py:arg|size]:topology[:override,...], separated by spaces")
  p.add_argument("--slope", action="store_true",
                 help="base's temporaries per 512-token sequence instead of the paper table")
  p.add_argument("--policies", default="dots_no_batch,full", help="remat policies of --slope")
  p.add_argument("--without-constraints", action="store_true",
                 help="compile with the activation constraints turned off (the model before)")
  p.add_argument("--json", help="also write the raw results here")
  p.add_argument("--reports", help="write each case's full `xlm-jax compile` report to this folder")
  args = p.parse_args(argv)
  if args.slope:
    table, results = slope_table(args.policies.split(","), args.without_constraints)
  else:
    table, results = paper_table(split_cases(args.cases), args.without_constraints, args.reports)
  print(table)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
