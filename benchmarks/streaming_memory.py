"""Peak memory and wall time of a whole `xlm-jax data build --mono-dir` on generated multi-GB text, per stage.

    python benchmarks/streaming_memory.py                      # 0.5 GB and 2 GB, in a temporary folder
    python benchmarks/streaming_memory.py --sizes-mb 50 --json /tmp/streaming.json

For each size it writes a synthetic CC-100-style file <tmp>/mono/de.txt (sentences of made-up words, a
blank line between documents, 5% of lines repeated from a pool of boilerplate so that dedup has work; no
third-party text), then runs the real command line, `python -m data_prep build --corpus-dir <tmp>/corpus
--mono-dir <tmp>/mono`, in a child process, and deletes everything again. Every stage of the build
(data_prep.stages: text, tokenizer, tfds, tokens) is measured from inside the child by an observer: at a
stage's start the kernel's high-water mark of the process's memory is reset (writing 5 to
/proc/self/clear_refs), at its end VmHWM is that stage's peak RSS. The time between stages (argument
parsing, the stats table printed at the end) is measured the same way as "other". (Not getrusage's
ru_maxrss: on Linux a child started by fork + exec inherits the parent's high-water mark, here the
generator's.) Each stage's CPU seconds (all threads of the child) are recorded too, and the share of the
machine's CPU that other processes took during the build: on a shared machine the wall time alone says
little. The memory that does not depend on the input (imports, the SentencePiece trainer on its
bounded sample, the TFDS writer's 64 MiB sort buffer) is the same at every size; flat means the peaks
do not grow from 0.5 to 2 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from machine_load import machine_busy_seconds  # benchmarks/ is on sys.path[0]

CHUNK_BYTES = 16 << 20


def _vocabulary(rng: np.random.Generator, size: int = 20_000) -> np.ndarray:
  """Made-up words of 1-4 syllables (no real text): an object array of bytes."""
  syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"] + ["sch", "ei", "au", "ung", "en"]
  lengths = rng.integers(1, 5, size)
  picks = rng.integers(0, len(syllables), (size, 4))
  return np.array(["".join(syllables[p] for p in row[:n]).encode() for row, n in zip(picks, lengths)],
                  dtype=object)


def write_synthetic_text(path: pathlib.Path, size_bytes: int, seed: int = 0) -> int:
  """Writes about size_bytes of sentences to path, CHUNK_BYTES at a time; returns the bytes written."""
  rng = np.random.default_rng(seed)
  vocab = _vocabulary(rng)
  boilerplate = np.array([b" ".join(vocab[rng.integers(0, len(vocab), 8)]) + b"." for _ in range(1000)],
                         dtype=object)
  written = 0
  with open(path, "wb") as f:
    while written < size_bytes:
      sentences = CHUNK_BYTES // 80  # ~11 words of ~6 bytes each
      lengths = rng.integers(4, 20, sentences)
      # Skewed word frequencies, as in real text: low ids are common.
      ids = (len(vocab) * rng.random(lengths.sum()) ** 3).astype(np.int64)
      separators = np.full(len(ids), b" ", dtype=object)
      ends = np.cumsum(lengths) - 1
      separators[ends] = b".\n"
      separators[ends[rng.random(sentences) < 1 / 15]] = b".\n\n"  # document ends
      repeated = ends[rng.random(sentences) < 0.05]
      separators[repeated] = b".\n" + boilerplate[rng.integers(0, len(boilerplate), len(repeated))] + b"\n"
      tokens = np.empty(2 * len(ids), dtype=object)
      tokens[0::2], tokens[1::2] = vocab[ids], separators
      chunk = b"".join(tokens.tolist())[:size_bytes - written]
      chunk = chunk[:chunk.rfind(b"\n") + 1] or chunk
      f.write(chunk)
      written += len(chunk)
  return written


def _status_mb(field: str) -> float:
  """A memory field of /proc/self/status ("VmRSS", "VmHWM") in MB."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) / 1024
  raise RuntimeError(f"no {field} in /proc/self/status; this benchmark needs Linux")


def _reset_peak() -> None:
  pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def run_build(mono_dir: str, corpus_dir: str) -> dict:
  """The child's job: `python -m data_prep build --mono-dir` as the command line runs it, measuring
  the peak RSS of each stage of this process."""
  from data_prep import cli, stages
  peaks, other, cpu, started, at_start = {}, [0.0], {}, {}, {}

  def observe(stage: str, event: str) -> None:
    if event == "start":
      other[0] = max(other[0], _status_mb("VmHWM"))  # since the last stage ended
      started[stage] = time.process_time()
      # What earlier stages left resident (the allocator keeps freed memory for reuse): the stage's own
      # share of its peak is the difference.
      at_start[stage] = _status_mb("VmRSS")
    else:
      peaks[stage] = max(peaks.get(stage, 0.0), _status_mb("VmHWM"))
      cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - started[stage]
    _reset_peak()

  stages.OBSERVERS.append(observe)
  baseline = _status_mb("VmRSS")
  _reset_peak()
  start = time.perf_counter()
  code = cli.main(["build", "--corpus-dir", corpus_dir, "--mono-dir", mono_dir, "--quiet"])
  seconds = time.perf_counter() - start
  other[0] = max(other[0], _status_mb("VmHWM"))
  if code != 0:
    raise SystemExit(f"data build failed with exit code {code}")
  manifest = json.loads((pathlib.Path(corpus_dir) / "manifest.json").read_text(encoding="utf-8"))
  return {"seconds": seconds, "cpu_seconds": time.process_time(), "stage_cpu_seconds": cpu,
          "rss_after_imports_mb": baseline, "stage_peak_rss_mb": peaks, "stage_start_rss_mb": at_start,
          "other_peak_rss_mb": other[0], "peak_rss_mb": max([other[0], *peaks.values()]),
          "stage_seconds": manifest["build_seconds"], "counts": manifest["counts"]["de"],
          "dropped": manifest["dropped"], "tokens": manifest["tokens"]["de"],
          "inputs": manifest["user_corpora"]["inputs"]}


def measure(size_mb: float, tmp_root: str | None) -> dict:
  folder = pathlib.Path(tempfile.mkdtemp(prefix="xlmj_streaming_", dir=tmp_root))
  try:
    (folder / "mono").mkdir()
    start = time.perf_counter()
    size = write_synthetic_text(folder / "mono" / "de.txt", int(size_mb * (1 << 20)))
    generate_seconds = time.perf_counter() - start
    busy, wall = machine_busy_seconds(), time.perf_counter()
    child = subprocess.run(
        [sys.executable, __file__, "--run-build", str(folder / "mono"), str(folder / "corpus")],
        capture_output=True, text=True)
    wall = time.perf_counter() - wall
    busy = machine_busy_seconds() - busy if busy is not None else None
    if child.returncode != 0:
      raise SystemExit(f"the build child failed:\n{child.stderr[-4000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    if busy is not None:  # CPU the other processes took, as a share of all cores over the child's run
      result["others_cpu_share"] = max(0.0, busy - result["cpu_seconds"]) / (wall * os.cpu_count())
    result["corpus_mb"] = sum(p.stat().st_size for p in (folder / "corpus").rglob("*") if p.is_file()) / 2**20
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  result.update(input_mb=size / (1 << 20), generate_seconds=generate_seconds,
                mb_per_s=size / (1 << 20) / result["seconds"])
  return result


STAGES = ("text", "tokenizer", "tfds", "tokens")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes-mb", type=float, nargs="+", default=[512, 2048])
  parser.add_argument("--tmp-dir", default=None, help="where the input and output go (default: $TMPDIR)")
  parser.add_argument("--json", default=None, help="also write the results here")
  parser.add_argument("--run-build", nargs=2, metavar=("MONO_DIR", "CORPUS_DIR"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.run_build:
    print(json.dumps(run_build(*args.run_build)))
    return 0
  results = []
  print("RSS in MB (at start: resident when the stage began; peak: its high-water mark); others: the "
        "share of the machine's CPU other processes took while the build ran")
  print(f"{'input MB':>9} {'lines':>11}  {'stage':<12} {'at start':>8} {'peak':>6} {'wall s':>7} "
        f"{'CPU s':>6}")
  for size_mb in args.sizes_mb:
    r = measure(size_mb, args.tmp_dir)
    results.append(r)
    head = f"{r['input_mb']:>9.0f} {r['inputs'][0]['lines']:>11}"
    for stage in STAGES:
      print(f"{head}  {stage:<12} {r['stage_start_rss_mb'][stage]:>8.0f} "
            f"{r['stage_peak_rss_mb'][stage]:>6.0f} {r['stage_seconds'][stage]:>7.0f} "
            f"{r['stage_cpu_seconds'][stage]:>6.0f}")
    print(f"{head}  {'between':<12} {'':>8} {r['other_peak_rss_mb']:>6.0f}")
    others = r.get("others_cpu_share", float("nan"))
    print(f"{head}  {'whole build':<12} {r['rss_after_imports_mb']:>8.0f} {r['peak_rss_mb']:>6.0f} "
          f"{r['seconds']:>7.0f} {r['cpu_seconds']:>6.0f}  (others {others:.0%}, "
          f"{r['input_mb'] / r['seconds']:.1f} MB/s)", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
