"""CAMLM: the exact two-pass mode predicts x only from y (no leak through x), single pass leaks."""

import jax
import numpy as np
import pytest

from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import attention_patterns as patterns
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.camlm import camlm_logits, camlm_loss, default_config
from xlm_jax.objectives.mlm_core import mask_tokens
from xlm_jax.registry import OBJECTIVES
import objective_checks as checks
from objective_checks import init_model_params, sgd_losses

PAD, MASK = 1, 4
SPECIALS = (0, 1, 2, 3, 4)
# A large initializer_range: at the default 0.02 the two-hop path x -> y -> x moves logits by
# only ~1e-6, too little to tell a leak from float noise; at 0.5 it moves them by ~1e-1.
CONFIG = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
                       max_positions=40, num_languages=3, dropout_rate=0.0,
                       attention_dropout_rate=0.0, initializer_range=0.5)


def context(train=False, **overrides):
  return ObjectiveContext(model=Model(CONFIG), config={**default_config(), **overrides},
                          vocab_size=64, mask_id=MASK, pad_id=PAD, special_ids=SPECIALS,
                          languages=("en", "de", "fr"), train=train, name="camlm")


def init_params(seed=0):
  return init_model_params(CONFIG, seed)


def pair_batch(pairs, length):
  return checks.pair_batch(pairs, length, pad=PAD)


BATCH = pair_batch([([10, 11, 12, 13, 14], [30, 31, 32, 33], 1, 0),
                    ([20, 21, 22], [40, 41, 42, 43, 44, 45], 2, 0),
                    ([50, 51, 52, 53], [15, 16, 17], 0, 1),
                    ([], [], 0, 0)], length=16)
BATCH["input_ids"][3], BATCH["segment_ids"][3], BATCH["lang_ids"][3] = PAD, 0, 0   # padding row
BATCH["position_ids"][3] = PAD


def test_registered():
  objective = OBJECTIVES.get("camlm")
  assert objective.batch_kind == "parallel" and objective.loss_fn is camlm_loss
  assert default_config()["camlm_mode"] == "two_pass" and "weight" in default_config()


def test_masks_hand_checked():
  segment_ids = np.array([[1, 1, 2, 2, 0]])   # x x y y pad
  as_int = lambda m: np.asarray(m)[0, 0].astype(int)
  np.testing.assert_array_equal(as_int(patterns.camlm_two_pass_mask(segment_ids, 1)), [
      [1, 0, 1, 1, 0],     # x-queries: y-keys and self, never the other x
      [0, 1, 1, 1, 0],
      [0, 0, 1, 1, 0],     # y-queries: y only
      [0, 0, 1, 1, 0],
      [0, 0, 0, 0, 0]])    # padding query: nothing
  np.testing.assert_array_equal(as_int(patterns.camlm_two_pass_mask(segment_ids, 2)), [
      [1, 1, 0, 0, 0],
      [1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0],
      [1, 1, 0, 1, 0],
      [0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(as_int(patterns.camlm_single_pass_mask(segment_ids)), [
      [1, 0, 1, 1, 0],
      [0, 1, 1, 1, 0],
      [1, 1, 1, 0, 0],
      [1, 1, 0, 1, 0],
      [0, 0, 0, 0, 0]])


def _masked_pair(ctx):
  """BATCH corrupted by the objective's own masking (high rate: several masks per side)."""
  masked = jax.jit(lambda r, b: mask_tokens(r, b["input_ids"], b["lang_ids"], ctx, ctx.config,
                                            eligible=b["segment_ids"] != 0))(
      jax.random.key(7), BATCH)
  return jax.tree.map(np.asarray, masked)


def _change_unmasked(ids, masked, side):
  """Replaces every non-special token of `side` that is not a label slot by another id."""
  chosen = np.zeros(ids.shape, bool)
  rows = np.repeat(np.arange(len(ids))[:, None], masked.positions.shape[1], 1)
  chosen[rows[masked.weights > 0], masked.positions[masked.weights > 0]] = True
  target = (BATCH["segment_ids"] == side) & ~np.isin(BATCH["input_ids"], SPECIALS) & ~chosen
  assert target.sum() >= 4
  changed = ids.copy()
  changed[target] = 5 + (ids[target] + 17) % 59
  return changed


@pytest.mark.parametrize("mode", ["two_pass", "single_pass"])
def test_masked_x_depends_on_y_and_only_in_two_pass_not_on_x(mode):
  ctx = context(camlm_mode=mode, mask_rate=0.4)
  masked = _masked_pair(ctx)
  params = init_params()
  logits_fn = jax.jit(lambda ids: camlm_logits(params, ids, BATCH, masked.positions,
                                               jax.random.key(0), ctx))
  side = np.take_along_axis(BATCH["segment_ids"], masked.positions, 1)
  at_x = (masked.weights > 0) & (side == 1)
  at_y = (masked.weights > 0) & (side == 2)
  assert at_x.sum() >= 3 and at_y.sum() >= 3
  base = np.asarray(logits_fn(masked.input_ids))

  other_x = np.asarray(logits_fn(_change_unmasked(masked.input_ids, masked, side=1)))
  other_y = np.asarray(logits_fn(_change_unmasked(masked.input_ids, masked, side=2)))
  # Every masked x token sees y, in both modes.
  assert np.abs(other_y[at_x] - base[at_x]).max(axis=-1).min() > 1e-2
  if mode == "two_pass":
    # Exact: changing the rest of x leaves the masked-x logits bit-for-bit unchanged (masked
    # keys get exactly zero weight), and symmetrically for y; each side still sees the other.
    np.testing.assert_array_equal(other_x[at_x], base[at_x])
    np.testing.assert_array_equal(other_y[at_y], base[at_y])
    assert np.abs(other_x[at_y] - base[at_y]).max(axis=-1).min() > 1e-2
  else:
    # Single pass, 2 layers: x -> y -> x, so the rest of x reaches every masked x token.
    assert np.abs(other_x[at_x] - base[at_x]).max(axis=-1).min() > 1e-2


def test_bad_mode_is_rejected():
  with pytest.raises(ValueError, match="camlm_mode"):
    camlm_loss(init_params(), BATCH, jax.random.key(0), context(camlm_mode="both"))


@pytest.mark.parametrize("mode", ["two_pass", "single_pass"])
def test_loss_decreases_and_is_finite_with_padding_rows(mode):
  ctx = context(train=True, camlm_mode=mode)
  # A repeated batch: the same masks every step.
  losses, metrics = sgd_losses(camlm_loss, init_params(), BATCH, ctx)
  assert losses[-1] < losses[0] - 0.3, losses
  assert metrics["weight"] > 0
