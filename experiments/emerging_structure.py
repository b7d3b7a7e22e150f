"""Emerging Cross-lingual Structure (Conneau, Wu et al. 2020): what makes MLM cross-lingual?

    xlm-jax train --config experiments/emerging_structure.py:sep_emb --workdir workdirs/es_sep_emb

Every variant is MLM on the same data and encoder; one knob changes:
  default       joint SentencePiece, everything shared (anchors = shared pieces)
  union         union of per-language SentencePiece models ("default anchors")
  no_anchors    language-tagged pieces: no id is shared but the specials
  extra_anchors dictionary code-switching adds anchors (keep 70%, replace 30%, <= 15% of words)
  sep_emb       language-specific word + position embeddings (so a language-specific softmax)
  sep_l1_3      language-specific copies of layers 1-3 of 8, layers 4-8 shared
  sep_l1_6      language-specific copies of layers 1-6 of 8, layers 7-8 shared
  sep_emb_l1_3  sep_emb + sep_l1_3
  sep_emb_l1_6  sep_emb + sep_l1_6
The encoder has the paper's 8 layers at every size (the paper, sec. 3.1: "a Transformer with 8
layers, 12 heads"), so the deepest separation (L1-6) keeps 2 shared layers on top, as in its
Table 1, whose finding is that shared top layers suffice. `size` sets the width (tiny,
small: CPU; base: the paper's d = 768, 12 heads, FFN 3072, and its recipe below). Language
embeddings are on (XLM-style, alpha 0.7) in every variant so that only the knob differs.

`size=base` is the paper scale; from the paper (sec. 3.1), and what differs:
  - encoder: 8 layers, d 768, 12 heads, FFN 3072, GELU, softmax tied to the input embeddings,
    dropout 0.1. Same here.
  - data: 256-token streams, languages sampled at alpha 0.7. Same here; the text is the Debian
    corpus in 8 languages with SentencePiece, not bilingual Wikipedia (en-fr, en-ru, en-zh)
    with BPE.
  - batch: 96 streams per GPU on 8 V100s = 768. Same here.
  - optimizer: Adam, lr 1e-4, inverse square root schedule, 30k warm-up steps. Same here;
    betas, eps and clipping are not stated (ours).
  - length: 200 epochs of "200k batches", the best model by English dev perplexity. Here the
    preset's train.total_steps, the last checkpoint.
"""
from xlm_jax import presets
from xlm_jax.config import default_config

VARIANTS = ("default", "union", "no_anchors", "extra_anchors", "sep_emb", "sep_l1_3", "sep_l1_6",
            "sep_emb_l1_3", "sep_emb_l1_6")
PAPER_LAYERS = 8   # the paper's encoder depth (sec. 3.1)


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="default")
  variant = args["variant"]
  if variant not in VARIANTS:
    raise ValueError(f"experiments/emerging_structure.py: unknown variant {variant!r}; "
                     f"known: {VARIANTS}")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.model.num_layers = PAPER_LAYERS
  if args["size"] not in presets.CPU_SIZES:
    # The paper's recipe (sec. 3.1); the base preset already has d 768, 12 heads, FFN 3072.
    c.data.seq_len = 256
    c.model.max_positions = 258
    c.model.dropout_rate = 0.1
    c.train.batch_size = 768
    c.optimizer.weight_decay = 0.0   # Adam, not AdamW
    c.optimizer.learning_rate = 1e-4
    c.optimizer.schedule = "inverse_sqrt"
    c.optimizer.warmup_steps = 30_000
  c.data.corpus = "debian8"
  c.data.alpha = 0.7
  c.model.num_languages = len(c.data.languages)
  # Embedding alignment compares rows of one shared table: not defined with separate tables.
  c.eval.evaluators = ("mlm", "retrieval") if "sep_emb" in variant else (
      "mlm", "retrieval", "alignment")
  presets.set_objectives(c, mlm=dict(weight=1.0))
  if variant in ("union", "no_anchors"):
    c.data.vocabulary = variant
  elif variant == "extra_anchors":
    presets.set_objectives(c, mlm_code_switch=dict(weight=1.0))
  if variant.startswith("sep_emb"):
    c.model.separate_embeddings = True
  if "_l1_" in variant:
    c.model.separate_layers = int(variant.rsplit("_", 1)[1])
  return c
