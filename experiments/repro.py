"""Reproduction report: the papers' seed findings, re-run at CPU scale on the real corpus.

    python -m experiments.repro                      # every finding, seeds 0 and 1 (42 runs of ~10-20 min, 2 cores)
    python -m experiments.repro --only ems,emma_x    # some findings
    python -m experiments.repro --smoke --out /tmp/repro_smoke   # every row end to end, minutes
    python -m experiments.repro ... --config.<field>=<value>     # an override for every pre-training

Each finding trains its variants (the papers' rows) for each seed with the experiment files' own
configs, through the same in-process `xlm-jax train` / `xlm-jax finetune` commands a user runs,
then compares them on the finding's metrics: zero-shot transfer (fine-tune on English, test on the
other languages: `xlm-jax finetune --task classify` on the corpus's help-module task), held-out
retrieval P@1, embedding alignment, or sentence-space geometry, read from each run's summary.json
and results.json.

Verdicts are per claim (a paper's direction, "A > B on metric m") and per seed: the claim is
*reproduced* when A beats B under every seed, *not reproduced* when B beats (or ties) A under
every seed, and *inconclusive* when the seeds disagree, or *inconclusive (at chance)* when under
some seed both sides of a transfer claim are no better than the majority class. The spread (each
seed's value) is shown beside the mean, so a reader can judge the margins.

Resumable: every run has its own workdirs under `--out` (pre-training resumes from its last
checkpoint, fine-tuning too); runs recorded in the JSON beside the report are skipped; the report
and its JSON are rewritten after every run, so partial results are readable while it runs (use
`nohup`). The report goes to REPRODUCTION.md (numbers: REPRODUCTION.json) at the repository root
unless `--report` says otherwise; `--smoke` writes both under `--out`.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import logging
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SEEDS = (0, 1)

# ---------------------------------------------------------------------------------------------
# What is measured
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Metric:
  label: str
  source: str            # "summary": the pre-training run's summary.json eval; "finetune": results.json
  key: str               # summary eval key, or finetune field (see `read_metric`)
  higher_is_better: bool = True
  baseline: str = ""     # the METRICS key of the no-skill level a comparison must rise above


METRICS = {
    "transfer": Metric("zero-shot transfer acc.", "finetune", "transfer", baseline="chance"),
    "en_acc": Metric("English acc.", "finetune", "en"),
    "chance": Metric("majority-class acc.", "finetune", "chance"),
    "alignment": Metric("alignment %", "summary", "alignment/mean_accuracy"),
    "retrieval": Metric("retrieval P@1", "summary", "retrieval/mean_p1"),
    "mlm_acc": Metric("held-out MLM acc.", "summary", "mlm/accuracy"),
    "invariance_kl": Metric("invariance KL (lower better)", "summary", "geometry/invariance_kl",
                            higher_is_better=False),
    "canonical_ch": Metric("canonical form CH", "summary", "geometry/canonical_ch"),
    "isotropy": Metric("isotropy", "summary", "geometry/isotropy"),
}


def read_metric(metric: Metric, summary: dict, finetuned: dict | None) -> float | None:
  if metric.source == "summary":
    value = summary.get("eval", {}).get(metric.key)
    return None if value is None else float(value)
  if not finetuned or "test" not in finetuned:
    return None
  others = {lang: v for lang, v in finetuned["test"].items() if lang != "en"}
  if metric.key == "en":
    return float(finetuned["test"]["en"]["accuracy"])
  if metric.key == "transfer":
    return float(np.mean([v["accuracy"] for v in others.values()])) if others else None
  if metric.key == "chance":
    values = [v["majority_accuracy"] for v in others.values() if "majority_accuracy" in v]
    return float(np.mean(values)) if values else None
  raise ValueError(f"unknown finetune metric {metric.key!r}")


# ---------------------------------------------------------------------------------------------
# The findings
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  config: str                        # experiments/<file>.py[:arg]
  overrides: tuple[str, ...] = ()
  steps: int = 0                     # 0: the finding's steps
  init: str = ""                     # warm start from this variant's pre-training (same seed)
  shown: bool = True                 # False: an intermediate stage of another variant


@dataclasses.dataclass(frozen=True)
class Claim:
  better: str                        # the variant the paper finds better ...
  worse: str                         # ... than this one
  metric: str                        # a METRICS key
  paper: str                         # the paper's numbers behind the claim


@dataclasses.dataclass(frozen=True)
class Finding:
  key: str
  title: str
  paper: str                         # the paper and the table the claims come from
  setup: str                         # what runs here, in a sentence
  variants: tuple[Variant, ...]
  metrics: tuple[str, ...]           # columns of the finding's table
  claims: tuple[Claim, ...]
  steps: int                         # pre-training steps of each variant
  finetune: bool                     # fine-tune each shown variant (zero-shot transfer)
  languages: tuple[str, ...] = ()    # () = the corpus's languages (the --languages option)
  overrides: tuple[str, ...] = ()    # every variant's
  correlate: tuple[str, str] = ()    # Spearman between these two metrics over all runs
  needs: str = ""                    # what a proper test of the finding would take


ALIGN_LANGS = ("en", "en_trans+inv")
_SYN = "synthetic,op=trans+inv"

FINDINGS = (
    Finding(
        key="align_mlm",
        title="ALIGN-MLM: explicit word-embedding alignment transfers best to a derived language",
        paper="Tang, Deshpande, Narasimhan 2022 (arXiv 2211.08547), English -> trans∘inv English",
        setup="tiny encoder on English and its transliterated + inverted copy (en_trans+inv); "
              "alignment = share of ids whose nearest embedding is their counterpart; transfer = "
              "module classification fine-tuned on English, tested on the derived test rows",
        variants=(
            Variant("MLM", "experiments/xlmr_mlm.py:tiny",
                    ("data.corpus=debian8", "data.alpha=1.0",
                     "eval.evaluators=('mlm', 'alignment')")),
            Variant("XLM (MLM+TLM)", f"experiments/xlm_tlm.py:{_SYN}"),
            Variant("DICT-MLM", f"experiments/dict_mlm.py:{_SYN}"),
            Variant("ALIGN-MLM", f"experiments/align_mlm.py:{_SYN}"),
        ),
        metrics=("alignment", "transfer", "en_acc", "chance"),
        claims=(
            Claim("ALIGN-MLM", "MLM", "transfer", "align_mlm_vs_mlm"),
            Claim("ALIGN-MLM", "XLM (MLM+TLM)", "transfer", "align_mlm_vs_xlm"),
            Claim("ALIGN-MLM", "DICT-MLM", "transfer", "align_mlm_vs_dict"),
            Claim("XLM (MLM+TLM)", "MLM", "transfer", "xlm_vs_mlm_synthetic"),
            Claim("ALIGN-MLM", "MLM", "alignment", "align_alignment"),
        ),
        steps=800, finetune=True, languages=ALIGN_LANGS,
        correlate=("alignment", "transfer"),
        needs="the paper's 8-layer d=512 RoBERTa for 500k steps at batch 128 x 512 on 40M-token "
              "Wikipedia, XNLI/POS/NER fine-tuning; here 800 tiny steps"),
    Finding(
        key="emerging_structure",
        title="Emerging structure: anchors matter little, shared top layers matter most",
        paper="Conneau, Wu et al. 2020 (arXiv 1911.01464), Table 1 (en-fr XNLI)",
        setup="8-layer d=128 encoder (the paper's depth) on English and French; transfer = module "
              "classification fine-tuned on English, tested on French",
        variants=tuple(Variant(name, f"experiments/emerging_structure.py:{name}")
                       for name in ("default", "no_anchors", "sep_emb", "sep_l1_3", "sep_l1_6")),
        metrics=("transfer", "en_acc", "chance", "retrieval"),
        claims=(
            Claim("default", "no_anchors", "transfer", "es_no_anchors"),
            Claim("default", "sep_emb", "transfer", "es_sep_emb"),
            Claim("default", "sep_l1_3", "transfer", "es_sep_l1_3"),
            Claim("default", "sep_l1_6", "transfer", "es_sep_l1_6"),
            Claim("sep_l1_3", "sep_l1_6", "transfer", "es_l13_vs_l16"),
        ),
        steps=400, finetune=True, languages=("en", "fr"),
        needs="the paper's d=768 8-layer encoder on Wikipedia for 200k+ steps and XNLI; at this "
              "scale transfer sits a few points above chance, so small differences drown in seeds"),
    Finding(
        key="xlm",
        title="XLM: TLM on parallel data adds to MLM",
        paper="Conneau & Lample 2019 (arXiv 1901.07291), the XNLI table (zero-shot rows)",
        setup="tiny encoder, 8 languages, MLM alone vs MLM alternated with TLM (XLM's recipe)",
        variants=(Variant("MLM", "experiments/xlm_tlm.py:mlm_only"),
                  Variant("MLM+TLM", "experiments/xlm_tlm.py")),
        metrics=("retrieval", "transfer", "en_acc", "chance"),
        claims=(Claim("MLM+TLM", "MLM", "transfer", "xlm_transfer"),
                Claim("MLM+TLM", "MLM", "retrieval", "xlm_retrieval")),
        steps=1000, finetune=True,
        needs="XLM's 12-layer d=1024 model on Wikipedia + parallel corpora, XNLI"),
    Finding(
        key="ernie_m",
        title="ERNIE-M: CAMLM, then BTMLM, each add to MLM",
        paper="Ouyang et al. 2021 (arXiv 2012.15674), Table 6 (ablation, XNLI)",
        setup="tiny encoder, 8 languages: MLM alone; MLM + CAMLM (stage 1 only); MLM + CAMLM, then "
              "+ BTMLM (two stages, half the steps each); same steps for all three",
        variants=(Variant("MLM", "experiments/ernie_m.py:mlm"),
                  Variant("MLM+CAMLM", "experiments/ernie_m.py:camlm"),
                  Variant("MLM+CAMLM+BTMLM", "experiments/ernie_m.py:camlm_btmlm")),
        metrics=("transfer", "en_acc", "chance", "retrieval"),
        claims=(Claim("MLM+CAMLM", "MLM", "transfer", "ernie_camlm"),
                Claim("MLM+CAMLM+BTMLM", "MLM+CAMLM", "transfer", "ernie_btmlm")),
        steps=600, finetune=True,
        needs="ERNIE-M's XLM-R start (base) and its 1.5M-pair corpus; BTMLM's generated tokens are "
              "only useful once the model translates, which a tiny model from scratch never does"),
    Finding(
        key="ems",
        title="EMS: XTR and the contrastive loss each help; together best",
        paper="Mao, Chu, Kurohashi 2022 (arXiv 2205.15744), ablation (retrieval)",
        setup="tiny siamese encoder on the corpus's parallel pairs, 8 languages; held-out retrieval",
        variants=tuple(Variant(name, f"experiments/ems.py:{name}")
                       for name in ("xtr_cl", "xtr_only", "cl_only")),
        metrics=("retrieval",),
        claims=(Claim("xtr_cl", "xtr_only", "retrieval", "ems_vs_xtr"),
                Claim("xtr_cl", "cl_only", "retrieval", "ems_vs_cl")),
        steps=1000, finetune=False,
        needs="the paper's 6-layer d=1024 model on 62 languages' parallel corpora, Tatoeba/BUCC"),
    Finding(
        key="emma_x",
        title="EMMA-X: the EM loop (itr) beats contrastive training alone (ctl)",
        paper="Guo et al. 2023 (NeurIPS, arXiv 2310.17233), ablation and geometry analysis",
        setup="tiny encoder, 8 languages: ctl for S steps against ctl for S/2, the classifier "
              "warm-up (gmm, encoder frozen) and itr for S/2; the same encoder updates",
        variants=(Variant("ctl", "experiments/emma_x.py:ctl"),
                  Variant("ctl_half", "experiments/emma_x.py:ctl", steps=-2, shown=False),
                  Variant("gmm", "experiments/emma_x.py:gmm", steps=-8, init="ctl_half",
                          shown=False),
                  Variant("itr", "experiments/emma_x.py:itr", steps=-2, init="gmm")),
        metrics=("retrieval", "invariance_kl", "canonical_ch", "isotropy"),
        claims=(Claim("itr", "ctl", "retrieval", "emma_retrieval"),
                Claim("itr", "ctl", "invariance_kl", "emma_invariance"),
                Claim("itr", "ctl", "canonical_ch", "emma_canonical"),
                Claim("itr", "ctl", "isotropy", "emma_isotropy")),
        steps=800, finetune=False,
        needs="EMMA-X's XLM-R large start and its parallel + monolingual corpora"),
)

# Every run of the full report: fixed steps (no wall-clock cut, so seeds are comparable) and
# checkpoints often enough to resume after a kill.
FULL_OVERRIDES = ("train.max_wall_seconds=0", "train.eval_every=0", "train.checkpoint_every=200",
                  "train.log_every=50", "train.progress_bar=False")
# Fine-tuning: 3 epochs over 8,000 English examples at lr 1e-4. XTREME's 2e-5 suits base models;
# the quickstart's d=128 encoder reached only 0.40 English dev accuracy after 1,100 steps at 2e-5
# (0.49 after 2,770), too slow for 42 runs in the report's budget.
FULL_FINETUNE = ("train.epochs=3", "data.max_train_examples=8000", "optimizer.learning_rate=1e-4",
                 "train.progress_bar=False")
# --smoke: a narrow model, a few steps, small evaluation sets: every row end to end, not numbers.
SMOKE_OVERRIDES = ("train.max_wall_seconds=0", "train.eval_every=0", "train.checkpoint_every=2",
                   "train.log_every=1", "train.progress_bar=False", "train.batch_size=8",
                   "model.hidden_size=32", "model.mlp_dim=64", "model.num_heads=2",
                   # One traced layer per stack: compiling the smoke's 6- and 8-layer models
                   # unrolled was most of its time (same computation, another layout).
                   "model.scan_layers=True",
                   "eval.retrieval_items=20", "data.eval_sentences=16")
SMOKE_STEPS = 2
SMOKE_FINETUNE = ("train.epochs=1", "train.progress_bar=False", "train.batch_size=16",
                  "train.eval_batch_size=32", "data.max_train_examples=64",
                  "data.max_eval_examples=32", "data.max_len=32")


def variant_steps(finding: Finding, variant: Variant, smoke: bool) -> int:
  """Negative `steps` are a fraction of the finding's (-2: half), for the stages of a chain."""
  if smoke:
    return SMOKE_STEPS
  if variant.steps < 0:
    return max(1, finding.steps // -variant.steps)
  return variant.steps or finding.steps


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _quote(values) -> str:
  return "(" + ", ".join(repr(v) for v in values) + ",)"


def pretrain_args(finding: Finding, variant: Variant, seed: int, folder: pathlib.Path,
                  smoke: bool, languages: tuple[str, ...], corpus_dir: str,
                  extra: tuple[str, ...] = ()) -> list[str]:
  steps = variant_steps(finding, variant, smoke)
  overrides = [*finding.overrides, *variant.overrides,
               *(SMOKE_OVERRIDES if smoke else FULL_OVERRIDES), *extra,
               f"seed={seed}", f"train.total_steps={steps}"]
  langs = finding.languages or languages
  if langs:
    overrides.append(f"data.languages={_quote(langs)}")
    from xlm_jax import config as config_lib
    if config_lib.load_config(variant.config).model.num_languages:
      # The file gives the model language embeddings, one per run language: as many as ours.
      overrides.append(f"model.num_languages={len(langs)}")
  if corpus_dir:
    overrides.append(f"data.corpus_dir={corpus_dir}")
  if variant.init:
    overrides.append(f"init_from={folder.parent.parent / variant.init / folder.name / 'pretrain'}")
  return ["train", "--config", variant.config, "--workdir", str(folder / "pretrain"),
          *(f"--config.{o}" for o in overrides)]


def finetune_args(folder: pathlib.Path, seed: int, smoke: bool, corpus_dir: str) -> list[str]:
  overrides = [*(SMOKE_FINETUNE if smoke else FULL_FINETUNE), f"seed={seed}"]
  data = ["--data", corpus_dir] if corpus_dir else []
  return ["finetune", "--model", str(folder / "pretrain" / "export"), "--task", "classify",
          *data, "--workdir", str(folder / "finetune"), *(f"--config.{o}" for o in overrides)]


def _read_json(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (FileNotFoundError, json.JSONDecodeError):
    return None


class Preempted(Exception):
  """A command of a run was stopped by a signal (SIGTERM, a TPU VM's preemption) after saving its
  checkpoint: the report stops here too, and a rerun resumes it."""


def _run_command(argv: list[str], result: pathlib.Path, what: str) -> tuple[dict, float]:
  """Runs one in-process `xlm-jax` command; (the JSON it wrote to `result`, its wall seconds).
  A command stopped by a signal after its checkpoint (its result says "preempted") raises
  Preempted: the signal was meant for the whole report, which must not go on to fine-tune a
  half-trained encoder."""
  from xlm_jax import cli
  started = time.time()
  code = cli.main(argv)
  if code:
    raise RuntimeError(f"{what} exited with {code}")
  seconds = time.time() - started
  done = _read_json(result)
  if done is None:
    raise RuntimeError(f"{what} wrote no {result}")
  if done.get("preempted"):
    raise Preempted(what)
  return done, seconds


def run_one(finding: Finding, variant: Variant, seed: int, folder: pathlib.Path, smoke: bool,
            languages: tuple[str, ...], corpus_dir: str, extra: tuple[str, ...] = ()) -> dict:
  """Pre-trains (and fine-tunes) one variant and seed, resuming or skipping what is done."""
  import jax
  name = f"{finding.key}/{variant.name}/seed {seed}"
  timings = {}
  summary_path = folder / "pretrain" / "summary.json"
  summary = _read_json(summary_path)
  if summary is None or summary.get("preempted") or summary.get("stopped_early"):
    summary, timings["pretrain_seconds"] = _run_command(
        pretrain_args(finding, variant, seed, folder, smoke, languages, corpus_dir, extra),
        summary_path, f"pre-training {name}")
  finetuned = None
  if finding.finetune and variant.shown:
    results_path = folder / "finetune" / "results.json"
    finetuned = _read_json(results_path)
    if finetuned is None or finetuned.get("preempted"):
      finetuned, timings["finetune_seconds"] = _run_command(
          finetune_args(folder, seed, smoke, corpus_dir), results_path, f"fine-tuning {name}")
  jax.clear_caches()   # one process runs every variant: drop the compiled steps of this one
  gc.collect()
  values = {name: read_metric(METRICS[name], summary, finetuned) for name in finding.metrics}
  # pretrain_seconds / finetune_seconds: wall time of the commands in this call (a run resumed
  # after a kill counts only its last part).
  return {"values": values, "steps": summary.get("step"), **timings}


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------


def claim_verdict(claim: Claim, runs: dict, seeds) -> tuple[str, list[float]]:
  """(verdict, per-seed differences better - worse, sign-flipped for lower-is-better metrics)."""
  metric = METRICS[claim.metric]
  diffs, at_chance = [], False
  for seed in seeds:
    better = runs.get(claim.better, {}).get(str(seed), {}).get("values", {})
    worse = runs.get(claim.worse, {}).get(str(seed), {}).get("values", {})
    a, b = better.get(claim.metric), worse.get(claim.metric)
    if a is None or b is None:
      continue
    diffs.append((a - b) if metric.higher_is_better else (b - a))
    if metric.baseline:
      # Two classifiers that both predict no better than the majority class (a fine-tuning that
      # collapsed to it, or an encoder that learned nothing) say nothing about the claim.
      at_chance |= all(v.get(metric.baseline) is not None and value <= v[metric.baseline] + 1e-9
                       for v, value in ((better, a), (worse, b)))
  if len(diffs) < len(seeds):
    return "pending", diffs
  if at_chance:
    return "inconclusive (at chance)", diffs
  if all(d > 0 for d in diffs):
    return "reproduced", diffs
  if all(d <= 0 for d in diffs):
    return "not reproduced", diffs
  return "inconclusive", diffs


def spearman(x, y) -> float:
  """Spearman's rho with average ranks for ties (no SciPy needed)."""
  def ranks(v):
    v = np.asarray(v, float)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):   # ties share their mean rank
      tied = v == value
      r[tied] = r[tied].mean()
    return r
  rx, ry = ranks(x), ranks(y)
  if rx.std() == 0 or ry.std() == 0:
    return float("nan")
  return float(np.corrcoef(rx, ry)[0, 1])


def correlation(finding: Finding, runs: dict, seeds) -> dict | None:
  if not finding.correlate:
    return None
  a, b = finding.correlate
  points = {str(seed): [] for seed in seeds}
  for variant in finding.variants:
    for seed in seeds:
      values = runs.get(variant.name, {}).get(str(seed), {}).get("values", {})
      if values.get(a) is not None and values.get(b) is not None:
        points[str(seed)].append((values[a], values[b]))
  every = [p for ps in points.values() for p in ps]
  out = {"metrics": [a, b], "points": len(every),
         "rho": spearman(*zip(*every)) if len(every) >= 3 else None,
         "rho_per_seed": {s: (spearman(*zip(*ps)) if len(ps) >= 3 else None)
                          for s, ps in points.items()}}
  shown = [v for v in finding.variants if v.shown]
  per_seed = list(out["rho_per_seed"].values())
  if len(every) < len(shown) * len(seeds):
    out["verdict"] = "pending"
  elif not all(r is not None and np.isfinite(r) for r in per_seed + [out["rho"]]):
    out["verdict"] = "inconclusive"   # a metric constant over a seed's runs: no ranking to test
  elif all(r > 0 for r in per_seed) and out["rho"] > 0:
    out["verdict"] = "reproduced"
  elif all(r <= 0 for r in per_seed) and out["rho"] <= 0:
    out["verdict"] = "not reproduced"
  else:
    out["verdict"] = "inconclusive"
  return out


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _fmt(value, digits: int = 3) -> str:
  return "-" if value is None else f"{value:.{digits}f}"


def _cell(runs: dict, variant: str, metric: str, seeds) -> str:
  values = [runs.get(variant, {}).get(str(s), {}).get("values", {}).get(metric) for s in seeds]
  got = [v for v in values if v is not None]
  if not got:
    return "pending"
  spread = ", ".join(_fmt(v) for v in values)
  return f"{_fmt(float(np.mean(got)))} ({spread})"


def render(state: dict, findings, seeds) -> str:
  lines = [
      "# Reproduction report",
      "",
      f"Made by `{state['command']}`; corpus `{state['corpus']}`; seeds {', '.join(map(str, seeds))}; "
      f"{state['finished_runs']} of {state['total_runs']} runs finished; "
      f"{state['compute_minutes']:.0f} min of compute so far; updated {state['updated']}.",
      "",
      "Every number is a CPU-scale run on the Debian corpus, not the paper's setting: the question "
      "is whether each paper's *direction* shows up at this scale. A claim is reproduced when it "
      "holds under every seed, not reproduced when it fails under every seed, inconclusive when "
      "the seeds disagree, and inconclusive (at chance) when under some seed both sides of a "
      "transfer claim are no better than the majority class. Cells read `mean (seed 0, seed 1)`. "
      "How the runs are made: "
      "`experiments/repro.py`.",
      "",
      *provenance(state),
      "## Summary",
      "",
      "| finding | claim | paper | ours: difference per seed | verdict |",
      "|---|---|---|---|---|",
  ]
  sections = []
  for finding in findings:
    runs = state["runs"].get(finding.key, {})
    for claim in finding.claims:
      verdict, diffs = claim_verdict(claim, runs, seeds)
      metric = METRICS[claim.metric]
      sign = ">" if metric.higher_is_better else "<"
      lines.append(f"| {finding.key} | {claim.better} {sign} {claim.worse} on {metric.label} | "
                   f"{PAPER_NUMBERS.get(claim.paper, claim.paper)} | "
                   f"{', '.join(f'{d:+.3f}' for d in diffs) or '-'} | {verdict} |")
    corr = correlation(finding, runs, seeds)
    if corr:
      per_seed = ", ".join(_fmt(r, 2) for r in corr["rho_per_seed"].values())
      lines.append(f"| {finding.key} | Spearman({corr['metrics'][0]}, {corr['metrics'][1]}) > 0 "
                   f"over all runs | {PAPER_NUMBERS.get(finding.key + ':rho', '')} | "
                   f"rho {_fmt(corr['rho'], 2)} over {corr['points']} runs (per seed {per_seed}) | "
                   f"{corr['verdict']} |")
    steps = SMOKE_STEPS if state.get("smoke") else finding.steps
    tuned = ("" if not finding.finetune else ", fine-tuned on 64 English examples (smoke)"
             if state.get("smoke") else ", fine-tuned for 3 epochs on 8,000 English examples, lr 1e-4")
    sections += [f"## {finding.title}", "", f"Paper: {finding.paper}. Here: {finding.setup}; "
                 f"{steps} pre-training steps per variant{tuned}.", "",
                 "| variant | " + " | ".join(METRICS[m].label for m in finding.metrics) + " |",
                 "|---|" + "---|" * len(finding.metrics)]
    for variant in finding.variants:
      if variant.shown:
        sections.append(f"| {variant.name} | " + " | ".join(
            _cell(runs, variant.name, m, seeds) for m in finding.metrics) + " |")
    verdicts = [claim_verdict(c, runs, seeds)[0] for c in finding.claims]
    if any(v == "not reproduced" or v.startswith("inconclusive") for v in verdicts):
      sections += ["", f"What a proper test would need: {finding.needs}."]
    sections.append("")
  return "\n".join(lines + [""] + sections)


def provenance(state: dict) -> list[str]:
  """Which code and corpus made the finished runs: one line when every run shares them, else one
  line per combination, so a report that mixes them says so."""
  groups: dict[tuple[str, str], list[str]] = {}
  for key, variants in state["runs"].items():
    for name, seeds in variants.items():
      for seed, run in seeds.items():
        group = (run.get("code", "not recorded"), run.get("corpus_sha256", "not recorded"))
        groups.setdefault(group, []).append(f"{key}/{name}/{seed}")
  def line(code, corpus):
    return f"code `{code}`, corpus content sha256 `{corpus[:16]}`"
  if not groups:
    return []
  if len(groups) == 1:
    (code, corpus), = groups
    return [f"Every run: {line(code, corpus)} (`xlm_jax.data.corpus.content_digest`: the "
            "manifest without its build time).", ""]
  return (["The runs were made with different code or corpora (content sha256: the manifest "
           "without its build time; `xlm_jax.data.corpus.content_digest`):", ""] +
          [f"- {line(code, corpus)}: {len(runs)} run{'s' * (len(runs) > 1)} ({', '.join(runs)})"
           for (code, corpus), runs in sorted(groups.items())] + [""])


# The papers' numbers behind each claim, shown beside ours. Where the paper's table could not be
# read (EMS, EMMA-X), the claim is the paper's stated direction and the cell says so.
PAPER_NUMBERS = {
    # ALIGN-MLM: zero-shot XNLI accuracy and alignment % on trans∘inv, from the authors' plotting
    # data (princeton-nlp/align-mlm plots_and_images/xlm_plots/xlm.csv); rho is in the abstract.
    "align_mlm_vs_mlm": "XNLI 68.8 vs 56.7 (+12.1); POS F1 92.0 vs 56.5",
    "align_mlm_vs_xlm": "XNLI 68.8 vs 67.2 (+1.6); POS F1 92.0 vs 61.8",
    "align_mlm_vs_dict": "XNLI 68.8 vs 65.3 (+3.5); POS F1 92.0 vs 76.0",
    "xlm_vs_mlm_synthetic": "XNLI 67.2 vs 56.7 (+10.5)",
    "align_alignment": "95.2% vs 0.3%",
    "align_mlm:rho": "rho_s = 0.727 (XNLI; 4 objectives x 3 derived languages)",
    # Emerging structure, Table 1, XNLI en-fr (and the average change over fr/ru/zh).
    "es_no_anchors": "fr 73.6 vs 72.1 (avg -1.1)",
    "es_sep_emb": "fr 73.6 vs 72.7 (avg -4.5)",
    "es_sep_l1_3": "fr 73.6 vs 72.4 (avg -3.4)",
    "es_sep_l1_6": "fr 73.6 vs 61.9 (avg -22.6)",
    "es_l13_vs_l16": "fr 72.4 vs 61.9",
    # XLM, XNLI zero-shot table: average over 15 languages.
    "xlm_transfer": "XNLI avg 75.1 vs 71.5 (+3.6), en 85.0 vs 83.2",
    "xlm_retrieval": "no retrieval in the paper; the direction TLM's sentence-level signal implies",
    # ERNIE-M, Table 6 (ablation), XNLI accuracy; exp0 = XLM-R without further pre-training 75.7.
    "ernie_camlm": "XNLI 76.1 vs 75.8 (exp3 vs exp1, +0.3)",
    "ernie_btmlm": "XNLI 76.6 vs 76.1 (exp4 vs exp3, +0.5)",
    # EMS and EMMA-X: the ablation tables were not in any text we could read.
    "ems_vs_xtr": "ablation: each component helps (numbers not found in readable text)",
    "ems_vs_cl": "ablation: each component helps (numbers not found in readable text)",
    "emma_retrieval": "EM loop beats contrastive-only (numbers not found in readable text)",
    "emma_invariance": "better invariance than baselines (numbers not found)",
    "emma_canonical": "better canonical form than baselines (numbers not found)",
    "emma_isotropy": "better isotropy than baselines (numbers not found)",
}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def corpus_fingerprint(corpus_dir: str) -> tuple[str, str]:
  """(folder, content sha256) of the findings' corpus: the digest leaves out the manifest's build
  time, so a rebuild of the same packages keeps it and a different corpus changes it."""
  from xlm_jax.data.corpus import content_digest, read_manifest, resolve_corpus_dir
  folder = pathlib.Path(corpus_dir) if corpus_dir else pathlib.Path(
      resolve_corpus_dir("", "debian8"))
  if not (folder / "manifest.json").is_file():
    return str(folder), "not built"
  return str(folder), content_digest(read_manifest(folder))


def code_version() -> str:
  """The commit the runs are made with, "+changes" when the code differs from it (the report's own
  files are left out: the run rewrites them)."""
  def git(*args) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=True).stdout.strip()
  try:
    head = git("rev-parse", "--short=10", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "xlm_jax", "data_prep",
                  "experiments", "setup.py", "requirements.txt")
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"
  return head + ("+changes" if changed else "")


def _write_atomically(path: pathlib.Path, text: str) -> None:
  from xlm_jax.atomic_files import write_text_atomically
  path.parent.mkdir(parents=True, exist_ok=True)
  write_text_atomically(path, text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.repro", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="workdirs/repro", help="workdirs of every run")
  parser.add_argument("--report", default=None, help="the Markdown report (default "
                      "REPRODUCTION.md at the repository root; <out>/REPRODUCTION.md with --smoke)")
  parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  parser.add_argument("--only", default="", help="comma-separated finding keys: " +
                      ", ".join(f.key for f in FINDINGS))
  parser.add_argument("--smoke", action="store_true", help="every row end to end with a narrow "
                      "model and a few steps: checks the pipeline, not the findings")
  parser.add_argument("--languages", default="", help="comma-separated languages for the "
                      "findings that use the corpus's own (default: all of them)")
  parser.add_argument("--corpus-dir", default="", help="a debian8 corpus (default: "
                      "~/.cache/xlm_jax/data/debian8, built on first use)")
  args, rest = parser.parse_known_args(argv)
  # --config.<field>=<value>: an override for every pre-training run (after the finding's own),
  # e.g. --config.data.vocab_size_per_lang=1000 for a small corpus's per-language tokenizers.
  extra = tuple(a[len("--config."):] for a in rest if a.startswith("--config.") and "=" in a)
  if len(extra) != len(rest):
    parser.error(f"unrecognized arguments: {[a for a in rest if not a.startswith('--config.')]}"
                 " (overrides are --config.<field>=<value>)")
  logging.basicConfig(level=logging.WARNING)
  if args.smoke:
    # The smoke checks the pipeline, not numbers, and compiling is most of its time: LLVM's
    # cheapest code generation cut a smoke of the EMS finding from 131 s to 104 s (2 cores).
    # Set before jax starts its backend, which reads XLA_FLAGS once.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
  seeds = tuple(int(s) for s in args.seeds.split(","))
  if len(seeds) < 2:
    parser.error("--seeds: at least 2 seeds, or the verdicts cannot tell a finding from noise")
  known = {f.key: f for f in FINDINGS}
  unknown = [k for k in filter(None, args.only.split(",")) if k not in known]
  if unknown:
    parser.error(f"--only: unknown finding(s) {unknown}; known: {sorted(known)}")
  # --only picks what runs now; the report always shows every finding (the others as pending or
  # as an earlier call left them), so partial calls build one report.
  to_run = [known[k] for k in args.only.split(",")] if args.only else list(FINDINGS)
  out = pathlib.Path(args.out)
  report = pathlib.Path(args.report) if args.report else (
      out / "REPRODUCTION.md" if args.smoke else REPO / "REPRODUCTION.md")
  languages = tuple(filter(None, args.languages.split(",")))
  state_path = report.with_suffix(".json")   # every run's numbers: the report's data and the resume state
  state = _read_json(state_path) or {"runs": {}}
  if state.get("smoke", args.smoke) != args.smoke:
    parser.error(f"{state_path} holds {'smoke' if state['smoke'] else 'full'} runs; use another --out")
  corpus, _ = corpus_fingerprint(args.corpus_dir)
  code = code_version()
  state.update(smoke=args.smoke, corpus=corpus,
               command="python -m experiments.repro " + " ".join(argv or sys.argv[1:]))
  jobs = [(f, v, s) for f in FINDINGS for s in seeds for v in f.variants]
  # A finding whose steps changed since its runs were recorded would mix two designs in one table.
  stale = [f"{f.key}/{v.name}/seed {s}: {run['steps']} steps, now {variant_steps(f, v, args.smoke)}"
           for f, v, s in jobs
           if (run := state["runs"].get(f.key, {}).get(v.name, {}).get(str(s))) is not None
           and run.get("steps") != variant_steps(f, v, args.smoke)]
  if stale:
    parser.error(f"{state_path} records runs made with other step counts ({'; '.join(stale)}); "
                 f"delete those findings' entries from it and their folders under {out} to rerun "
                 "them with the current design")

  def save() -> None:
    done = [(f, v, s) for f, v, s in jobs if str(s) in state["runs"].get(f.key, {}).get(v.name, {})]
    state.update(finished_runs=len(done), total_runs=len(jobs),
                 compute_minutes=sum(r.get("pretrain_seconds", 0) + r.get("finetune_seconds", 0)
                                     for f in state["runs"].values() for v in f.values()
                                     for r in v.values()) / 60,
                 updated=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    _write_atomically(state_path, json.dumps(state, indent=1, sort_keys=True))
    _write_atomically(report, render(state, FINDINGS, seeds))

  # XLA's persistent compilation cache: the second seed of a variant, and every fine-tuning of the
  # same encoder shape, load their executables instead of compiling them again (most of a smoke
  # run's time is compilation).
  import jax
  jax.config.update("jax_compilation_cache_dir", str(out / ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  for finding, variant, seed in jobs:
    if finding not in to_run:
      continue
    slot = state["runs"].setdefault(finding.key, {}).setdefault(variant.name, {})
    if str(seed) in slot:
      continue
    folder = out / finding.key / variant.name.replace(" ", "_").replace("(", "").replace(
        ")", "").replace("+", "_") / f"seed{seed}"
    print(f"[repro] {finding.key} / {variant.name} / seed {seed} -> {folder}", flush=True)
    try:
      result = run_one(finding, variant, seed, folder, args.smoke, languages, args.corpus_dir,
                       extra)
    except Preempted as stopped:
      save()
      print(f"[repro] {stopped} was stopped by a signal after saving its checkpoint; rerun the "
            "same command to resume", flush=True)
      return 1
    # Provenance per run (a report is built over sessions): the code and the corpus it was made
    # with; the first run may have built the corpus, so its digest is read after the run.
    slot[str(seed)] = {**result, "code": code, "corpus_sha256": corpus_fingerprint(args.corpus_dir)[1]}
    save()
  save()
  print(f"[repro] report: {report}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
