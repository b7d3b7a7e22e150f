"""Metric sinks (JSONL + TensorBoard) and throughput accounting."""
from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Mapping

import jax
import numpy as np

from xlm_jax.atomic_files import disk_full_error, no_room


class MetricWriter:
  """Appends one JSON object per log step to `metrics.jsonl` and mirrors scalars to TensorBoard.

  Only process 0 writes, so multi-host runs produce one file.
  """

  def __init__(self, workdir: str | pathlib.Path, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self._tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: heavy and optional at eval time
      self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    # float(): jax arrays and numpy float32 scalars are not JSON-serialisable.
    scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
    self._append(step, json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
      # Flushed on every write, so a preempted run still has every logged step on disk.
      self._tb.flush()

  def _append(self, step: int, line: str) -> None:
    """Appends a whole line or nothing: a write cut short (a full disk) is undone, so the file
    stays one JSON object per line and a resumed run appends after the last whole one."""
    with self.path.open("ab", buffering=0) as f:  # unbuffered: a failed write fails here
      start = f.seek(0, os.SEEK_END)
      try:
        data = memoryview(line.encode("utf-8"))
        while data:  # a raw write may take part of the line (up to a size limit) and then fail
          data = data[f.write(data):]
      except OSError as err:
        try:
          f.truncate(start)
        except OSError:
          pass
        if not no_room(err):
          raise
        raise disk_full_error(
            f"{self.path} (the metrics of step {step})", err,
            "The checkpoints and every line written before are intact: free some space and rerun "
            "xlm-jax train on this workdir to resume from the newest checkpoint") from err

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Throughput:
  """Tokens/s and useful TFLOP/s per device between two log points."""

  def __init__(self, tokens_per_step: int, flops_per_step: float, num_devices: int):
    self.tokens_per_step = tokens_per_step
    self.flops_per_step = flops_per_step
    self.num_devices = num_devices
    self._time = time.perf_counter()
    self._steps = 0

  def tick(self) -> None:
    self._steps += 1

  def measure(self) -> dict[str, float]:
    now = time.perf_counter()
    elapsed, steps = now - self._time, self._steps
    self._time, self._steps = now, 0
    if not steps or elapsed <= 0:
      return {}
    return {
        "steps_per_second": steps / elapsed,
        "tokens_per_second": steps * self.tokens_per_step / elapsed,
        "tokens_per_second_per_device": steps * self.tokens_per_step / elapsed / self.num_devices,
        # Analytic model FLOPs (encoder.flops_per_token): remat recomputation does not count.
        "tflops_per_device": steps * self.flops_per_step / elapsed / self.num_devices / 1e12,
    }


def mean_metrics(history: list[Mapping[str, np.ndarray]]) -> dict[str, float]:
  """Averages the per-step metric dicts gathered since the last log.

  With alternating objectives each step reports only its own objective's metrics, so each key
  is averaged over the steps that have it.
  """
  # dict.fromkeys: a set that keeps first-seen order, so keys log in a stable order.
  keys = dict.fromkeys(k for h in history for k in h)
  return {k: float(np.mean([h[k] for h in history if k in h])) for k in keys}
