"""EMS (Mao, Chu, Kurohashi 2022): sentence embeddings from cross-lingual token reconstruction
(XTR) plus a contrastive loss, with a siamese encoder on parallel pairs.

    xlm-jax train --config experiments/ems.py --workdir workdirs/ems                   # tiny, XTR + CL
    xlm-jax train --config experiments/ems.py:cl_only --workdir workdirs/ems_cl
    xlm-jax train --config experiments/ems.py:paper --workdir gs://bucket/ems          # 6L, d=1024

L = L_XTR + 2 L_CL. The XTR head predicts the bag of y's tokens from x's mean-pooled vector and
y's language (KL both directions); the contrastive loss is a symmetric InfoNCE over a 128-d
projection at tau 0.1, with negatives gathered over all data-parallel devices
(`global_negatives`). Ablations: xtr_only, cl_only, no_lang_emb, tied_decoder (and the model's
layer count). Sizes: tiny (CPU), lightweight (2 layers, d=1024), paper (6 layers, d=1024), with
the paper's optimiser (AMSGrad, lr 3e-4, cosine with 10k warm-up).
"""
from xlm_jax import presets
from xlm_jax.config import default_config

ABLATIONS = {
    "xtr_cl": {},
    "xtr_only": dict(use_cl=False),
    "cl_only": dict(use_xtr=False),
    "no_lang_emb": dict(use_lang_emb=False),
    "tied_decoder": dict(tied_decoder=True),
}
PAPER_SIZES = {
    "paper": dict(hidden_size=1024, num_layers=6, num_heads=16, mlp_dim=4096),
    "lightweight": dict(hidden_size=1024, num_layers=2, num_heads=16, mlp_dim=4096),
}


def get_config(arg=None):
  words = (arg or "").split(",")
  size = next((w for w in words if w in PAPER_SIZES), None)
  rest = ",".join(w for w in words if w not in PAPER_SIZES)
  args = presets.parse_arg(rest, size="tiny", variant="xtr_cl", layers=0)
  if args["variant"] not in ABLATIONS:
    raise ValueError(f"experiments/ems.py: unknown variant {args['variant']!r}; known: "
                     f"{sorted(ABLATIONS)} and sizes tiny, small, lightweight, paper")
  c = default_config()
  presets.apply_size(c, "base" if size else args["size"])
  c.data.corpus = "debian8"
  c.data.pair_seq_len = c.data.seq_len // 2  # same 4096 token slots per step as MLM
  if size:
    c.model.update(PAPER_SIZES[size])
    c.optimizer.name = "amsgrad"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 10_000
    c.train.batch_size = 2048  # pairs per step
  if args["layers"]:
    c.model.num_layers = args["layers"]
  presets.set_objectives(c, ems=dict(weight=1.0, **ABLATIONS[args["variant"]]))
  return c
