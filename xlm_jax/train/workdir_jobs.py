"""`xlm-jax eval` and `xlm-jax export` of a trained workdir.

They read the workdir alone (xlm_jax/train/workdir.py: config.json, tokenizer/, eval_sets/,
resources/ and the checkpoint's params), never the corpus, the optimizer moments or the data
position, and they never write config.json: overrides apply to this command only. The model,
objectives, evaluators and export are built by the same functions as in trainer.py.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax

from xlm_jax import config as config_lib
from xlm_jax.data.corpus import Corpus
from xlm_jax.evaluation import base as eval_lib
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.registry import OBJECTIVES
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax.train import workdir as workdir_lib
from xlm_jax.train.trainer import (bind_objectives, eval_data, eval_model, evaluation_sets, export,
                                   heldout_eval_step, load_objective_resources, model_params,
                                   open_corpus, sentence_specials)


@dataclasses.dataclass(frozen=True)
class Restored:
  """A workdir's latest checkpoint as evaluation and export need it."""
  workdir: pathlib.Path
  config: Any              # config.json, with this command's overrides applied in memory only
  step: int
  meta: dict
  model: Model
  params: Any              # on this host's first device
  extra: Any
  tokenizer: Any


def restore_workdir(workdir, overrides=()) -> Restored:
  if jax.process_count() > 1:
    raise ValueError("xlm-jax eval/export read a workdir on one process; run them on one host")
  workdir = workdir_lib.require_trained(workdir)
  config = workdir_lib.read_config(workdir)
  config_lib.apply_overrides(config, list(overrides), source=str(workdir / workdir_lib.CONFIG_FILE))
  if not (workdir / ckpt_lib.CHECKPOINT_DIR).is_dir():
    raise FileNotFoundError(f"no checkpoint under {workdir / ckpt_lib.CHECKPOINT_DIR}; train first")
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                       async_save=False)
  try:
    step = checkpointer.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {checkpointer.directory}; train first")
    meta = checkpointer.read_meta(step)
    params, extra = checkpointer.restore_params(step)
  finally:
    checkpointer.close()
  tokenizer = workdir_lib.load_tokenizer(workdir)
  # The model comes from the checkpoint's meta, not config.json: overrides cannot make it disagree
  # with the arrays restored.
  return Restored(workdir, config, step, meta, Model(EncoderConfig.from_dict(meta["model"])),
                  params, extra, tokenizer)


def _corpus_if_present(config) -> Corpus | None:
  """The run's corpus if it is still built (the sets or resources the workdir lacks come from
  it), else None."""
  try:
    return open_corpus(config)
  except FileNotFoundError:
    return None


def evaluate_workdir(workdir, overrides=()) -> tuple[Restored, dict]:
  """Every configured evaluator on the latest checkpoint of `workdir`."""
  restored = restore_workdir(workdir, overrides)
  config, model, tokenizer = restored.config, restored.model, restored.tokenizer
  corpus = None
  resources = {}
  # The workdir's stored copies first; the corpus is opened only for what the workdir lacks.
  for name, section in config.objectives.items():
    if OBJECTIVES.get(name).load_resources is None:
      continue
    try:
      resources[name] = workdir_lib.load_resources(restored.workdir, name)
    except FileNotFoundError:
      corpus = corpus or _corpus_if_present(config)
      if corpus is None:
        raise
      resources.update(load_objective_resources(config, corpus, tokenizer))
  bound = bind_objectives(config, model, tokenizer, resources)
  # None: the stored sets only; they are rebuilt from the corpus only when eval_sets/ lacks them.
  try:
    sets, _ = evaluation_sets(config, restored.workdir, None)
  except FileNotFoundError:
    corpus = corpus or _corpus_if_present(config)
    if corpus is None:
      raise
    sets, _ = evaluation_sets(config, restored.workdir,
                              eval_data(config, corpus, tokenizer, model.config, bound))
  evaluators = eval_lib.build_evaluators(sets, config.eval)
  step_fn = heldout_eval_step(bound, config.seed)(restored.params, restored.extra)
  results = eval_lib.evaluate(evaluators, eval_model(model, model_params(restored.params),
                                                     tokenizer, config.data.languages, step_fn,
                                                     sentence_specials(config)))
  return restored, results


EXPORT_FORMATS = ("xlm-jax", "hf")


def export_workdir(workdir, out=None, export_format: str = "xlm-jax") -> tuple[Restored, pathlib.Path]:
  """Writes the export folder of `workdir`'s latest checkpoint.

  export_format "xlm-jax" (default <workdir>/export) or "hf", a Hugging Face
  XLMRobertaForMaskedLM folder (default <workdir>/export_hf).
  """
  from xlm_jax.export import hf
  from xlm_jax.export.export import check_export_dir
  if export_format not in EXPORT_FORMATS:
    raise ValueError(f"unknown export format {export_format!r}; use one of {EXPORT_FORMATS}")
  config = workdir_lib.read_config(workdir_lib.require_trained(workdir))
  # Refuse a folder that is not an export before the (slow) restore, not after it.
  if export_format == "hf":
    target = hf.check_hf_dir(out or pathlib.Path(workdir) / "export_hf")
  else:
    target = check_export_dir(out or config.export.dir or pathlib.Path(workdir) / "export")
  restored = restore_workdir(workdir)
  meta = restored.meta
  if export_format == "hf":
    path = hf.write_hf_folder(target, jax.device_get(model_params(restored.params)),
                              restored.model.config, restored.tokenizer,
                              {"xlm_jax_source": f"{restored.workdir} step {restored.step}"})
    return restored, path
  # What the checkpoint recorded wins over config.json; the config fills in for older meta.
  path = export(target, restored.params, restored.model.config, restored.tokenizer,
                meta.get("languages", list(config.data.languages)), restored.step,
                meta.get("corpus_packages", []), sentence_specials(config))
  return restored, path


# What `--model PATH` may name (xlm-jax eval --model, xlm-jax finetune --model), and how each
# kind is told apart: by the files in the folder.
MODEL_KINDS = ("an xlm-jax export (a folder with config.json and params.msgpack, from `xlm-jax "
               "export`), a workdir (a folder with config.json and checkpoints/, from `xlm-jax "
               "train`: its latest checkpoint is read), or a Hugging Face XLM-R folder "
               "(config.json naming a model_type, with its weights and sentencepiece.bpe.model)")


def load_model(path, flag: str = "--model", other_kinds: str = ""):
  """(kind, Pretrained, extra info) of a model folder: the one reader of every kind.

  other_kinds: what else the caller's flag accepts, added to the list in error messages.

  kind is "huggingface", "xlm-jax export" or "workdir" (the latest checkpoint's encoder and MLM
  head, without the objectives' heads); anything else is a ValueError listing the kinds.
  """
  import json
  import xlm_jax
  from xlm_jax.export import hf
  from xlm_jax.export.export import EXPORT_MARKERS, Pretrained
  folder = pathlib.Path(path).expanduser()
  kinds = MODEL_KINDS + (f", or {other_kinds}" if other_kinds else "")
  if not folder.is_dir():
    what = "is a file" if folder.exists() else "does not exist"
    raise ValueError(f"{flag} {path} {what}; {flag} takes {kinds}")
  if hf.is_hf_folder(folder):
    return "huggingface", xlm_jax.load_pretrained(folder), {}
  if all((folder / marker).is_file() for marker in EXPORT_MARKERS):
    pretrained = xlm_jax.load_pretrained(folder)
    return "xlm-jax export", pretrained, {"export_metadata": pretrained.config.get("metadata", {})}
  config_file = folder / workdir_lib.CONFIG_FILE
  if config_file.is_file() and (folder / ckpt_lib.CHECKPOINT_DIR).is_dir():
    try:
      raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
      raw = {}
    if isinstance(raw, dict) and "task" in raw:  # finetune.py writes its config with a task
      raise ValueError(f"{flag} {path} is an xlm-jax finetune workdir, not a pretrained encoder; "
                       f"{flag} takes {kinds}")
    restored = restore_workdir(folder)
    languages = restored.meta.get("languages", list(restored.config.data.languages))
    pretrained = Pretrained(restored.model, model_params(restored.params), restored.tokenizer,
                            {"languages": list(languages),
                             "metadata": {"workdir": str(folder), "step": restored.step,
                                          "sentence_specials": sentence_specials(restored.config)}})
    return "workdir", pretrained, {"step": restored.step}
  held = ", ".join(sorted(p.name for p in folder.iterdir())[:6]) or "nothing"
  raise ValueError(f"{flag} {path} is not a model of a known kind (it holds {held}); {flag} "
                   f"takes {kinds}")
