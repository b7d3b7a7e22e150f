"""TLM: hand-checked position and language ids, masking over both sides, full pair attention."""

import jax
import numpy as np
import pytest

from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import attention_patterns
from xlm_jax.objectives.base import ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.mlm_core import mask_tokens
from xlm_jax.objectives.pair_inputs import pair_model_inputs
from xlm_jax.objectives.tlm import default_config, tlm_loss
from xlm_jax.registry import OBJECTIVES
import objective_checks as checks
from objective_checks import init_model_params, sgd_losses

PAD, MASK = 1, 4
SPECIALS = (0, 1, 2, 3, 4)
LANGS = ("en", "de", "fr")
CONFIG = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
                       max_positions=40, num_languages=3, dropout_rate=0.0,
                       attention_dropout_rate=0.0)
RANGES = np.asarray([[5, 25], [25, 45], [45, 64]], np.int32)   # a vocabulary split by language


def context(config=CONFIG, train=False, random_ranges=None, **overrides):
  return ObjectiveContext(model=Model(config), config={**default_config(), **overrides},
                          vocab_size=config.vocab_size, mask_id=MASK, pad_id=PAD,
                          special_ids=SPECIALS, languages=LANGS, train=train,
                          random_ranges=random_ranges, name="tlm")


def init_params(config=CONFIG, seed=0):
  return init_model_params(config, seed)


def pair_batch(pairs, length):
  return checks.pair_batch(pairs, length, pad=PAD)


def random_pairs(rows, seed, max_len=6, ranges=RANGES):
  """Pairs whose tokens lie in their language's id range; every fourth row is all padding."""
  rng = np.random.default_rng(seed)
  pairs = []
  for r in range(rows):
    x_lang, y_lang = rng.choice(3, size=2, replace=False)
    x = rng.integers(*ranges[x_lang], size=rng.integers(2, max_len + 1)).tolist()
    y = rng.integers(*ranges[y_lang], size=rng.integers(2, max_len + 1)).tolist()
    pairs.append((x, y, int(x_lang), int(y_lang)) if r % 4 != 3 else ([], [], 0, 0))
  batch = pair_batch(pairs, 2 * max_len + 6)
  empty = np.array([r % 4 == 3 for r in range(rows)])
  for key in batch:   # an all-padding row, as the last batch of an epoch may have
    batch[key][empty] = PAD if key in ("input_ids", "position_ids") else 0
  return batch


def test_registered():
  objective = OBJECTIVES.get("tlm")
  assert objective.batch_kind == "parallel" and objective.loss_fn is tlm_loss
  assert default_config()["reset_positions"] is True and "weight" in default_config()


@pytest.mark.parametrize("reset_positions", [True, False])
def test_position_and_language_ids_hand_checked(reset_positions):
  batch = pair_batch([([10, 11, 12], [30, 31], 1, 0)], length=12)
  np.testing.assert_array_equal(batch["input_ids"][0], [0, 10, 11, 12, 2, 2, 30, 31, 2, 1, 1, 1])
  inputs = jax.tree.map(np.asarray, pair_model_inputs(batch, context(), reset_positions))
  if reset_positions:   # y restarts at pad_id + 1 on its leading </s>, as x does on <s>
    expected_positions = [2, 3, 4, 5, 6, 2, 3, 4, 5, 1, 1, 1]
  else:
    expected_positions = [2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1, 1]
  np.testing.assert_array_equal(inputs["position_ids"][0], expected_positions)
  np.testing.assert_array_equal(inputs["lang_ids"][0], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
  # A model without language embeddings (XLM-R) gets no language ids.
  no_langs = EncoderConfig(**{**CONFIG.to_dict(), "num_languages": 0})
  assert "lang_ids" not in pair_model_inputs(batch, context(no_langs), reset_positions)


@pytest.mark.parametrize("reset_positions", [True, False])
def test_loss_uses_exactly_those_inputs(reset_positions):
  """tlm_loss equals the model run by hand on the hand-written ids and the full pair mask."""
  batch = pair_batch([([10, 11, 12, 13], [30, 31, 32], 1, 0), ([50, 51], [20, 21, 22], 2, 0)],
                     length=14)
  positions = np.array([[2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6, 1, 1, 1],
                        [2, 3, 4, 5, 2, 3, 4, 5, 6, 1, 1, 1, 1, 1]], np.int32)
  if not reset_positions:
    positions = batch["position_ids"]
  params, rng = init_params(), jax.random.key(3)
  ctx = context(reset_positions=reset_positions, mask_rate=0.4)
  loss, metrics, _ = jax.jit(lambda p, b, r: tlm_loss(p, b, r, ctx))(params, batch, rng)

  @jax.jit
  def by_hand(params, batch, positions):
    mask_rng, _ = jax.random.split(rng)
    masked = mask_tokens(mask_rng, batch["input_ids"], batch["lang_ids"], ctx, ctx.config,
                         eligible=batch["segment_ids"] != 0)
    real = batch["segment_ids"] != 0
    full = (real[:, :, None] & real[:, None, :])[:, None]
    logits = Model(CONFIG).apply({"params": params}, masked.input_ids,
                                 label_positions=masked.positions, position_ids=positions,
                                 lang_ids=batch["lang_ids"], attention_mask=full)
    return weighted_cross_entropy(logits, masked.labels, masked.weights)

  expected, expected_metrics = by_hand(params, batch, positions)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert metrics["weight"] == expected_metrics["weight"] > 0


def test_full_pair_mask_hand_checked():
  segment_ids = np.array([[1, 1, 2, 2, 0]])
  mask = np.asarray(attention_patterns.full_pair_mask(segment_ids))[0, 0].astype(int)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0]] * 4 + [[0, 0, 0, 0, 0]])


@pytest.mark.parametrize("ranges", [None, RANGES])
def test_masking_covers_both_sides(ranges):
  batch = random_pairs(rows=256, seed=1)
  # Mostly random replacements, so their ranges are checked on many draws.
  ctx = context(random_ranges=ranges, mask_token_rate=0.2, random_token_rate=0.7)
  masked = jax.jit(lambda r, b: mask_tokens(r, b["input_ids"], b["lang_ids"], ctx, ctx.config,
                                            eligible=b["segment_ids"] != 0))(
      jax.random.key(0), batch)
  ids, positions, weights = map(np.asarray, (masked.input_ids, masked.positions, masked.weights))
  rows = np.repeat(np.arange(len(ids))[:, None], positions.shape[1], 1)
  chosen = weights > 0
  side = batch["segment_ids"][rows[chosen], positions[chosen]]
  original = batch["input_ids"][rows[chosen], positions[chosen]]
  assert not np.isin(original, SPECIALS).any()        # never specials or padding
  # Both sides are masked, in proportion to their eligible tokens (15% of each, +-3 points).
  for s in (1, 2):
    eligible = np.sum((batch["segment_ids"] == s) & ~np.isin(batch["input_ids"], SPECIALS))
    assert abs(np.sum(side == s) / eligible - 0.15) < 0.03
  # Random replacements come from the masked token's own side's language range when the
  # vocabulary is split, else from anywhere above the specials.
  new = ids[rows[chosen], positions[chosen]]
  replaced = (new != MASK) & (new != original)
  assert replaced.sum() > 100
  if ranges is None:
    assert (new[replaced] >= 5).all() and (new[replaced] < 64).all()
  else:
    lang = batch["lang_ids"][rows[chosen], positions[chosen]][replaced]
    assert ((new[replaced] >= ranges[lang, 0]) & (new[replaced] < ranges[lang, 1])).all()
    assert len(set(lang.tolist())) == 3


def test_masked_x_sees_y():
  """Full attention: the logits at a masked x token depend on y (and on other x tokens)."""
  batch = pair_batch([([10, 11, 12], [30, 31, 32], 1, 0)], length=12)
  params, ctx = init_params(), context()
  masked_ids = batch["input_ids"].copy()
  masked_ids[0, 2] = MASK
  inputs = pair_model_inputs(batch, ctx, True)

  @jax.jit
  def logits_at_x(ids):
    return (Model(CONFIG).apply(
        {"params": params}, ids, label_positions=np.array([[2]]),
        attention_mask=attention_patterns.full_pair_mask(batch["segment_ids"]), **inputs))

  base = logits_at_x(masked_ids)
  changed_y = masked_ids.copy()
  changed_y[0, 6] = 40
  changed_x = masked_ids.copy()
  changed_x[0, 1] = 20
  assert np.abs(logits_at_x(changed_y) - base).max() > 1e-4
  assert np.abs(logits_at_x(changed_x) - base).max() > 1e-4


def test_loss_decreases_and_is_finite_with_padding_rows():
  batch = random_pairs(rows=8, seed=2)
  assert (batch["segment_ids"][3] == 0).all()
  ctx = context(train=True, random_ranges=RANGES)
  # A repeated batch: the same masks every step.
  losses, metrics = sgd_losses(tlm_loss, init_params(), batch, ctx)
  assert losses[-1] < losses[0] - 0.3, losses
  assert 0 <= metrics["accuracy"] <= 1 and metrics["weight"] > 0
