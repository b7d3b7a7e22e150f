"""The stdin protocol between benchmarks/train_step.py and its peers (torch_peer.py, flax_peer.py).

Pure Python and NumPy, so that every peer venv and the project's imports it (the scripts run with
benchmarks/ on sys.path[0]). A peer prints `ready key=value ...` once, then serves one command
per line:

    run N PATH  ->  N train steps on the (input_ids, labels) [N, batch, seq_len] in PATH (.npz,
                    Hugging Face ids, IGNORE where nothing is predicted)
    run N       ->  N train steps on one fixed batch with one fixed mask (fixed_batch)
    quit        ->  exits

and answers each `run` with `elapsed <wall s> <cpu s> <peak RSS bytes> <loss of each step>`.
Between commands it blocks on stdin and computes nothing, so the sides never overlap.
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Any, Callable

import numpy as np

IGNORE = -100  # the label of a position that is not predicted (PyTorch's ignore_index)


def peak_rss_bytes() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def fixed_batch(spec: dict) -> tuple[np.ndarray, np.ndarray]:
  """The `run N` batch, [1, batch, seq_len]: random ordinary ids, `<s>` first, mask_rate of the
  other positions labelled and set to `<mask>` (Hugging Face's XLM-R has it last)."""
  rng = np.random.default_rng(spec["seed"])
  batch, length, vocab = spec["batch"], spec["seq_len"], spec["vocab"]
  ids = rng.integers(5, vocab - 1, (batch, length)).astype(np.int32)
  ids[:, 0] = 0
  labels = np.full_like(ids, IGNORE)
  num_labels = max(1, round(spec["mask_rate"] * (length - 1)))
  for row in range(batch):
    chosen = 1 + rng.permutation(length - 1)[:num_labels]
    labels[row, chosen] = ids[row, chosen]
    ids[row, chosen] = vocab - 1
  return ids[None], labels[None]


def load_steps(path: str, steps: int, spec: dict) -> tuple[np.ndarray, np.ndarray]:
  """input_ids and labels [steps, batch, seq_len] (int32) from the driver's .npz, checked."""
  with np.load(path) as f:
    ids, labels = f["input_ids"], f["labels"]
  want = (steps, spec["batch"], spec["seq_len"])
  if ids.shape != want or labels.shape != want:
    raise ValueError(f"{path}: input_ids {ids.shape} / labels {labels.shape}, expected {want}")
  return ids.astype(np.int32), labels.astype(np.int32)


def serve(spec: dict, prepare: Callable[[np.ndarray, np.ndarray], Any],
          train: Callable[[Any], list[float]]) -> None:
  """Answers the driver's commands until `quit` or end of input.

  prepare(ids, labels) turns a run's arrays into the peer's inputs (tensors, device arrays)
  before the clock starts; train(inputs) runs the steps and returns each step's loss, and is
  all that is timed.
  """
  fixed = None
  for line in sys.stdin:
    command = line.split()
    if command == ["quit"]:
      break
    if len(command) not in (2, 3) or command[0] != "run" or not command[1].isdigit():
      print(f"error unknown command {line.strip()!r}; expected 'run N [PATH]' or 'quit'",
            flush=True)
      continue
    steps = int(command[1])
    if len(command) == 3:
      ids, labels = load_steps(command[2], steps, spec)
    else:
      fixed = fixed or fixed_batch(spec)
      ids, labels = (np.repeat(a, steps, axis=0) for a in fixed)
    inputs = prepare(ids, labels)
    start, cpu_start = time.perf_counter(), time.process_time()
    losses = train(inputs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    values = " ".join(f"{loss:.7g}" for loss in losses)
    print(f"elapsed {wall:.6f} {cpu:.6f} {peak_rss_bytes()} {values}".rstrip(), flush=True)
