"""Shared pieces of experiment files: model sizes, the tiny CPU schedule, variant arguments.

Experiment files compose these so that every objective's `tiny` run uses the same encoder and
budget as the quickstart MLM model, which makes their numbers comparable.

    c = default_config()
    args = presets.parse_arg(arg, size="tiny")          # "sep_emb,size=base" -> dict
    presets.apply_size(c, args["size"])
"""
from __future__ import annotations

from typing import Any

# Encoder sizes. tiny = the quickstart's CPU model; base/large = XLM-R's.
MODEL_SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=2, mlp_dim=512),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}
CPU_SIZES = ("tiny", "small")


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """big_vision-style variant string: "a,b=c" -> {"a": True, "b": "c"} over `defaults`.

  A bare word that names a known size sets `size`; another bare word sets `variant`. Values keep
  the type of their default (int, float, bool or str).
  """
  out = dict(defaults)
  for item in filter(None, (part.strip() for part in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      if key in MODEL_SIZES:
        out["size"] = key
      else:
        out["variant"] = key
      continue
    if key not in defaults:
      raise ValueError(f"unknown variant argument {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(value)
    else:
      out[key] = value
  return out


def apply_size(c, size: str) -> None:
  """Sets the encoder size and the matching training scale.

  CPU sizes get the quickstart's short schedule (128-token rows, batch 32, lr 2e-3, no dropout,
  a 6-minute budget); base/large get the XLM-R recipe (512 tokens, batch 8192, bf16, remat,
  scanned layers, FSDP over every device).
  """
  if size not in MODEL_SIZES:
    raise ValueError(f"unknown model size {size!r}; known: {sorted(MODEL_SIZES)}")
  c.model.update(MODEL_SIZES[size])
  if size in CPU_SIZES:
    c.data.vocab_size = 8000
    c.data.seq_len = 128
    c.model.max_positions = 130
    c.model.dropout_rate = 0.0           # tiny model, few steps: dropout only slows learning
    c.model.attention_dropout_rate = 0.0
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 100
    c.train.total_steps = 1200
    c.train.batch_size = 32
    c.train.log_every = 25
    c.train.eval_every = 0
    c.train.checkpoint_every = 400
    c.train.max_wall_seconds = 360.0
    c.eval.retrieval_items = 500
  else:
    c.data.seq_len = 512
    c.data.vocab_size = 250_000
    c.model.max_positions = 514
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots_no_batch"
    c.model.scan_layers = True
    c.train.total_steps = 1_500_000 if size == "large" else 500_000
    c.train.batch_size = 8192
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 5_000
    c.optimizer.learning_rate = 1e-4 if size == "large" else 3e-4
    c.optimizer.warmup_steps = 10_000
    c.mesh.fsdp = -1
    c.mesh.data = 1
    if size == "large":
      # 12.95 GiB of a v5e chip's 15.75 (81%) in one pass at batch 8192 x 512 on v5e-256; two
      # micro-batches take it to 6.89 GiB (README, "Compiling for a TPU slice ahead of time").
      c.train.grad_accum_steps = 2


def set_objectives(c, **sections: dict) -> None:
  """Replaces the configured objectives by `name=dict(overrides)` (defaults filled by validate)."""
  import ml_collections
  c.objectives = ml_collections.ConfigDict({name: dict(fields) for name, fields in sections.items()})
