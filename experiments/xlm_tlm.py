"""XLM (Conneau & Lample 2019): MLM on monolingual streams alternated with TLM on parallel pairs.

    xlm-jax train --config experiments/xlm_tlm.py --workdir workdirs/xlm_tlm          # tiny, CPU
    xlm-jax train --config experiments/xlm_tlm.py:base --workdir gs://bucket/xlm_tlm

TLM reads `<s> x </s> </s> y </s>` pairs (batch kind "parallel"), masks both sides, and restarts
y's positions (`reset_positions`, XLM's default). XLM has language embeddings, so the model does
too, and samples languages with alpha 0.7. Variants: a size (tiny | small | base | large),
`tlm_only`, and `no_reset` (continuous positions over the pair).
"""
from xlm_jax import presets
from xlm_jax.config import default_config


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="mlm_tlm")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  c.data.alpha = 0.7
  c.model.num_languages = len(c.data.languages)
  sections = {"tlm": dict(weight=1.0, reset_positions=args["variant"] != "no_reset")}
  if args["variant"] != "tlm_only":
    sections["mlm"] = dict(weight=1.0)
  presets.set_objectives(c, **sections)
  c.objective_mixing = "alternate"  # XLM alternates MLM and TLM batches
  if args["variant"] not in ("mlm_tlm", "tlm_only", "no_reset"):
    raise ValueError(f"experiments/xlm_tlm.py: unknown variant {args['variant']!r}; "
                     "known: mlm_tlm, tlm_only, no_reset")
  return c
