"""Back-translation masked language modelling (ERNIE-M) on monolingual "sentences" rows.

Step 1 (generation, no gradient). Each row `<s> x </s>` (n real tokens, padding after) gets
m = ceil(placeholder_ratio * n) `<mask>` placeholders written into its padding right after x,
at most the L - n free slots (shapes stay static, so a row without room gets fewer or none:
give "sentences" rows room, e.g. data.sentence_len <= data.seq_len // 2 at ratio 1). They carry
a target language id, sampled per row uniformly from `target_languages` minus the row's own
language, and positions continuing after x. Placeholders attend to x and to placeholders, x only
to x, so x's states are those of x alone. One non-autoregressive pass (dropout off, parameters
behind stop_gradient) predicts pseudo tokens h at the placeholders: argmax, or a sample at
`sample_temperature` > 0, never a special id (and inside the target language's id range when
the vocabulary is split by language).

Step 2. Input [mlm_mask(x) ; h] with full attention (padding excluded), h keeping the target
language id and the continued positions; only x is masked and only x is labelled.

The placeholders need language embeddings to know what to generate: a model without them
(num_languages == 0) is rejected when the loss is traced.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from xlm_jax.objectives import attention_patterns as patterns
from xlm_jax.objectives.base import (Objective, ObjectiveContext, merged_config,
                                     weighted_cross_entropy)
from xlm_jax.objectives.masking import masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import mask_tokens
from xlm_jax.registry import OBJECTIVES


def default_config() -> dict:
  return masking_config(
      placeholder_ratio=1.0,   # rho: m = ceil(rho * n) placeholders for a row of n real tokens
      sample_temperature=0.0,  # 0 = argmax pseudo tokens; > 0 = sample softmax(logits / T)
      target_languages=None,   # codes to translate into (list or "en,de"); None = data.languages
  )


class Generation(NamedTuple):
  """Step-1 result: the row laid out as [x ; h] with the ids, languages and positions of both."""
  input_ids: jax.Array        # [B, L] x, then pseudo tokens h at the placeholder slots, padding
  lang_ids: jax.Array         # [B, L] x's language on x, the target language on h
  position_ids: jax.Array     # [B, L] x's positions, continued on h; pad_id elsewhere
  is_source: jax.Array        # [B, L] bool, x
  is_placeholder: jax.Array   # [B, L] bool, h
  target_lang: jax.Array      # [B] int32


def max_placeholders(seq_len: int, placeholder_ratio: float) -> int:
  """Static bound on the placeholders of any row: max over n of min(ceil(rho * n), L - n)."""
  bound = max(min(math.ceil(placeholder_ratio * n), seq_len - n) for n in range(seq_len + 1))
  # One spare slot absorbs float32 vs float64 rounding of ceil(); the count is clipped anyway.
  return max(1, min(seq_len, bound + 1))


def target_language_set(cfg, ctx: ObjectiveContext) -> tuple[int, ...]:
  """Indices (into ctx.languages) of the configured target languages."""
  names = cfg["target_languages"]
  if names is None:
    if len(ctx.languages) < 2:
      raise ValueError(f"btmlm translates into another language, but data.languages is "
                       f"{list(ctx.languages)}; configure at least two languages")
    return tuple(range(len(ctx.languages)))
  if isinstance(names, str):   # "en" or "en,de" (a command-line override)
    names = [n.strip() for n in names.split(",") if n.strip()]
  names = list(names)
  unknown = [n for n in names if n not in ctx.languages]
  if unknown or not names:
    raise ValueError(f"objectives.btmlm.target_languages={list(names)}: each entry must be one "
                     f"of data.languages {list(ctx.languages)} (or set it to None for all)")
  return tuple(sorted({ctx.languages.index(n) for n in names}))


def sample_target_languages(rng, source_lang, cfg, ctx: ObjectiveContext) -> jax.Array:
  """Per row, uniform over the configured targets other than the row's own language.

  A row whose language is the only configured target keeps its own language.
  """
  allowed_ids = jnp.asarray(target_language_set(cfg, ctx), jnp.int32)
  allowed = allowed_ids[None, :] != source_lang[:, None]
  none_left = ~jnp.any(allowed, axis=1)
  choice_logits = jnp.where(allowed, 0.0, -jnp.inf)
  # A row with no candidate gets uniform logits; its draw is replaced by its own language.
  choice_logits = jnp.where(none_left[:, None], 0.0, choice_logits)
  choice = jax.random.categorical(rng, choice_logits, axis=1)
  return jnp.where(none_left, source_lang, allowed_ids[choice]).astype(jnp.int32)


class PlaceholderLayout(NamedTuple):
  """Step-1 inputs: x followed by `<mask>` placeholders, with their languages and positions."""
  input_ids: jax.Array        # [B, L]
  lang_ids: jax.Array         # [B, L]
  position_ids: jax.Array     # [B, L]
  is_source: jax.Array        # [B, L] bool
  is_placeholder: jax.Array   # [B, L] bool
  slot_positions: jax.Array   # [B, M] index of placeholder j (n + j), M static; clipped to L - 1
  num_source: jax.Array       # [B] n


def placeholder_layout(batch, target_lang, ctx: ObjectiveContext) -> PlaceholderLayout:
  """Writes m = min(ceil(rho * n), L - n) placeholders into each row's padding after x."""
  cfg = merged_config(ctx, default_config)
  input_ids, segment_ids = batch["input_ids"], batch["segment_ids"]
  seq_len = input_ids.shape[1]
  num_slots = max_placeholders(seq_len, cfg["placeholder_ratio"])
  is_source = segment_ids != 0
  n = jnp.sum(is_source, axis=1, dtype=jnp.int32)
  wanted = jnp.ceil(cfg["placeholder_ratio"] * n.astype(jnp.float32)).astype(jnp.int32)
  m = jnp.minimum(jnp.minimum(wanted, seq_len - n), num_slots)
  index = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
  # "sentences" rows hold one sentence from index 0, so x is index [0, n) and the
  # placeholders take [n, n + m).
  is_placeholder = (index >= n[:, None]) & (index < (n + m)[:, None])
  last_position = jnp.max(jnp.where(is_source, batch["position_ids"], ctx.pad_id), axis=1)
  ids = jnp.where(is_placeholder, ctx.mask_id, input_ids).astype(input_ids.dtype)
  lang_ids = jnp.where(is_placeholder, target_lang[:, None], batch["lang_ids"])
  position_ids = jnp.where(is_placeholder, last_position[:, None] + 1 + index - n[:, None],
                           batch["position_ids"])
  slot_positions = jnp.minimum(n[:, None] + jnp.arange(num_slots, dtype=jnp.int32)[None, :],
                               seq_len - 1)
  return PlaceholderLayout(ids, lang_ids.astype(jnp.int32), position_ids.astype(jnp.int32),
                           is_source, is_placeholder, slot_positions, n)


def _require_language_embeddings(ctx: ObjectiveContext) -> None:
  if not ctx.model.config.num_languages:
    raise ValueError("btmlm needs language embeddings to tell the placeholders which language "
                     "to generate: set model.num_languages >= len(data.languages) (it is 0)")


def generate_pseudo_tokens(params, batch, rng, ctx: ObjectiveContext) -> Generation:
  """Step 1: one non-autoregressive pass; no gradient reaches `params` through it."""
  _require_language_embeddings(ctx)
  cfg = merged_config(ctx, default_config)
  params = jax.lax.stop_gradient(params)
  lang_rng, sample_rng = jax.random.split(rng)
  source_lang = batch["lang_ids"][:, 0]
  target_lang = sample_target_languages(lang_rng, source_lang, cfg, ctx)
  layout = placeholder_layout(batch, target_lang, ctx)
  logits = ctx.model.apply(
      {"params": params}, layout.input_ids, label_positions=layout.slot_positions,
      position_ids=layout.position_ids, lang_ids=layout.lang_ids,
      attention_mask=patterns.btmlm_generation_mask(layout.is_source, layout.is_placeholder),
      deterministic=True)
  vocab = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  # The logits are padded_vocab_size wide; a padding column (already masked by the model) is
  # excluded by name too, so no temperature can ever sample one as a pseudo token.
  allowed = ((vocab < ctx.model.config.vocab_size)
             & ~jnp.isin(vocab, jnp.asarray(ctx.special_ids, jnp.int32)))[None, :]
  if ctx.random_ranges is not None:
    # A vocabulary split by language: pseudo tokens come from the target language's pieces.
    ranges = jnp.asarray(ctx.random_ranges, jnp.int32)[target_lang]
    allowed = allowed & (vocab[None, :] >= ranges[:, :1]) & (vocab[None, :] < ranges[:, 1:])
  logits = jnp.where(allowed[:, None, :], logits, -jnp.inf)
  temperature = float(cfg["sample_temperature"])
  if temperature > 0:
    pseudo = jax.random.categorical(sample_rng, logits / temperature, axis=-1)
  else:
    pseudo = jnp.argmax(logits, axis=-1)
  pseudo = jax.lax.stop_gradient(pseudo.astype(layout.input_ids.dtype))
  # Spread the [B, M] slots back over [B, L] by gathering (slot j sits at index n + j): a
  # scatter could collide where clipped unused slots share an index with a used one.
  seq_len = layout.input_ids.shape[1]
  slot_of = jnp.clip(jnp.arange(seq_len, dtype=jnp.int32)[None, :] - layout.num_source[:, None],
                     0, pseudo.shape[1] - 1)
  spread = jnp.take_along_axis(pseudo, slot_of, axis=1)
  return Generation(jnp.where(layout.is_placeholder, spread, batch["input_ids"]), layout.lang_ids,
                    layout.position_ids, layout.is_source, layout.is_placeholder, target_lang)


def btmlm_step2(params, batch, generation: Generation, rng, ctx: ObjectiveContext):
  """Step 2: MLM on x next to its pseudo translation h. Returns (loss, metrics, masked)."""
  cfg = merged_config(ctx, default_config)
  mask_rng, dropout_rng = jax.random.split(rng)
  # Masks are chosen on the original row (x + padding), so h cannot move them: the labelled
  # positions are a function of x and the rng only.
  masked = mask_tokens(mask_rng, batch["input_ids"], batch["lang_ids"], ctx, cfg,
                       eligible=generation.is_source)
  ids = jnp.where(generation.is_placeholder, generation.input_ids, masked.input_ids)
  logits = ctx.model.apply(
      {"params": params}, ids, label_positions=masked.positions,
      position_ids=generation.position_ids, lang_ids=generation.lang_ids,
      attention_mask=patterns.btmlm_training_mask(generation.is_source, generation.is_placeholder),
      deterministic=not ctx.train, rngs={"dropout": dropout_rng})
  loss, metrics = weighted_cross_entropy(logits, masked.labels, masked.weights,
                                         cfg["label_smoothing"], ctx.model.config.vocab_size)
  return loss, metrics, masked


def btmlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """Both steps inside the loss (so inside the jitted train step); gradient only from step 2.
  No extra state."""
  cfg = merged_config(ctx, default_config)
  generation_rng, train_rng = jax.random.split(rng)
  generation = generate_pseudo_tokens(params, batch, generation_rng, ctx)
  loss, metrics, _ = btmlm_step2(params, batch, generation, train_rng, ctx)
  real_rows = jnp.any(generation.is_source, axis=1)
  num_rows = jnp.maximum(jnp.sum(real_rows), 1)
  placed = jnp.sum(generation.is_placeholder, axis=1)
  n = jnp.sum(generation.is_source, axis=1)
  wanted = jnp.ceil(cfg["placeholder_ratio"] * n.astype(jnp.float32))
  metrics["placeholders"] = jnp.sum(placed) / num_rows           # mean m per real row
  # Rows that got fewer placeholders than ceil(rho * n) for lack of padding room.
  metrics["placeholders_clipped"] = jnp.sum(real_rows & (placed < wanted)) / num_rows
  return loss, metrics, ctx.extra


def predictions_per_token(config, seq_len: int) -> float:
  """Step 1's placeholder slots plus step 2's masked slots, per token of a "sentences" row.

  Step 1's logits are forward-only (no gradient), so they cost about a third of a trained
  prediction; the count here is of logits computed, as the field's definition asks.
  """
  cfg = {**default_config(), **dict(config)}
  slots = max_placeholders(seq_len, cfg["placeholder_ratio"])
  return slots / seq_len + masked_predictions_per_token(cfg, seq_len)


OBJECTIVES.register("btmlm")(Objective(
    name="btmlm", batch_kind="sentences", loss_fn=btmlm_loss, default_config=default_config,
    predictions_per_token=predictions_per_token))
