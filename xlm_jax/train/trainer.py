"""The training story, top to bottom: corpus, tokenizer, mesh, input pipeline, model and state,
jitted update step, checkpoint/resume, the loop with metrics and evaluation, then export.

    summary = train_and_evaluate(config, workdir)

Running it again on the same workdir resumes from the latest checkpoint, including the exact
position of every data iterator.
"""
from __future__ import annotations

import logging
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
import tqdm

from xlm_jax.atomic_files import write_json_atomically
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax.train import mesh as mesh_lib
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train import experiment as setup_lib
from xlm_jax.train.step import make_train_step

# ---------------------------------------------------------------------------------------------
# Preemption: SIGTERM (what TPU VMs, Kubernetes and Slurm send) asks the loop to checkpoint and
# leave at the next step boundary, never in the middle of a write.
# ---------------------------------------------------------------------------------------------


class _StopRequest:
  def __init__(self):
    self.requested = False
    self._previous = None

  def install(self) -> None:
    def handler(signum, frame):
      logging.warning("signal %d received: checkpointing at the next step boundary", signum)
      self.requested = True
    self._previous = signal.signal(signal.SIGTERM, handler)

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All hosts must agree, or some would block in a collective the others never join.
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.asarray(self.requested))
      return bool(np.any(flags)) or multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def _any_host(flag: bool) -> bool:
  """True on every host when `flag` is True on any: hosts must all leave the loop at one step."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _objective_groups(run) -> list[list[str]]:
  """"sum" trains all objectives every step; "alternate" one per step, picked by weight."""
  names = list(run.bound)
  return [names] if run.config.objective_mixing == "sum" else [[n] for n in names]


def _group_for_step(run, groups, step: int) -> int:
  if len(groups) == 1:
    return 0
  weights = np.asarray([run.bound[g[0]].weight for g in groups], np.float64)
  rng = np.random.default_rng([run.config.seed, step])
  return int(rng.choice(len(groups), p=weights / weights.sum()))


def _next_batches(run, group: list[str]) -> dict[str, Any]:
  """Draws one global batch of every kind the group needs and places it on the mesh."""
  accum = run.config.train.grad_accum_steps
  out = {}
  for kind in {run.bound[name].objective.batch_kind for name in group}:
    host = next(run.iterators[kind])
    if accum > 1:
      host = {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in host.items()}
    out[kind] = mesh_lib.to_global_batch(host, run.mesh, leading_dims=1 if accum > 1 else 0)
  return out


def _meta(run, step: int) -> dict:
  return {"step": step, "config": run.config.to_dict(), "model": run.model_config.to_dict(),
          "languages": list(run.config.data.languages), "corpus": str(run.corpus.dir),
          "tokenizer_sha256": run.corpus.manifest.get("tokenizer", {}).get("sha256", "")}


def restore_or_init(run) -> int:
  """Restores the latest checkpoint of the workdir into `run` (state and iterators)."""
  step = run.checkpointer.latest_step()
  if step is None:
    return 0
  meta = run.checkpointer.read_meta(step)
  ckpt_lib.check_same_model(meta["model"], run.model_config.to_dict(), run.checkpointer.directory)
  run.state = run.checkpointer.restore(step, run.abstract_state, run.iterators)
  logging.info("resumed from %s/%d", run.checkpointer.directory, step)
  return step


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
  """Trains `config` in `workdir` (resuming if possible), evaluates, exports; returns a summary."""
  workdir = pathlib.Path(workdir)
  run = setup_lib.build_run(config, workdir)
  start_step = restore_or_init(run)
  total = config.train.total_steps

  # ------------------------------------------------------------------ jitted update steps
  groups = _objective_groups(run)
  batch_shardings = {
      kind: mesh_lib.batch_sharding(run.mesh, 1 if config.train.grad_accum_steps > 1 else 0)
      for kind in run.iterators}
  steps = []
  for group in groups:
    step_fn = make_train_step({n: run.bound[n] for n in group}, run.tx, run.schedule,
                              config.train.grad_accum_steps)
    kinds = {run.bound[n].objective.batch_kind for n in group}
    steps.append(jax.jit(
        step_fn, donate_argnums=0,
        in_shardings=(run.shardings, {k: batch_shardings[k] for k in kinds}),
        out_shardings=(run.shardings, mesh_lib.replicated(run.mesh))))

  # ------------------------------------------------------------------ loop
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(run.tokens_per_step, run.flops_per_step, jax.device_count())
  stop = _StopRequest()
  stop.install()
  history, last_train = [], {}
  started = time.time()
  bar = tqdm.tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                  disable=not (config.train.progress_bar and jax.process_index() == 0))
  step, preempted, stopped_early = start_step, False, False
  try:
    while step < total:
      group = _group_for_step(run, groups, step)
      batches = _next_batches(run, groups[group])
      with jax.transfer_guard("disallow"):  # hidden host<->device copies fail loudly
        run.state, metrics = steps[group](run.state, batches)
      step += 1
      throughput.tick()
      history.append(metrics)
      bar.update(1)
      if step % config.train.log_every == 0 or step == total:
        last_train = metrics_lib.mean_metrics(jax.device_get(history))
        last_train.update(throughput.measure())
        history = []
        writer.write(step, last_train, prefix="train/")
        bar.set_postfix(loss=f"{last_train['loss']:.3f}",
                        tok_s=f"{last_train.get('tokens_per_second', 0):.0f}")
      if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
        writer.write(step, run.evaluate_heldout(run.state), prefix="eval/")
      # Host clocks differ: agree, or one host would evaluate while the others keep training.
      out_of_time = bool(config.train.max_wall_seconds) and _any_host(
          time.time() - started > config.train.max_wall_seconds)
      if stop.should_stop(step):
        preempted = True
        run.checkpointer.save(step, run.state, run.iterators, _meta(run, step), force=True)
        logging.warning("preempted at step %d: checkpoint saved, rerun to resume", step)
        break
      if out_of_time:
        # A time budget ends training early but still evaluates and exports what was trained.
        stopped_early = True
        run.checkpointer.save(step, run.state, run.iterators, _meta(run, step), force=True)
        logging.warning("train.max_wall_seconds reached at step %d of %d: evaluating now; "
                        "rerun with a larger budget to continue", step, total)
        break
      if step % config.train.checkpoint_every == 0 or step == total:
        run.checkpointer.save(step, run.state, run.iterators, _meta(run, step))
  finally:
    bar.close()
    stop.uninstall()
    run.checkpointer.wait()

  summary = {"workdir": str(workdir), "start_step": start_step, "step": step,
             "total_steps": total, "train_seconds": time.time() - started,
             "preempted": preempted, "stopped_early": stopped_early, "train": last_train}
  if preempted:
    run.close()
    writer.close()
    return summary

  # ------------------------------------------------------------------ evaluate and export
  summary["eval"] = run.evaluate_all(run.state)
  writer.write(step, {k: v for k, v in summary["eval"].items() if isinstance(v, (int, float))},
               prefix="eval/")
  if config.export.enabled:
    summary["export_dir"] = str(run.export(run.state))
  run.close()
  writer.close()
  if jax.process_index() == 0:  # hosts share the workdir: concurrent tmp+rename writes collide
    write_json_atomically(workdir / "summary.json", summary)
  return summary
