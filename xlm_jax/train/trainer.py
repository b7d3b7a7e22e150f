"""The training story, top to bottom: corpus, tokenizer, mesh, input pipeline, model and state,
jitted update step, checkpoint/resume, the loop with metrics and evaluation, then export.

    summary = train_and_evaluate(config, workdir)

Running it again on the same workdir resumes from the latest checkpoint, including the exact
position of every data iterator.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
import tqdm

from xlm_jax import config as config_lib
from xlm_jax.atomic_files import write_json_atomically
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax.train import mesh as mesh_lib
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train import experiment as setup_lib
from xlm_jax.train import warm_start
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


@dataclasses.dataclass(frozen=True)
class Stage:
  """Steps [start, end) train `groups`: one group per step, all objectives of a group summed."""
  name: str
  start: int
  end: int
  groups: tuple[tuple[str, ...], ...]


def plan_stages(run) -> list[Stage]:
  """The run's stages; without `config.stages`, one stage with every objective.

  Mixing "sum" trains all of a stage's objectives every step; "alternate" one per step, drawn
  by weight (`_group_for_step`).
  """
  config = run.config
  specs = config.stages or (dict(name="train", steps=config.train.total_steps,
                                  objectives=tuple(run.bound), mixing=config.objective_mixing),)
  lengths = (config_lib.stage_lengths(config) if config.stages
             else [config.train.total_steps])
  stages, start = [], 0
  for spec, length in zip(specs, lengths):
    names = tuple(spec["objectives"])
    mixing = spec.get("mixing", config.objective_mixing)
    groups = (names,) if mixing == "sum" else tuple((n,) for n in names)
    for group in groups:
      custom = [n for n in group if run.bound[n].objective.make_steps is not None]
      if custom and len(group) > 1:
        raise ValueError(f"stage {spec.get('name', '?')!r}: objective {custom[0]!r} runs its own "
                         f"update steps, so it cannot be summed with {list(group)}; give it a "
                         "stage of its own or use mixing='alternate'")
    stages.append(Stage(str(spec.get("name", f"stage{len(stages)}")), start, start + length,
                        groups))
    start += length
  return stages


def _stage_at(stages: list[Stage], step: int) -> Stage:
  for stage in stages:
    if stage.start <= step < stage.end:
      return stage
  return stages[-1]


def _group_for_step(run, groups, step: int) -> int:
  if len(groups) == 1:
    return 0
  weights = np.asarray([run.bound[g[0]].weight for g in groups], np.float64)
  rng = np.random.default_rng([run.config.seed, step])
  return int(rng.choice(len(groups), p=weights / weights.sum()))


def _group_kinds(run, group) -> list[str]:
  return sorted({kind for name in group for kind in run.bound[name].kinds})


def _next_batches(run, group) -> dict[str, Any]:
  """Draws one global batch of every kind the group needs and places it on the mesh."""
  accum = run.config.train.grad_accum_steps
  out = {}
  for kind in _group_kinds(run, group):
    host = next(run.iterators[kind])
    if accum > 1:
      host = {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in host.items()}
    out[kind] = mesh_lib.to_global_batch(host, run.mesh, leading_dims=1 if accum > 1 else 0)
  return out


def jit_update_steps(bound, tx, schedule, shardings, mesh, grad_accum_steps: int = 1) -> list:
  """The jitted update functions of one objective group (`bound`: name -> BoundObjective), run
  in order every step.

  A plain group is one `make_train_step` (gradient of the summed losses); an objective with its
  own `make_steps` (EMMA-X's E-step, M-step) gives several, each jitted on its own. The state is
  donated: parameters and optimizer moments are updated in place.
  """
  leading = 1 if grad_accum_steps > 1 else 0
  kinds = sorted({kind for b in bound.values() for kind in b.kinds})
  in_shardings = (shardings, {k: mesh_lib.batch_sharding(mesh, leading) for k in kinds})
  out_shardings = (shardings, mesh_lib.replicated(mesh))
  first_name, first = next(iter(bound.items()))
  if first.objective.make_steps is not None:
    if grad_accum_steps > 1:
      raise ValueError(f"objective {first_name!r} runs its own steps, which do not support "
                       "train.grad_accum_steps > 1; set it to 1")
    fns = [fn for _, fn in first.objective.make_steps(first, tx, schedule)]
  else:
    fns = [make_train_step(dict(bound), tx, schedule, grad_accum_steps)]
  return [jax.jit(fn, donate_argnums=0, in_shardings=in_shardings, out_shardings=out_shardings)
          for fn in fns]


def compile_group(run, group) -> list:
  """`jit_update_steps` for the objectives of `group` in `run`."""
  return jit_update_steps({n: run.bound[n] for n in group}, run.tx, run.schedule, run.shardings,
                          run.mesh, run.config.train.grad_accum_steps)


def run_group(run, fns, batches):
  """Applies a group's update functions to `run.state`; returns the merged metrics."""
  metrics = {}
  for fn in fns:
    run.state, step_metrics = fn(run.state, batches)
    metrics.update(step_metrics)
  return metrics


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

  if start_step == 0 and config.init_from:
    warm_start.warm_start(run, config.init_from)

  # ------------------------------------------------------------------ jitted update steps
  stages = plan_stages(run)
  compiled: dict[tuple[str, ...], list] = {}  # compiled on first use: later stages cost nothing now

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
      stage = _stage_at(stages, step)
      if step == stage.start and len(stages) > 1:
        logging.info("stage %r: steps %d-%d, objectives %s", stage.name, stage.start, stage.end,
                     [list(g) for g in stage.groups])
      group = stage.groups[_group_for_step(run, stage.groups, step)]
      if group not in compiled:
        compiled[group] = compile_group(run, group)
      batches = _next_batches(run, group)
      with jax.transfer_guard("disallow"):  # hidden host<->device copies fail loudly
        metrics = run_group(run, compiled[group], batches)
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
