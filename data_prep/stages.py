"""Named stages of a build: wall time per stage for the manifest, and a hook for whoever watches a build.

    clock = StageClock()
    with clock.stage("tokenizer"):
      ...
    manifest["build_seconds"] = clock.seconds

Observers are called with (stage name, "start") and (stage name, "end") around every stage of every
clock in the process. benchmarks/streaming_memory.py uses this to measure the peak memory of each stage of
a real `xlm-jax data build`, with no benchmark code inside the build.
"""
from __future__ import annotations

import contextlib
import sys
import time

OBSERVERS: list = []


class StageClock:
  """Times stages (a repeated name adds up); with `progress`, announces each on stderr."""

  def __init__(self, progress: bool = False, prefix: str = "[data build]"):
    self.seconds: dict[str, float] = {}
    self._progress, self._prefix = progress, prefix
    self._start = time.perf_counter()

  @contextlib.contextmanager
  def stage(self, name: str, message: str = ""):
    if self._progress and message:
      print(f"{self._prefix} {message}", file=sys.stderr, flush=True)
    for observer in OBSERVERS:
      observer(name, "start")
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 1)
      for observer in OBSERVERS:
        observer(name, "end")

  def total(self) -> float:
    """Seconds since the clock was made."""
    return round(time.perf_counter() - self._start, 1)
