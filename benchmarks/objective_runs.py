"""Trains every experiment file at tiny size on the real corpus and tabulates what each reached.

    python benchmarks/objective_runs.py --set token   --steps 300 --out workdirs/runs_token
    python benchmarks/objective_runs.py --set sentence --seconds 150 --out workdirs/runs_sentence

`token` (issue: token-level objectives): each experiment for the same number of steps, beside
the quickstart MLM model trained as long on the same corpus. `sentence` (EMS, EMMA-X): each for
the same wall-clock budget, beside MLM; EMMA-X runs its three stages, each warm-started from the
one before, and the budget is split ctl 40% / gmm 20% / itr 40%. Every run is a real
`xlm-jax train` (evaluated and exported), one after another; the table reads their summary.json:
steps, wall time, loss at the first and last log, held-out MLM accuracy, retrieval P@1 (mean of
xx->en and en->xx over the languages; the char n-gram TF-IDF baseline beside it) and, where
evaluated, alignment and geometry numbers.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

MLM = ("mlm (quickstart model)", "experiments/quickstart.py", ["--config.data.corpus=debian8"])
TOKEN_RUNS = [
    MLM,
    ("xlm: mlm + tlm", "experiments/xlm_tlm.py", []),
    ("dict_mlm target_swap", "experiments/dict_mlm.py", []),
    ("dict_mlm input_swap", "experiments/dict_mlm.py:input_swap", []),
    ("align_mlm", "experiments/align_mlm.py", []),
    ("ernie_m (stage 1 + 2)", "experiments/ernie_m.py", []),
    ("emerging default (6L)", "experiments/emerging_structure.py", []),
    ("emerging sep_emb_l1_6 (6L)", "experiments/emerging_structure.py:sep_emb_l1_6", []),
]
SENTENCE_RUNS = [
    MLM,
    ("ems xtr + cl", "experiments/ems.py", []),
    ("ems xtr only", "experiments/ems.py:xtr_only", []),
    ("ems cl only", "experiments/ems.py:cl_only", []),
]
EMMA_STAGES = (("ctl", 0.4), ("gmm", 0.2), ("itr", 0.4))


def read_summary(workdir: pathlib.Path) -> dict:
  summary = json.loads((workdir / "summary.json").read_text())
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l]
  losses = [l["train/loss"] for l in lines if "train/loss" in l]
  summary["first_loss"] = losses[0] if losses else float("nan")
  summary["last_loss"] = losses[-1] if losses else float("nan")
  if summary["start_step"] and len(lines) > 2:
    # Resumed after training had finished (e.g. to re-run a failed evaluation): the summary's
    # clock covers only the resumed part, so use the log's clock, one interval added for the
    # first, un-timed interval (compilation is then not counted).
    times = [l["time"] for l in lines if "train/loss" in l]
    summary["train_seconds"] = (times[-1] - times[0]) * len(times) / (len(times) - 1)
  return summary


def train(name: str, spec: str, extra: list[str], workdir: pathlib.Path, budget: list[str]) -> dict:
  # The console script of the Python running this (a venv need not be activated).
  script = pathlib.Path(sys.executable).with_name("xlm-jax")
  command = [str(script) if script.exists() else "xlm-jax", "train", "--config", spec, "--workdir", str(workdir),
             "--config.train.progress_bar=False", *budget, *extra]
  print(f"[{name}] {' '.join(command)}", flush=True)
  start = time.time()
  workdir.parent.mkdir(parents=True, exist_ok=True)
  with open(workdir.with_suffix(".log"), "w") as log:
    result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
  if result.returncode:
    raise SystemExit(f"[{name}] failed with exit code {result.returncode}; see "
                     f"{workdir.with_suffix('.log')}")
  summary = read_summary(workdir)
  summary["wall_seconds_total"] = time.time() - start
  return summary


MLM_LIKE = ("mlm", "dict_mlm", "align_mlm", "mlm_code_switch")


def _direction_mean(ev: dict, to_english: bool):
  """Mean retrieval P@1 over the languages in one direction (keys retrieval/<src>-<tgt>/p1)."""
  values = [v for k, v in ev.items() if k.startswith("retrieval/") and k.endswith("/p1")
            and k.count("/") == 2 and (k.split("/")[1].endswith("-en") == to_english)
            and "-" in k.split("/")[1]]
  return sum(values) / len(values) if values else None


def row(name: str, summary: dict) -> dict:
  ev = summary.get("eval", {})
  # Held-out masked-token accuracy on monolingual text: MLM's, or the MLM part of a variant.
  mlm_like = next((k for k in MLM_LIKE if f"{k}/accuracy" in ev), None)
  others = {k: v for k, v in ev.items() if k.endswith("/accuracy") and k.count("/") == 1
            and k.split("/")[0] not in (mlm_like, "unigram")}
  out = {"run": name, "steps": summary["step"], "train_s": round(summary["train_seconds"]),
         "loss_first": summary["first_loss"], "loss_last": summary["last_loss"],
         "mlm_acc": ev.get(f"{mlm_like}/accuracy") if mlm_like else None,
         "other_acc": ", ".join(f"{k.split('/')[0]} {v:.3f}" for k, v in sorted(others.items())),
         "unigram_acc": ev.get("unigram/accuracy"),
         "retrieval_p1": ev.get("retrieval/mean_p1"),
         "p1_xx_en": _direction_mean(ev, to_english=True),
         "p1_en_xx": _direction_mean(ev, to_english=False),
         "tfidf_p1": ev.get("retrieval/mean_tfidf_p1")}
  for key, value in ev.items():
    if key.startswith(("geometry/", "alignment/mean")) and key.count("/") == 1:
      out[key] = value
  return out


def markdown(rows: list[dict]) -> str:
  keys = list(dict.fromkeys(k for r in rows for k in r))
  fmt = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--set", choices=("token", "sentence"), required=True)
  parser.add_argument("--steps", type=int, default=300, help="token set: steps per run")
  parser.add_argument("--seconds", type=float, default=150.0,
                      help="sentence set: training wall-clock budget per run")
  parser.add_argument("--out", required=True, help="folder for the workdirs and the table")
  parser.add_argument("--only", nargs="*", default=None, help="run names to keep")
  parser.add_argument("--table-only", action="store_true",
                      help="rebuild the table from the workdirs under --out without training")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  common = ["--config.eval.retrieval_items=500", "--config.train.eval_every=0"]
  rows = []
  runs = TOKEN_RUNS if args.set == "token" else SENTENCE_RUNS
  for name, spec, extra in runs:
    if args.only and name not in args.only:
      continue
    workdir = out / name.split(" ")[0].replace(":", "_") / spec.split(":")[-1].replace("/", "_")
    workdir.parent.mkdir(parents=True, exist_ok=True)
    if args.set == "token":
      budget = [f"--config.train.total_steps={args.steps}", "--config.train.max_wall_seconds=0"]
    else:
      budget = ["--config.train.total_steps=100000",
                f"--config.train.max_wall_seconds={args.seconds}",
                "--config.optimizer.warmup_steps=100"]
    if args.table_only:
      rows.append(row(name, read_summary(workdir)))
      continue
    rows.append(row(name, train(name, spec, extra + common, workdir, budget)))
    print(markdown(rows[-1:]), flush=True)
  if args.set == "sentence" and (not args.only or "emma_x" in args.only):
    previous = ""
    for stage, share in EMMA_STAGES:
      workdir = out / "emma_x" / stage
      budget = ["--config.train.total_steps=100000",
                f"--config.train.max_wall_seconds={args.seconds * share}",
                "--config.optimizer.warmup_steps=50"]
      extra = [f"--config.init_from={previous}"] if previous else []
      summary = read_summary(workdir) if args.table_only else train(
          f"emma_x {stage}", f"experiments/emma_x.py:{stage}", extra + common, workdir, budget)
      rows.append(row(f"emma_x after {stage}", summary))
      print(markdown(rows[-1:]), flush=True)
      previous = str(workdir)
  table = markdown(rows)
  (out / "table.md").write_text(table + "\n")
  (out / "rows.json").write_text(json.dumps(rows, indent=1))
  print("\n" + table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
