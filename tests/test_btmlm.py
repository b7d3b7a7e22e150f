"""BTMLM: placeholder layout, step-1 isolation of x, no gradient through step 1, x-only labels."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax.models import attention
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import attention_patterns as patterns
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.btmlm import (btmlm_loss, btmlm_step2, default_config,
                                      generate_pseudo_tokens, max_placeholders,
                                      placeholder_layout, sample_target_languages)
from xlm_jax.registry import OBJECTIVES
from objective_checks import init_model_params, sentence_batch, sgd_losses

PAD, MASK = 1, 4
SPECIALS = (0, 1, 2, 3, 4)
LANGS = ("en", "de", "fr")
CONFIG = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
                       max_positions=40, num_languages=3, dropout_rate=0.0,
                       attention_dropout_rate=0.0)
# Large initial weights so that any leak would move hidden states far above float noise.
LOUD = dataclasses.replace(CONFIG, initializer_range=0.5)
RANGES = np.asarray([[5, 25], [25, 45], [45, 64]], np.int32)   # a vocabulary split by language


def context(config=CONFIG, train=False, random_ranges=None, **overrides):
  return ObjectiveContext(model=Model(config), config={**default_config(), **overrides},
                          vocab_size=64, mask_id=MASK, pad_id=PAD, special_ids=SPECIALS,
                          languages=LANGS, train=train, random_ranges=random_ranges,
                          name="btmlm")


def init_params(config=CONFIG, seed=0):
  return init_model_params(config, seed)


BATCH = sentence_batch([([10, 11, 12, 13], 1), ([30, 31, 32], 0), None, ([50, 51, 52, 53, 54], 2),
                        ([20, 21, 22, 23, 24, 25], 1)], length=16)


def test_registered():
  objective = OBJECTIVES.get("btmlm")
  assert objective.batch_kind == "sentences" and objective.loss_fn is btmlm_loss
  assert {"weight", "placeholder_ratio", "sample_temperature",
          "target_languages"} <= set(default_config())


def test_placeholder_layout_hand_checked():
  batch = sentence_batch([([10, 11], 1), ([20, 21, 22, 23, 24, 25, 26, 27], 0), None], length=12)
  layout = jax.tree.map(np.asarray, placeholder_layout(
      batch, jnp.array([2, 1, 0]), context(placeholder_ratio=0.5)))
  # Row 0: n = 4 -> m = ceil(0.5 * 4) = 2 placeholders right after x, target language 2,
  # positions continuing after x's last (5).
  np.testing.assert_array_equal(layout.input_ids[0], [0, 10, 11, 2, 4, 4, 1, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(layout.lang_ids[0], [1, 1, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(layout.position_ids[0], [2, 3, 4, 5, 6, 7, 1, 1, 1, 1, 1, 1])
  # Row 1: n = 10 wants 5 but only 2 padding slots are free.
  np.testing.assert_array_equal(layout.input_ids[1], [0, 20, 21, 22, 23, 24, 25, 26, 27, 2, 4, 4])
  np.testing.assert_array_equal(layout.lang_ids[1], [0] * 10 + [1, 1])
  np.testing.assert_array_equal(layout.position_ids[1], np.arange(12) + 2)
  # Row 2 is padding: no placeholders.
  assert not layout.is_placeholder[2].any() and (layout.input_ids[2] == PAD).all()
  np.testing.assert_array_equal(layout.is_source.sum(1), [4, 10, 0])
  np.testing.assert_array_equal(layout.is_placeholder.sum(1), [2, 2, 0])
  # max over n of min(ceil(n / 2), 12 - n) is 4 (n = 7, 8), plus one spare slot.
  assert max_placeholders(12, 0.5) == 5 == layout.slot_positions.shape[1]
  np.testing.assert_array_equal(layout.slot_positions[0], [4, 5, 6, 7, 8])


def test_generation_mask_hand_checked():
  is_source = np.array([[1, 1, 0, 0, 0]], bool)
  is_placeholder = np.array([[0, 0, 1, 1, 0]], bool)
  mask = np.asarray(patterns.btmlm_generation_mask(is_source, is_placeholder))[0, 0].astype(int)
  np.testing.assert_array_equal(mask, [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0],
                                       [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
  full = np.asarray(patterns.btmlm_training_mask(is_source, is_placeholder))[0, 0].astype(int)
  np.testing.assert_array_equal(full, [[1, 1, 1, 1, 0]] * 4 + [[0, 0, 0, 0, 0]])


def test_placeholders_never_influence_x_in_step_one():
  ctx, params = context(LOUD), init_params(LOUD)
  layout = jax.jit(lambda t: placeholder_layout(BATCH, t, ctx))(jnp.array([0, 2, 0, 1, 2]))

  @jax.jit
  def encode(ids, lang_ids, mask):
    return Model(LOUD).apply({"params": params}, ids, position_ids=layout.position_ids,
                             lang_ids=lang_ids, attention_mask=mask, method=Model.encode)

  step_one = patterns.btmlm_generation_mask(layout.is_source, layout.is_placeholder)
  base = np.asarray(encode(layout.input_ids, layout.lang_ids, step_one))
  ph = np.asarray(layout.is_placeholder)
  src = np.asarray(layout.is_source)
  other_ids = np.where(ph, np.arange(16) + 30, layout.input_ids)
  other_langs = np.where(ph, (np.asarray(layout.lang_ids) + 1) % 3, layout.lang_ids)
  changed = np.asarray(encode(other_ids, other_langs, step_one))
  np.testing.assert_array_equal(changed[src], base[src])        # x: bit-for-bit the same
  assert np.abs(changed[ph] - base[ph]).max(axis=-1).min() > 1e-2   # placeholders: changed
  # And x's states are those of x alone (no placeholders in the row at all).
  alone = np.asarray(encode(BATCH["input_ids"], BATCH["lang_ids"],
                            attention.segment_mask(BATCH["segment_ids"])))
  np.testing.assert_allclose(alone[src], base[src], atol=1e-6)


def test_no_gradient_flows_through_step_one():
  """grad of the full loss == grad of step 2 alone with the pseudo tokens held fixed."""
  ctx, params = context(train=True), init_params()
  rng = jax.random.key(3)
  generation_rng, train_rng = jax.random.split(rng)

  @jax.jit   # one compilation for all three
  def both(params):
    generation = generate_pseudo_tokens(params, BATCH, generation_rng, ctx)
    fixed = jax.tree.map(jax.lax.stop_gradient, generation)   # h held fixed: plain constants
    full = jax.grad(lambda p: btmlm_loss(p, BATCH, rng, ctx)[0])(params)
    step_two = jax.grad(lambda p: btmlm_step2(p, BATCH, fixed, train_rng, ctx)[0])(params)
    return full, step_two

  full, step_two = both(params)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(step_two)):
    np.testing.assert_array_equal(a, b)
  assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(full)) > 0


def test_step_two_labels_only_x_whatever_h():
  ctx, params = context(LOUD, mask_rate=0.4), init_params(LOUD)
  generation = jax.jit(lambda r: generate_pseudo_tokens(params, BATCH, r, ctx))(jax.random.key(1))
  ph = np.asarray(generation.is_placeholder)
  other = generation._replace(
      input_ids=jnp.where(ph, (np.asarray(generation.input_ids) + 7) % 59 + 5,
                          generation.input_ids))
  step_two = jax.jit(lambda g: btmlm_step2(params, BATCH, g, jax.random.key(2), ctx))
  loss, metrics, masked = step_two(generation)
  other_loss, _, other_masked = step_two(other)
  for a, b in zip(masked, other_masked):   # which positions, labels and weights: unchanged
    if a is not masked.input_ids:
      np.testing.assert_array_equal(a, b)
  chosen = np.asarray(masked.weights) > 0
  rows = np.repeat(np.arange(len(ph))[:, None], chosen.shape[1], 1)
  labelled = np.asarray(masked.positions)[chosen]
  assert np.asarray(generation.is_source)[rows[chosen], labelled].all()   # inside x only
  assert not np.isin(BATCH["input_ids"][rows[chosen], labelled], SPECIALS).any()
  assert metrics["weight"] == chosen.sum() >= 5
  assert abs(float(loss) - float(other_loss)) > 1e-3      # x does attend to h in step 2


@pytest.mark.parametrize("temperature, ranges", [(1.0, None), (0.0, RANGES)])
def test_pseudo_tokens_are_never_special(temperature, ranges):
  params = init_params()
  # A head that prefers special ids above everything: they must still never be produced.
  bias = params["lm_head"]["bias"].at[jnp.asarray(SPECIALS)].set(50.0)
  params = {**params, "lm_head": {**params["lm_head"], "bias": bias}}
  ctx = context(sample_temperature=temperature, random_ranges=ranges)
  generation = jax.tree.map(np.asarray, jax.jit(
      lambda r: generate_pseudo_tokens(params, BATCH, r, ctx))(jax.random.key(4)))
  h = generation.input_ids[generation.is_placeholder]
  assert h.size == 6 + 5 + 7 + 8 and not np.isin(h, SPECIALS).any()   # m = n: all rows fit
  np.testing.assert_array_equal(generation.lang_ids[generation.is_placeholder],
                                np.repeat(generation.target_lang, generation.is_placeholder.sum(1)))
  if ranges is not None:
    h_lang = generation.lang_ids[generation.is_placeholder]
    assert ((h >= ranges[h_lang, 0]) & (h < ranges[h_lang, 1])).all()


def test_target_languages_sampled_per_row():
  source = np.arange(600, dtype=np.int32) % 3
  rng = jax.random.key(0)

  def sample(target_languages):
    cfg = {"target_languages": target_languages}
    return np.asarray(jax.jit(lambda r, s: sample_target_languages(r, s, cfg, context()))(
        rng, source))

  target = sample(None)
  assert (target != source).all()                       # default: any language but the row's
  for lang in range(3):
    share = np.mean(target[source == lang] == (lang + 1) % 3)
    assert 0.4 < share < 0.6                            # uniform over the two others
  np.testing.assert_array_equal(sample(["en"]), 0)      # en rows keep en: the only target
  de_fr = sample(["de", "fr"])
  assert set(de_fr[source == 0]) == {1, 2}
  np.testing.assert_array_equal(de_fr[source == 1], 2)
  np.testing.assert_array_equal(de_fr[source == 2], 1)
  np.testing.assert_array_equal(sample("de, fr"), de_fr)   # a command-line string
  with pytest.raises(ValueError, match="target_languages"):
    sample(["xx"])


def test_requires_language_embeddings():
  no_langs = dataclasses.replace(CONFIG, num_languages=0)
  with pytest.raises(ValueError, match="num_languages"):   # at trace time, before any compute
    jax.jit(lambda p: btmlm_loss(p, BATCH, jax.random.key(0), context(no_langs)))({})


def test_loss_decreases_and_is_finite_with_padding_rows():
  ctx = context(train=True)
  # A repeated batch: the same masks every step.
  losses, metrics = sgd_losses(btmlm_loss, init_params(), BATCH, ctx)
  assert losses[-1] < losses[0] - 0.3, losses
  # Rows of n = 6, 5, 7, 8 real tokens in L = 16: ratio 1 fits all but the last (8 of 8 fit).
  np.testing.assert_allclose(metrics["placeholders"], (6 + 5 + 7 + 8) / 4)
  assert metrics["placeholders_clipped"] == 0 and metrics["weight"] > 0
