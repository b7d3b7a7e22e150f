"""Orbax checkpoints holding the train state, the data iterator position and the run's config.

Orbax writes each step into a temporary folder and renames it when complete, so a crash or a
preemption never leaves a half-written checkpoint that a resume would pick up. Saving is
asynchronous: the train loop continues while the arrays are written.
"""
from __future__ import annotations

import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores `state`, the grain iterator (`data`) and JSON metadata (`meta`)."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True,
               data_kinds: tuple[str, ...] = ("mono",)):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    # One grain item per batch kind: each iterator's position is restored independently.
    handlers.update({f"data_{kind}": grain.checkpoint.CheckpointHandler() for kind in data_kinds})
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iters: dict, meta: dict, force: bool = False) -> bool:
    """Saves asynchronously; `data_iters` maps batch kind -> grain iterator."""
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    for kind, it in (data_iters or {}).items():
      args[f"data_{kind}"] = grain.checkpoint.CheckpointSave(it)
    return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

  def read_meta(self, step: int) -> dict:
    restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored["meta"]

  def restore(self, step: int, abstract_state: Any, data_iters: dict | None = None) -> Any:
    """Restores the state (with the shardings in `abstract_state`) and the given iterators."""
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    for kind, it in (data_iters or {}).items():
      args[f"data_{kind}"] = grain.checkpoint.CheckpointRestore(it)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(
          f"checkpoint {self.directory / str(step)} does not match the model being trained "
          f"({e}). Use a fresh --workdir, or the config the checkpoint was written with.") from e
    return restored["state"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_same_model(saved_model: dict, model: dict, directory: pathlib.Path) -> None:
  """Raises if a checkpoint was written for a model of another shape than `model`."""
  shape_fields = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                  "max_positions", "type_vocab_size", "num_languages", "scan_layers",
                  "separate_embeddings", "separate_layers")
  # Fields added after a checkpoint was written take their default there.
  defaults = {"separate_embeddings": False, "separate_layers": 0}
  diffs = [f"model.{k}: checkpoint {saved_model.get(k, defaults.get(k))!r}, config {model.get(k)!r}"
           for k in shape_fields if saved_model.get(k, defaults.get(k)) != model.get(k)]
  if diffs:
    raise ValueError(
        f"workdir checkpoint {directory} holds a model of a different shape:\n  "
        + "\n  ".join(diffs)
        + "\nUse a new --workdir, or set these fields back to the checkpoint's values.")
