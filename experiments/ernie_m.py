"""ERNIE-M (Ouyang et al. 2021): stage 1 MLM + TLM + CAMLM on parallel data, stage 2 adds BTMLM.

    xlm-jax train --config experiments/ernie_m.py --workdir workdirs/ernie_m          # both stages
    xlm-jax train --config experiments/ernie_m.py:stage2 --workdir workdirs/ernie_m_s2 \
      --config.init_from=workdirs/ernie_m_s1                                          # warm start

Both stages run in one experiment by default (`config.stages`, half the steps each). CAMLM
predicts a masked token of x from y only (`camlm_mode`: two_pass, exact; single_pass, cheaper);
BTMLM generates pseudo target tokens for monolingual sentences in one non-autoregressive pass
(no gradient) and then predicts masked x from x and them. BTMLM's placeholders carry the target
language through language embeddings, so the model has them. Variants: a size, stage1 / stage2
(one stage per run, for warm starts), single_pass, and the rows of the paper's ablation (Table 6,
without TLM): `mlm` (exp1: MMLM alone), `camlm` (exp3: MMLM + CAMLM, one stage) and `camlm_btmlm`
(exp4: MMLM + CAMLM, then + BTMLM in the second half), which experiments/repro.py compares.

ERNIE-M continues from XLM-R rather than training from scratch (the released models keep
XLM-R's vocabulary and positions; table below): `xlmr=PATH` (a local Hugging Face
xlm-roberta-base or -large folder) sets init_from=hf:PATH, which takes the architecture, weights
and tokenizer from it; the language embeddings BTMLM's placeholders need start at zero:

    xlm-jax train --config experiments/ernie_m.py:base,xlmr=$HOME/models/xlm-roberta-base \
      --workdir workdirs/ernie_m_base

Positions: TLM, CAMLM and BTMLM all number a pair (or a sentence and its placeholders) continuously
from pad_id + 1, so the one position convention of the run is the one the released ERNIE-M model
computes for any input, a sentence pair included (PaddleNLP/Hugging Face ErnieMEmbeddings: position
ids = cumsum over the whole row, + 2); TLM's XLM default (`reset_positions`, y restarting) is turned off
here so that TLM and CAMLM do not teach one model two conventions.

Sources. [P] the paper, arXiv 2012.15674: of its text only the abstract and introduction could
be read here (the copies we could reach show only their start), so none of its pre-training
settings. No pre-training code was released: [R] PaddlePaddle/ERNIE@69b452f,
ernie-m/README_zh.md, releases the models and fine-tuning code only. [C]
PaddlePaddle/PaddleNLP@00d68b9, paddlenlp/transformers/ernie_m/configuration.py, and [M]
PaddlePaddle/PaddleNLP@ca473ec, paddlenlp/transformers/ernie_m/modeling.py, describe the
released models. Summaries of the paper: [T] marktechpost.com, 2021-02-12, "Baidu Team
Introduces ERNIE-M"; [B] GreeshmaKaranth/MNLP_HW3_blog@1d916fb, nlp/ERNIE-M/README.md (which
also lists Table 6's exp0-exp5: exp1 MMLM, exp3 MMLM + CAMLM, exp4 MMLM + BTMLM + CAMLM).

The same as the released models: base 12 layers, 768 hidden, 12 heads; large 24 layers, 1024
hidden, 16 heads ([R]: "12-layer, 768-hidden, 12-heads", "24-layer, 1024-hidden, 16-heads");
feed-forward 4 x hidden ([M]: `dim_feedforward=4 * config.hidden_size`), GELU, dropout 0.1 on
hidden states and attention ([C]); 514 positions, so at most 512 tokens a row ([C]:
`max_position_embeddings: 514`). Two stages, CAMLM on parallel data first, then BTMLM on
monolingual data with what it taught ([T]: "The training of ERNIE-M consists of two stages",
"The first stage includes aligning the cross-lingual semantic representation by CAMLM"; [B]:
BTMLM "building upon the transferability gained through CAMLM").

Remaining differences from the paper and the released models:

| what | paper / released model | here | why |
|---|---|---|---|
| start | the paper's sentence could not be read; the released configurations are XLM-R's (vocab_size 250002, max_position_embeddings 514, pad_token_id 1 [C]) | `xlmr=PATH` sets init_from=hf:PATH (XLM-R's weights, 250,002-piece vocabulary and tokenizer); without it, from scratch with the corpus's 250,000-piece SentencePiece (presets.apply_size) | an XLM-R checkpoint is a local folder the file cannot know; the ahead-of-time compiles (README) run without one |
| positions of a pair | continuous over the row ([M]: cumsum over the row, + 2); [P]'s readable text does not say | continuous in TLM, CAMLM and BTMLM | one convention, the released model's |
| language embeddings | none in the released embeddings (word + position only [M]); BTMLM's placeholders give the language to generate "using language embeddings and position embeddings" ([B]; the paper's own words could not be read) | model.num_languages = the run's languages (zero at init from XLM-R) | BTMLM needs a target-language signal |
| data | 96 languages, monolingual and parallel ([T]: "capable of understanding 96 languages"); corpora and sampling not readable | debian8, data.languages (8 by default), alpha 0.3 (config default) | the project's corpus |
| batch, row length | not stated in any text we could read | 8192 rows of 512 tokens (presets.apply_size); 2 micro-batches (base) / 4 (large) | no ERNIE-M value to follow, so the preset's XLM-R-scale batch, whose memory the README's compiles measured; 512 is the most the released 514 positions hold |
| optimizer | not stated in any text we could read | AdamW, betas (0.9, 0.98), eps 1e-6, weight decay 0.01, clipping at 1.0 (config defaults) | as above |
| learning rate, schedule | not stated in any text we could read | peak 3e-4 (base) / 1e-4 (large), 10,000 linear warm-up steps, linear decay to 0 (presets.apply_size) | as above; overridable (--config.optimizer.learning_rate) |
| steps, stage split | two stages [T]; the steps of each not stated in any text we could read | 500,000 (base) / 1,500,000 (large) steps (presets.apply_size), half to each stage | as above; fractions follow --config.train.total_steps |
| loss weights | not stated in any text we could read | 1 each, summed (stage 1 MLM + TLM + CAMLM, stage 2 adds BTMLM) | the unweighted sum assumes nothing |
| masking | not stated in any text we could read | 15% of tokens, 80% <mask> / 10% random / 10% kept, every objective (masking_config, BERT/XLM-R's) | XLM-R's, which the start follows |
| BTMLM pseudo tokens | how many and how chosen not stated in any text we could read | ceil(1.0 x n) placeholders for n tokens, argmax (objectives.btmlm defaults) | one pseudo token per source token; sentences of at most half a row leave room |
| hardware | not stated in any text we could read | TPU slices, FSDP over every chip (presets.apply_size) | the project's target |
| tiny, small | (not the paper's) | the CPU recipe of presets.apply_size: 128 tokens, batch 32, lr 2e-3, 1200 steps | CPU runs; experiments/repro.py's ablation runs use them |
"""
from xlm_jax import presets
from xlm_jax.config import default_config

STAGE1 = ("mlm", "tlm", "camlm")
# The paper's ablation (Table 6) rows without TLM: variant -> objectives of the run (BTMLM, when
# there, joins in a second stage: it generates with what stage 1 taught).
ABLATION = {"mlm": ("mlm",), "camlm": ("mlm", "camlm"), "camlm_btmlm": ("mlm", "camlm", "btmlm")}


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="both", xlmr="")
  c = default_config()
  presets.apply_size(c, args["size"])
  if args["size"] not in presets.CPU_SIZES:
    # Batch, row length, optimizer, schedule and steps stay the preset's: none of ERNIE-M's
    # could be read (table above). At that batch, twice the preset's micro-batches: stage 2 runs
    # five encoder passes with gradients per row (MLM, TLM, CAMLM's two, BTMLM's training pass;
    # its generating pass has none), all alive until the backward pass, so base at 8192 x 512 on
    # v5e-256 (32 rows per chip) needed 22.9 GiB of a chip's 15.75 in one pass, and 12.32 GiB
    # (77% of 16) with 2 micro-batches (README, "Compiling for a TPU slice ahead of time").
    # large doubles its preset's 2 alike (not compiled).
    c.train.grad_accum_steps *= 2
  c.data.corpus = "debian8"
  if args["xlmr"]:
    c.init_from = f"hf:{args['xlmr']}"
  c.model.num_languages = len(c.data.languages)
  # BTMLM appends ceil(rho * n) placeholders to a sentence of n tokens (rho = 1 by default):
  # sentences of at most half a row leave room for all of them.
  c.data.sentence_len = c.data.seq_len // 2
  mode = "single_pass" if args["variant"] == "single_pass" else "two_pass"
  # One position convention for both pair objectives: continuous, as CAMLM's default and the
  # released ERNIE-M model (module docstring).
  presets.set_objectives(c, mlm=dict(weight=1.0), tlm=dict(weight=1.0, reset_positions=False),
                         camlm=dict(weight=1.0, camlm_mode=mode, reset_positions=False),
                         btmlm=dict(weight=1.0))
  both = (dict(name="stage1", fraction=0.5, objectives=STAGE1, mixing="sum"),
          dict(name="stage2", fraction=0.5, objectives=STAGE1 + ("btmlm",), mixing="sum"))
  ablation = ABLATION.get(args["variant"])
  if ablation is not None:
    # Table 6's rows: the same data and steps, TLM left out (exp1, exp3, exp4).
    presets.set_objectives(c, **{name: c.objectives[name].to_dict() for name in ablation})
    first = tuple(o for o in ablation if o != "btmlm")
    c.stages = (dict(name="stage1", fraction=1.0 if first == ablation else 0.5, objectives=first,
                     mixing="sum"),)
    if first != ablation:
      c.stages += (dict(name="stage2", fraction=0.5, objectives=ablation, mixing="sum"),)
  elif args["variant"] in ("both", "single_pass"):
    c.stages = both
  elif args["variant"] == "stage1":
    c.stages = (dict(both[0], fraction=1.0),)
  elif args["variant"] == "stage2":
    c.stages = (dict(both[1], fraction=1.0),)
  else:
    raise ValueError(f"experiments/ernie_m.py: unknown variant {args['variant']!r}; "
                     f"known: both, stage1, stage2, single_pass, {', '.join(ABLATION)}")
  return c
