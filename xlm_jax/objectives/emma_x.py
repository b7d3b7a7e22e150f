"""EMMA-X (Guo et al. 2023): EM between a sentence encoder and a semantic-relation classifier.

Registered as objective "emma_x" on batch kind "parallel_pairs" (optionally with monolingual
candidates from batch kind "sentences"). The update is not "gradient of one loss", so the
objective hands the trainer its own steps (`make_steps`), chosen by `stage`:

  ctl  [m_step]           InfoNCE (tau 0.05) + MLM, encoder only       (warm-up 1)
  gmm  [e_step]           classifier on interpolated pairs, encoders frozen (warm-up 2)
  itr  [em_step]          em_update="joint" (default, the reference): one update of encoder and
                          classifier, both parts from the state before the step
       [e_step, m_step]   em_update="alternating": classifier from encoder ranks, then encoder
                          from the updated classifier's ranks

Each stage warm-starts from the previous stage's checkpoint. State (TrainState.extra["emma_x"],
checkpointed with the rest):
  key_params            {"encoder", "head"}: the momentum key tower, copied from the query tower
  queue, queue_pointer  [K, d] keys (sharded over the batch axes) and the next row to write
  rank_means, rank_mean_weight  [N] EMA of the mean similarity per rank, and its total weight
  classifier            {"means" [N, d], "log_variances" [N, d], "prior_logits" [N]}
  classifier_opt_state  the classifier's own optax (Adam) state, as a flat dict of arrays
(the last two only with classifier_optimizer="own_adam").
The query tower's sentence head is a trainable head: params["heads"]["emma_x"] = {"pooler",
"projection"}, plus "classifier" (the GMM above) with classifier_optimizer="encoder" in the gmm
and itr stages. See xlm_jax/objectives/emma/ for the pieces.

Departures from the reference code (guopingiie/EMMA-X) are switches whose default is the
reference's behaviour (see `default_config`); every stage of one run must use the same
classifier_optimizer, or the classifier is not carried from gmm to itr (it is matched by path).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.objectives.emma import classifier as gmm
from xlm_jax.objectives.emma import losses
from xlm_jax.objectives.emma import steps as steps_lib
from xlm_jax.objectives.emma import towers
from xlm_jax.objectives.masking import max_predictions
from xlm_jax.registry import OBJECTIVES

NAME = "emma_x"   # the registry key, and this module's name (the registry imports it by key)
STAGES = ("ctl", "gmm", "itr")
# String fields and their values; the first of each is the reference code's behaviour.
SWITCHES = {
    "gmm_interpolation": ("query", "translation"),
    "rince_rows": losses.RINCE_ROWS,
    "em_update": ("joint", "alternating"),
    "classifier_optimizer": ("encoder", "own_adam"),
    "classifier_init": gmm.CLASSIFIER_INITS,
}


def default_config() -> dict:
  return dict(
      weight=1.0,                      # scales the M-step loss (EMMA-X trains alone: keep 1)
      stage="itr",                     # "ctl" | "gmm" | "itr"
      num_ranks=4,                     # N relation ranks: N-1 = translation ... 0 = unrelated
      queue_size=4096,                 # K keys; >= 2 x batch pairs + mono_candidates
      momentum=0.999,                  # key tower: k <- m k + (1 - m) q
      rank_mean_momentum=0.001,        # alpha of the rank-mean EMA
      rank_mean_debias=True,           # divide the EMA by its weight (False: zero start, as ref.)
      temperature_high=0.1,            # RINCE tau of rank 1 ...
      temperature_low=0.05,            # ... linearly down to rank N-1
      ctl_temperature=0.05,            # InfoNCE tau of the ctl warm-up
      classifier_label_smoothing=0.3,  # eps of the classifier's cross-entropy
      classifier_learning_rate=5e-3,   # own Adam on the GMM (classifier_optimizer="own_adam")
      # Switches between the reference code (default) and this codebase's earlier choices.
      # gmm warm-up pairs: "query" = lam q_i + (1 - lam) F_j (the reference's EMMA_GMM, the class
      # its stage 2 runs); "translation" = lam t_i + (1 - lam) F_j with t_i the query of row i's
      # translation (the reference's itr class defines it but never calls it): synthetic
      # neighbours of the translation rather than of the sentence itself.
      gmm_interpolation="query",
      # RINCE's mean over rows per rank: "all" rows (reference criterion.py); "with_positive":
      # only rows with a positive of that rank, so rare middle ranks weigh as much as rank N-1.
      rince_rows="all",
      # itr update: "joint" = one optimizer step on L_cts + L_gmm + L_mlm, the M-part's targets
      # from the classifier before the step (reference train.py); "alternating" = e_step, then
      # m_step with the updated classifier (textbook EM order; needs "own_adam").
      em_update="joint",
      # What trains the GMM: "encoder" = the trainer's optimizer and schedule, as a head in
      # params (reference: mu, lg_sigma2, pi are model parameters under its AdamW); "own_adam" =
      # its own Adam at a constant classifier_learning_rate, state in extra (needed by the
      # alternating update, whose two steps would otherwise share one optimizer state).
      classifier_optimizer="encoder",
      # GMM start: "reference" = means, log-variances ~ N(0, 1), prior logits 1; "scaled" =
      # means ~ N(0, 1/d), log-variances ~ log(1/d) + N(0, 1), near the data (|q - F| <= 2);
      # see classifier.init_classifier for why.
      classifier_init="reference",
      mlm_weight=1.0,
      mask_rate=0.15,
      mask_token_rate=0.8,
      random_token_rate=0.1,
      label_smoothing=0.1,             # MLM label smoothing
      mono_candidates=0,               # rows of batch kind "sentences" added as candidates
  )


def check_config(cfg) -> None:
  """Raises ValueError naming the field for values the steps cannot run with."""
  if cfg["stage"] not in STAGES:
    raise ValueError(f"objectives.emma_x.stage must be one of {STAGES}, got {cfg['stage']!r}")
  if cfg["num_ranks"] < 2:
    raise ValueError(f"objectives.emma_x.num_ranks must be >= 2, got {cfg['num_ranks']}")
  if cfg["queue_size"] < 1 or cfg["mono_candidates"] < 0:
    raise ValueError(f"objectives.emma_x.queue_size must be >= 1 and mono_candidates >= 0, got "
                     f"{cfg['queue_size']} and {cfg['mono_candidates']}")
  for field in ("momentum", "rank_mean_momentum", "classifier_label_smoothing"):
    if not 0.0 <= cfg[field] <= 1.0:
      raise ValueError(f"objectives.emma_x.{field} must be in [0, 1], got {cfg[field]}")
  for field in ("temperature_high", "temperature_low", "ctl_temperature"):
    if cfg[field] <= 0:
      raise ValueError(f"objectives.emma_x.{field} must be > 0, got {cfg[field]}")
  for field, choices in SWITCHES.items():
    if cfg[field] not in choices:
      raise ValueError(f"objectives.emma_x.{field} must be one of {choices}, got {cfg[field]!r}")
  if cfg["em_update"] == "alternating" and cfg["classifier_optimizer"] != "own_adam":
    raise ValueError("objectives.emma_x.em_update='alternating' needs classifier_optimizer="
                     "'own_adam': its e_step and m_step are two updates per iteration, and "
                     "through the encoder's optimizer they would count its steps (and advance "
                     "its schedule) twice; set classifier_optimizer='own_adam' or "
                     "em_update='joint'")


def _named(ctx: ObjectiveContext) -> ObjectiveContext:
  """The context with its name set (state lives at extra[name], the head at heads[name])."""
  check_config(ctx.config)
  return ctx if ctx.name else dataclasses.replace(ctx, name=NAME)


def init_params(rng, ctx: ObjectiveContext):
  """The query tower's sentence head (pooler + projection), boxed with logical axis names, and
  with classifier_optimizer="encoder" (gmm, itr) the GMM classifier beside it (replicated)."""
  check_config(ctx.config)
  hidden = ctx.model.config.hidden_size
  head = dict(towers.sentence_head(ctx).init(rng, jnp.zeros((1, hidden), jnp.float32))["params"])
  if steps_lib.classifier_in_params(ctx.config):
    # Folded, not split: the sentence head keeps the init it has without the classifier.
    head["classifier"] = gmm.init_classifier(jax.random.fold_in(rng, 1), ctx.config["num_ranks"],
                                             hidden, ctx.config["classifier_init"])
  return head


def init_extra_state(rng, params, ctx: ObjectiveContext) -> dict:
  """Key tower copied from the query tower, a random unit-vector queue, zero rank means and,
  with classifier_optimizer="own_adam", a fresh classifier and its Adam state. `params` is the
  full tree with params["heads"][name] already in it."""
  ctx = _named(ctx)
  cfg = ctx.config
  if "heads" not in params or ctx.name not in params["heads"]:
    raise ValueError(f"init_extra_state of {ctx.name!r} needs params['heads'][{ctx.name!r}] (the "
                     "sentence head from init_params) to copy it into the key tower; call "
                     "init_params first and add its result to the params")
  k_queue, k_classifier = jax.random.split(rng)
  hidden = ctx.model.config.hidden_size
  # A real copy: the key tower must not share buffers with the (donated) query tower. It copies
  # the sentence head only, never a classifier kept beside it.
  key_params = jax.tree.map(jnp.copy, {
      "encoder": params["encoder"],
      "head": towers.sentence_head_params(params["heads"][ctx.name])})
  queue = jax.random.normal(k_queue, (cfg["queue_size"], hidden), jnp.float32)
  queue = queue / jnp.linalg.norm(queue, axis=-1, keepdims=True)
  extra = {
      "key_params": key_params,
      # Rows over the data-parallel axes: at K = 65k x d = 1024 the queue is not replicated.
      "queue": nn.LogicallyPartitioned(queue, ("batch", None)),
      "queue_pointer": jnp.zeros((), jnp.int32),
      "rank_means": jnp.zeros((cfg["num_ranks"],), jnp.float32),
      "rank_mean_weight": jnp.zeros((cfg["num_ranks"],), jnp.float32),
  }
  if cfg["classifier_optimizer"] == "own_adam":
    classifier = gmm.init_classifier(k_classifier, cfg["num_ranks"], hidden,
                                     cfg["classifier_init"])
    extra["classifier"] = classifier
    extra["classifier_opt_state"] = gmm.pack_optimizer_state(gmm.classifier_optimizer(
        cfg["classifier_learning_rate"]).init(classifier))
  return extra


def emma_x_loss(params, batch, rng, ctx: ObjectiveContext):
  """Held-out metrics without any update: (loss, metrics, extra unchanged), the loss_fn contract.

  `loss` is the stage's training loss: the E-step's classifier loss for "gmm", else the
  M-step's contrastive + MLM loss; "accuracy" is in-batch+queue translation retrieval.
  """
  ctx = _named(ctx)
  extra = ctx.extra
  if extra is None:
    raise ValueError("emma_x loss_fn needs its extra state (ctx.extra = TrainState.extra"
                     "['emma_x']); the trainer passes it when init_extra_state is set")
  stage = ctx.config["stage"]
  rngs = steps_lib.StepRngs(*jax.random.split(rng, 5))
  cands = steps_lib.encode_candidates(ctx, extra, {"parallel_pairs": batch}, rngs, ctx.train)
  classifier = steps_lib.classifier_of(ctx, params, extra)
  loss, aux = steps_lib.m_objective(ctx, params, classifier, cands, rngs.query_dropout,
                                    "itr" if stage == "gmm" else stage, ctx.train)
  metrics = {k: aux[k] for k in ("contrastive_loss", "mlm_loss", "mlm_accuracy")}
  metrics["accuracy"] = aux["translation_accuracy"]
  metrics["weight"] = jnp.asarray(2 * cands.pairs.num_pairs, jnp.float32)
  if stage != "ctl":
    gmm_loss, gmm_aux = steps_lib.e_objective(ctx, classifier, aux["queries"], cands,
                                              steps_lib.current_rank_means(ctx, extra), stage,
                                              rngs.interpolation)
    metrics.update(gmm_loss=gmm_loss, gmm_accuracy=gmm_aux["gmm_accuracy"])
    if stage == "gmm":
      loss = gmm_loss
  metrics["loss"] = loss
  return loss, metrics, extra


def extra_batch_kinds(cfg) -> tuple[str, ...]:
  """Monolingual candidates come from batch kind "sentences" when mono_candidates > 0."""
  return ("sentences",) if cfg.get("mono_candidates", 0) > 0 else ()


def make_steps(bound, tx, schedule):
  """[("e_step", fn)] for gmm, [("m_step", fn)] for ctl; for itr [("em_step", fn)] (joint) or
  [("e_step", fn), ("m_step", fn)] (alternating).

  Each fn(state, batches) -> (state, metrics) is pure; the trainer jits each separately with the
  state donated and runs them in order every iteration. The last one advances state.step. The
  joint em_step is built from the same E-part and M-part functions (steps.e_gradients,
  steps.m_gradients) as the separate steps.
  """
  ctx = dataclasses.replace(_named(bound.context), train=True)
  stage = ctx.config["stage"]
  if stage == "itr" and ctx.config["em_update"] == "joint":
    return [("em_step", steps_lib.make_em_step(ctx, tx, schedule))]
  out = []
  if stage in ("gmm", "itr"):
    out.append(("e_step", steps_lib.make_e_step(ctx, stage, tx)))
  if stage in ("ctl", "itr"):
    out.append(("m_step", steps_lib.make_m_step(ctx, stage, tx, schedule)))
  return out


def predictions_per_token(config, seq_len: int) -> float:
  """The M-step's MLM slots: both sides of a pair, each a pair_seq_len row (seq_len // 2 by
  default), masked at `mask_rate`, per pair counted as one row of `seq_len` tokens.

  The gmm warm-up has no M-step, and the E-step's query pass throws its MLM logits away (XLA
  removes them as dead code), so "gmm" computes none. Key-tower and mono-candidate passes
  have no vocabulary head.
  """
  cfg = {**default_config(), **dict(config)}
  if cfg["stage"] == "gmm":
    return 0.0
  return 2 * max_predictions(max(seq_len // 2, 1), cfg["mask_rate"]) / seq_len


OBJECTIVES.register(NAME)(Objective(
    name=NAME, batch_kind="parallel_pairs", loss_fn=emma_x_loss, default_config=default_config,
    init_extra_state=init_extra_state, init_params=init_params, make_steps=make_steps,
    extra_batch_kinds=extra_batch_kinds, eval_metrics=("loss", "accuracy"),
    predictions_per_token=predictions_per_token))
