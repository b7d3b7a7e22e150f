"""Human-readable summaries: the table printed at the end of a run and the eval Markdown file."""
from __future__ import annotations

import json
import math
import pathlib

from xlm_jax.atomic_files import write_directory_atomically


def _fmt(value) -> str:
  if isinstance(value, float):
    if not math.isfinite(value):
      return str(value)  # "inf" (a mining threshold that keeps nothing), "nan"
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
  return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
  """A Markdown table of `rows` under `header`; numbers as _fmt writes them, "|" escaped."""
  def cell(value) -> str:
    return _fmt(value).replace("|", "\\|").replace("\n", " ")
  lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
  return "\n".join(lines)


def _finite(value):
  """`value` with every non-finite float written as a string ("inf", "-inf", "nan"): strict JSON
  has no Infinity or NaN, and a reader then still sees which it was."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {str(k): _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    return _finite(value.item())  # numpy scalars
  return value


def strict_json(document) -> str:
  """`document` as strict JSON (allow_nan=False): non-finite floats become strings, anything
  else JSON cannot hold becomes its str()."""
  return json.dumps(_finite(document), indent=2, default=str, allow_nan=False, ensure_ascii=False)


def table(rows: list[tuple[str, object]], title: str = "") -> str:
  """A two-column Markdown table (renders fine in a terminal too)."""
  width = max([len(k) for k, _ in rows] + [6])
  lines = [f"### {title}", ""] if title else []
  lines += [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
  lines += [f"| {k.ljust(width)} | {_fmt(v)} |" for k, v in rows]
  return "\n".join(lines)


def run_summary_rows(summary: dict) -> list[tuple[str, object]]:
  """The rows that tell what a training run did, in reading order."""
  rows = [("steps", f"{summary['step']} / {summary['total_steps']}"),
          ("train wall time (s)", round(summary["train_seconds"], 1))]
  train = summary.get("train", {})
  # Every objective's own loss and accuracy, then the totals.
  per_objective = sorted(k for k in train if k.count("/") == 1 and k.endswith(("/loss", "/accuracy")))
  for key in ["loss"] + per_objective + ["tokens_per_second", "tflops_per_device"]:
    if key in train:
      rows.append((f"train {key}", train[key]))
  evaluation = summary.get("eval", {})
  # Summary numbers have one "/" (mlm/loss, retrieval/mean_p1, geometry/isotropy); per-language
  # and per-pair breakdowns (retrieval/de-en/p1) stay in summary.json and the eval report.
  for key in sorted(evaluation):
    if key.count("/") == 1 and not key.endswith(("/predictions", "/weight", "/items")):
      rows.append((f"held-out {key}", evaluation[key]))
  if summary.get("export_dir"):
    rows.append(("export", summary["export_dir"]))
  if summary.get("stopped_early"):
    rows.append(("status", "train.max_wall_seconds reached: evaluated the model trained so far"))
  if summary.get("preempted"):
    rows.append(("status", "preempted: checkpoint saved, rerun the same command to resume"))
  return rows


def write_eval_report(directory: pathlib.Path, results: dict, meta: dict) -> pathlib.Path:
  """Writes results.json (numbers + config + data manifest) and results.md; returns the folder."""
  rows = sorted((k, v) for k, v in results.items())
  # One folder written atomically: a reader never sees a results.json without its results.md.
  write_directory_atomically(pathlib.Path(directory), {
      "results.json": strict_json({"results": results, **meta}).encode("utf-8"),
      "results.md": (table(rows, title="evaluation") + "\n").encode("utf-8")})
  return directory
