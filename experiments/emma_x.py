"""EMMA-X (Guo et al. 2023): a sentence encoder and a semantic-relation classifier (a GMM over
4 relation ranks) teach each other in an EM loop, on parallel pairs plus in-batch and queued
non-translations.

Three stages, each its own run warm-started from the previous one's checkpoint:

    xlm-jax train --config experiments/emma_x.py:ctl --workdir workdirs/emma_ctl
    xlm-jax train --config experiments/emma_x.py:gmm --workdir workdirs/emma_gmm \
      --config.init_from=workdirs/emma_ctl
    xlm-jax train --config experiments/emma_x.py:itr --workdir workdirs/emma_itr \
      --config.init_from=workdirs/emma_gmm

  ctl  contrastive warm-up: InfoNCE at tau 0.05 + MLM (label smoothing 0.1), encoder only
  gmm  classifier warm-up: encoders frozen, labels from interpolation
  itr  both steps every iteration: e_step (classifier learns from the encoder's ranks), then
       m_step (encoder learns from the classifier's ranks with rank-wise InfoNCE + MLM)
e_step and m_step are separate jitted functions over the explicit state (query encoder, momentum
key encoder, key queue sharded over the data axis, rank means, classifier). `mono=<n>` mixes n
monolingual sentences per step into the candidates; `queue=<n>` sets the key queue (default:
1024, or one step's keys rounded up to a multiple of 1024 at big batches). Sizes: tiny | small (CPU) | base | large.
The geometry evaluator (invariance, canonical form, isotropy) runs after every stage.

The paper starts the ctl stage from XLM-R: `xlmr=PATH` (a local Hugging Face xlm-roberta-base or
-large folder) sets init_from=hf:PATH, taking the architecture, weights and tokenizer from it:

    xlm-jax train --config experiments/emma_x.py:ctl,size=base,xlmr=$HOME/models/xlm-roberta-base \
      --workdir workdirs/emma_ctl
"""
from xlm_jax import presets
from xlm_jax.config import default_config

STAGES = ("ctl", "gmm", "itr")


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="itr", mono=0, queue=0, xlmr="")
  stage = args["variant"]
  if stage not in STAGES:
    raise ValueError(f"experiments/emma_x.py: unknown stage {stage!r}; known: {STAGES}")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  if args["xlmr"]:
    c.init_from = f"hf:{args['xlmr']}"
  c.data.pair_seq_len = c.data.seq_len // 2  # same token slots per step as MLM
  # Each step enqueues both sides of every pair plus the monolingual candidates, so the queue
  # must hold at least that many keys (config validation refuses less). queue=0 (the default)
  # takes 1024 or one step's keys rounded up to a multiple of 1024, whichever is larger.
  keys_per_step = 2 * c.train.batch_size + args["mono"]
  queue = args["queue"] or max(1024, -(-keys_per_step // 1024) * 1024)
  presets.set_objectives(c, emma_x=dict(stage=stage, mono_candidates=args["mono"],
                                        queue_size=queue))
  c.eval.evaluators = ("mlm", "retrieval", "geometry")
  if stage == "gmm":
    c.train.total_steps = max(1, c.train.total_steps // 4)  # a short classifier warm-up
  return c
