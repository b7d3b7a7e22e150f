"""EMMA-X's E-step and M-step as pure functions over the explicit TrainState.

  e_step (itr, em_update="alternating"): the classifier learns from the encoder. Targets: N-1
      on self/translation cells, else the encoder-side rank argmin_r |S - m_r|. Only the
      classifier (and its optimizer state) changes.
  e_step (gmm warm-up): encoders frozen; synthetic pairs D = q - (lam a + (1 - lam) F), labelled
      by bucketing lam ~ U(0, 1) with the cumulative softmax(pi) (self/translation cells: N-1).
      The anchor a is q_i itself (`gmm_interpolation="query"`, the reference's EMMA_GMM, the
      class its stage 2 runs) or the query of row i's translation ("translation"). Also
      enqueues the keys, moves the rank means towards the synthetic pairs' similarities
      q.(lam a + (1 - lam) F) under those labels, and advances state.step (it is the stage's only
      step). No momentum update: both towers frozen.
  m_step (itr): the encoder learns from the classifier. Targets: N-1 on translation cells, else
      argmax p(r | D); RINCE + MLM, gradients to the encoder, MLM head and sentence head through
      the trainer's optimizer. Then the key encoder moves by momentum, the keys are enqueued and
      the rank means follow the classifier's ranks (EMA).
  m_step (ctl warm-up): the same with plain InfoNCE (translation = positive) and no rank means.
  em_step (itr, `em_update="joint"`, the reference's one optimizer step on L_cts + L_gmm + L_mlm):
      the E-part and the M-part are computed by the same functions as above, both from the state
      as it was before the step (the M-step's targets come from the classifier before its
      update), then both updates are applied at once.

Where the classifier lives and what trains it is `classifier_optimizer`:
  "encoder" (reference: mu, log sigma^2 and pi are parameters of the model, trained by its AdamW
      and schedule): a trained head at params["heads"][name]["classifier"] (gmm and itr stages;
      ctl has none), updated by the trainer's optimizer `tx` in the same step as the encoder
      (em_step), or alone in the gmm warm-up (only its update is applied: the frozen encoders
      keep their weights, though the optimizer's moments for them see zero gradients).
  "own_adam": extra["classifier"] with its own Adam at a constant classifier_learning_rate and
      its state in extra["classifier_opt_state"] (needed by separately jitted E and M steps,
      each of which updates one side).

The steps of one iteration draw their randomness from fold_in(state.rng, state.step), and
e_step does not advance the step, so they see the same masked input, dropout and keys.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from xlm_jax.objectives.base import ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.emma import classifier as gmm
from xlm_jax.objectives.emma import losses
from xlm_jax.objectives.emma import queue as queue_lib
from xlm_jax.objectives.emma import towers


class StepRngs(NamedTuple):
  mask: jax.Array
  query_dropout: jax.Array
  key_dropout: jax.Array
  mono_mask: jax.Array
  interpolation: jax.Array


def step_rngs(rng: jax.Array, step: jax.Array) -> StepRngs:
  return StepRngs(*jax.random.split(jax.random.fold_in(rng, step), 5))


class Candidates(NamedTuple):
  pairs: towers.PairInputs
  keys: jax.Array           # [2B (+ mono), d] this step's keys, enqueued after the M-step
  features: jax.Array       # [M, d] = keys then queue: F
  is_self: jax.Array        # [2B, M]
  is_translation: jax.Array  # [2B, M]


def encode_candidates(ctx: ObjectiveContext, extra, batches, rngs: StepRngs,
                      train: bool) -> Candidates:
  """Masks the pairs and runs the key tower: F = [keys of x; keys of y; mono keys; queue]."""
  cfg = ctx.config
  if "parallel_pairs" not in batches:
    raise ValueError(f"emma_x needs batches['parallel_pairs']; got kinds {sorted(batches)}")
  pairs = towers.prepare_pairs(ctx, batches["parallel_pairs"], rngs.mask)
  keys = towers.key_forward(ctx, extra["key_params"], pairs.masked.input_ids, rngs.key_dropout,
                            train, row_langs=pairs.row_langs)
  if cfg["mono_candidates"] > 0:
    if "sentences" not in batches:
      raise ValueError("emma_x.mono_candidates > 0 needs batches['sentences'] (batch kind "
                       "'sentences') beside 'parallel_pairs'; set mono_candidates=0 or feed it")
    mono = towers.prepare_mono(ctx, batches["sentences"], cfg["mono_candidates"], rngs.mono_mask)
    mono_keys = towers.key_forward(ctx, extra["key_params"], mono.pop("input_ids"),
                                   jax.random.fold_in(rngs.key_dropout, 1), train, **mono)
    keys = jnp.concatenate([keys, mono_keys], axis=0)
  features = jnp.concatenate([keys, extra["queue"].astype(keys.dtype)], axis=0)
  is_self, is_translation = losses.pair_cells(pairs.num_pairs, features.shape[0])
  return Candidates(pairs, keys, features, is_self, is_translation)


def _similarities(queries, features):
  return jnp.matmul(queries, features.T, precision=jax.lax.Precision.HIGHEST)


def current_rank_means(ctx: ObjectiveContext, extra) -> jax.Array:
  """m_r as the encoder-side ranks use them (see queue.current_rank_means)."""
  return queue_lib.current_rank_means(extra["rank_means"], extra["rank_mean_weight"],
                                      ctx.config["rank_mean_debias"])


def _updated_rank_means(ctx: ObjectiveContext, extra, similarities, ranks) -> dict:
  means, weight = queue_lib.update_rank_means(extra["rank_means"], extra["rank_mean_weight"],
                                              similarities, ranks,
                                              ctx.config["rank_mean_momentum"])
  return {"rank_means": means, "rank_mean_weight": weight}


# ----------------------------------------------------------------------------- classifier


def classifier_in_params(cfg) -> bool:
  """Whether the GMM is a trained head in params["heads"][name]["classifier"].

  With classifier_optimizer="encoder" it is, in the stages that use it (gmm, itr); the ctl
  warm-up has none (the reference's stage-1 GMM is never trained either), so a gmm run
  warm-started from ctl starts its classifier fresh and an itr run takes gmm's by path.
  """
  return cfg["classifier_optimizer"] == "encoder" and cfg["stage"] != "ctl"


def classifier_of(ctx: ObjectiveContext, params, extra) -> dict | None:
  """The GMM parameters, wherever `classifier_optimizer` keeps them (module docstring); None in
  the ctl warm-up with classifier_optimizer="encoder" (it has no classifier)."""
  if classifier_in_params(ctx.config):
    return ctx.head_params(params)["classifier"]
  if ctx.config["classifier_optimizer"] == "encoder":
    return None
  return extra["classifier"]


def _with_classifier(params, name: str, classifier):
  """params with params["heads"][name]["classifier"] replaced (new dicts, nothing mutated)."""
  head = dict(params["heads"][name], classifier=classifier)
  return dict(params, heads=dict(params["heads"], **{name: head}))


def _own_adam_update(ctx: ObjectiveContext, extra, grads) -> dict:
  """extra with the classifier moved by its own Adam (classifier_optimizer="own_adam")."""
  classifier_tx = gmm.classifier_optimizer(ctx.config["classifier_learning_rate"])
  opt_state = gmm.unpack_optimizer_state(classifier_tx, extra["classifier"],
                                         extra["classifier_opt_state"])
  updates, opt_state = classifier_tx.update(grads, opt_state, extra["classifier"])
  return dict(extra, classifier=optax.apply_updates(extra["classifier"], updates),
              classifier_opt_state=gmm.pack_optimizer_state(opt_state))


# ----------------------------------------------------------------------------- E-step


def e_objective(ctx: ObjectiveContext, classifier, queries, cands: Candidates, rank_means,
                stage: str, lam_rng):
  """Classifier loss on stop-gradient queries. Returns (loss, aux dict)."""
  cfg = ctx.config
  n = cfg["num_ranks"]
  queries = jax.lax.stop_gradient(queries)
  sims = _similarities(queries, cands.features)
  gold = cands.is_self | cands.is_translation
  interpolation = None
  if stage == "gmm":
    lam = jax.random.uniform(lam_rng, sims.shape)
    if cfg["gmm_interpolation"] == "query":
      anchor = queries   # reference EMMA_GMM.interploted_feature: lam q_i + (1 - lam) F_j
    else:
      anchor = queries[(jnp.arange(queries.shape[0]) + cands.pairs.num_pairs) % queries.shape[0]]
    interpolation = gmm.Interpolation(lam, anchor)
    targets = gmm.interpolation_ranks(lam, jax.lax.stop_gradient(classifier["prior_logits"]))
    # q . (lam a + (1 - lam) F): the similarity of the synthetic pair, for the rank means.
    sims = lam * jnp.sum(queries * anchor, axis=-1, keepdims=True) + (1.0 - lam) * sims
  else:
    targets = losses.encoder_ranks(sims, rank_means)
  targets = jnp.where(gold, n - 1, targets)
  log_post = gmm.gmm_log_posterior(classifier, queries, cands.features, interpolation)
  loss, accuracy = gmm.label_smoothed_nll(log_post, targets, cfg["classifier_label_smoothing"])
  aux = {"similarities": sims, "targets": targets, "gmm_accuracy": accuracy}
  return loss, aux


def e_gradients(ctx: ObjectiveContext, classifier, queries, cands: Candidates, extra, stage: str,
                lam_rng):
  """(loss, aux, d loss / d classifier) of the E-step at `classifier`."""
  def loss_fn(c):
    return e_objective(ctx, c, queries, cands, current_rank_means(ctx, extra), stage, lam_rng)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(classifier)
  return loss, aux, grads


def _e_metrics(name: str, n: int, loss, aux, grads) -> dict:
  metrics = {f"{name}/gmm_loss": loss, f"{name}/gmm_accuracy": aux["gmm_accuracy"],
             f"{name}/gmm_grad_norm": optax.tree.norm(grads)}
  for r in range(n):
    metrics[f"{name}/gmm_target_rank{r}"] = jnp.mean(aux["targets"] == r)
  return metrics


def make_e_step(ctx: ObjectiveContext, stage: str, tx: optax.GradientTransformation):
  """`e_step(state, batches) -> (state, metrics)`; advances state.step only in the gmm stage.

  `tx` (the trainer's optimizer) trains the classifier where classifier_optimizer="encoder"; that
  form runs only as the gmm warm-up (in itr the classifier's update is part of em_step).
  """
  cfg, name = ctx.config, ctx.name
  n = cfg["num_ranks"]
  in_params = classifier_in_params(cfg)
  if in_params and stage != "gmm":
    # Two updates per iteration through one optimizer state would count its steps (and move
    # its schedule) twice; emma_x.check_config refuses this combination with the fix.
    raise ValueError("emma_x: a separate e_step in the itr stage needs "
                     "classifier_optimizer='own_adam'; with 'encoder' use em_update='joint'")

  def e_step(state, batches):
    extra = state.extra[name]
    rngs = step_rngs(state.rng, state.step)
    cands = encode_candidates(ctx, extra, batches, rngs, train=True)
    queries, _ = towers.query_forward(ctx, state.params, cands.pairs, rngs.query_dropout, True)
    classifier = classifier_of(ctx, state.params, extra)
    loss, aux, grads = e_gradients(ctx, classifier, queries, cands, extra, stage,
                                   rngs.interpolation)
    metrics = _e_metrics(name, n, loss, aux, grads)
    params, opt_state = state.params, state.opt_state
    if in_params:
      # The trainer's optimizer over the whole tree with zero gradients but the classifier's;
      # only the classifier's update is applied (weight decay must not move frozen encoders).
      full = _with_classifier(jax.tree.map(jnp.zeros_like, params), name, grads)
      updates, opt_state = tx.update(full, opt_state, params)
      moved = optax.apply_updates(classifier, ctx.head_params(updates)["classifier"])
      params = _with_classifier(params, name, moved)
      new_extra = dict(extra)
    else:
      new_extra = _own_adam_update(ctx, extra, grads)
    if stage != "gmm":
      return state.replace(extra=dict(state.extra, **{name: new_extra})), metrics
    # gmm warm-up: the stage's only step, so it also keeps the queue and rank means moving.
    queue, pointer = queue_lib.enqueue(extra["queue"], extra["queue_pointer"], cands.keys)
    new_extra.update(queue=queue, queue_pointer=pointer,
                     **_updated_rank_means(ctx, extra, aux["similarities"], aux["targets"]))
    metrics["loss"] = loss
    means = current_rank_means(ctx, new_extra)
    for r in range(n):
      metrics[f"{name}/rank_mean{r}"] = means[r]
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         extra=dict(state.extra, **{name: new_extra})), metrics

  return e_step


# ----------------------------------------------------------------------------- M-step


def m_objective(ctx: ObjectiveContext, params, classifier, cands: Candidates, dropout_rng,
                stage: str, train: bool):
  """Encoder loss: RINCE (itr) or InfoNCE (ctl) plus mlm_weight * MLM (before `weight`).

  `classifier` gives the targets (argmax, no gradient); pass the one before this step's E-part.
  Returns (loss, aux dict).
  """
  cfg = ctx.config
  n = cfg["num_ranks"]
  queries, logits = towers.query_forward(ctx, params, cands.pairs, dropout_rng, train)
  sims = _similarities(queries, cands.features)
  valid = ~cands.is_self
  if stage == "ctl":
    # Plain InfoNCE: the translation is the only positive, everything else (self excluded) the
    # pool; that is RINCE with a single rank at ctl_temperature.
    labels = cands.is_translation.astype(jnp.int32)
    classifier_ranks = labels
    cts, rank_metrics = losses.rince_loss(sims, labels, valid, (cfg["ctl_temperature"],),
                                          cfg["rince_rows"])
  else:
    classifier = jax.lax.stop_gradient(classifier)
    log_post = gmm.gmm_log_posterior(classifier, jax.lax.stop_gradient(queries), cands.features)
    classifier_ranks = jnp.argmax(log_post, axis=-1).astype(jnp.int32)
    labels = jnp.where(cands.is_translation, n - 1, classifier_ranks)
    temperatures = losses.rank_temperatures(n, cfg["temperature_high"], cfg["temperature_low"])
    cts, rank_metrics = losses.rince_loss(sims, labels, valid, temperatures, cfg["rince_rows"])
  mlm, mlm_metrics = weighted_cross_entropy(logits, cands.pairs.masked.labels,
                                            cands.pairs.masked.weights, cfg["label_smoothing"],
                                            ctx.model.config.vocab_size)
  loss = cts + cfg["mlm_weight"] * mlm
  aux = dict(rank_metrics, similarities=jax.lax.stop_gradient(sims),
             queries=jax.lax.stop_gradient(queries),
             classifier_ranks=classifier_ranks, contrastive_loss=cts, mlm_loss=mlm,
             mlm_accuracy=mlm_metrics["accuracy"], mlm_predictions=mlm_metrics["weight"],
             translation_accuracy=losses.translation_accuracy(
                 jax.lax.stop_gradient(sims), cands.is_self, cands.is_translation))
  return loss, aux


def m_gradients(ctx: ObjectiveContext, params, classifier, cands: Candidates, dropout_rng,
                stage: str):
  """(weight * loss, aux, d / d params) of the M-step at `params`, targets from `classifier`."""
  def loss_fn(p):
    loss, aux = m_objective(ctx, p, classifier, cands, dropout_rng, stage, True)
    return ctx.config["weight"] * loss, aux
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, aux, grads


def _after_encoder_update(ctx: ObjectiveContext, stage: str, extra, params, cands, aux) -> dict:
  """Key encoder by momentum, this step's keys into the queue, rank means (not in ctl)."""
  name = ctx.name
  query_side = {"encoder": params["encoder"],
                "head": towers.sentence_head_params(params["heads"][name])}
  queue, pointer = queue_lib.enqueue(extra["queue"], extra["queue_pointer"], cands.keys)
  new_extra = dict(extra, key_params=queue_lib.momentum_update(
      extra["key_params"], query_side, ctx.config["momentum"]), queue=queue, queue_pointer=pointer)
  if stage != "ctl":
    new_extra.update(_updated_rank_means(ctx, extra, aux["similarities"],
                                         aux["classifier_ranks"]))
  return new_extra


def _m_metrics(ctx: ObjectiveContext, stage: str, loss, grads, params, schedule, step, aux,
               new_extra) -> dict:
  name, n = ctx.name, ctx.config["num_ranks"]
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params), "learning_rate": schedule(step)}
  for key in ("contrastive_loss", "mlm_loss", "mlm_accuracy", "mlm_predictions",
              "translation_accuracy"):
    metrics[f"{name}/{key}"] = aux[key]
  metrics.update({f"{name}/{k}": v for k, v in aux.items() if k.startswith("rank")})
  if stage != "ctl":
    means = current_rank_means(ctx, new_extra)
    for r in range(n):
      metrics[f"{name}/rank_mean{r}"] = means[r]
      metrics[f"{name}/classifier_rank{r}"] = jnp.mean(aux["classifier_ranks"] == r)
  return metrics


def make_m_step(ctx: ObjectiveContext, stage: str, tx: optax.GradientTransformation,
                schedule: optax.Schedule):
  """`m_step(state, batches) -> (state, metrics)`; always advances state.step."""
  name = ctx.name

  def m_step(state, batches):
    extra = state.extra[name]
    rngs = step_rngs(state.rng, state.step)
    cands = encode_candidates(ctx, extra, batches, rngs, train=True)
    classifier = classifier_of(ctx, state.params, extra)
    loss, aux, grads = m_gradients(ctx, state.params, classifier, cands, rngs.query_dropout,
                                   stage)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_extra = _after_encoder_update(ctx, stage, extra, params, cands, aux)
    metrics = _m_metrics(ctx, stage, loss, grads, params, schedule, state.step, aux, new_extra)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              extra=dict(state.extra, **{name: new_extra}))
    return new_state, metrics

  return m_step


# ----------------------------------------------------------------------------- joint EM step


def make_em_step(ctx: ObjectiveContext, tx: optax.GradientTransformation,
                 schedule: optax.Schedule):
  """`em_step(state, batches) -> (state, metrics)`: the reference's single update (itr).

  The M-part (m_gradients) and the E-part (e_gradients) are both taken at the state before the
  step: the M-step's targets come from the classifier before its update, and the E-step's queries
  are the M-pass's own (stop-gradient) queries, as the reference computes them in one forward.
  Then one optimizer step: the trainer's `tx` on the encoder and, with classifier_optimizer=
  "encoder", on the classifier too (its gradient is the E-part's); with "own_adam" the classifier
  takes its own Adam step. Always advances state.step.
  """
  cfg, name = ctx.config, ctx.name
  n = cfg["num_ranks"]
  in_params = classifier_in_params(cfg)

  def em_step(state, batches):
    extra = state.extra[name]
    rngs = step_rngs(state.rng, state.step)
    cands = encode_candidates(ctx, extra, batches, rngs, train=True)
    classifier = classifier_of(ctx, state.params, extra)
    m_loss, m_aux, grads = m_gradients(ctx, state.params, classifier, cands, rngs.query_dropout,
                                       "itr")
    e_loss, e_aux, e_grads = e_gradients(ctx, classifier, m_aux["queries"], cands, extra, "itr",
                                         rngs.interpolation)
    if in_params:
      # L_cts + L_mlm does not depend on the classifier (argmax targets): its gradient is L_gmm's.
      grads = _with_classifier(grads, name, e_grads)
      extra_after_e = extra
    else:
      extra_after_e = _own_adam_update(ctx, extra, e_grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_extra = _after_encoder_update(ctx, "itr", extra_after_e, params, cands, m_aux)
    metrics = _m_metrics(ctx, "itr", m_loss, grads, params, schedule, state.step, m_aux,
                         new_extra)
    metrics.update(_e_metrics(name, n, e_loss, e_aux, e_grads))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              extra=dict(state.extra, **{name: new_extra}))
    return new_state, metrics

  return em_step
