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
import fnmatch
import importlib.util
import pathlib
import re
from typing import Any, Mapping, Sequence

import ml_collections

from xlm_jax.data.pipeline import PACKING_MODES
from xlm_jax.data.tokenizer import VOCABULARIES
from xlm_jax.export.export import POOLINGS
from xlm_jax.models.encoder import EncoderConfig
from xlm_jax.models.encoder_config import check_fields as check_encoder_fields
from xlm_jax.models.encoder_config import describe_range, in_range
from xlm_jax.registry import OBJECTIVES
from xlm_jax.mesh import DEFAULT_RULES, INITIALIZE_MODES
from xlm_jax.train.optimizer import OPTIMIZERS, SCHEDULES
from xlm_jax.train.nonfinite import NONFINITE_MODES

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "ru", "ja", "zh")


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
  # The global batch is read as this many input shards (data/input_shards.py), each process
  # reading an equal run of them. 0: one per process at the first start, then whatever the
  # checkpoint holds. A resume keeps the data order exactly when its process count divides it:
  # set a multiple of every host count the run may move between (e.g. 8).
  c.data.input_shards = 0

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
  # A step whose loss or gradient is NaN or inf is never applied (params, optimizer state and
  # extra state stay as they were; the step counter moves on with the data). "skip": count it
  # (train/nonfinite_skipped) and go on, but stop when more than max_consecutive_nonfinite come
  # in a row; "stop": stop at the first. Stopping saves nothing after the bad step and exits
  # non-zero (status 2) naming the step and the objective.
  c.train.nonfinite = "skip"          # "skip" | "stop"
  c.train.max_consecutive_nonfinite = 10

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
  # A host that sends no heartbeat for this long is dead: the coordination service then ends every
  # other host (SIGABRT, naming the lost task) instead of leaving it blocked in a collective.
  # Rerunning all hosts resumes from the newest checkpoint. 100 s is JAX's default.
  c.distributed.heartbeat_timeout_seconds = 100

  c.eval = ml_collections.ConfigDict()
  c.eval.evaluators = ("mlm", "retrieval")
  c.eval.retrieval_items = 500        # per language pair, from the held-out parallel split
  c.eval.pooling = "mean"
  c.eval.layer = -1                   # hidden state of pooling "layer": 0 = embeddings, -1 = last
  c.eval.mining_items = 1000          # en-xx pairs hidden per language (half dev, half test)
  c.eval.mining_distractors = 4000    # unpaired held-out sentences per side and language (halved too)
  c.eval.mining_k = 4                 # margin neighbourhood (Artetxe & Schwenk 2019)
  c.eval.bli_candidates = 20000       # most frequent training words per language in the BLI pools
  c.eval.bli_train_pairs = 5000       # seed-dictionary pairs the Procrustes map is fitted on
  c.eval.csls_k = 10                  # CSLS neighbourhood (Conneau et al. 2018)
  c.eval.classify_train_items = 10000  # English training paragraphs of the frozen classifier
  c.eval.classify_test_items = 1000   # held-out paragraph ids, each scored in every language it has
  c.eval.classify_l2 = 1e-3           # L2 weight of the logistic regression (mean-loss scale)
  c.eval.cka_items = 500              # multi-way-parallel items of CKA and retrieval per layer

  c.export = ml_collections.ConfigDict()
  c.export.enabled = True
  c.export.dir = ""                   # default: <workdir>/export
  return c


def _load_module(path: pathlib.Path):
  if not path.is_file():
    what = "is a folder, not a file" if path.is_dir() else "does not exist"
    raise FileNotFoundError(f"experiment file {path} {what}; pass --config experiments/<name>.py")
  spec = importlib.util.spec_from_file_location(f"xlm_jax_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"experiment file {path} is not valid Python (line {e.lineno}: {e.msg}); "
                     "fix it, or pass another --config") from e
  except Exception as e:  # an import or a statement of the user's file failed
    raise ValueError(f"experiment file {path} failed while loading: {type(e).__name__}: {e}") from e
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ValueError(f"experiment file {path} has no get_config(arg=None) function; define one "
                     "that returns an ml_collections.ConfigDict (start from "
                     "xlm_jax.config.default_config())")
  if not callable(get_config):
    raise ValueError(f"experiment file {path}: get_config is a {type(get_config).__name__}, not a "
                     "function; define `def get_config(arg=None): ...` returning a ConfigDict")
  return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:variant]`, validates it against the defaults and applies overrides.

  `overrides` are strings `field.path=value` (the `--config.` prefix already stripped). Each is
  type-checked as it is applied; the values are checked together once all are in, so the order
  of overrides never matters.
  """
  path_str, _, variant = spec.partition(":")
  path = pathlib.Path(path_str)
  module = _load_module(path)
  call = f"get_config({variant!r})" if variant else "get_config()"
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except ValueError:
    raise  # the experiment's own message (an unknown variant, say)
  except Exception as e:
    raise ValueError(f"{path}: {call} failed: {type(e).__name__}: {e}") from e
  if not isinstance(config, (dict, ml_collections.ConfigDict)):
    raise ValueError(f"{path}: {call} returned {type(config).__name__} {_short(config)}, not an "
                     "ml_collections.ConfigDict; end get_config with `return c` "
                     "(c = xlm_jax.config.default_config())")
  config = validate(config, source=str(path))
  apply_overrides(config, overrides, source=str(path))
  return config


def _short(value: Any, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


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


def apply_override(config: ml_collections.ConfigDict, item: str, check: bool = True) -> None:
  """Applies one `a.b.c=value` override; the value is parsed as a Python literal if it can be.

  The value is type-checked at once; with `check` the whole config's values are checked too
  (apply_overrides checks once after several, so their order does not matter).
  """
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
  if check:
    _check_values(config, f"--config.{path}")


def apply_overrides(config: ml_collections.ConfigDict, items: Sequence[str],
                    source: str = "config") -> None:
  """Applies `a.b=value` overrides, then checks the values once. A problem is reported with the
  override that set the field (`--config.a.b=value`), or `source` for a field it did not set."""
  origins = {}
  for item in items:
    apply_override(config, item, check=False)
    origins[item.split("=", 1)[0]] = f"--config.{item}"
  _check_values(config, source, origins)


# --- Value checks: one table of choices and one of ranges; the model's own are the model's. ------

# Each list of choices is owned by the code that acts on it; the config only points at it.
_CHOICES = {
    "data.packing": PACKING_MODES,
    "data.vocabulary": VOCABULARIES,
    "objective_mixing": ("sum", "alternate"),   # read by trainer.plan_stages
    "optimizer.name": OPTIMIZERS,
    "optimizer.schedule": SCHEDULES,
    "train.nonfinite": NONFINITE_MODES,
    "distributed.initialize": INITIALIZE_MODES,
    "eval.pooling": POOLINGS,
}

# Numeric fields: (low, high, low_inclusive, high_inclusive), None = unbounded. Every numeric field
# of default_config() outside `model` is listed (tests/test_bad_input.py checks it); `model.*` is
# checked by the encoder's own xlm_jax.models.encoder_config.check_fields.
_RANGES = {
    "seed": (None, None, None, None),
    "data.vocab_size": (1, None, True, None),
    "data.alpha": (0.0, 1.0, True, True),
    "data.seq_len": (3, None, True, None),             # <s> x </s>
    "data.vocab_size_per_lang": (1, None, True, None),
    "data.pair_seq_len": (0, None, True, None),        # 0 = seq_len // 2
    "data.foreign_first_rate": (0.0, 1.0, True, True),
    "data.sentence_len": (0, None, True, None),        # 0 = seq_len
    "data.eval_sentences": (1, None, True, None),
    "data.prefetch_threads": (0, None, True, None),
    "data.input_shards": (0, None, True, None),
    "optimizer.learning_rate": (0.0, None, False, None),
    "optimizer.warmup_steps": (0, None, True, None),
    "optimizer.end_lr_ratio": (0.0, 1.0, True, True),
    "optimizer.b1": (0.0, 1.0, True, False),
    "optimizer.b2": (0.0, 1.0, True, False),
    "optimizer.eps": (0.0, None, False, None),
    "optimizer.weight_decay": (0.0, None, True, None),
    "optimizer.clip_norm": (0.0, None, True, None),    # 0 disables clipping
    "train.total_steps": (1, None, True, None),
    "train.batch_size": (1, None, True, None),
    "train.grad_accum_steps": (1, None, True, None),
    "train.log_every": (1, None, True, None),
    "train.eval_every": (0, None, True, None),         # 0 = only at the end
    "train.checkpoint_every": (1, None, True, None),
    "train.keep_checkpoints": (1, None, True, None),
    "train.max_wall_seconds": (0.0, None, True, None),  # 0 = no limit
    "train.max_consecutive_nonfinite": (1, None, True, None),
    "distributed.num_processes": (0, None, True, None),
    "distributed.process_id": (-1, None, True, None),
    "distributed.heartbeat_timeout_seconds": (1, None, True, None),
    "eval.retrieval_items": (1, None, True, None),
    "eval.layer": (-1, None, True, None),               # -1 = last; an index past the model's layers
                                                        # is refused by encode, which knows them
    "eval.mining_items": (2, None, True, None),         # at least one pair each for dev and test
    "eval.mining_distractors": (0, None, True, None),
    "eval.mining_k": (1, None, True, None),
    "eval.bli_candidates": (0, None, True, None),       # 0 = the gold answers alone
    "eval.bli_train_pairs": (1, None, True, None),
    "eval.csls_k": (1, None, True, None),
    "eval.classify_train_items": (1, None, True, None),
    "eval.classify_test_items": (1, None, True, None),
    "eval.classify_l2": (0.0, None, False, None),       # > 0: separable data has no optimum without it
    "eval.cka_items": (2, None, True, None),            # CKA centres over items: one is no sample
}
# Mesh axes: -1 (whatever devices remain) or a positive size.
_MESH_AXES = ("mesh.data", "mesh.fsdp", "mesh.tensor")

# Objective fields (objectives.<name>.<field>), by field name; the first matching pattern wins.
OBJECTIVE_RANGES = (
    ("mask_rate", (0.0, 1.0, False, True)),            # share of tokens predicted: some, at most all
    ("*learning_rate", (0.0, None, False, None)),
    ("*label_smoothing", (0.0, 1.0, True, False)),
    ("*dropout*", (0.0, 1.0, True, False)),
    ("*_rate", (0.0, 1.0, True, True)),                # mask_token_rate, replace_rate, ...
    ("p_*", (0.0, 1.0, True, True)),                   # probabilities (p_swap)
    ("*momentum", (0.0, 1.0, True, True)),
    ("sample_temperature", (0.0, None, True, None)),   # 0 = argmax
    ("*temperature*", (0.0, None, False, None)),
    ("weight", (0.0, None, True, None)),
    ("*_weight", (0.0, None, True, None)),
    ("queue_size", (1, None, True, None)),
    ("num_ranks", (2, None, True, None)),
    ("placeholder_ratio", (0.0, None, False, None)),
    ("*_dim", (1, None, True, None)),
    ("max_translations", (0, None, True, None)),       # 0 = all
    ("mono_candidates", (0, None, True, None)),
    ("align_pairs_per_step", (0, None, True, None)),   # 0 = the whole dictionary
)

# Evaluators that pair every language with English.
ENGLISH_PIVOT_EVALUATORS = ("retrieval", "geometry", "alignment", "mining", "bli", "classify", "cka")


def objective_field_range(name: str):
  """The (low, high, low_inclusive, high_inclusive) range of an objective field, or None."""
  return next((bounds for pattern, bounds in OBJECTIVE_RANGES if fnmatch.fnmatchcase(name, pattern)),
              None)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Problems:
  """Raises ValueError prefixed with where the named fields came from: the overrides that set
  them (`--config.a.b=v`), else the experiment file (`source`)."""

  def __init__(self, source: str, origins: Mapping[str, str] | None):
    self.source, self.origins = source, dict(origins or {})

  def fail(self, fields: Sequence[str], message: str):
    where = list(dict.fromkeys(self.origins[f] for f in fields if f in self.origins))
    if not where:
      prefix = self.source
    elif all(f in self.origins for f in fields):
      prefix = ", ".join(where)
    else:
      prefix = f"{', '.join(where)} (with {self.source})"
    raise ValueError(f"{prefix}: {message}")


def _check_range(problems: _Problems, path: str, value: Any, bounds) -> None:
  if bounds is None or bounds[0] is None and bounds[1] is None:
    return
  if not _is_number(value):
    problems.fail([path], f"config field {path!r} must be a number {describe_range(*bounds)}, "
                          f"got {value!r}")
  if not in_range(value, *bounds):
    problems.fail([path], f"config field {path!r} must be {describe_range(*bounds)}, got {value!r}")


def _check_values(config: ml_collections.ConfigDict, source: str,
                  origins: Mapping[str, str] | None = None) -> None:
  problems = _Problems(source, origins)
  for path, choices in _CHOICES.items():
    section, _, key = path.rpartition(".")
    node = config[section] if section else config
    if node[key] not in choices:
      problems.fail([path], f"config field {path!r} must be one of {choices}, got {node[key]!r}")
  for path, bounds in _RANGES.items():
    section, _, key = path.rpartition(".")
    _check_range(problems, path, (config[section] if section else config)[key], bounds)
  for path in _MESH_AXES:
    value = config.mesh[path.split(".")[1]]
    if not _is_number(value) or not (value == -1 or value >= 1):
      problems.fail([path], f"config field {path!r} must be -1 (the devices left) or >= 1, "
                            f"got {value!r}")
  if config.train.batch_size % config.train.grad_accum_steps:
    problems.fail(["train.batch_size", "train.grad_accum_steps"],
                  f"train.batch_size ({config.train.batch_size}) must be divisible by "
                  f"train.grad_accum_steps ({config.train.grad_accum_steps})")
  problem = check_encoder_fields(config.model.to_dict(), prefix="model.")
  if problem:
    named = [f"model.{name}" for name in config.model
             if re.search(rf"\bmodel\.{name}\b", problem)]
    problems.fail(named, problem)
  if config.data.seq_len + config.model.pad_id + 1 > config.model.max_positions:
    problems.fail(["data.seq_len", "model.max_positions"],
                  f"data.seq_len ({config.data.seq_len}) needs model.max_positions >= "
                  f"{config.data.seq_len + config.model.pad_id + 1} (positions start at pad_id+1)")
  languages = list(config.data.languages)
  if not languages or any(not isinstance(l, str) or not l.strip() for l in languages):
    problems.fail(["data.languages"],
                  f"data.languages must list non-empty language codes, got {languages}")
  if len(set(languages)) != len(languages):
    problems.fail(["data.languages"], f"data.languages has duplicates: {languages}")
  pivoting = [e for e in config.eval.evaluators if e in ENGLISH_PIVOT_EVALUATORS]
  if pivoting and "en" not in languages:
    problems.fail(["data.languages", "eval.evaluators"],
                  f"eval.evaluators {pivoting} pair every language with English, but "
                  f"data.languages {languages} has no 'en'; add 'en' to data.languages, or drop "
                  f"{' and '.join(map(repr, pivoting))} from eval.evaluators")
  if config.eval.layer != -1 and config.eval.pooling != "layer":
    problems.fail(["eval.layer", "eval.pooling"],
                  f"eval.layer={config.eval.layer} is read only with eval.pooling='layer' (got "
                  f"{config.eval.pooling!r}); set eval.pooling='layer', or leave eval.layer at -1")
  if not config.objectives:
    problems.fail(["objectives"],
                  "no objectives; add e.g. config.objectives.mlm = dict(weight=1.0)")
  _check_objectives(config, problems)
  _check_stages(config, source)


def _check_objectives(config: ml_collections.ConfigDict, problems: _Problems) -> None:
  """Every objective's numeric fields against OBJECTIVE_RANGES, then the cross-field rules."""
  for name, section in config.objectives.items():
    for field, value in section.items():
      path = f"objectives.{name}.{field}"
      if _is_number(value):
        _check_range(problems, path, value, objective_field_range(field))
    if _is_number(section.get("mask_token_rate")) and _is_number(section.get("random_token_rate")):
      if section["mask_token_rate"] + section["random_token_rate"] > 1:
        fields = [f"objectives.{name}.{f}" for f in ("mask_token_rate", "random_token_rate")]
        problems.fail(fields, f"{fields[0]} ({section['mask_token_rate']}) + {fields[1]} "
                              f"({section['random_token_rate']}) must be <= 1 (the rest of the "
                              "chosen tokens stay as they are)")
    if "queue_size" in section and "mono_candidates" in section:
      _check_emma_queue(config, name, section, problems)


def _check_emma_queue(config, name: str, section, problems: _Problems) -> None:
  """EMMA-X enqueues 2 keys per pair of the step's parallel_pairs batch (train.batch_size pairs)
  plus its mono_candidates; a queue smaller than that cannot hold one step's keys."""
  batch, mono = config.train.batch_size, section["mono_candidates"]
  fields = [f"objectives.{name}.queue_size", f"objectives.{name}.mono_candidates",
            "train.batch_size"]
  if mono > batch:
    problems.fail(fields[1:], f"{fields[1]} ({mono}) exceeds the rows of the 'sentences' batch "
                              f"(train.batch_size = {batch}); lower it or raise the batch size")
  keys = 2 * batch + mono
  if section["queue_size"] < keys:
    problems.fail(fields, f"{fields[0]} ({section['queue_size']}) is smaller than the keys EMMA-X "
                          f"enqueues per step: 2 x train.batch_size ({batch}) + mono_candidates "
                          f"({mono}) = {keys}; set queue_size >= {keys} or lower train.batch_size")


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
