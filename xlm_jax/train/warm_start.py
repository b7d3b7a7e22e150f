"""Warm start: a new run begins from another workdir's trained weights (`config.init_from`).

Multi-stage recipes that change the model's heads or the batch kinds between stages (EMMA-X
ctl -> gmm -> itr, ERNIE-M's second stage as its own experiment) start each stage from the
previous one's checkpoint. Every parameter and extra-state array whose path and shape match is
copied, after the source's encoder is moved to this run's layout where the two differ only in
vocabulary padding or scan_layers (convert_params); the optimizer, step and data position start
fresh. Objectives whose extra state was not found (a momentum encoder warm-started from an MLM
run) re-initialise it from the loaded weights, so a momentum copy starts equal to the loaded
encoder, as it would at a fresh start.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib

import flax
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from xlm_jax.models.encoder import LAYOUT_FIELDS, convert_params
from xlm_jax.models.encoder_config import EncoderConfig, with_legacy_defaults
from xlm_jax import mesh as mesh_lib


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


def _latest_step_dir(source) -> tuple[pathlib.Path, int]:
  folder = checkpoint_folder(source)
  if folder.name.isdigit() and (folder / "state").is_dir():
    return folder, int(folder.name)
  # Digit-only names skip Orbax's unfinished saves (<step>.orbax-checkpoint-tmp-*).
  step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  return folder / str(step), step


def read_model_config(source) -> EncoderConfig | None:
  """The encoder config that `source`'s latest checkpoint recorded in its meta (fields it
  predates at their legacy values), or None when there is none to read."""
  step_dir, _ = _latest_step_dir(source)
  if not (step_dir / "meta").is_dir():
    return None
  try:
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / "meta")
    return EncoderConfig.from_dict(with_legacy_defaults(meta["model"]))
  except Exception as err:  # Orbax's errors, or a meta from another version: match by shape
    logging.warning("init_from %s: its model config cannot be read (%s); parameters are "
                    "matched by name and shape only", source, err)
    return None


def read_state(source) -> tuple[dict, int]:
  """The latest saved state of `source` as host numpy arrays, and its step."""
  step_dir, step = _latest_step_dir(source)
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


def in_this_layout(tree, source: EncoderConfig | None, target: EncoderConfig | None):
  """`tree` (saved params or extra state) with each model part in it moved to `target`'s layout.

  A model part is a dict holding the Model's "encoder" (with "lm_head" in the params; alone in
  a momentum copy such as EMMA-X's key tower). Runs whose encoders differ only in
  LAYOUT_FIELDS (vocab_multiple, scan_layers) then share every array, where matching by path
  and shape alone would leave the layers or the vocabulary tables at their initialisation.
  Fields that change no array (dropout, dtype) may differ too; anything else, or a part that
  is not a copy of this model, is left as it is for merge_matching.
  """
  if (not isinstance(tree, dict) or source is None or target is None
      or source.vocab_size != target.vocab_size
      or all(getattr(source, f) == getattr(target, f) for f in LAYOUT_FIELDS)):
    return tree
  if "encoder" not in tree:
    return {key: in_this_layout(value, source, target) for key, value in tree.items()}
  # This run's config in the source's layout: convert_params then checks the arrays' shapes.
  laid_out_as_source = dataclasses.replace(
      target, **{f: getattr(source, f) for f in LAYOUT_FIELDS})
  part = {key: tree[key] for key in ("encoder", "lm_head") if key in tree}
  try:
    return {**tree, **convert_params(part, laid_out_as_source, target)}
  except ValueError:
    return tree


# init_from=hf:PATH: a Hugging Face XLM-R folder (export/hf.py) instead of a workdir.
HF_PREFIX = "hf:"
_LANGUAGE_EMBEDDINGS = "encoder/embeddings/language_embeddings/embedding"


def hf_folder(init_from) -> pathlib.Path | None:
  """The Hugging Face folder named by `init_from` ("hf:PATH"), or None for a workdir source."""
  if init_from and str(init_from).startswith(HF_PREFIX):
    return pathlib.Path(str(init_from)[len(HF_PREFIX):]).expanduser().absolute()
  return None


def read_source(source, target: EncoderConfig | None = None
                ) -> tuple[dict, int, EncoderConfig | None]:
  """(saved {"params", "extra"} as host arrays, its step, its encoder config) of `source`: a
  workdir's latest checkpoint, or a Hugging Face folder converted on the fly (step 0), laid out
  as `target` pads its vocabulary and scans its layers."""
  folder = hf_folder(source)
  if folder is not None:
    from xlm_jax.export import hf
    params, config, _, _ = hf.read_hf_folder(folder)
    if target is not None:
      # Moved here, not by in_this_layout: the run may add parts XLM-R lacks (language
      # embeddings), which that conversion between two copies of one model refuses.
      laid_out = dataclasses.replace(config, **{f: getattr(target, f) for f in LAYOUT_FIELDS})
      config, params = laid_out, convert_params(params, config, laid_out)
    return {"params": params, "extra": {}}, 0, config
  saved, step = read_state(source)
  return saved, step, read_model_config(source)


def _model_config(bound) -> EncoderConfig | None:
  """The encoder config of this run (every objective holds the same model)."""
  for entry in bound.values():
    return entry.context.model.config
  return None


def warm_start(state, shardings, bound, seed: int, source):
  """`state` with the matching params and extra state of `source`'s latest checkpoint.

  Returns (new state, info). `bound` (name -> BoundObjective) rebuilds extra state the source
  lacks; `shardings` places the merged state back on the mesh.
  """
  saved, step, source_config = read_source(source, _model_config(bound))
  # Another padding of the vocabulary or another scan layout: the same weights, moved.
  layouts = source_config, _model_config(bound)
  saved = {"params": in_this_layout(dict(saved.get("params", {})), *layouts),
           "extra": in_this_layout(dict(saved.get("extra", {})), *layouts)}
  host = mesh_lib.host_copy(state)  # a collective on multi-host runs: every host calls it
  params, copied, kept = merge_matching(dict(host.params), dict(saved.get("params", {})))
  if not copied:
    raise ValueError(f"init_from {source}: no parameter matches this model by name and shape; "
                     "is it a checkpoint of the same architecture?")
  if hf_folder(source) is not None:
    # A pretrained model must supply the whole encoder and MLM head; only the objectives' own
    # heads (under params/heads) and language embeddings (XLM-R has none) start fresh.
    missing = [path for path in kept
               if not path.startswith("heads/") and path != _LANGUAGE_EMBEDDINGS]
    if missing:
      raise ValueError(f"init_from {source}: {len(missing)} encoder arrays found no match in the "
                       f"pretrained model (first: {missing[0]}); its architecture differs from "
                       "this run's model")
    if _LANGUAGE_EMBEDDINGS in kept:
      # Zero: added to every input, so the first step computes XLM-R's own function exactly.
      table = params["encoder"]["embeddings"]["language_embeddings"]
      table["embedding"] = np.zeros_like(table["embedding"])
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
