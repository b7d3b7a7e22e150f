"""DICT-MLM (Chaudhary et al. 2020): MLM whose masked dictionary words are swapped for translations.

    xlm-jax train --config experiments/dict_mlm.py --workdir workdirs/dict_mlm              # target_swap
    xlm-jax train --config experiments/dict_mlm.py:input_swap --workdir workdirs/dict_mlm_in

Two published variants behind `objectives.dict_mlm.variant`: `target_swap` (the paper: the label of
a masked word becomes one of its translations) and `input_swap` (princeton-nlp's code: the input
shows the translation, the label stays). The dictionaries are the saved FreeDict artifacts of the
debian8 corpus (<corpus>/dictionaries/en-<lang>.tsv + token ids), built by `xlm-jax data build`.
Sizes: tiny | small (CPU) | base | large.
"""
from xlm_jax import presets
from xlm_jax.config import default_config

VARIANTS = ("target_swap", "input_swap")


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="target_swap", p_swap=0.5)
  if args["variant"] not in VARIANTS:
    raise ValueError(f"experiments/dict_mlm.py: unknown variant {args['variant']!r}; known: {VARIANTS}")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  presets.set_objectives(c, dict_mlm=dict(variant=args["variant"], p_swap=args["p_swap"]))
  return c
