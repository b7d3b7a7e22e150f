"""EMS (Mao, Chu and Kurohashi 2022): sentence embeddings from parallel pairs.

A siamese encoder (shared weights, x and y never attend to each other) gives each side a
sentence vector s = masked mean of the last layer. Two losses train it:

- XTR, cross-lingual token reconstruction: from s_x and y's language, predict the bag of y's
  tokens (and the other way round): L_XTR = KL(q_y || p(x->y)) + KL(q_x || p(y->x)).
- Contrastive: S_ij = cos(g(s_y_i), g(s_x_j)) / tau over the batch, symmetric InfoNCE.

L = xtr_weight * L_XTR + cl_weight * L_CL (paper: 1 and 2).

The XTR target q comes in two forms (`xtr_target`); n = number of y's tokens (specials and
padding excluded), c_t = count of token t in y, k = number of distinct tokens:
- "normalized": q_t = c_t / n, a distribution; the loss is the true KL, minimum 0.
- "set" (reference code: `label.index_fill_(0, ids, 1/len)`): q_t = 1/n for every distinct t,
  whatever its count. With repeated tokens q sums to k/n < 1, so it is not a distribution:
      sum_t q_t (log q_t - log p_t) = (k/n) KL(uniform over the k distinct tokens || p)
                                      + (k/n) log(k/n).
  That is, the model is pulled towards the *set* of target tokens, each equally (a token seen
  three times is not favoured), the row's loss is scaled by k/n (sentences with many repeats
  count less), and the minimum is (k/n) log(k/n) <= 0 rather than 0.
Both are computed by gathering log p at the target tokens: no [B, V] target tensor is built.

Switches that follow the reference code (Mao-KU/EMS) where this code's default differs:
- `negatives_group_size` n (with global_negatives off; None = each device's rows): negatives only
  inside blocks of n rows, the reference's in-batch negatives of one GPU (its `train_batch_size`,
  152 pairs: main.py trains under DDP and modeling/model_v2.py builds the similarity matrix of each
  process's rows, with no gather), whatever our device count.
- `sentence_specials` False: the encoder reads each side without `<s>` and `</s>` and the mean pools
  over the sentence's own tokens (the reference's input is the SentencePiece ids only,
  preprocessing/dataset.py `convert_sents_to_ids`; BertPooler MEAN over `input_len`).
- `l2_weight` w: adds (w / 2) sum(p^2) over every parameter to the loss, so its gradient is w p, the
  *coupled* L2 of torch.optim.Adam(weight_decay=1e-5) that the reference trains with (main.py), on
  all parameters (biases and LayerNorms too). The objective's `weight` scales it like the rest.
- `lang_dropout`: dropout on the XTR head's language embedding after its LayerNorm (the reference's
  BertLaEmbedding applies `emb_dropout`, the encoder's embedding dropout); None (the default) takes
  the encoder's dropout_rate, as the reference does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xlm_jax.models.encoder import DTYPES
from xlm_jax.models.sentence_heads import ProjectionHead, XtrHead
from xlm_jax.objectives.base import Objective, ObjectiveContext, merged_config
from xlm_jax.registry import OBJECTIVES

XTR_TARGETS = ("set", "normalized")
# Logit of masked-out contrastive candidates: finite, so a fully masked row cannot produce NaN.
_MASKED_LOGIT = -1e9


def default_config() -> dict:
  return dict(
      weight=1.0,               # weight of EMS in the sum over objectives
      use_xtr=True,             # ablation: False = contrastive only (no XTR head is created)
      use_cl=True,              # ablation: False = XTR only (no projection g is created)
      xtr_weight=1.0,
      cl_weight=2.0,            # paper: L = L_XTR + 2 L_CL
      xtr_target="set",         # "set" (reference code) | "normalized" (count / length)
      use_lang_emb=True,        # ablation: XTR head without the target-language embedding
      tied_decoder=False,       # ablation: XTR decoder = the encoder's word embeddings
      lang_dim=128,             # language embedding width (reference la_dim)
      xtr_dropout=0.0,          # dropout after swish in the XTR head (reference xtr_dropout)
      lang_dropout=None,        # dropout on the head's language embedding; None: model.dropout_rate
      proj_dim=128,             # output width of g
      temperature=0.1,
      global_negatives=True,    # False: negatives only among rows of the same device (original)
      negatives_group_size=None,  # global_negatives off: None = a device's rows; n = blocks of n rows
      sentence_specials=True,   # False: encode and pool each side without <s> </s> (reference)
      l2_weight=0.0,            # coupled L2 (reference: Adam weight_decay 1e-5): + w/2 sum p^2
      # A row that shares a sentence with the query's row (the same English msgid paired with
      # two languages, say) is a translation, not a negative. No-op on duplicate-free batches.
      drop_duplicate_negatives=True,
  )


def _check_config(cfg) -> None:
  if cfg["xtr_target"] not in XTR_TARGETS:
    raise ValueError(f"objectives.ems.xtr_target must be one of {XTR_TARGETS}, "
                     f"got {cfg['xtr_target']!r}")
  if not (cfg["use_xtr"] or cfg["use_cl"]):
    raise ValueError("objectives.ems: use_xtr and use_cl are both False, nothing to train; "
                     "enable at least one of them")
  if cfg["temperature"] <= 0:
    raise ValueError(f"objectives.ems.temperature must be > 0, got {cfg['temperature']}")
  size = cfg["negatives_group_size"]
  if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
    raise ValueError(f"objectives.ems.negatives_group_size must be None (a device's rows) or a "
                     f"positive number of rows, got {size!r}")


def xtr_head(ctx: ObjectiveContext) -> XtrHead:
  """The XTR head for this model and config."""
  cfg, model_cfg = merged_config(ctx, default_config), ctx.model.config
  width = model_cfg.hidden_size
  if cfg["use_lang_emb"] and not cfg["tied_decoder"]:
    # As the reference code: W1 keeps the width of [lang ; s]. A tied decoder needs the
    # encoder's hidden size instead, to multiply with the word embeddings.
    width += cfg["lang_dim"]
  lang_dropout = model_cfg.dropout_rate if cfg["lang_dropout"] is None else cfg["lang_dropout"]
  return XtrHead(vocab_size=ctx.vocab_size, hidden_dim=width, num_languages=len(ctx.languages),
                 lang_dim=cfg["lang_dim"], use_lang_emb=cfg["use_lang_emb"],
                 tied_decoder=cfg["tied_decoder"], dropout_rate=cfg["xtr_dropout"],
                 lang_dropout_rate=lang_dropout,
                 layer_norm_eps=model_cfg.layer_norm_eps,
                 initializer_range=model_cfg.initializer_range,
                 dtype=DTYPES[model_cfg.dtype], param_dtype=DTYPES[model_cfg.param_dtype])


def projection_head(ctx: ObjectiveContext) -> ProjectionHead:
  model_cfg = ctx.model.config
  return ProjectionHead(hidden_dim=model_cfg.hidden_size, features=ctx.config["proj_dim"],
                        initializer_range=model_cfg.initializer_range,
                        dtype=DTYPES[model_cfg.dtype], param_dtype=DTYPES[model_cfg.param_dtype])


def init_params(rng, ctx: ObjectiveContext) -> dict:
  """{"xtr": ..., "projection": ...} (only the parts the switches use), logically boxed."""
  _check_config(merged_config(ctx, default_config))
  hidden = ctx.model.config.hidden_size
  sentence = jnp.zeros((1, hidden), DTYPES[ctx.model.config.dtype])
  xtr_rng, proj_rng = jax.random.split(rng)
  params = {}
  if ctx.config["use_xtr"]:
    # A tied head creates no decoder; an identity stands in for the word embeddings at init.
    params["xtr"] = xtr_head(ctx).init(xtr_rng, sentence, jnp.zeros((1,), jnp.int32),
                                       decoder=lambda h: h)["params"]
  if ctx.config["use_cl"]:
    params["projection"] = projection_head(ctx).init(proj_rng, sentence)["params"]
  return params


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """float32 mean of hidden [R, L, D] over positions where mask [R, L] is True."""
  mask = mask.astype(jnp.float32)[..., None]
  total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
  return total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


def xtr_kl(log_probs: jax.Array, target_ids: jax.Array, target_mask: jax.Array,
           xtr_target: str) -> jax.Array:
  """Per-row sum_t q_t (log q_t - log_probs_t) with q the bag of target tokens (module doc).

  log_probs [R, V]; target_ids [R, L]; target_mask [R, L] True on the tokens that count.
  Rows without any target token give 0.
  """
  mask = target_mask.astype(bool)
  n = jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1).astype(jnp.float32)
  same = (target_ids[:, :, None] == target_ids[:, None, :]) & mask[:, :, None] & mask[:, None, :]
  if xtr_target == "normalized":
    # Every occurrence contributes (1/n)(log(c/n) - log p): summed, c_t/n per distinct token.
    count = jnp.sum(same, axis=2).astype(jnp.float32)
    weight = mask / n
    log_q = jnp.log(jnp.maximum(count, 1.0) / n)
  elif xtr_target == "set":
    # Only the first occurrence of each token contributes, with q = 1/n.
    length = target_ids.shape[1]
    earlier = jnp.tril(jnp.ones((length, length), bool), k=-1)
    first = mask & ~jnp.any(same & earlier[None], axis=2)
    weight = first / n
    log_q = jnp.broadcast_to(-jnp.log(n), mask.shape)
  else:
    raise ValueError(f"xtr_target must be one of {XTR_TARGETS}, got {xtr_target!r}")
  safe_ids = jnp.where(mask, target_ids, 0)
  log_p = jnp.take_along_axis(log_probs, safe_ids, axis=1)
  return jnp.sum(jnp.where(mask, weight * (log_q - log_p), 0.0), axis=1)


def shared_sentence(x_ids: jax.Array, y_ids: jax.Array) -> jax.Array:
  """[B, B] bool: rows i and j contain an identical sentence (on either side, either order).

  Multi-way parallel data (gettext: one English message, seven translations) puts the same
  sentence in several rows of a batch; their other sides are then translations of each other.
  Rows are compared on the padded ids, so equal means equal after truncation. XLA fuses the
  [B, B, L] comparison into the reduction.
  """
  def equal(a, b):
    return jnp.all(a[:, None, :] == b[None, :, :], axis=-1)
  return equal(x_ids, x_ids) | equal(y_ids, y_ids) | equal(x_ids, y_ids) | equal(y_ids, x_ids)


def contrastive_loss(z_x: jax.Array, z_y: jax.Array, row_valid: jax.Array, temperature: float,
                     num_groups: int = 1, not_negative: jax.Array | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE over S_ij = cos(z_y_i, z_x_j) / temperature; (loss, accuracy).

  Rows i are pairs; row_valid [B] drops padding pairs as queries and as candidates.
  num_groups > 1 restricts negatives to contiguous blocks of B / num_groups rows (the rows one
  data-parallel device holds). not_negative [B, B] (symmetric) removes further candidates j
  from query i's softmax (the diagonal is always kept). Both numbers are means over valid rows
  of the whole batch, and accuracy is the share of queries (y->x and x->y) whose top
  candidate is their translation.
  """
  batch = z_x.shape[0]
  if batch % num_groups:
    raise ValueError(f"EMS per-device negatives: batch of {batch} pairs does not split into "
                     f"{num_groups} data-parallel groups; make the batch size a multiple of it")
  unit_x = z_x / jnp.maximum(jnp.linalg.norm(z_x, axis=-1, keepdims=True), 1e-8)
  unit_y = z_y / jnp.maximum(jnp.linalg.norm(z_y, axis=-1, keepdims=True), 1e-8)
  sims = (unit_y @ unit_x.T) / temperature
  group = jnp.arange(batch) // (batch // num_groups)
  gold = jnp.arange(batch)
  allowed = (group[:, None] == group[None, :]) & row_valid[:, None] & row_valid[None, :]
  if not_negative is not None:
    allowed &= ~not_negative | (gold[:, None] == gold[None, :])
  total = jnp.maximum(jnp.sum(row_valid), 1)
  losses, correct = 0.0, 0.0
  for logits in (sims, sims.T):
    logits = jnp.where(allowed, logits, _MASKED_LOGIT)
    per_row = jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)
    losses += jnp.sum(jnp.where(row_valid, per_row, 0.0)) / total
    correct += jnp.sum(row_valid & (jnp.argmax(logits, axis=1) == gold)) / total
  return losses / 2, correct / 2


def strip_specials(ids: jax.Array, pad_id: int) -> jax.Array:
  """`<s> tokens </s>` + padding rows -> `tokens` + padding (all-padding rows stay padding).

  The pipeline writes every side as `<s> side </s>` (data/pairs.py pair_row), so the first token
  and the last real one are the specials, whatever their ids.
  """
  length = jnp.sum(ids != pad_id, axis=1, keepdims=True)
  shifted = jnp.concatenate([ids[:, 1:], jnp.full_like(ids[:, :1], pad_id)], axis=1)
  return jnp.where(jnp.arange(ids.shape[1])[None, :] < length - 2, shifted, pad_id)


def coupled_l2(params) -> jax.Array:
  """sum p^2 over every parameter (float32): its gradient 2p, halved by the caller's w / 2."""
  return sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params))


def negative_groups(cfg, batch_size: int, data_parallel_size: int) -> int:
  """How many blocks of rows the contrastive loss draws negatives within (1 = the whole batch)."""
  if cfg["global_negatives"]:
    return 1
  size = cfg["negatives_group_size"]
  if size is None:
    return data_parallel_size
  if batch_size % size:
    raise ValueError(f"objectives.ems.negatives_group_size ({size}) must divide the batch of "
                     f"{batch_size} pairs; make train.batch_size a multiple of it")
  return batch_size // size


def _row_language(lang_ids: jax.Array, length: int) -> jax.Array:
  return jnp.broadcast_to(lang_ids[:, None], (lang_ids.shape[0], length)).astype(jnp.int32)


def ems_loss(params, batch, rng, ctx: ObjectiveContext):
  """EMS loss on a "parallel_pairs" batch; metrics xtr_loss, cl_loss, accuracy, weight. No extra
  state."""
  cfg = merged_config(ctx, default_config)   # a config saved before a field existed gets its default
  _check_config(cfg)
  heads = ctx.head_params(params)
  x_ids, y_ids = batch["x_input_ids"], batch["y_input_ids"]
  if x_ids.shape != y_ids.shape:
    raise ValueError(f"parallel_pairs batch: x_input_ids {x_ids.shape} and y_input_ids "
                     f"{y_ids.shape} must have the same shape [B, pair_seq_len]")
  batch_size, length = x_ids.shape
  encoder_rng, head_rng = jax.random.split(rng)

  # Both sides in one encoder call: same weights, no cross-attention (rows are independent).
  ids = jnp.concatenate([x_ids, y_ids], axis=0)
  if not cfg["sentence_specials"]:
    ids = strip_specials(ids, ctx.pad_id)
  inputs = {}
  if ctx.model.config.num_languages:
    inputs["lang_ids"] = _row_language(
        jnp.concatenate([batch["x_lang_ids"], batch["y_lang_ids"]]), length)
  hidden = ctx.model.apply({"params": params}, ids, deterministic=not ctx.train,
                           rngs={"dropout": encoder_rng}, method="encode", **inputs)
  real = ids != ctx.pad_id
  sentences = mean_pool(hidden, real)
  s_x, s_y = sentences[:batch_size], sentences[batch_size:]
  row_valid = jnp.any(x_ids != ctx.pad_id, axis=1) & jnp.any(y_ids != ctx.pad_id, axis=1)
  num_valid = jnp.maximum(jnp.sum(row_valid), 1)

  loss, metrics = 0.0, {}
  if cfg["use_xtr"]:
    # Direction x->y predicts y's bag in y's language from s_x, and y->x the other way.
    targets = jnp.concatenate([y_ids, x_ids], axis=0)
    target_lang = jnp.concatenate([batch["y_lang_ids"], batch["x_lang_ids"]]).astype(jnp.int32)
    def tied_decoder(h):
      # The target language picks the table when the model has separate_embeddings.
      return ctx.model.apply({"params": params}, h, target_lang,
                             method=lambda model, q, lang: model.encoder.attend(q, lang))
    decoder = tied_decoder if cfg["tied_decoder"] else None
    logits = xtr_head(ctx).apply({"params": heads["xtr"]}, sentences, target_lang,
                                 decoder=decoder, deterministic=not ctx.train,
                                 rngs={"dropout": head_rng})
    special = jnp.isin(targets, jnp.asarray(sorted(set(ctx.special_ids) | {ctx.pad_id})))
    per_row = xtr_kl(jax.nn.log_softmax(logits, axis=-1), targets, ~special, cfg["xtr_target"])
    valid_twice = jnp.concatenate([row_valid, row_valid])
    # Sum of the two directions' batch means (each over the valid pairs).
    xtr = jnp.sum(jnp.where(valid_twice, per_row, 0.0)) / num_valid
    loss += cfg["xtr_weight"] * xtr
    metrics["xtr_loss"] = xtr
  groups = negative_groups(cfg, batch_size, ctx.data_parallel_size)
  duplicates = shared_sentence(x_ids, y_ids) if cfg["drop_duplicate_negatives"] else None
  if cfg["use_cl"]:
    projection = projection_head(ctx)
    z = projection.apply({"params": heads["projection"]}, sentences)
    cl, accuracy = contrastive_loss(z[:batch_size], z[batch_size:], row_valid,
                                    cfg["temperature"], groups, duplicates)
    loss += cfg["cl_weight"] * cl
    metrics["cl_loss"] = cl
  else:
    # XTR only: retrieval accuracy of the sentence vectors themselves (no g was trained).
    _, accuracy = contrastive_loss(s_x, s_y, row_valid, cfg["temperature"], groups, duplicates)
  if cfg["l2_weight"]:
    l2 = coupled_l2(params)
    loss += 0.5 * cfg["l2_weight"] * l2
    metrics["l2"] = l2
  metrics.update(loss=loss, accuracy=accuracy, weight=jnp.sum(row_valid).astype(jnp.float32))
  return loss, metrics, ctx.extra


def predictions_per_token(config, seq_len: int) -> float:
  """The XTR head's vocabulary logits: one per sentence, two per pair (x->y and y->x).

  A pair is counted as one row of `seq_len` tokens (its sides are pair_seq_len = seq_len // 2
  by default), so that is 2 / seq_len; 0 without XTR (the projection g has no vocabulary).
  """
  cfg = {**default_config(), **dict(config)}
  return 2.0 / seq_len if cfg["use_xtr"] else 0.0


OBJECTIVES.register("ems")(Objective(
    name="ems", batch_kind="parallel_pairs", loss_fn=ems_loss, default_config=default_config,
    init_params=init_params, eval_metrics=("loss", "accuracy"),
    predictions_per_token=predictions_per_token))
