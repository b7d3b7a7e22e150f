"""EncoderConfig: architecture and numerics of the XLM-R encoder (models/encoder.py)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
REMAT_POLICIES = {
    "none": None,
    "full": None,  # nn.remat without a policy saves nothing: everything is recomputed
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# Allowed values of each field: (low, high, low_inclusive, high_inclusive); None = unbounded.
# The one list of the encoder's ranges and choices: config validation (xlm_jax/config.py) calls
# check_fields with the "model." prefix rather than keeping its own copy.
FIELD_RANGES = {
    "vocab_size": (0, None, True, None),          # 0 = taken from the tokenizer (config files)
    "vocab_multiple": (1, None, True, None),
    "hidden_size": (1, None, True, None),
    "num_layers": (1, None, True, None),
    "num_heads": (1, None, True, None),
    "mlp_dim": (1, None, True, None),
    "max_positions": (1, None, True, None),
    "pad_id": (0, None, True, None),
    "type_vocab_size": (1, None, True, None),
    "num_languages": (0, None, True, None),
    "dropout_rate": (0.0, 1.0, True, False),
    "attention_dropout_rate": (0.0, 1.0, True, False),
    "layer_norm_eps": (0.0, None, False, None),
    "initializer_range": (0.0, None, True, None),
}
# The FFN's activation: "gelu" (exact erf GELU, XLM-R) or "swish" (x * sigmoid(x): EMS's encoder).
ACTIVATIONS = ("gelu", "swish")
# Who computes attention (models/attention.py, plan_attention): "xla" (jax's XLA softmax
# attention with the boolean mask) or "cudnn" (cuDNN flash attention on NVIDIA GPUs, falling
# back to "xla" where cuDNN cannot run the configuration).
ATTENTION_IMPLS = ("xla", "cudnn")
FIELD_CHOICES = {
    "activation": ACTIVATIONS,
    "attention_impl": ATTENTION_IMPLS,
    "dtype": tuple(DTYPES),
    "param_dtype": tuple(DTYPES),
    "remat_policy": tuple(REMAT_POLICIES),
}


def describe_range(low, high, low_inclusive, high_inclusive) -> str:
  """"> 0", ">= 1", "in [0, 1)" ... for a (low, high, low_inclusive, high_inclusive) range."""
  if high is None:
    return f"{'>=' if low_inclusive else '>'} {low:g}"
  if low is None:
    return f"{'<=' if high_inclusive else '<'} {high:g}"
  return f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"


def in_range(value, low, high, low_inclusive, high_inclusive) -> bool:
  if low is not None and (value < low if low_inclusive else value <= low):
    return False
  return high is None or (value <= high if high_inclusive else value < high)


def check_fields(fields: Mapping[str, Any], prefix: str = "") -> str | None:
  """The problem with encoder settings `fields` (EncoderConfig field -> value), or None.

  Each field is named as `prefix + name`: EncoderConfig raises with the bare names, config
  validation passes prefix "model." so that the message names the experiment's field.
  """
  for name, choices in FIELD_CHOICES.items():
    if name in fields and fields[name] not in choices:
      return f"{prefix}{name} must be one of {choices}, got {fields[name]!r}"
  for name, bounds in FIELD_RANGES.items():
    value = fields.get(name)
    if value is None:
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return f"{prefix}{name} must be a number {describe_range(*bounds)}, got {value!r}"
    if not in_range(value, *bounds):
      return f"{prefix}{name} must be {describe_range(*bounds)}, got {value!r}"
  get = lambda name, default=0: fields.get(name, default)
  if get("hidden_size", 1) % get("num_heads", 1):
    return (f"{prefix}hidden_size ({get('hidden_size')}) must be divisible by {prefix}num_heads "
            f"({get('num_heads')})")
  if not 0 <= get("separate_layers") <= get("num_layers", get("separate_layers")):
    return (f"{prefix}separate_layers ({get('separate_layers')}) must be in [0, "
            f"{prefix}num_layers={get('num_layers')}]")
  for knob in ("separate_embeddings", "separate_layers"):
    if get(knob) and get("num_languages") <= 0:
      return (f"{prefix}{knob}={get(knob)!r} needs one copy per language; set "
              f"{prefix}num_languages (> 0, the number of data.languages)")
  return None


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Architecture and numerics of the encoder; defaults are XLM-R base."""
  vocab_size: int
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  max_positions: int = 514
  pad_id: int = 1
  type_vocab_size: int = 1
  num_languages: int = 0          # 0 = no language embeddings (XLM-R); > 0 = XLM-style
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-5
  initializer_range: float = 0.02
  activation: str = "gelu"        # the FFN's: "gelu" (XLM-R, exact erf) | "swish" (EMS)
  dtype: str = "float32"          # activations / matmuls
  param_dtype: str = "float32"    # stored parameters
  remat_policy: str = "none"      # "none" | "full" | "dots" | "dots_no_batch"
  # "xla" | "cudnn". A choice of kernel, not of arrays: checkpoints and exports written without
  # it load with "xla", and resuming under the other value is allowed.
  attention_impl: str = "xla"
  scan_layers: bool = False
  # Emerging-structure knobs; both need num_languages > 0 and lang_ids.
  separate_embeddings: bool = False  # per-language word + position tables, hence softmax
  separate_layers: int = 0           # per-language copies of the bottom k layers
  # The word-embedding table and MLM bias get vocab_size rounded up to a multiple of this
  # (padded_vocab_size): their "vocab" axis is sharded over the tensor mesh axis, which must
  # divide it. 1 = no padding (exports are always written so).
  vocab_multiple: int = 128

  def __post_init__(self):
    problem = check_fields(dataclasses.asdict(self))
    if problem:
      raise ValueError(f"EncoderConfig: {problem}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def padded_vocab_size(self) -> int:
    """Rows of the word-embedding table and MLM bias: vocab_size rounded up to a multiple of
    vocab_multiple. Rows from vocab_size on are padding: no id reaches them and the MLM head
    masks their logits, so vocab_size stays the real vocabulary everywhere else."""
    return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "EncoderConfig":
    """Builds a config from a dict (or ConfigDict); unknown keys are an error, not ignored."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"EncoderConfig: unknown field(s) {unknown}; valid fields are {sorted(known)}")
    if "vocab_size" not in d:
      raise ValueError("EncoderConfig: field 'vocab_size' is required")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# Saved configs (an export's config.json, a checkpoint's meta) written before a field existed
# are read with the value that reproduces their arrays, not today's default: before
# vocab_multiple, tables had exactly vocab_size rows. The one list of such legacy values.
LEGACY_DEFAULTS = {"vocab_multiple": 1}


def with_legacy_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
  """A saved config's fields, with LEGACY_DEFAULTS filled in for fields it predates."""
  saved = dict(saved.to_dict() if hasattr(saved, "to_dict") else saved)
  return {**LEGACY_DEFAULTS, **saved}
