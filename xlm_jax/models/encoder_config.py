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
  dtype: str = "float32"          # activations / matmuls
  param_dtype: str = "float32"    # stored parameters
  remat_policy: str = "none"      # "none" | "full" | "dots" | "dots_no_batch"
  scan_layers: bool = False
  # Emerging-structure knobs; both need num_languages > 0 and lang_ids.
  separate_embeddings: bool = False  # per-language word + position tables, hence softmax
  separate_layers: int = 0           # per-language copies of the bottom k layers

  def __post_init__(self):
    if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
      raise ValueError(f"EncoderConfig: dtype/param_dtype must be one of {sorted(DTYPES)}, "
                       f"got dtype={self.dtype!r}, param_dtype={self.param_dtype!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"EncoderConfig: remat_policy must be one of {sorted(REMAT_POLICIES)}, "
                       f"got {self.remat_policy!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"EncoderConfig: hidden_size ({self.hidden_size}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    if self.vocab_size < 0 or self.num_languages < 0:
      raise ValueError(f"EncoderConfig: vocab_size ({self.vocab_size}) and num_languages "
                       f"({self.num_languages}) must be >= 0")
    if not 0 <= self.separate_layers <= self.num_layers:
      raise ValueError(f"EncoderConfig: separate_layers ({self.separate_layers}) must be in "
                       f"[0, num_layers={self.num_layers}]")
    for knob in ("separate_embeddings", "separate_layers"):
      if getattr(self, knob) and self.num_languages <= 0:
        raise ValueError(f"EncoderConfig: {knob}={getattr(self, knob)!r} needs one copy per "
                         f"language; set num_languages (> 0, the number of data.languages)")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

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
