"""experiments/repro.py: the reproduction report's verdicts, its statistics, and `--smoke` end to end.

The smoke run trains every variant of two findings (of every finding: marked slow) for two seeds
(a narrow model, two steps), fine-tunes where the finding transfers, and writes the report, on the small real corpus with the
classification task and dictionaries made in test_eval_suite.py's `eval_corpus`. It checks the
pipeline and the report's shape, not the findings.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import repro
from test_eval_suite import eval_corpus  # noqa: F401  (the fixture)

REPO = repro.REPO


def _runs(metric: str, pairs) -> dict:
  """{variant: {seed: {"values": {metric: v}}}} from [(variant, [v_seed0, v_seed1]), ...]."""
  return {name: {str(seed): {"values": {metric: v}} for seed, v in enumerate(values)}
          for name, values in pairs}


@pytest.mark.parametrize("a, b, verdict", [
    ([0.6, 0.7], [0.5, 0.5], "reproduced"),
    ([0.4, 0.5], [0.5, 0.6], "not reproduced"),
    ([0.5, 0.5], [0.5, 0.5], "not reproduced"),      # a tie is not the paper's gain
    ([0.6, 0.4], [0.5, 0.5], "inconclusive"),        # the seeds disagree
])
def test_claim_verdict_needs_every_seed_to_agree(a, b, verdict):
  claim = repro.Claim("A", "B", "retrieval", "")
  got, diffs = repro.claim_verdict(claim, _runs("retrieval", [("A", a), ("B", b)]), (0, 1))
  assert got == verdict
  np.testing.assert_allclose(diffs, np.subtract(a, b))


def test_claim_verdict_flips_lower_is_better_metrics_and_waits_for_missing_runs():
  claim = repro.Claim("A", "B", "invariance_kl", "")
  runs = _runs("invariance_kl", [("A", [1.0, 2.0]), ("B", [3.0, 2.5])])
  assert repro.claim_verdict(claim, runs, (0, 1)) == ("reproduced", [2.0, 0.5])
  del runs["A"]["1"]
  assert repro.claim_verdict(claim, runs, (0, 1))[0] == "pending"


def test_transfer_claims_at_the_majority_class_are_inconclusive():
  # Both classifiers at the majority-class accuracy under a seed: that seed cannot test the claim,
  # however the other seed falls (a fine-tuning collapsed to the majority class ties at chance,
  # which would otherwise read "not reproduced").
  claim = repro.Claim("A", "B", "transfer", "x")

  def runs(a, b, chance=0.29):
    return {name: {str(seed): {"values": {"transfer": v, "chance": chance}}
                   for seed, v in enumerate(values)} for name, values in (("A", a), ("B", b))}
  assert repro.claim_verdict(claim, runs([0.29, 0.29], [0.29, 0.29]), (0, 1))[0] == \
      "inconclusive (at chance)"
  assert repro.claim_verdict(claim, runs([0.35, 0.29], [0.30, 0.25]), (0, 1))[0] == \
      "inconclusive (at chance)"
  assert repro.claim_verdict(claim, runs([0.35, 0.40], [0.30, 0.25]), (0, 1))[0] == "reproduced"
  assert repro.claim_verdict(claim, runs([0.30, 0.25], [0.35, 0.40]), (0, 1))[0] == "not reproduced"
  # A metric without a baseline (retrieval) is compared as it is.
  retrieval = repro.Claim("A", "B", "retrieval", "x")
  assert repro.claim_verdict(retrieval, _runs("retrieval", [("A", [0.002, 0.002]),
                                                           ("B", [0.002, 0.002])]), (0, 1))[0] == \
      "not reproduced"


def test_spearman_matches_the_pearson_correlation_of_average_ranks():
  x = [0.3, 85.6, 64.2, 95.2, 10.0, 10.0]
  y = [56.7, 67.2, 65.3, 68.8, 60.0, 50.0]
  rank = lambda v: np.array([np.mean([j for j, w in enumerate(sorted(v)) if w == u]) for u in v])
  assert repro.spearman(x, y) == pytest.approx(np.corrcoef(rank(x), rank(y))[0, 1])
  assert repro.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert repro.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert np.isnan(repro.spearman([1, 1, 1], [1, 2, 3]))


def test_every_claim_and_metric_names_what_exists():
  for finding in repro.FINDINGS:
    names = {v.name for v in finding.variants}
    assert set(finding.metrics) <= set(repro.METRICS), finding.key
    for claim in finding.claims:
      assert {claim.better, claim.worse} <= names and claim.metric in finding.metrics, claim
      assert claim.paper in repro.PAPER_NUMBERS, claim.paper
    for variant in finding.variants:
      assert not variant.init or variant.init in names, variant
    if finding.correlate:
      assert set(finding.correlate) <= set(finding.metrics)


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_preempted_command_stops_the_report_and_a_rerun_resumes(tmp_path, monkeypatch, stage):
  # SIGTERM during a run: the trainer saves its checkpoint, exits 0 and says "preempted" in its
  # summary. The report must stop there (no fine-tuning of a half-trained encoder), and a rerun
  # must go on from it.
  from xlm_jax import cli
  calls = []

  def fake_main(argv):
    command, workdir = argv[0], pathlib.Path(argv[argv.index("--workdir") + 1])
    calls.append(command)
    workdir.mkdir(parents=True, exist_ok=True)
    # The stage's command is stopped the first time only.
    stopped = calls.count(command) == 1 and command == {"pretrain": "train",
                                                        "finetune": "finetune"}[stage]
    if command == "train":
      (workdir / "summary.json").write_text(json.dumps(
          {"preempted": stopped, "step": 1, "eval": {"retrieval/mean_p1": 0.5}}))
    else:
      (workdir / "results.json").write_text(json.dumps(
          {"preempted": stopped, "test": {"en": {"accuracy": 0.6}, "fr": {"accuracy": 0.4}}}))
    return 0
  monkeypatch.setattr(cli, "main", fake_main)
  finding = next(f for f in repro.FINDINGS if f.key == "xlm")
  variant = finding.variants[0]
  with pytest.raises(repro.Preempted, match=stage.replace("pretrain", "pre-training").replace(
      "finetune", "fine-tuning")):
    repro.run_one(finding, variant, 0, tmp_path, True, (), "")
  assert calls == (["train"] if stage == "pretrain" else ["train", "finetune"])
  result = repro.run_one(finding, variant, 0, tmp_path, True, (), "")   # the rerun resumes
  assert calls[-1] == "finetune" and result["values"]["transfer"] == 0.4
  assert calls.count("train") == (2 if stage == "pretrain" else 1)


def test_runs_recorded_with_other_step_counts_are_refused_by_name(tmp_path, capsys):
  report = tmp_path / "REPRODUCTION.md"
  finding = next(f for f in repro.FINDINGS if f.key == "ems")
  (tmp_path / "REPRODUCTION.json").write_text(json.dumps({"smoke": False, "runs": {"ems": {
      "xtr_cl": {"0": {"steps": finding.steps, "values": {}}},
      "cl_only": {"1": {"steps": finding.steps // 2, "values": {}}}}}}))
  with pytest.raises(SystemExit) as stopped:
    repro.main(["--out", str(tmp_path / "runs"), "--report", str(report), "--only", "ems",
                "--corpus-dir", str(tmp_path / "no_corpus")])
  assert stopped.value.code == 2
  error = capsys.readouterr().err
  assert f"ems/cl_only/seed 1: {finding.steps // 2} steps, now {finding.steps}" in error
  assert "xtr_cl" not in error and "delete those findings' entries" in error
  assert not report.exists()   # nothing ran, nothing was rewritten


def test_report_says_when_runs_were_made_with_different_code_or_corpora():
  runs = {"ems": {"XTR+CL": {"0": {"code": "abc", "corpus_sha256": "c1" * 32},
                             "1": {"code": "abc", "corpus_sha256": "c1" * 32}},
                  "XTR": {"0": {"code": "def+changes", "corpus_sha256": "c1" * 32},
                          "1": {}}}}   # a run from before provenance was recorded
  lines = repro.provenance({"runs": runs})
  assert lines[0].startswith("The runs were made with different code or corpora")
  assert "- code `abc`, corpus content sha256 `" + "c1" * 8 + "`: 2 runs (ems/XTR+CL/0, ems/XTR+CL/1)" in lines
  assert any("`def+changes`" in l and "1 run (ems/XTR/0)" in l for l in lines)
  assert any("`not recorded`" in l and "ems/XTR/1" in l for l in lines)
  same = repro.provenance({"runs": {"ems": {"XTR+CL": runs["ems"]["XTR+CL"]}}})
  assert same[0].startswith("Every run: code `abc`")
  assert repro.provenance({"runs": {}}) == []


# The default run smokes two findings: ALIGN-MLM (a derived language, fine-tuning, the correlation)
# and EMS (parallel pairs, no fine-tuning), for the report's machinery and its resume. Every row of
# every finding (~16 min of a CI worker, most of it compiling the Emerging-structure variants'
# language-specific layers) is the slow case.
SMOKE_DEFAULT = ("align_mlm", "ems")


@pytest.mark.parametrize("only", [
    pytest.param(SMOKE_DEFAULT, id="two_findings"),
    pytest.param((), id="every_finding", marks=pytest.mark.slow),
])
def test_smoke_runs_end_to_end_and_resumes(eval_corpus, tmp_path, only):  # noqa: F811
  out = tmp_path / "repro"
  # Its own process, one CPU device: the narrow smoke models gain nothing from 8 virtual devices.
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "experiments.repro", "--smoke", "--out", str(out),
             "--corpus-dir", str(eval_corpus), "--languages", "en,de,fr",
             *(["--only", ",".join(only)] if only else []),
             # The small corpus has ~3k English sentences: per-language tokenizers of 1,000 pieces.
             "--config.data.vocab_size_per_lang=1000"]
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  report = (out / "REPRODUCTION.md").read_text(encoding="utf-8")
  state = json.loads((out / "REPRODUCTION.json").read_text(encoding="utf-8"))
  ran = [f for f in repro.FINDINGS if not only or f.key in only]
  assert state["finished_runs"] == sum(len(f.variants) * 2 for f in ran)
  assert state["total_runs"] == sum(len(f.variants) * 2 for f in repro.FINDINGS)
  for finding in repro.FINDINGS:
    assert finding.title in report  # pending findings are listed too
  for finding in ran:
    for claim in finding.claims:
      row = [line for line in report.splitlines()
             if line.startswith(f"| {finding.key} | {claim.better} ")]
      assert row and not any("pending" in r for r in row), (finding.key, claim)
    for variant in finding.variants:
      for seed in ("0", "1"):
        values = state["runs"][finding.key][variant.name][seed]["values"]
        assert all(v is not None and np.isfinite(v) for v in values.values()), (
            finding.key, variant.name, values)
  # The derived language was scored (ALIGN-MLM's transfer is to en_trans+inv, not to a corpus one).
  results = json.loads((out / "align_mlm" / "ALIGN-MLM" / "seed0" / "finetune" /
                        "results.json").read_text(encoding="utf-8"))
  assert set(results["test"]) == {"en", "en_trans+inv"}
  # Every run records the code and the corpus that made it; one combination is one line.
  assert {(run["code"], run["corpus_sha256"]) for variants in state["runs"].values()
          for seeds in variants.values() for run in seeds.values()} == {
              (repro.code_version(), repro.corpus_fingerprint(str(eval_corpus))[1])}
  assert "Every run: code `" in report
  # A second call finds every run finished and only rewrites the report.
  again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "[repro] " not in again.stdout.replace("[repro] report", ""), \
      again.stdout[-2000:]
