"""How busy the machine is: benchmarks report the share of CPU other processes took while they
measured, because on a shared 2-core machine that share decides whether a timing means anything."""
from __future__ import annotations

import os


def machine_busy_seconds() -> float | None:
  """CPU seconds all processes have used since boot (Linux /proc/stat), None elsewhere."""
  try:
    with open("/proc/stat") as f:
      fields = [int(x) for x in f.readline().split()[1:]]
  except (OSError, ValueError):
    return None
  # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
  busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)
  return busy / os.sysconf("SC_CLK_TCK")
