"""XLM-R pre-training with MLM (Conneau et al. 2020) at paper scale or CPU size.

    xlm-jax train --config experiments/xlmr_mlm.py:base --workdir /mnt/shared/xlmr_base
    xlm-jax train --config experiments/xlmr_mlm.py:small --workdir workdirs/xlmr_small

Variants are the sizes of xlm_jax/presets.py: tiny and small (CPU), base (12L/768, 270M with a
250k vocab), large (24L/1024). base/large use the paper's recipe: 512-token streams, batch 8192,
bf16 compute, remat and scanned layers, FSDP over every device. The paper uses a 250k
SentencePiece vocabulary on CC-100; point `data.corpus_dir` at a corpus prepared with
`xlm-jax data build` from your own text to train at scale.
"""
from xlm_jax import presets
from xlm_jax.config import default_config


def get_config(arg="small"):
  args = presets.parse_arg(arg, size="small")
  if "variant" in args:
    raise ValueError(f"experiments/xlmr_mlm.py: unknown variant {args['variant']!r}; known sizes: "
                     f"{sorted(presets.MODEL_SIZES)}")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.alpha = 0.3
  return c
