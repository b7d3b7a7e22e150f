"""Emerging Cross-lingual Structure (Conneau, Wu et al. 2020): what makes MLM cross-lingual?

    xlm-jax train --config experiments/emerging_structure.py:sep_emb --workdir workdirs/es_sep_emb

Every variant is MLM on the same data and encoder; one knob changes:
  default       joint SentencePiece, everything shared (anchors = shared pieces)
  union         union of per-language SentencePiece models ("default anchors")
  no_anchors    language-tagged pieces: no id is shared but the specials
  extra_anchors dictionary code-switching adds anchors (keep 70%, replace 30%, <= 15% of words)
  sep_emb       language-specific word + position embeddings (so a language-specific softmax)
  sep_l1_3      language-specific copies of the bottom 3 layers, the rest shared
  sep_l1_6      ... bottom 6 layers
  sep_emb_l1_6  both
The encoder has 6 layers at the CPU sizes (12 at base) so that sep_l1_6 keeps shared layers
on top; language embeddings are on (XLM-style, alpha 0.7) in every variant so that only the knob
differs. Add `size=base` for the paper scale.
"""
from xlm_jax import presets
from xlm_jax.config import default_config

VARIANTS = ("default", "union", "no_anchors", "extra_anchors", "sep_emb", "sep_l1_3", "sep_l1_6",
            "sep_emb_l1_6")


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="default")
  variant = args["variant"]
  if variant not in VARIANTS:
    raise ValueError(f"experiments/emerging_structure.py: unknown variant {variant!r}; "
                     f"known: {VARIANTS}")
  c = default_config()
  presets.apply_size(c, args["size"])
  if args["size"] in presets.CPU_SIZES:
    c.model.num_layers = 6
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
  if variant in ("sep_emb", "sep_emb_l1_6"):
    c.model.separate_embeddings = True
  if variant.startswith("sep_") and "_l1_" in f"_{variant}":
    c.model.separate_layers = int(variant.rsplit("_", 1)[1])
  return c
