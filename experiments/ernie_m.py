"""ERNIE-M (Ouyang et al. 2021): stage 1 MLM + TLM + CAMLM on parallel data, stage 2 adds BTMLM.

    xlm-jax train --config experiments/ernie_m.py --workdir workdirs/ernie_m          # both stages
    xlm-jax train --config experiments/ernie_m.py:stage2 --workdir workdirs/ernie_m_s2 \
      --config.init_from=workdirs/ernie_m_s1                                          # warm start

Both stages run in one experiment by default (`config.stages`, half the steps each). CAMLM
predicts a masked token of x from y only (`camlm_mode`: two_pass, exact; single_pass, cheaper);
BTMLM generates pseudo target tokens for monolingual sentences in one non-autoregressive pass
(no gradient) and then predicts masked x from x and them. BTMLM's placeholders carry the target
language through language embeddings, so the model has them. Variants: a size, stage1 / stage2
(one stage per run, for warm starts), single_pass.

The paper continues from XLM-R rather than training from scratch: `xlmr=PATH` (a local Hugging
Face xlm-roberta-base or -large folder) sets init_from=hf:PATH, which takes the architecture,
weights and tokenizer from it; the language embeddings BTMLM's placeholders need start at zero:

    xlm-jax train --config experiments/ernie_m.py:base,xlmr=$HOME/models/xlm-roberta-base \
      --workdir workdirs/ernie_m_base
"""
from xlm_jax import presets
from xlm_jax.config import default_config

STAGE1 = ("mlm", "tlm", "camlm")


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="both", xlmr="")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  if args["xlmr"]:
    c.init_from = f"hf:{args['xlmr']}"
  c.model.num_languages = len(c.data.languages)
  # BTMLM appends ceil(rho * n) placeholders to a sentence of n tokens (rho = 1 by default):
  # sentences of at most half a row leave room for all of them.
  c.data.sentence_len = c.data.seq_len // 2
  mode = "single_pass" if args["variant"] == "single_pass" else "two_pass"
  presets.set_objectives(c, mlm=dict(weight=1.0), tlm=dict(weight=1.0),
                         camlm=dict(weight=1.0, camlm_mode=mode), btmlm=dict(weight=1.0))
  both = (dict(name="stage1", fraction=0.5, objectives=STAGE1, mixing="sum"),
          dict(name="stage2", fraction=0.5, objectives=STAGE1 + ("btmlm",), mixing="sum"))
  if args["variant"] in ("both", "single_pass"):
    c.stages = both
  elif args["variant"] == "stage1":
    c.stages = (dict(both[0], fraction=1.0),)
  elif args["variant"] == "stage2":
    c.stages = (dict(both[1], fraction=1.0),)
  else:
    raise ValueError(f"experiments/ernie_m.py: unknown variant {args['variant']!r}; "
                     "known: both, stage1, stage2, single_pass")
  return c
