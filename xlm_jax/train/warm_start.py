"""Warm start: a new run begins from another workdir's trained weights (`config.init_from`).

Multi-stage recipes that change the model's heads or the batch kinds between stages (EMMA-X
ctl -> gmm -> itr, ERNIE-M's second stage as its own experiment) start each stage from the
previous one's checkpoint. Every parameter and extra-state array whose path and shape match is
copied; the optimizer, step and data position start fresh. Objectives whose extra state was not
found (a momentum encoder warm-started from an MLM run) re-initialise it from the loaded weights,
so a momentum copy starts equal to the loaded encoder, as it would at a fresh start.
"""
from __future__ import annotations

import logging
import pathlib

import flax
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from xlm_jax.train import mesh as mesh_lib


def checkpoint_folder(source: str | pathlib.Path) -> pathlib.Path:
  """`source` may be a workdir, its checkpoints/ folder or one step folder inside it."""
  path = pathlib.Path(source).expanduser().absolute()
  # A workdir first, then its checkpoints/ folder: both hold numbered step folders.
  for candidate in (path / "checkpoints", path):
    if candidate.is_dir() and any(p.name.isdigit() for p in candidate.iterdir()):
      return candidate
  if path.name.isdigit() and (path / "state").is_dir():
    return path
  raise FileNotFoundError(f"init_from: {path} holds no checkpoint (expected a workdir with "
                          "checkpoints/<step>/state); train that stage first or fix the path")


def read_state(source) -> tuple[dict, int]:
  """The latest saved state of `source` as host numpy arrays, and its step."""
  folder = checkpoint_folder(source)
  if folder.name.isdigit() and (folder / "state").is_dir():
    step_dir, step = folder, int(folder.name)
  else:
    # Digit-only names skip Orbax's unfinished saves (<step>.orbax-checkpoint-tmp-*).
    step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    step_dir = folder / str(step)
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(step_dir / "state")
  tree = getattr(metadata, "item_metadata", metadata)
  # Restore every array onto this host's first device: the source mesh may differ from ours.
  device = jax.local_devices()[0]
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(device)), tree)
  restored = checkpointer.restore(step_dir / "state", target)
  return jax.device_get(restored), step


def _flat(tree) -> dict[tuple, np.ndarray]:
  return flax.traverse_util.flatten_dict(tree) if isinstance(tree, dict) and tree else {}


def merge_matching(target, source) -> tuple[dict, list[str], list[str]]:
  """`target` with every leaf of equal path and shape taken from `source`.

  Returns (merged, copied paths, target paths left as they were).
  """
  flat_target, flat_source = _flat(target), _flat(source)
  copied, kept = [], []
  merged = {}
  for path, value in flat_target.items():
    other = flat_source.get(path)
    if other is not None and tuple(np.shape(other)) == tuple(value.shape):
      # This model's dtype wins: a source saved with another param dtype still loads.
      merged[path] = np.asarray(other, dtype=value.dtype)
      copied.append("/".join(map(str, path)))
    else:
      merged[path] = value
      kept.append("/".join(map(str, path)))
  return flax.traverse_util.unflatten_dict(merged), copied, kept


def warm_start(state, shardings, bound, seed: int, source):
  """`state` with the matching params and extra state of `source`'s latest checkpoint.

  Returns (new state, info). `bound` (name -> BoundObjective) rebuilds extra state the source
  lacks; `shardings` places the merged state back on the mesh.
  """
  saved, step = read_state(source)
  host = mesh_lib.host_copy(state)  # a collective on multi-host runs: every host calls it
  params, copied, kept = merge_matching(dict(host.params), dict(saved.get("params", {})))
  if not copied:
    raise ValueError(f"init_from {source}: no parameter matches this model by name and shape; "
                     "is it a checkpoint of the same architecture?")
  extra, found = dict(host.extra), set()
  for name, value in dict(host.extra).items():
    saved_extra = dict(saved.get("extra", {})).get(name)
    if saved_extra is None:
      continue
    extra[name], extra_copied, _ = merge_matching(value, saved_extra)
    # Found only if some array matched; an extra state with nothing copied is rebuilt below.
    if extra_copied:
      found.add(name)
  # Merged on the host, then laid out with this run's shardings (the source's mesh may differ).
  state = jax.device_put(host.replace(params=params, extra=extra), shardings)
  # Extra state that the source lacks is rebuilt from the loaded weights (a momentum copy).
  for i, (name, objective) in enumerate(bound.items()):
    init_extra = objective.objective.init_extra_state
    if init_extra is None or name in found:
      continue
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), 7919 + i)
    fresh = jax.jit(lambda r, p, _init=init_extra, _ctx=objective.context: nn.meta.unbox(
        _init(r, p, _ctx)), out_shardings=shardings.extra[name])(rng, state.params)
    state = state.replace(extra={**state.extra, name: fresh})
  logging.info("warm start from %s (step %d): %d arrays copied, %d kept at init%s", source, step,
               len(copied), len(kept), f" ({', '.join(kept[:8])}...)" if kept else "")
  return state, {"source": str(source), "step": step, "copied": copied, "kept": kept}
