"""One markdown table of several models' evaluation results, for the README.

    python benchmarks/eval_table.py \
      --eval quickstart=eval_results/quickstart tfidf=eval_results/tfidf \
      --finetune quickstart=workdirs/ft_quickstart

Each --eval NAME=DIR reads DIR/results.json written by `xlm-jax eval`; each --finetune NAME=DIR
reads DIR/results.json written by `xlm-jax finetune`. One row per name, one column per task;
a task the model was not scored on reads "-". The last rows are the baselines the suite scores
beside every model (TF-IDF's own numbers on the same items, the majority class, the unmapped
space for BLI), read from the first --eval result that has them.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys


def _named_dirs(items: list[str], flag: str) -> dict[str, pathlib.Path]:
  out = {}
  for item in items:
    name, sep, folder = item.partition("=")
    if not sep or not name or not folder:
      sys.exit(f"{flag} {item!r}: expected NAME=DIR")
    path = pathlib.Path(folder) / "results.json"
    if not path.is_file():
      sys.exit(f"{flag} {item!r}: {path} does not exist; run `xlm-jax eval` / `xlm-jax finetune` "
               "with that output folder first")
    out[name] = path
  return out


def _fmt(value, digits: int = 3) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _last_layer_cka(results: dict) -> float | None:
  layers = sorted(int(k.split("/")[1][len("layer"):]) for k in results
                  if k.startswith("cka/layer") and k.endswith("/cka"))
  return results.get(f"cka/layer{layers[-1]}/cka") if layers else None


COLUMNS = ("retrieval P@1", "hard P@1", "mining F1", "BLI P@1 / P@5", "frozen classify (xx)",
           "frozen transfer gap", "CKA (last layer)", "alignment %", "isotropy",
           "fine-tuned classify (xx / en)")


def model_row(results: dict | None, finetune: dict | None) -> list[str]:
  r = results or {}
  bli = ("-" if "bli/mean_p1" not in r
         else f"{_fmt(r['bli/mean_p1'])} / {_fmt(r['bli/mean_p5'])}")
  tuned = "-"
  if finetune:
    tuned = (f"{_fmt(finetune['mean_test_excluding_en']['accuracy'])} / "
             f"{_fmt(finetune['test']['en']['accuracy'])}")
  return [_fmt(r.get("retrieval/mean_p1")), _fmt(r.get("retrieval/mean_hard_p1")),
          _fmt(r.get("mining/mean_f1")), bli, _fmt(r.get("classify/mean_accuracy")),
          _fmt(r.get("classify/mean_transfer_gap")), _fmt(_last_layer_cka(r)),
          _fmt(r.get("alignment/mean_accuracy"), 1), _fmt(r.get("geometry/isotropy"), 4), tuned]


def baseline_rows(results: dict, finetune: dict | None) -> list[tuple[str, list[str]]]:
  dash = ["-"] * len(COLUMNS)
  tfidf = list(dash)
  tfidf[0] = _fmt(results.get("retrieval/mean_tfidf_p1"))
  tfidf[2] = _fmt(results.get("mining/mean_tfidf_f1"))
  majority = list(dash)
  majority[4] = _fmt(results.get("classify/mean_majority"))
  if finetune:
    xx = [v["majority_accuracy"] for lang, v in finetune["test"].items() if lang != "en"]
    majority[-1] = (f"{_fmt(sum(xx) / len(xx))} / "
                   f"{_fmt(finetune['test']['en']['majority_accuracy'])}")
  unmapped = list(dash)
  if "bli/mean_unmapped_p1" in results:
    unmapped[3] = f"{_fmt(results['bli/mean_unmapped_p1'])} / {_fmt(results['bli/mean_unmapped_p5'])}"
  return [("baseline: TF-IDF on the same items (per-pair IDF)", tfidf),
          ("baseline: majority class", majority),
          ("baseline: BLI without the Procrustes map", unmapped)]


def table(evals: dict[str, dict], finetunes: dict[str, dict]) -> str:
  names = list(dict.fromkeys([*evals, *finetunes]))
  lines = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
  for name in names:
    lines.append(f"| {name} | " + " | ".join(model_row(evals.get(name), finetunes.get(name)))
                 + " |")
  reference = next((r for r in evals.values() if "retrieval/mean_tfidf_p1" in r), None)
  if reference is not None:
    for name, cells in baseline_rows(reference, next(iter(finetunes.values()), None)):
      lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--eval", nargs="*", default=[], metavar="NAME=DIR")
  parser.add_argument("--finetune", nargs="*", default=[], metavar="NAME=DIR")
  args = parser.parse_args(argv)
  if not args.eval and not args.finetune:
    parser.error("give at least one --eval or --finetune NAME=DIR")
  evals = {n: json.loads(p.read_text())["results"]
           for n, p in _named_dirs(args.eval, "--eval").items()}
  finetunes = {n: json.loads(p.read_text())
               for n, p in _named_dirs(args.finetune, "--finetune").items()}
  print(table(evals, finetunes))


if __name__ == "__main__":
  main()
