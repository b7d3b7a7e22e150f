"""XLM-R pre-training with MLM (Conneau et al. 2020) at paper scale or tiny CPU size.

    xlm-jax train --config experiments/xlmr_mlm.py:base --workdir gs://bucket/xlmr_base
    xlm-jax train --config experiments/xlmr_mlm.py:tiny --workdir workdirs/xlmr_tiny

Variants: tiny (CPU), base (12L/768, 270M with a 250k vocab), large (24L/1024).
The paper uses a 250k SentencePiece vocabulary on CC-100; point `data.corpus_dir` at a corpus
prepared with `xlm-jax data build` from your own text to train at scale.
"""
from xlm_jax.config import default_config

_SIZES = {
    "tiny": dict(hidden_size=256, num_layers=4, num_heads=4, mlp_dim=1024),
    "base": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "large": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}


def get_config(arg="tiny"):
  arg = arg or "tiny"
  if arg not in _SIZES:
    raise ValueError(f"experiments/xlmr_mlm.py: unknown variant {arg!r}; known: {sorted(_SIZES)}")
  c = default_config()
  c.model.update(_SIZES[arg])
  c.data.alpha = 0.3
  if arg == "tiny":
    c.data.seq_len = 128
    c.model.max_positions = 130
    c.train.total_steps = 2000
    c.train.batch_size = 32
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 100
  else:
    # Paper recipe (XLM-R §3 / fairseq): 512-token streams, large batches, bf16 compute.
    c.data.seq_len = 512
    c.data.vocab_size = 250_000
    c.model.max_positions = 514
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots_no_batch"
    c.model.scan_layers = True
    c.train.total_steps = 1_500_000 if arg == "large" else 500_000
    c.train.batch_size = 8192
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.checkpoint_every = 5_000
    c.optimizer.learning_rate = 1e-4 if arg == "large" else 3e-4
    c.optimizer.warmup_steps = 10_000
    c.mesh.fsdp = -1
    c.mesh.data = 1
  return c
