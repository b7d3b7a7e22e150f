"""Input shards: the global batch is read as a fixed number of shards, whatever the host count.

A run's global batch of B rows is the concatenation, in shard order, of S input shards' batches of
B / S rows; shard s reads the sentences i with i % S == s (the pipelines' `shard_index` /
`shard_count`). Each of P processes reads S / P consecutive shards and stacks their batches, which
is exactly where `jax.make_array_from_process_local_data` puts host p's rows (the mesh lists each
host's devices together). So the global batches, and the run's data order, depend on S alone:

- S defaults to the process count of the run's first start (one pipeline per host, as before) and
  is recorded in every checkpoint (`meta["input_shards"]`);
- a resume on another number of processes keeps S when the new count divides it: every shard's
  position is read from the checkpoint files of all old hosts (`states_from_files`), so the
  resumed run reads the same batches it would have read on the old hosts;
- when it does not divide S (or `data.input_shards` asks for another S), the positions cannot be
  mapped: the input restarts on the new shards with a new shuffle (`resharded_seed`), and the
  run says so. This is the per-host iterator state problem MaxText users meet when a job comes
  back on a different slice; choosing S up front (a multiple of every host count the run may see,
  e.g. `--config.data.input_shards=8`) avoids it.

Nothing here depends on JAX: the caller passes the process index and count.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_PROCESS_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json$")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this run reads its input: `count` shards; `keeps_order` False when a checkpoint's
  positions cannot be carried over (then `why` says so, for the log)."""
  count: int
  seed: int
  keeps_order: bool = True
  why: str = ""


def plan(configured: int, saved: int | None, processes: int, seed: int, step: int,
         saved_seed: int | None = None) -> Plan:
  """The input shards of a run starting (saved None) or resuming at `step`.

  configured: data.input_shards (0: the saved count, else one per process).
  saved: the count the checkpoint was written with. seed: config.seed; saved_seed: the data seed
  the checkpoint's run used (it differs from config.seed after an earlier reshard).
  """
  if configured < 0:
    raise ValueError(f"data.input_shards must be >= 0 (0: one per process), got {configured}")
  if saved is None:  # a fresh start
    count = configured or processes
    _check_divides(count, processes)
    return Plan(count, seed)
  data_seed = seed if saved_seed is None else saved_seed
  count = configured or saved
  if count == saved and count % processes == 0:
    return Plan(count, data_seed)
  # The positions of `saved` shards cannot be carried over: start new shards.
  reason = (f"--config.data.input_shards={configured} differs from it" if configured
            else f"{processes} process(es) cannot split them evenly")
  count = configured or processes
  _check_divides(count, processes)
  new_seed = resharded_seed(data_seed, step)
  why = (f"the checkpoint at step {step} read its input as {saved} shard(s) and {reason}. The "
         f"data order cannot be kept: the input restarts on {count} shard(s) with a new shuffle "
         f"(data seed {new_seed}); the model, optimizer and step are restored exactly. To keep "
         f"the order, resume on a number of processes that divides {saved}; to make a run "
         "movable between host counts, start it with --config.data.input_shards set to a "
         "multiple of each (e.g. 8)")
  return Plan(count, new_seed, keeps_order=False, why=why)


def _check_divides(count: int, processes: int) -> None:
  if count % processes:
    raise ValueError(f"data.input_shards={count} must be a multiple of the {processes} processes "
                     "(each process reads the same number of shards)")


def resharded_seed(seed: int, step: int) -> int:
  """A data seed for input restarted at `step`: not the first start's order again."""
  return int(np.random.SeedSequence([seed, step]).generate_state(1)[0] % (2 ** 31))


def local_shards(count: int, process_index: int, processes: int) -> range:
  """The shards process `process_index` reads: consecutive, so host order is shard order."""
  per = count // processes
  return range(process_index * per, (process_index + 1) * per)


class StackedShards:
  """A dataset whose batches stack, row-wise in shard order, the batches of this host's shards.

  make(shard_index, shard_count) builds one shard's dataset (batches of B / S rows).
  """

  def __init__(self, make: Callable[[int, int], Any], count: int, shards: Sequence[int]):
    self.count, self.shards = count, list(shards)
    self._datasets = [make(s, count) for s in self.shards]

  def __iter__(self) -> "StackedIterator":
    return StackedIterator([iter(d) for d in self._datasets], self.count, self.shards)


class StackedIterator:
  """The iterator of StackedShards. Its state (bytes of JSON: grain's checkpoint handler stores
  a non-grain iterator's state as text) names the shards it holds, so a resume on another number
  of hosts can gather every shard's position (`set_shard_states`)."""

  def __init__(self, iterators: list, count: int, shards: list[int]):
    self._iterators, self.count, self.shards = iterators, count, shards

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self._iterators]
    if len(batches) == 1:
      return batches[0]
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

  def get_state(self) -> bytes:
    return json.dumps({"input_shards": self.count, "first_shard": self.shards[0],
                       "shards": [it.get_state() for it in self._iterators]}, indent=1).encode()

  def set_state(self, state: bytes) -> None:
    by_shard = _shard_states(json.loads(state), fallback_shard=self.shards[0], fallback_count=None)
    self.set_shard_states(by_shard)

  def set_shard_states(self, by_shard: dict[int, Any]) -> None:
    """Positions by shard index (of this run's count); every shard of this host must be there."""
    missing = [s for s in self.shards if s not in by_shard]
    if missing:
      raise ValueError(f"no saved input position for shard(s) {missing} of {self.count}")
    for it, s in zip(self._iterators, self.shards):
      it.set_state(by_shard[s])

  def start_prefetch(self) -> None:
    for it in self._iterators:
      getattr(it, "start_prefetch", lambda: None)()

  def close(self) -> None:
    for it in self._iterators:
      getattr(it, "close", lambda: None)()


def _shard_states(record: Any, fallback_shard: int, fallback_count: int | None) -> dict[int, Any]:
  """{shard: position} of one host's saved state. A checkpoint written before input shards held
  one grain state per host: host p read shard p of the process count (`fallback_*`)."""
  if isinstance(record, dict) and "input_shards" in record:
    first = int(record["first_shard"])
    return {first + i: s for i, s in enumerate(record["shards"])}
  if fallback_count is not None and fallback_shard >= fallback_count:
    raise ValueError(f"saved input position of host {fallback_shard} of {fallback_count}")
  return {fallback_shard: record}


def saved_layout(folder: pathlib.Path) -> tuple[int, int] | None:
  """(process count, input shards) a data item folder (data_<kind>/) was written with, from its
  files; None when it holds none."""
  files = [(int(m.group(1)), int(m.group(2)), path) for path in sorted(folder.glob("*.json"))
           if (m := _PROCESS_FILE.search(path.name))]
  if not files:
    return None
  processes = files[0][1]
  record = json.loads(files[0][2].read_text(encoding="utf-8"))
  shards = int(record["input_shards"]) if isinstance(record, dict) and "input_shards" in record \
      else processes
  return processes, shards


def states_from_files(folder: pathlib.Path) -> dict[int, Any]:
  """{shard: position} gathered from every host's file in a data item folder (data_<kind>/).

  Raises ValueError naming the folder when a host's file is missing or two disagree on the
  layout (hosts of one run write one file each, `process_<i>-of-<n>.json`).
  """
  files = {}
  for path in sorted(folder.glob("*.json")):
    match = _PROCESS_FILE.search(path.name)
    if match:
      files[(int(match.group(1)), int(match.group(2)))] = path
  counts = {n for _, n in files}
  if len(counts) != 1:
    raise ValueError(f"{folder}: expected the files of one run's hosts, found {sorted(files)}")
  (processes,) = counts
  missing = [i for i in range(processes) if (i, processes) not in files]
  if missing:
    raise ValueError(f"{folder}: the input positions of host(s) {missing} of {processes} are "
                     "missing")
  by_shard: dict[int, Any] = {}
  for (index, _), path in sorted(files.items()):
    text = path.read_text(encoding="utf-8")
    by_shard.update(_shard_states(json.loads(text), fallback_shard=index,
                                  fallback_count=processes))
  return by_shard
