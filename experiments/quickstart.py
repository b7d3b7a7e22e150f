"""Quickstart: a tiny XLM-R trained with MLM on the built-in gettext corpus (8 languages), on CPU.

    xlm-jax train --config experiments/quickstart.py --workdir workdirs/quickstart

Builds the corpus on first use (Debian packages -> ~/.cache/xlm_jax/data/gettext8), trains for a
few minutes on 2 CPU cores, evaluates held-out MLM and retrieval, and exports to <workdir>/export.
Variants: `:smoke` (a few steps, for tests and checking an install).
"""
from xlm_jax import presets
from xlm_jax.config import default_config


def get_config(arg=None):
  c = default_config()
  # The tiny CPU size every objective's experiment file shares: 2 layers, d=128, 128-token rows,
  # batch 32, lr 2e-3, no dropout, 1200 steps and a 6-minute budget (after which it evaluates and
  # exports what it has). Measured here: ~4 steps/s on 2 idle cores, held-out MLM accuracy ~15%
  # after 1200 steps (unigram ~5%).
  presets.apply_size(c, "tiny")
  c.data.alpha = 0.3
  c.train.eval_every = 400

  if arg == "smoke":
    c.train.total_steps = 6
    c.train.batch_size = 8
    c.train.log_every = 2
    c.train.eval_every = 0
    c.train.checkpoint_every = 3
    c.train.max_wall_seconds = 0.0
    c.data.eval_sentences = 16
    c.eval.retrieval_items = 50
  elif arg:
    raise ValueError(f"experiments/quickstart.py: unknown variant {arg!r}; known: smoke")
  return c
