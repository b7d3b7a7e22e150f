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

from xlm_jax.models.encoder import param_shapes
from xlm_jax.models.encoder_config import EncoderConfig, with_legacy_defaults


CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """Saves and restores `state`, the grain iterator (`data`) and JSON metadata (`meta`)."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True,
               data_kinds: tuple[str, ...] = ("mono",)):
    self.directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
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

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _unreadable(self, step: int, what: str, err: Exception) -> ValueError:
    """A one-paragraph error for a checkpoint that cannot be read, naming the step and the way
    back to the previous one (Orbax/TensorStore errors run to a hundred lines)."""
    folder = self.directory / str(step)
    earlier = [s for s in self.all_steps() if s < step]
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    back = (f"Move it aside (`mv {folder} {folder}.damaged`) to resume from step {earlier[-1]}"
            if earlier else "No earlier checkpoint is left: use a fresh --workdir")
    return ValueError(f"checkpoint step {step} ({folder}): its {what} cannot be read "
                      f"({type(err).__name__}: {first_line}). It is damaged or incomplete, or was "
                      f"written for another model. {back}.")

  def read_meta(self, step: int) -> dict:
    # The meta item alone: callers check the model's shape here before restoring any array.
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as err:  # Orbax raises many types for a missing or damaged item
      raise self._unreadable(step, "metadata (meta/)", err) from err
    if not isinstance(restored.get("meta"), dict):
      raise self._unreadable(step, "metadata (meta/)", ValueError("no JSON object in meta/"))
    meta = restored["meta"]
    if isinstance(meta.get("model"), dict):
      # A checkpoint written before a model field existed describes its arrays with the field's
      # legacy value (no vocabulary padding), so eval, export and resume build the same model.
      meta = {**meta, "model": with_legacy_defaults(meta["model"])}
    return meta

  def restore(self, step: int, abstract_state: Any, data_iters: dict | None = None) -> Any:
    """Restores the state (with the shardings in `abstract_state`) and the given iterators."""
    # The target shardings decide placement: each device reads only its shards, and a checkpoint
    # saved on another mesh is laid out for this one.
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    for kind, it in (data_iters or {}).items():
      args[f"data_{kind}"] = grain.checkpoint.CheckpointRestore(it)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as err:  # TensorStore, Orbax and grain raise many types here
      raise self._unreadable(step, "state or data-iterator position", err) from err
    return restored["state"]

  def restore_params(self, step: int, device=None) -> tuple[Any, Any]:
    """(params, extra) of a step as arrays on one device: what evaluation and export need,
    without the optimizer moments (two more copies of the params) or the data position."""
    import jax  # local: the rest of this module needs no device
    folder = self.directory / str(step) / "state"
    device = device or jax.local_devices()[0]
    checkpointer = ocp.PyTreeCheckpointer()
    try:
      metadata = checkpointer.metadata(folder)
      # Orbax versions return the metadata tree bare or wrapped (item_metadata, .tree).
      tree = getattr(metadata, "item_metadata", metadata)
      tree = getattr(tree, "tree", tree)
      wanted = {"params": tree["params"], "extra": tree.get("extra", {})}
      sharding = jax.sharding.SingleDeviceSharding(device)
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                            wanted)
      restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding), target)
      # partial_restore lets the target omit opt_state and step: those arrays are never read.
      restored = checkpointer.restore(folder, args=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True))
    except Exception as err:
      raise self._unreadable(step, "parameters", err) from err
    finally:
      checkpointer.close()
    return restored["params"], restored.get("extra", {})

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def check_same_model(saved_model: dict, model: dict, directory: pathlib.Path) -> None:
  """Raises if a checkpoint was written for a model of another shape than `model`.

  Shapes come from the models' own `param_shapes`, not a list of fields: any field that changes
  an array (sizes, language-specific parts, scan layout) is caught, and one that does not
  (dtype, dropout, remat) may change between runs.
  """
  # A field the checkpoint predates takes its legacy value if it has one (vocab_multiple 1: no
  # padding rows), else today's value.
  saved_model = with_legacy_defaults(saved_model)
  saved = EncoderConfig.from_dict({**model, **saved_model})
  if param_shapes(saved) == param_shapes(EncoderConfig.from_dict(model)):
    return
  # Only fields the checkpoint recorded can be compared; a field added since has no saved value.
  diffs = [f"model.{k}: checkpoint {saved_model.get(k)!r}, config {v!r}"
           for k, v in model.items() if k in saved_model and saved_model[k] != v]
  hint, configured = "", EncoderConfig.from_dict(model)
  if (saved.vocab_size == configured.vocab_size
      and saved.padded_vocab_size != configured.padded_vocab_size):
    # The usual case: a run from before vocabulary padding, resumed with today's default.
    hint = (f"\nIts vocabulary tables have {saved.padded_vocab_size} rows: to resume it, pass "
            f"--config.model.vocab_multiple={saved.vocab_multiple}.")
  raise ValueError(
      f"workdir checkpoint {directory} holds a model of a different shape:\n  "
      + "\n  ".join(diffs) + hint
      + "\nUse a new --workdir, or set these fields back to the checkpoint's values.")
