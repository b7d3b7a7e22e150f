"""The sentence head z and the two towers of EMMA-X: the query encoder (trained, with MLM) and the
momentum key encoder (its slowly moving copy).

z = L2norm(W_d tanh(W_p h_<s>)): a pooler (as RoBERTa's) then a projection, as in the reference.
Both towers read the same MLM-masked sentences, `<s> s </s>` + padding, one per row.
"""
from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from xlm_jax.models.encoder import Model, gather_positions
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import MaskedTokens, mlm_mask


class SentenceHead(nn.Module):
  """h_<s> [R, D] -> unit vectors [R, D]; kernels named like the MLM head's so they shard alike."""
  hidden_size: int
  initializer_range: float = 0.02

  @nn.compact
  def __call__(self, cls_hidden: jax.Array) -> jax.Array:
    def dense(axes, name):
      return nn.Dense(
          self.hidden_size, name=name,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(self.initializer_range), axes),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))
    x = jnp.tanh(dense(("embed", "mlp"), "pooler")(cls_hidden.astype(jnp.float32)))
    z = dense(("mlp", "embed"), "projection")(x)
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def sentence_head_params(head_params) -> dict:
  """The sentence head's own parameters of params["heads"][name], without the GMM classifier that
  classifier_optimizer="encoder" keeps beside them (the key tower copies only these)."""
  return {k: v for k, v in head_params.items() if k != "classifier"}


def sentence_head(ctx: ObjectiveContext) -> SentenceHead:
  c = ctx.model.config
  return SentenceHead(c.hidden_size, c.initializer_range)


class PairInputs(NamedTuple):
  """The 2B sentences of B pairs (x rows then y rows), MLM-masked."""
  masked: MaskedTokens      # input_ids [2B, L] corrupted; positions/labels/weights [2B, P]
  row_langs: jax.Array      # [2B] language index of each row
  num_pairs: int


def _mask(ctx: ObjectiveContext, rng, input_ids, row_langs) -> MaskedTokens:
  cfg = ctx.config
  low = high = None
  if ctx.random_ranges is not None:
    # Split vocabularies: random replacements stay inside the row's own language.
    ranges = jnp.asarray(ctx.random_ranges, jnp.int32)[row_langs]
    low, high = ranges[:, 0], ranges[:, 1]
  return mlm_mask(rng, input_ids, special_ids=ctx.special_ids, mask_id=ctx.mask_id,
                  vocab_size=ctx.vocab_size, mask_rate=cfg["mask_rate"],
                  mask_token_rate=cfg["mask_token_rate"],
                  random_token_rate=cfg["random_token_rate"], random_low=low, random_high=high)


def prepare_pairs(ctx: ObjectiveContext, batch, rng) -> PairInputs:
  """Stacks a "parallel_pairs" batch into 2B rows and MLM-masks them."""
  for key in ("x_input_ids", "y_input_ids", "x_lang_ids", "y_lang_ids"):
    if key not in batch:
      raise ValueError(f"emma_x reads batch kind 'parallel_pairs'; the batch has no {key!r} "
                       f"(keys: {sorted(batch)})")
  ids = jnp.concatenate([batch["x_input_ids"], batch["y_input_ids"]], axis=0)
  langs = jnp.concatenate([batch["x_lang_ids"], batch["y_lang_ids"]], axis=0)
  return PairInputs(_mask(ctx, rng, ids, langs), langs, batch["x_input_ids"].shape[0])


def prepare_mono(ctx: ObjectiveContext, batch, count: int, rng) -> dict:
  """The first `count` rows of a "sentences" batch, MLM-masked, as key-encoder inputs."""
  rows = batch["input_ids"].shape[0]
  if count > rows:
    raise ValueError(f"emma_x.mono_candidates ({count}) exceeds the rows of the 'sentences' "
                     f"batch ({rows}); lower mono_candidates or raise train.batch_size")
  picked = {k: v[:count] for k, v in batch.items()}
  masked = _mask(ctx, rng, picked["input_ids"], picked["lang_ids"][:, 0])
  return dict(input_ids=masked.input_ids, position_ids=picked["position_ids"],
              segment_ids=picked["segment_ids"], lang_ids=picked["lang_ids"])


def _row_lang_ids(ctx: ObjectiveContext, input_ids, row_langs):
  if not ctx.model.config.num_languages:
    return None
  return jnp.broadcast_to(row_langs[:, None], input_ids.shape).astype(jnp.int32)


def _lm_head(module: Model, hidden):
  return module.lm_head(hidden, module.encoder.attend)


def query_forward(ctx: ObjectiveContext, params, inputs: PairInputs, rng, train: bool):
  """Query tower: (z [2B, D], MLM logits [2B, P, V]) from one encoder pass over the pairs."""
  ids = inputs.masked.input_ids
  hidden = ctx.model.apply({"params": params}, ids,
                           lang_ids=_row_lang_ids(ctx, ids, inputs.row_langs),
                           deterministic=not train, rngs={"dropout": rng}, method=Model.encode)
  z = sentence_head(ctx).apply({"params": sentence_head_params(ctx.head_params(params))},
                              hidden[:, 0])
  # Gather before the vocabulary projection: logits only where a label exists.
  logits = ctx.model.apply({"params": params},
                           gather_positions(hidden, inputs.masked.positions), method=_lm_head)
  return z, logits


def key_forward(ctx: ObjectiveContext, key_params, input_ids, rng, train: bool, *,
                row_langs=None, lang_ids=None, position_ids=None, segment_ids=None):
  """Key tower: z [R, D] from the momentum copy {"encoder", "head"}; no gradient flows."""
  if lang_ids is None and row_langs is not None:
    lang_ids = _row_lang_ids(ctx, input_ids, row_langs)
  if not ctx.model.config.num_languages:
    lang_ids = None
  hidden = ctx.model.apply({"params": {"encoder": key_params["encoder"]}}, input_ids,
                           lang_ids=lang_ids, position_ids=position_ids, segment_ids=segment_ids,
                           deterministic=not train, rngs={"dropout": rng}, method=Model.encode)
  z = sentence_head(ctx).apply({"params": key_params["head"]}, hidden[:, 0])
  return jax.lax.stop_gradient(z)
