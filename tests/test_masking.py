"""MLM masking statistics and the MLM loss against hand-computed values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives.base import ObjectiveContext, weighted_cross_entropy
from xlm_jax.objectives.masking import max_predictions, mlm_mask
from xlm_jax.objectives.mlm import default_config, mlm_loss

SPECIALS = (0, 1, 2, 3, 4)
VOCAB = 1000


def _stream_batch(rows=256, length=128, seed=0):
  """Rows like the pipeline's: <s> + sentences separated by </s>, padding at the end of some."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, size=(rows, length)).astype(np.int32)
  ids[:, 0] = 0
  ids[rng.random((rows, length)) < 0.06] = 2           # sentence separators
  for r in range(0, rows, 4):                          # a quarter of the rows end in padding
    ids[r, length - rng.integers(1, 40):] = 1
  return ids


def test_masking_statistics():
  ids = _stream_batch()
  out = jax.jit(lambda r, x: mlm_mask(r, x, special_ids=SPECIALS, mask_id=4, vocab_size=VOCAB))(
      jax.random.PRNGKey(0), jnp.asarray(ids))
  corrupted, positions, labels, weights = map(np.asarray, out)
  chosen = weights > 0
  rows = np.repeat(np.arange(ids.shape[0])[:, None], positions.shape[1], 1)
  eligible = ~np.isin(ids, SPECIALS)

  # Specials are never chosen, and labels are the original tokens.
  assert eligible[rows[chosen], positions[chosen]].all()
  np.testing.assert_array_equal(labels[chosen], ids[rows[chosen], positions[chosen]])
  # No position is chosen twice in a row.
  for r in range(ids.shape[0]):
    p = positions[r][chosen[r]]
    assert len(set(p.tolist())) == len(p)
  # Per-row count is floor or ceil of 15% of eligible tokens (unbiased rounding) ...
  per_row = chosen.sum(1)
  target = 0.15 * eligible.sum(1)
  assert np.all((per_row == np.floor(target)) | (per_row == np.ceil(target)))
  # ... so overall 15% of eligible tokens, within 0.5 percentage point.
  assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.005
  # 80 / 10 / 10 among chosen positions (tolerance: 4 standard errors at ~4.8k draws).
  new = corrupted[rows[chosen], positions[chosen]]
  orig = labels[chosen]
  n = chosen.sum()
  frac_mask = np.mean(new == 4)
  frac_same = np.mean(new == orig)
  frac_random = 1 - frac_mask - frac_same
  assert abs(frac_mask - 0.8) < 4 * np.sqrt(0.8 * 0.2 / n)
  assert abs(frac_same - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n) + 1 / VOCAB
  assert abs(frac_random - 0.1) < 4 * np.sqrt(0.1 * 0.9 / n)
  # Random replacements are real, non-special pieces.
  replaced = new[(new != 4) & (new != orig)]
  assert replaced.min() >= 5 and replaced.max() < VOCAB
  # Positions not chosen are untouched.
  untouched = np.ones_like(ids, bool)
  untouched[rows[chosen], positions[chosen]] = False
  np.testing.assert_array_equal(corrupted[untouched], ids[untouched])
  assert positions.shape[1] == max_predictions(128, 0.15)


def test_masking_changes_with_rng_and_respects_eligible():
  ids = jnp.asarray(_stream_batch(rows=8))
  fn = jax.jit(lambda r, x, e: mlm_mask(r, x, special_ids=SPECIALS, mask_id=4, vocab_size=VOCAB,
                                        eligible=e))
  everywhere = jnp.ones(ids.shape, bool)
  a = fn(jax.random.PRNGKey(1), ids, everywhere)
  b = fn(jax.random.PRNGKey(2), ids, everywhere)
  assert not np.array_equal(np.asarray(a.positions), np.asarray(b.positions))
  first_half = jnp.arange(ids.shape[1])[None, :] < 64
  c = fn(jax.random.PRNGKey(1), ids, jnp.broadcast_to(first_half, ids.shape))
  chosen = np.asarray(c.weights) > 0
  assert np.asarray(c.positions)[chosen].max() < 64


def test_weighted_cross_entropy_hand_computed():
  # softmax(log([1, 2, 1])) = [.25, .5, .25]
  logits = jnp.log(jnp.asarray([[[1.0, 2.0, 1.0], [1.0, 2.0, 1.0], [3.0, 1.0, 0.0]]]))
  labels = jnp.asarray([[1, 0, 0]])
  weights = jnp.asarray([[1.0, 1.0, 0.0]])   # third position is a padding slot
  loss, metrics = weighted_cross_entropy(logits, labels, weights)
  expected = (-np.log(0.5) - np.log(0.25)) / 2
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  assert float(metrics["accuracy"]) == 0.5      # argmax is 1: right once out of two
  assert float(metrics["weight"]) == 2.0
  smoothed, _ = weighted_cross_entropy(logits[:, :1], labels[:, :1], weights[:, :1], 0.1)
  # (1-eps) * -log p(y) + eps * mean_k -log p(k)
  by_hand = 0.9 * -np.log(0.5) + 0.1 * np.mean(-np.log([0.25, 0.5, 0.25]))
  np.testing.assert_allclose(float(smoothed), by_hand, rtol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mlm_loss_equals_numpy_recomputation(label_smoothing):
  """The gathered-head loss equals log-softmax of full-sequence logits at the masked positions."""
  config = EncoderConfig(vocab_size=97, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                         max_positions=40, dropout_rate=0.0, attention_dropout_rate=0.0)
  model = Model(config)
  rng = np.random.default_rng(3)
  ids = rng.integers(5, 97, size=(4, 24)).astype(np.int32)
  ids[:, 0] = 0
  batch = {"input_ids": jnp.asarray(ids), "segment_ids": jnp.ones_like(ids),
           "position_ids": jnp.asarray(np.tile(np.arange(2, 26), (4, 1)), jnp.int32),
           "lang_ids": jnp.zeros_like(ids)}
  params = model.init(jax.random.PRNGKey(0), batch["input_ids"],
                      label_positions=jnp.zeros((4, 1), jnp.int32))["params"]
  cfg = dict(default_config(), label_smoothing=label_smoothing)
  ctx = ObjectiveContext(model=model, config=cfg, vocab_size=97, mask_id=4, pad_id=1,
                         special_ids=SPECIALS, languages=("en",), train=False)
  key = jax.random.PRNGKey(7)
  loss, metrics, _ = mlm_loss(params, batch, key, ctx)

  # Recompute by hand: same mask draw, full-sequence logits, NumPy log-softmax.
  masked = mlm_mask(jax.random.split(key)[0], batch["input_ids"], special_ids=SPECIALS, mask_id=4,
                    vocab_size=97)
  all_positions = jnp.tile(jnp.arange(24), (4, 1))
  logits = np.asarray(model.apply({"params": params}, masked.input_ids,
                                  label_positions=all_positions,
                                  position_ids=batch["position_ids"],
                                  segment_ids=batch["segment_ids"]), np.float64)
  # The 97 real columns: the padding ones (97 -> 128) have probability 0 and take no share of
  # the label smoothing.
  logits = logits[..., :config.vocab_size]
  log_p = logits - logits.max(-1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
  total, count = 0.0, 0
  for r in range(4):
    for slot in range(masked.positions.shape[1]):
      if masked.weights[r, slot] > 0:
        row = log_p[r, int(masked.positions[r, slot])]
        nll = -row[int(masked.labels[r, slot])]
        total += (1 - label_smoothing) * nll + label_smoothing * np.mean(-row)
        count += 1
  np.testing.assert_allclose(float(loss), total / count, rtol=2e-5)
  assert int(metrics["weight"]) == count
