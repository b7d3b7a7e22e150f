"""Peak memory and throughput of the user-corpus text build (data_prep.user_corpora) on large inputs.

    python benchmarks/streaming_memory.py                      # 200 MB and 2 GB, in a temporary folder
    python benchmarks/streaming_memory.py --sizes-mb 50 --json /tmp/streaming.json

For each size it writes a synthetic CC-100-style file <tmp>/mono/de.txt (sentences of made-up words, a
blank line between documents, 5% of lines repeated from a pool of boilerplate so that dedup has work),
builds the text layout from it in a child process, and deletes everything again. The child measures
itself: its peak RSS (VmHWM in /proc/self/status, the high-water mark of the process's own memory) and its
RSS after the imports, before the build, so the build's own share is the difference. (Not getrusage's
ru_maxrss: on Linux a child started by fork + exec inherits the parent's high-water mark, here the
generator's.) Throughput is input MB per second of build wall time (all three passes: split + write,
dedup, filter).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

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


def run_build(mono_dir: str, work_dir: str) -> dict:
  """The child's job: build the text layout from mono_dir, measuring this process only."""
  from data_prep.user_corpora import build_user_text, collect_inputs
  baseline = _status_mb("VmRSS")
  start = time.perf_counter()
  report = build_user_text(work_dir, collect_inputs(mono_dirs=[mono_dir]), test_fraction=0.01)
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "rss_after_imports_mb": baseline,
          "peak_rss_mb": _status_mb("VmHWM"),
          "counts": report["counts"]["de"], "dropped": report["dropped"], "inputs": report["inputs"]}


def measure(size_mb: float, tmp_root: str | None) -> dict:
  folder = pathlib.Path(tempfile.mkdtemp(prefix="xlmj_streaming_", dir=tmp_root))
  try:
    (folder / "mono").mkdir()
    start = time.perf_counter()
    size = write_synthetic_text(folder / "mono" / "de.txt", int(size_mb * (1 << 20)))
    generate_seconds = time.perf_counter() - start
    child = subprocess.run(
        [sys.executable, __file__, "--run-build", str(folder / "mono"), str(folder / "work")],
        check=True, capture_output=True, text=True)
    result = json.loads(child.stdout.strip().splitlines()[-1])
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  result.update(input_mb=size / (1 << 20), generate_seconds=generate_seconds,
                mb_per_s=size / (1 << 20) / result["seconds"])
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes-mb", type=float, nargs="+", default=[200, 2048])
  parser.add_argument("--tmp-dir", default=None, help="where the input and output go (default: $TMPDIR)")
  parser.add_argument("--json", default=None, help="also write the results here")
  parser.add_argument("--run-build", nargs=2, metavar=("MONO_DIR", "WORK_DIR"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.run_build:
    print(json.dumps(run_build(*args.run_build)))
    return 0
  results = []
  print(f"{'input MB':>9} {'lines':>11} {'build s':>8} {'MB/s':>6} {'peak RSS MB':>11} {'RSS at start':>12}")
  for size_mb in args.sizes_mb:
    r = measure(size_mb, args.tmp_dir)
    results.append(r)
    print(f"{r['input_mb']:>9.0f} {r['inputs'][0]['lines']:>11} {r['seconds']:>8.1f} {r['mb_per_s']:>6.1f} "
          f"{r['peak_rss_mb']:>11.0f} {r['rss_after_imports_mb']:>12.0f}", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
