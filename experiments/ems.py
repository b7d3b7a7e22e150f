"""EMS (Mao, Chu, Kurohashi 2022): sentence embeddings from cross-lingual token reconstruction
(XTR) plus a contrastive loss, with a siamese encoder on parallel pairs.

    xlm-jax train --config experiments/ems.py --workdir workdirs/ems                   # tiny, XTR + CL
    xlm-jax train --config experiments/ems.py:cl_only --workdir workdirs/ems_cl
    xlm-jax train --config experiments/ems.py:paper --workdir /mnt/shared/ems          # 6L, d=1024
    xlm-jax train --config experiments/ems.py:best30 --workdir workdirs/ems_best30     # 30 min, 2 cores

L = L_XTR + 2 L_CL. The XTR head predicts the bag of y's tokens from x's mean-pooled vector and
y's language (KL both directions); the contrastive loss is a symmetric InfoNCE over a 128-d
projection at tau 0.1. Ablations: xtr_only, cl_only, no_lang_emb, tied_decoder (and the model's
layer count). Sizes: tiny (CPU; negatives gathered over all devices, `global_negatives`),
lightweight (2 layers, d=1024) and paper (6 layers, d=1024), which follow the reference code
(Mao-KU/EMS: config.py's models `maki49` and `maki57`, whose architecture, batch and temperature
inference/config.py gives for the released `EMS` model; main.py; modeling/model_v2.py;
preprocessing/dataset.py):

- in-batch negatives of one GPU: 152 pairs, 384 for the 2-layer `maki62` (`train_batch_size` is per
  GPU under DDP; the similarity matrix is computed per process, never gathered), whatever our device
  count (`negatives_group_size`, global_negatives off); the global batch is that x gpus (gpus=<n>);
- torch.optim.Adam(lr 3e-4, weight_decay 1e-5, amsgrad=True) with betas (0.9, 0.999), eps 1e-8 and no
  clipping: weight_decay is torch's *coupled* L2 (added to the gradient before Adam, on every
  parameter), so it is `objectives.ems.l2_weight` here and optimizer.weight_decay is 0;
- swish in the encoder's FFN (`ffn_act`) and in the XTR head (`hiddent_act`); LayerNorm eps 1e-12;
- no `<s>`/`</s>`: the encoder reads the SentencePiece ids of a side only and the mean pools over them
  (`sentence_specials` off; the export records it, and evaluation and `encode` then read sentences
  without them too); at most 120 of them (`max_seq_len`), so pair_seq_len is 122 with specials;
- dropout 0.1 on embeddings, attention and hidden states, 0.1 on the XTR head's language embedding
  (`emb_dropout`), none after its swish (`xtr_dropout` 0) nor in g (`sent_dropout` 0);
- CosineAnnealingLR over the whole run times a 10k-step linear warm-up (pytorch_warmup).

`best30` is the best cross-lingual sentence encoder found for 30 minutes of 2 CPU cores on the
debian8 corpus: the tiny XTR + CL model trained for 7,500 steps (the tiny preset trains 1,200). A
probe of 8,000 scheduled steps ran 7,800 in 1,565 s on a quiet 2-core machine; README "The best
encoder 30 minutes can train" has its retrieval and transfer numbers and what else was tried.

Remaining differences of `paper` / `lightweight` from the paper and the reference code:

| what | reference | here | why |
|---|---|---|---|
| GPUs | not stated in the reference code (batch and log lines are per GPU) | gpus=8 by default: 1216 pairs per step (paper) | the global batch is ours to choose; negatives stay per GPU's share |
| AMSGrad | torch: max of the raw second moment, bias-corrected after | optax.scale_by_amsgrad: max of the bias-corrected second moment | the optimizer lives in xlm_jax/train/optimizer.py |
| schedule | cosine(t) x min(1, t / 10k): the cosine starts at step 0 | linear warm-up to the peak, then cosine over the remaining steps | xlm_jax/train/optimizer.py's schedules; they differ only in where the cosine starts |
| steps | 15 epochs over the sampled pairs (`num_train_epochs`) | train.total_steps of the preset | set --config.train.total_steps for your data |
| data | 62 languages, pairs of many corpora, lower-cased, 60k SentencePiece BPE | the corpus's pairs and tokenizer | the corpus is ours |
| one token masked per pair | preprocessing/dataset.py still replaces one random token of one side by `<MASK>` (a left-over of an MLM variant; the XTR target then holds `<MASK>`) | no masking | not stated in the paper |
| duplicate sentences | kept as negatives | dropped from each other's negatives (`drop_duplicate_negatives`) | multi-way parallel corpora (gettext) repeat sentences; near no-op on the reference's data |
| initialisation | torch defaults (Linear: Kaiming uniform; Embedding: N(0, 1)) | N(0, 0.02) (model.initializer_range) | the project's one initialiser; not stated in the paper |
| precision | fp16 autocast with a gradient scaler | the size's dtype (bfloat16 at paper size) | TPU/GPU bfloat16 needs no loss scaling |
| positions, token types | learned positions from 1, no token-type embedding | learned positions from pad_id + 1, one token type (a constant vector) | the XLM-R encoder's layout |
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
# Mao-KU/EMS config.py: train_batch_size (per GPU; maki49/maki50/EMS: 152; maki62, 2 layers: 384).
REFERENCE_PAIRS_PER_GPU = {"paper": 152, "lightweight": 384}
REFERENCE_MAX_TOKENS = 120   # config.py max_seq_len: SentencePiece ids per side, no specials
# `best30`: steps of the tiny model that 30 minutes of 2 CPU cores train (~5 steps/s), with the
# linear decay reaching 0 at the last one.
THIRTY_MINUTE_STEPS = 7_500


def reference_recipe(c, size: str, gpus: int) -> None:
  """The reference code's model, optimizer and negatives (module docstring)."""
  c.model.update(PAPER_SIZES[size])
  c.model.activation = "swish"
  c.model.layer_norm_eps = 1e-12
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  c.optimizer.name = "amsgrad"
  c.optimizer.learning_rate = 3e-4
  c.optimizer.b1, c.optimizer.b2, c.optimizer.eps = 0.9, 0.999, 1e-8
  c.optimizer.weight_decay = 0.0   # torch's weight_decay is coupled L2: objectives.ems.l2_weight
  c.optimizer.clip_norm = 0.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_steps = 10_000
  per_gpu = REFERENCE_PAIRS_PER_GPU[size]
  c.train.batch_size = per_gpu * gpus
  c.data.pair_seq_len = REFERENCE_MAX_TOKENS + 2   # <s> and </s> are stripped on device


def get_config(arg=None):
  words = (arg or "").split(",")
  size = next((w for w in words if w in PAPER_SIZES), None)
  best30 = "best30" in words
  rest = ",".join(w for w in words if w not in PAPER_SIZES and w != "best30")
  args = presets.parse_arg(rest, size="tiny", variant="xtr_cl", layers=0, gpus=8)
  if best30 and (size or args["size"] != "tiny"):
    raise ValueError("experiments/ems.py: best30 is the tiny model's 30-minute run; it does not "
                     f"combine with the size {size or args['size']!r}")
  if args["variant"] not in ABLATIONS:
    raise ValueError(f"experiments/ems.py: unknown variant {args['variant']!r}; known: "
                     f"{sorted(ABLATIONS)}, sizes tiny, small, lightweight, paper, and best30")
  c = default_config()
  presets.apply_size(c, "base" if size else args["size"])
  c.data.corpus = "debian8"
  c.data.pair_seq_len = c.data.seq_len // 2  # same 4096 token slots per step as MLM
  section = dict(weight=1.0, **ABLATIONS[args["variant"]])
  if size:
    reference_recipe(c, size, args["gpus"])
    section.update(global_negatives=False, negatives_group_size=REFERENCE_PAIRS_PER_GPU[size],
                   l2_weight=1e-5, sentence_specials=False, lang_dropout=0.1, xtr_dropout=0.0)
  if best30:
    c.train.total_steps = THIRTY_MINUTE_STEPS
    c.train.max_wall_seconds = 0.0   # a fixed number of steps, whatever the machine's load
    c.train.checkpoint_every = 500
  if args["layers"]:
    c.model.num_layers = args["layers"]
  presets.set_objectives(c, ems=section)
  return c
