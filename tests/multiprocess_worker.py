"""`xlm-jax train` in a subprocess, with the two hooks tests/test_multiprocess.py needs.

    python tests/multiprocess_worker.py [--sigterm-at-step N] [--as-hosts K] [--step-seconds S]
        train --config ...

--sigterm-at-step N  this process raises SIGTERM on itself right after step N, as a scheduler that
                     preempts one host does. The trainer's own handler and its all-host agreement
                     (trainer._StopRequest) take it from there; nothing else is patched.
--as-hosts K         a single-process run that trains on exactly the global batches K hosts build:
                     host k's pipeline (sentences i % K == k, batch_size / K rows) stacked in host
                     order, which is where jax.make_array_from_process_local_data puts host k's rows
                     when the mesh lists each host's devices together (jax.make_mesh on CPU).
--step-seconds S     this process sleeps S seconds at every step boundary, before the hosts' stop
                     agreement (a collective): a slow host. Its peers wait for it inside that
                     collective, and a test has time to act between two steps
                     (tests/test_dead_host.py kills it there with SIGKILL).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys

import numpy as np


class _HostStack:
  """A dataset whose batches are the row-wise concatenation of K per-host datasets' batches."""

  def __init__(self, datasets):
    self._datasets = datasets

  def __iter__(self):
    return _HostStackIterator([iter(d) for d in self._datasets])


class _HostStackIterator:
  """Stops at the first exhausted host, as HeldoutMLM cuts every host to the shortest one.

  get_state/set_state use bytes: what grain's checkpoint handler expects from non-grain iterators.
  """

  def __init__(self, iterators):
    self._iterators = iterators

  def __iter__(self):
    return self

  def __next__(self):
    batches = [next(it) for it in self._iterators]
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self._iterators]).encode()

  def set_state(self, state: bytes) -> None:
    for it, s in zip(self._iterators, json.loads(state)):
      it.set_state(s)

  def start_prefetch(self) -> None:
    for it in self._iterators:
      it.start_prefetch()

  def close(self) -> None:
    for it in self._iterators:
      close = getattr(it, "close", None)
      if close is not None:
        close()


def feed_as_hosts(num_hosts: int) -> None:
  """Makes every pipeline of this (single) process yield the global batches of `num_hosts` hosts."""
  from xlm_jax.data import batch_kinds
  original = batch_kinds.make_dataset

  def make_dataset(kind, corpus, tokenizer, *, batch_size, **kwargs):
    if kwargs.get("shard_count") is not None:
      # Training reads input shards (--config.data.input_shards=K does what this hook does, and
      # checkpoints each shard's position): only the evaluation sets need the hook.
      return original(kind, corpus, tokenizer, batch_size=batch_size, **kwargs)
    if batch_size % num_hosts:
      raise ValueError(f"--as-hosts {num_hosts}: batch size {batch_size} does not split evenly")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("shard_index", "shard_count")}
    return _HostStack([original(kind, corpus, tokenizer, batch_size=batch_size // num_hosts,
                                shard_index=k, shard_count=num_hosts, **kwargs)
                       for k in range(num_hosts)])
  batch_kinds.make_dataset = make_dataset


def sigterm_at_step(target: int) -> None:
  from xlm_jax.train import trainer
  original = trainer._StopRequest.should_stop

  def should_stop(self, step):
    if step == target:
      # raise_signal delivers to this thread before returning, so the handler has run (and set
      # `requested`) before the original method reads it.
      signal.raise_signal(signal.SIGTERM)
    return original(self, step)
  trainer._StopRequest.should_stop = should_stop


def sleep_every_step(seconds: float) -> None:
  import time

  from xlm_jax.train import trainer
  original = trainer._StopRequest.should_stop

  def should_stop(self, step):
    time.sleep(seconds)
    return original(self, step)
  trainer._StopRequest.should_stop = should_stop


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
  parser.add_argument("--sigterm-at-step", type=int, default=0)
  parser.add_argument("--as-hosts", type=int, default=0)
  parser.add_argument("--step-seconds", type=float, default=0.0)
  hooks, rest = parser.parse_known_args(argv)
  if hooks.as_hosts:
    feed_as_hosts(hooks.as_hosts)
  if hooks.sigterm_at_step:
    sigterm_at_step(hooks.sigterm_at_step)
  if hooks.step_seconds:
    sleep_every_step(hooks.step_seconds)
  from xlm_jax import cli
  return cli.main(rest)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
