"""Orbax checkpoints holding the train state, the data iterator position and the run's config.

Orbax writes each step into a temporary folder and renames it when complete, so a crash or a
preemption never leaves a half-written checkpoint that a resume would pick up. Saving is
asynchronous: the train loop continues while the arrays are written.

Damage after the fact (a deleted file, an array file cut short, a metadata file overwritten) is
caught at restore. Once orbax has committed a step, the size of every file a restore reads, and
the sha256 of each small one (metadata, manifests), go to `FILES_MANIFEST` in the step's folder;
`check_files` compares them, naming the file and what changed. A step without that record (the
run died right after the commit) is checked by restoring it. A damaged step raises
`DamagedCheckpoint`; the trainer then resumes from the newest intact step and moves the damaged
ones to `DAMAGED_DIR` (`set_aside`), so `keep_checkpoints` rotation never counts them and never
deletes an intact step for their sake. Orbax itself deletes old steps only after a new one is
committed, so the newest intact checkpoint always survives rotation.

A save that fails for want of room (a full disk; TensorStore reports it in a ValueError) raises
DiskFullError naming the step and the newest committed step before it, from `save` (synchronous
saves) or from the next wait for the save (asynchronous ones).
"""
from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil
from typing import Any

import grain
import orbax.checkpoint as ocp

from xlm_jax.data import input_shards
from xlm_jax.models.encoder import param_shapes
from xlm_jax.models.encoder_config import EncoderConfig, with_legacy_defaults


CHECKPOINT_DIR = "checkpoints"
# Beside CHECKPOINT_DIR: steps found damaged at resume, moved out of the rotation.
DAMAGED_DIR = "checkpoints_damaged"
# In each committed step's folder: {relative path: {"bytes": n[, "sha256": hex]}}.
FILES_MANIFEST = "xlm_jax_files.json"
# Files up to this size are hashed as well as measured: metadata, tree manifests, small arrays.
_HASHED_BYTES = 1 << 20


def _process_file() -> str:
  """The data-position file grain's handler writes and reads for this process."""
  import jax
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DamagedCheckpoint(ValueError):
  """A checkpoint step that cannot be restored. `problem` says which file or item, and how."""

  def __init__(self, step: int, folder: pathlib.Path, problem: str, message: str):
    super().__init__(message)
    self.step, self.folder, self.problem = step, folder, problem


def _file_record(path: pathlib.Path) -> dict:
  size = path.stat().st_size
  record = {"bytes": size}
  if size <= _HASHED_BYTES:
    record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
  return record


def _item_files(folder: pathlib.Path):
  """The files a restore reads: everything inside the step's item folders (state/, meta/,
  data_*/), not orbax's step-level bookkeeping files."""
  for item in sorted(p for p in folder.iterdir() if p.is_dir()):
    for path in sorted(item.rglob("*")):
      if path.is_file():
        yield path


class Checkpointer:
  """Saves and restores `state`, the grain iterator (`data`) and JSON metadata (`meta`)."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 3, async_save: bool = True,
               data_kinds: tuple[str, ...] = ("mono",)):
    self.directory = pathlib.Path(workdir).absolute() / CHECKPOINT_DIR
    self.async_save = async_save
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    # One grain item per batch kind: each iterator's position is restored independently.
    handlers.update({f"data_{kind}": grain.checkpoint.CheckpointHandler() for kind in data_kinds})
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._unrecorded: list[int] = []   # saved, but their FILES_MANIFEST not yet written
    self.damaged: list[DamagedCheckpoint] = []  # met by `newest_intact`, for `set_aside`

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iters: dict, meta: dict, force: bool = False) -> bool:
    """Saves asynchronously; `data_iters` maps batch kind -> grain iterator."""
    # Orbax waits for the previous save before starting this one anyway: once it is committed,
    # record its files (a few stat calls, and hashes of small files).
    self._record_finished()
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    for kind, it in (data_iters or {}).items():
      args[f"data_{kind}"] = grain.checkpoint.CheckpointSave(it)
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**args), force=force)
    except Exception as err:  # a synchronous save fails here, an asynchronous one at the wait
      self._raise_if_no_room([step], err)
      raise
    if saved:
      self._unrecorded.append(step)
      if not self.async_save:
        self._record_finished()
    return saved

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  # ------------------------------------------------------------------ integrity

  def _record_finished(self) -> None:
    """Writes FILES_MANIFEST for every step saved and since committed (process 0 only: hosts
    share the folder, and orbax commits a step once every host has written its part)."""
    if not self._unrecorded:
      return
    self._wait_for_saves()  # raises if a save failed: nothing false is recorded
    steps, self._unrecorded = self._unrecorded, []
    import jax  # local: the rest of this module needs no device
    if jax.process_index() != 0:
      return
    from xlm_jax.atomic_files import write_json_atomically
    for step in steps:
      folder = self.directory / str(step)
      if step not in self.manager.all_steps() or not folder.is_dir():
        continue  # rotated away already
      files = {str(p.relative_to(folder)): _file_record(p) for p in _item_files(folder)}
      try:
        write_json_atomically(folder / FILES_MANIFEST, {"step": step, "files": files})
      except OSError as err:  # the step itself is committed: restoring it is then its check
        self._raise_if_no_room([step], err, committed=True)
        raise

  def _wait_for_saves(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as err:
      failed, self._unrecorded = self._unrecorded, []
      self._raise_if_no_room(failed, err)
      raise

  def _raise_if_no_room(self, steps: list[int], err: Exception, committed: bool = False) -> None:
    """Raises DiskFullError naming the step that could not be written and the newest committed
    step before it, if `err` is a write refused for want of room. Orbax's own error is a
    TensorStore ValueError, and its saving threads log a traceback per array besides."""
    from xlm_jax.atomic_files import DiskFullError, disk_full_error, no_room
    if not no_room(err):
      return
    if isinstance(err, DiskFullError) and err.__cause__ is not None:
      err = err.__cause__  # write_json_atomically's: this message names the file itself
    step = min(steps) if steps else None
    what = (f"checkpoint step {step} ({self.directory / str(step)})" if step is not None
            else f"a checkpoint in {self.directory}")
    if committed:
      what = f"{self.directory / str(step) / FILES_MANIFEST}, the file list of {what}"
      kept = ("The step itself was committed before, and is checked by restoring it; free "
              "some space and rerun `xlm-jax train` on this workdir to resume")
    else:
      earlier = [s for s in self.all_steps() if step is None or s < step]
      kept = (f"The checkpoint before it, step {earlier[-1]} ({self.directory / str(earlier[-1])}),"
              " is intact: free some space and rerun `xlm-jax train` on this workdir to resume "
              "from it" if earlier else
              "No earlier checkpoint was written: free some space and rerun `xlm-jax train`, "
              "which starts over")
    raise disk_full_error(what, err, kept) from err

  def check_files(self, step: int) -> None:
    """Raises DamagedCheckpoint if a file recorded when `step` was committed is missing, has
    another size, or (small files) other bytes. A step without a record passes: restoring it
    is then the check."""
    folder = self.directory / str(step)
    manifest = folder / FILES_MANIFEST
    if not manifest.is_file():
      return
    try:
      files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
      raise self.damaged_error(step, f"its file list {FILES_MANIFEST} is unreadable "
                                f"({type(err).__name__})") from err
    problems = []
    for name, record in files.items():
      path = folder / name
      if not path.is_file():
        problems.append(f"{name} is missing")
        continue
      size = path.stat().st_size
      if size != record["bytes"]:
        how = "cut short" if size < record["bytes"] else "grown"
        problems.append(f"{name} is {size} bytes, {record['bytes']} when written ({how})")
      elif "sha256" in record and _file_record(path).get("sha256") != record["sha256"]:
        problems.append(f"{name} has other content than when written (sha256 differs)")
    if problems:
      more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
      raise self.damaged_error(step, "; ".join(problems[:3]) + more)

  def newest_intact(self, below: int | None = None) -> tuple[int, dict]:
    """(step, meta) of the newest step (below `below`) whose files match their record and
    whose metadata reads; (0, {}) if there is none. Damaged steps met on the way are logged and
    added to `self.damaged`. Restoring the arrays (`restore`) may still find a step damaged."""
    for step in reversed(self.all_steps()):
      if below is not None and step >= below:
        continue
      try:
        self.check_files(step)
        return step, self.read_meta(step)
      except DamagedCheckpoint as err:
        self.note_damaged(err)
    return 0, {}

  def note_damaged(self, err: DamagedCheckpoint) -> None:
    logging.warning("%s", err)
    self.damaged.append(err)

  def set_aside(self, step: int) -> pathlib.Path:
    """Moves a damaged step out of the rotation, to DAMAGED_DIR/<step> (never deleted: it may
    hold what a user wants back). Returns where it went."""
    import jax
    target = self.directory.parent / DAMAGED_DIR / str(step)
    suffix = 1
    while target.exists():  # the same step damaged again in a later resume
      target, suffix = self.directory.parent / DAMAGED_DIR / f"{step}-{suffix}", suffix + 1
    sync = lambda name: None  # noqa: E731
    if jax.process_count() > 1:  # every host picks the name before host 0 moves the folder
      from jax.experimental import multihost_utils
      sync = multihost_utils.sync_global_devices
    sync(f"set aside checkpoint {step}: named")
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
    sync(f"set aside checkpoint {step}: moved")
    self.manager.reload()  # forget the step: saving it again must not collide
    return target

  def damaged_error(self, step: int, problem: str) -> DamagedCheckpoint:
    """The one-paragraph error for a damaged step: the folder, what is wrong, the way back."""
    folder = self.directory / str(step)
    earlier = [s for s in self.all_steps() if s < step]
    back = (f"`xlm-jax train` on this workdir moves it to {self.directory.parent / DAMAGED_DIR}/ "
            f"to resume from step {earlier[-1]}" if earlier
            else "No earlier checkpoint is left: use a fresh --workdir")
    return DamagedCheckpoint(step, folder, problem,
                             f"checkpoint step {step} ({folder}) is damaged: {problem}. {back}.")

  def _unreadable(self, step: int, what: str, err: Exception) -> DamagedCheckpoint:
    """`damaged_error` for an item orbax could not read (its errors run to a hundred lines)."""
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    return self.damaged_error(step, f"its {what} cannot be read ({type(err).__name__}: "
                                    f"{first_line}); it is incomplete or cut short, or was "
                                    "written for another model")

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
    self.check_files(step)
    # One item at a time, so that an error names the item (folder) that could not be read.
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))["state"]
    except Exception as err:  # TensorStore and Orbax raise many types here
      raise self._unreadable(step, "state (state/)", err) from err
    for kind, it in (data_iters or {}).items():
      try:
        folder = self.directory / str(step) / f"data_{kind}"
        if hasattr(it, "set_shard_states") and not (folder / _process_file()).is_file():
          # Written by another number of hosts: gather every input shard's position.
          it.set_shard_states(input_shards.states_from_files(folder))
          it.start_prefetch()
          continue
        self.manager.restore(step, args=ocp.args.Composite(
            **{f"data_{kind}": grain.checkpoint.CheckpointRestore(it)}))
      except Exception as err:
        raise self._unreadable(step, f"{kind!r} data-iterator position (data_{kind}/)",
                               err) from err
    return state

  def input_layout(self, step: int) -> tuple[int, int]:
    """(processes, input shards) the data positions of `step` were written with; (1, 1) when
    it holds none."""
    for folder in sorted((self.directory / str(step)).glob("data_*")):
      layout = input_shards.saved_layout(folder)
      if layout is not None:
        return layout
    return 1, 1

  def restore_params(self, step: int, device=None) -> tuple[Any, Any]:
    """(params, extra) of a step as arrays on one device: what evaluation and export need,
    without the optimizer moments (two more copies of the params) or the data position."""
    import jax  # local: the rest of this module needs no device
    self.check_files(step)
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
    self._wait_for_saves()
    self._record_finished()

  def close(self) -> None:
    self.wait()
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
