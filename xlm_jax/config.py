"""Experiment files: loading, command-line overrides and validation.

An experiment file is a Python file with `get_config(arg=None) -> ml_collections.ConfigDict`
(big_vision style). It starts from `default_config()` below, so every field a run can set is
listed in one place, and validation can reject typos and wrong types with a message that names
the field and the file it came from.

    xlm-jax train --config experiments/quickstart.py:tiny --config.train.total_steps=300
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
from typing import Any, Sequence

import ml_collections

from xlm_jax.models.encoder import EncoderConfig
from xlm_jax.registry import OBJECTIVES

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "ru", "ja", "zh")

# Logical parameter/activation axes -> mesh axes. FSDP shards the embedding dimension of every
# weight; tensor parallelism shards heads, MLP and vocabulary. Batch uses both data and fsdp.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("positions", None),
    ("languages", None),
    ("layers", None),
    ("length", None),
)


def default_config() -> ml_collections.ConfigDict:
  """Every field an experiment can set, with the XLM-R base defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  # Sub-folder of the data dir ($XLM_JAX_DATA_DIR or ~/.cache/xlm_jax/data). The Debian recipes
  # gettext8 (quickstart) and debian8 (all sources) are built on first use.
  c.data.corpus = "gettext8"
  c.data.corpus_dir = ""              # explicit path; overrides `corpus`
  c.data.build_if_missing = True      # build the default corpus from Debian packages when absent
  c.data.languages = DEFAULT_LANGUAGES
  c.data.vocab_size = 8000            # SentencePiece size used when the corpus is built
  c.data.alpha = 0.3                  # language sampling exponent, q_l ∝ p_l^alpha (XLM-R)
  c.data.seq_len = 128
  c.data.packing = "stream"           # "stream" (XLM-R) | "segments" (packed sentences)
  # Vocabulary mode (Emerging structure): the corpus's joint SentencePiece, the union of
  # per-language models ("default anchors"), or language-tagged pieces ("no anchors").
  c.data.vocabulary = "joint"         # "joint" | "union" | "no_anchors"
  c.data.vocab_size_per_lang = 4000   # per-language SentencePiece size of union / no_anchors
  c.data.pair_seq_len = 0             # "parallel_pairs" side length; 0 = seq_len // 2
  c.data.foreign_first_rate = 0.5     # parallel kinds: chance the non-English side comes first
  c.data.sentence_len = 0             # "sentences" kind: longest sentence kept; 0 = seq_len
  c.data.eval_sentences = 256         # held-out sentences per language for MLM evaluation
  c.data.prefetch_threads = 2

  c.model = ml_collections.ConfigDict(EncoderConfig(vocab_size=0).to_dict())
  c.model.vocab_size = 0              # 0 = take it from the corpus tokenizer

  c.objectives = ml_collections.ConfigDict()
  c.objectives.mlm = OBJECTIVES.get("mlm").default_config()
  c.objective_mixing = "sum"          # "sum": all objectives each step | "alternate": one per step
  # Consecutive stages of one run (ERNIE-M: MLM+TLM+CAMLM, then + BTMLM). Each is a dict
  # dict(name=..., steps=N or fraction=f, objectives=(names...), mixing="sum"|"alternate").
  # Fractions of train.total_steps follow --config.train.total_steps overrides; fixed `steps`
  # must then add up to it. Empty: one stage with every objective.
  c.stages = ()
  # Warm start: a workdir (or its checkpoints/ folder) whose latest checkpoint provides every
  # parameter and extra state of matching name and shape; the optimizer starts fresh.
  c.init_from = ""

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"          # "adamw" | "amsgrad" (EMS)
  c.optimizer.learning_rate = 6e-4
  c.optimizer.warmup_steps = 1000
  c.optimizer.schedule = "linear"     # "linear" | "cosine" | "inverse_sqrt" | "constant"
  c.optimizer.end_lr_ratio = 0.0      # final lr as a fraction of the peak (linear/cosine)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.98
  c.optimizer.eps = 1e-6
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0         # 0 disables clipping

  c.train = ml_collections.ConfigDict()
  c.train.total_steps = 1000
  c.train.batch_size = 32             # global batch (rows), summed over hosts and micro-batches
  c.train.grad_accum_steps = 1
  c.train.log_every = 50
  c.train.eval_every = 500            # 0 = only at the end
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.async_checkpointing = True
  c.train.progress_bar = True
  c.train.max_wall_seconds = 0.0      # 0 = no limit; else stop (and checkpoint) after this long

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                    # -1: whatever devices remain
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = DEFAULT_RULES

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = "auto"   # "auto": when JAX_COORDINATOR_ADDRESS or a TPU pod is detected
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  c.eval = ml_collections.ConfigDict()
  c.eval.evaluators = ("mlm", "retrieval")
  c.eval.retrieval_items = 500        # per language pair, from the held-out parallel split
  c.eval.pooling = "mean"

  c.export = ml_collections.ConfigDict()
  c.export.enabled = True
  c.export.dir = ""                   # default: <workdir>/export
  return c


def _load_module(path: pathlib.Path):
  if not path.is_file():
    raise FileNotFoundError(f"experiment file {path} does not exist; pass --config experiments/<name>.py")
  spec = importlib.util.spec_from_file_location(f"xlm_jax_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"experiment file {path} has no get_config(arg=None) function")
  return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:variant]`, validates it against the defaults and applies overrides.

  `overrides` are strings `field.path=value` (the `--config.` prefix already stripped).
  """
  path_str, _, variant = spec.partition(":")
  path = pathlib.Path(path_str)
  module = _load_module(path)
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except TypeError as e:
    raise ValueError(f"{path}: get_config({variant!r}) failed: {e}") from e
  config = validate(config, source=str(path))
  for item in overrides:
    apply_override(config, item)
  return config


def validate(config: ml_collections.ConfigDict, source: str = "config") -> ml_collections.ConfigDict:
  """Checks `config` against `default_config()`; returns a locked copy with defaults filled in."""
  reference = default_config()
  # Objectives are open-ended: each named objective brings its own defaults.
  for name in config.get("objectives", {}):
    if name not in reference.objectives:
      reference.objectives[name] = OBJECTIVES.get(name).default_config()
  if "objectives" in config:
    for name in list(reference.objectives):
      if name not in config.objectives:
        del reference.objectives[name]
  _merge_checked(reference, config, prefix="", source=source)
  _check_values(reference, source)
  reference.lock()
  return reference


def _merge_checked(dst, src, prefix: str, source: str) -> None:
  for key, value in src.items():
    name = f"{prefix}{key}"
    if key not in dst:
      close = difflib.get_close_matches(key, list(dst.keys()), n=1)
      hint = f" Did you mean {prefix}{close[0]!r}?" if close else ""
      raise ValueError(f"{source}: unknown config key {name!r}.{hint}")
    if isinstance(dst[key], ml_collections.ConfigDict):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ValueError(f"{source}: config field {name!r} must be a section (dict), got {value!r}")
      _merge_checked(dst[key], value, prefix=f"{name}.", source=source)
    else:
      dst[key] = _coerce(name, dst[key], value, source)


def _coerce(name: str, default: Any, value: Any, source: str) -> Any:
  """Returns `value` converted to the type of `default`, or raises naming the field."""
  if default is None or value is None:
    return value
  want = type(default)
  if want is bool:
    if isinstance(value, bool):
      return value
  elif want is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif want is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif want in (tuple, list):
    if isinstance(value, (tuple, list)):
      return tuple(value)
  elif isinstance(value, want):
    return value
  raise ValueError(
      f"{source}: config field {name!r} expects {want.__name__} (default {default!r}), "
      f"got {type(value).__name__} {value!r}")


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Applies one `a.b.c=value` override; the value is parsed as a Python literal if it can be."""
  if "=" not in item:
    raise ValueError(f"override --config.{item} needs the form --config.<field>=<value>")
  path, raw = item.split("=", 1)
  keys = path.split(".")
  node = config
  for i, key in enumerate(keys):
    where = ".".join(keys[: i + 1])
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(key, options, n=1)
      hint = f" Did you mean {'.'.join(keys[:i] + [close[0]])!r}?" if close else ""
      raise ValueError(f"--config.{path}: unknown config key {where!r}.{hint}")
    if i < len(keys) - 1:
      node = node[key]
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw  # a bare word is a string
  if isinstance(node[keys[-1]], str) and not isinstance(value, str):
    value = raw  # e.g. --config.data.corpus=123 stays a string
  with node.unlocked():
    node[keys[-1]] = _coerce(path, node[keys[-1]], value, f"--config.{path}")
  _check_values(config, f"--config.{path}")


_CHOICES = {
    "data.packing": ("stream", "segments"),
    "data.vocabulary": ("joint", "union", "no_anchors"),
    "objective_mixing": ("sum", "alternate"),
    "optimizer.name": ("adamw", "amsgrad"),
    "optimizer.schedule": ("linear", "cosine", "inverse_sqrt", "constant"),
    "model.remat_policy": ("none", "full", "dots", "dots_no_batch"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "distributed.initialize": ("auto", "yes", "no"),
}


def _check_values(config: ml_collections.ConfigDict, source: str) -> None:
  for path, choices in _CHOICES.items():
    section, _, key = path.rpartition(".")
    node = config[section] if section else config
    if node[key] not in choices:
      raise ValueError(f"{source}: config field {path!r} must be one of {choices}, got {node[key]!r}")
  positive = ("data.seq_len", "train.total_steps", "train.batch_size", "train.grad_accum_steps",
              "train.log_every", "train.checkpoint_every", "train.keep_checkpoints")
  for path in positive:
    section, key = path.split(".")
    if config[section][key] <= 0:
      raise ValueError(f"{source}: config field {path!r} must be > 0, got {config[section][key]!r}")
  if config.train.batch_size % config.train.grad_accum_steps:
    raise ValueError(f"{source}: train.batch_size ({config.train.batch_size}) must be divisible by "
                     f"train.grad_accum_steps ({config.train.grad_accum_steps})")
  languages = list(config.data.languages)
  if not languages or any(not isinstance(l, str) or not l.strip() for l in languages):
    raise ValueError(f"{source}: data.languages must list non-empty language codes, got {languages}")
  if len(set(languages)) != len(languages):
    raise ValueError(f"{source}: data.languages has duplicates: {languages}")
  if not config.objectives:
    raise ValueError(f"{source}: no objectives; add e.g. config.objectives.mlm = dict(weight=1.0)")
  _check_stages(config, source)
  if config.model.hidden_size % config.model.num_heads:
    raise ValueError(f"{source}: model.hidden_size ({config.model.hidden_size}) must be divisible by "
                     f"model.num_heads ({config.model.num_heads})")
  if config.data.seq_len + config.model.pad_id + 1 > config.model.max_positions:
    raise ValueError(f"{source}: data.seq_len ({config.data.seq_len}) needs model.max_positions >= "
                     f"{config.data.seq_len + config.model.pad_id + 1} (positions start at pad_id+1)")


_STAGE_KEYS = ("name", "steps", "fraction", "objectives", "mixing")


def stage_lengths(config: ml_collections.ConfigDict) -> list[int]:
  """Steps of each stage; a stage given as `fraction` gets its share of train.total_steps, the
  last fractional stage the rounding remainder, so the stages always cover the run exactly."""
  total = config.train.total_steps
  fixed = sum(int(s["steps"]) for s in config.stages if "steps" in s)
  fractional = [i for i, s in enumerate(config.stages) if "fraction" in s]
  lengths = [int(s["steps"]) if "steps" in s else int(round(s["fraction"] * total))
             for s in config.stages]
  if fractional:
    lengths[fractional[-1]] = total - fixed - sum(lengths[i] for i in fractional[:-1])
  return lengths


def _check_stages(config: ml_collections.ConfigDict, source: str) -> None:
  """Stages name known objectives, have positive lengths, and cover train.total_steps exactly."""
  if not config.stages:
    return
  for i, stage in enumerate(config.stages):
    where = f"{source}: stages[{i}]"
    if not isinstance(stage, (dict, ml_collections.ConfigDict)):
      raise ValueError(f"{where} must be a dict with keys {_STAGE_KEYS}, got {stage!r}")
    unknown = sorted(set(stage) - set(_STAGE_KEYS))
    if unknown:
      raise ValueError(f"{where}: unknown key(s) {unknown}; a stage has {_STAGE_KEYS}")
    if ("steps" in stage) == ("fraction" in stage):
      raise ValueError(f"{where}: give exactly one of 'steps' (int) or 'fraction' (of "
                       f"train.total_steps), got {dict(stage)!r}")
    steps = stage.get("steps", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
      raise ValueError(f"{where}: 'steps' must be a positive int, got {steps!r}")
    fraction = stage.get("fraction", 0.5)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
      raise ValueError(f"{where}: 'fraction' must be in (0, 1], got {fraction!r}")
    names = stage.get("objectives") or ()
    if isinstance(names, str) or not names:
      raise ValueError(f"{where}: 'objectives' must be a non-empty list of names, got {names!r}")
    missing = [n for n in names if n not in config.objectives]
    if missing:
      raise ValueError(f"{where}: objectives {missing} are not configured under config.objectives "
                       f"(configured: {sorted(config.objectives)})")
    if stage.get("mixing", "sum") not in _CHOICES["objective_mixing"]:
      raise ValueError(f"{where}: 'mixing' must be one of {_CHOICES['objective_mixing']}, "
                       f"got {stage.get('mixing')!r}")
  lengths = stage_lengths(config)
  if any(n <= 0 for n in lengths) or sum(lengths) != config.train.total_steps:
    raise ValueError(f"{source}: the stages come to {lengths} steps, which must be positive and add "
                     f"up to train.total_steps = {config.train.total_steps}; give stages as "
                     "'fraction' to follow the total, or fix their 'steps'")
