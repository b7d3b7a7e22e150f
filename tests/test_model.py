"""Encoder and MLM head: masks, positions, scan/remat equivalence, tied decoder, axis names."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax.models import attention
from xlm_jax.models.encoder import EncoderConfig, Model, count_params, flops_per_token

PAD = 1
TINY = EncoderConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                     max_positions=24, dropout_rate=0.0, attention_dropout_rate=0.0)


# Jitted helpers: one compilation per config is much faster than running the model op by op.
@functools.partial(jax.jit, static_argnames=("config",))
def init(config):
  """Parameters do not depend on the input shape, so one init per config serves every test."""
  ids = jnp.zeros((1, 4), jnp.int32)
  return nn.meta.unbox(Model(config).init(jax.random.key(0), ids, lang_ids=ids)["params"])


@functools.partial(jax.jit, static_argnames=("config", "deterministic", "return_all_layers"))
def encode(config, params, input_ids, deterministic=True, return_all_layers=False, rngs=None,
           **inputs):
  return Model(config).apply({"params": params}, input_ids, method=Model.encode, rngs=rngs,
                             deterministic=deterministic, return_all_layers=return_all_layers,
                             **inputs)


@functools.partial(jax.jit, static_argnames=("config",))
def logits_at(config, params, input_ids, label_positions, **inputs):
  return Model(config).apply({"params": params}, input_ids, label_positions=label_positions,
                             **inputs)


def int32(rows):
  # Inputs are numpy: building them with jnp would compile a kernel per eager op.
  return np.asarray(rows, np.int32)


def random_ids(seed, shape, low=5, high=40):
  return int32(np.random.default_rng(seed).integers(low, high, size=shape))


def replaced(ids, index, value):
  changed = ids.copy()
  changed[index] = value
  return changed


# --- position ids and masks ---------------------------------------------------------------


def test_xlmr_position_ids_hand_checked():
  ids = int32([[0, 7, 8, 2, PAD, PAD], [PAD, PAD, 0, 9, 2, 2]])
  expected = [[2, 3, 4, 5, 1, 1], [1, 1, 2, 3, 4, 5]]  # left padding does not shift positions
  np.testing.assert_array_equal(attention.xlmr_position_ids(ids, PAD), expected)


def test_segment_position_ids_restart_per_segment():
  segments = int32([[1, 1, 1, 2, 2, 0, 0], [1, 2, 2, 3, 3, 3, 0]])
  expected = [[2, 3, 4, 2, 3, 1, 1], [2, 2, 3, 2, 3, 4, 1]]
  np.testing.assert_array_equal(attention.segment_position_ids(segments, PAD), expected)


def test_mask_helpers_hand_checked():
  ids = int32([[0, 7, PAD]])
  np.testing.assert_array_equal(attention.padding_mask(ids, PAD)[0, 0],
                                [[1, 1, 0], [1, 1, 0], [1, 1, 0]])
  seg = attention.segment_mask(int32([[1, 2, 2, 0]]))
  assert seg.shape == (1, 1, 4, 4) and seg.dtype == jnp.bool_
  np.testing.assert_array_equal(seg[0, 0], [[1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
  both = attention.combine_masks(seg, None, jnp.tril(jnp.ones((4, 4), bool))[None, None])
  np.testing.assert_array_equal(both[0, 0], [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
  assert attention.combine_masks(None, None) is None
  with pytest.raises(ValueError, match="boolean"):
    attention.combine_masks(seg.astype(jnp.int32))


def test_padding_matches_unpadded_sequence():
  # Default mask and positions: a padded row gives the same real-token outputs as the row alone.
  ids = random_ids(0, (1, 5))
  params = init(TINY)
  alone = encode(TINY, params, ids)
  padded = encode(TINY, params, np.concatenate([ids, int32([[PAD] * 3])], axis=1))
  np.testing.assert_allclose(padded[:, :5], alone, atol=1e-5)
  assert np.isfinite(np.asarray(padded)).all()


def test_padded_keys_get_no_attention_weight():
  ids = int32([[0, 9, 10, 11, 2, PAD, PAD, PAD]])
  params = init(TINY)
  mask = attention.padding_mask(ids, PAD)
  positions = attention.xlmr_position_ids(ids, PAD)
  base = encode(TINY, params, ids, attention_mask=mask, position_ids=positions)
  changed_ids = replaced(ids, (0, slice(5, None)), [30, 31, 32])  # new tokens under the same mask
  changed = encode(TINY, params, changed_ids, attention_mask=mask, position_ids=positions)
  np.testing.assert_allclose(changed[:, :5], base[:, :5], atol=1e-6)
  assert not np.allclose(changed[:, 5:], base[:, 5:])


def test_segments_are_isolated():
  segments = int32([[1, 1, 1, 1, 2, 2, 2, 0]])
  ids = int32([[0, 9, 10, 2, 0, 11, 2, PAD]])
  positions = attention.segment_position_ids(segments, PAD)
  params = init(TINY)
  run = lambda x: encode(TINY, params, x, segment_ids=segments, position_ids=positions)
  base = run(ids)
  changed = run(replaced(ids, (0, 5), 33))
  np.testing.assert_allclose(changed[:, :4], base[:, :4], atol=1e-6)
  assert not np.allclose(changed[:, 4:7], base[:, 4:7])
  # Segment 2 with restarted positions is exactly the sentence encoded on its own.
  np.testing.assert_allclose(base[:, 4:7], encode(TINY, params, ids[:, 4:7]), atol=1e-5)
  assert np.isfinite(np.asarray(base)).all()  # the padding query has an all-False row


def test_arbitrary_mask_is_honoured():
  # With one layer, output i depends on token j only through mask[i, j].
  config = dataclasses.replace(TINY, num_layers=1)
  length = 7
  rng = np.random.default_rng(3)
  mask = rng.random((1, length, length)) < 0.5
  mask[0, np.arange(length), np.arange(length)] = True
  mask[0, 2, :] = False  # a fully masked query row must stay finite
  ids = random_ids(1, (1, length))
  params = init(TINY)  # the one-layer model is TINY without its second layer
  params = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k != "layer_1"}}
  run = lambda x, m=mask: encode(config, params, x, attention_mask=m)
  base = run(ids)
  assert np.isfinite(np.asarray(base)).all()
  np.testing.assert_allclose(run(ids, mask[:, None]), base)  # [B, L, L] == [B, 1, L, L]
  per_head = np.repeat(mask[:, None], config.num_heads, axis=1)  # [B, H, L, L]
  np.testing.assert_allclose(run(ids, per_head), base, atol=1e-6)
  query = 4
  hidden = np.asarray(~mask[0, query]).nonzero()[0]
  visible = [j for j in np.asarray(mask[0, query]).nonzero()[0] if j != query]
  assert len(hidden) and len(visible)
  np.testing.assert_allclose(run(replaced(ids, (0, hidden), 39))[0, query], base[0, query], atol=1e-6)
  assert not np.allclose(run(replaced(ids, (0, visible[0]), 39))[0, query], base[0, query])


def test_mask_validation_errors():
  ids = random_ids(0, (1, 4))
  params = init(TINY)
  with pytest.raises(ValueError, match="boolean"):
    encode(TINY, params, ids, attention_mask=np.ones((1, 1, 4, 4), np.int32))
  with pytest.raises(ValueError, match="shape"):
    encode(TINY, params, ids, attention_mask=np.ones((1, 1, 4, 5), bool))


def test_attention_with_dropout_rate_zero_equals_fused_attention():
  rng = np.random.default_rng(4)
  q, k, v = (rng.normal(size=(2, 5, 2, 4)).astype(np.float32) for _ in range(3))
  mask = rng.random((2, 1, 5, 5)) < 0.6
  mask[0, 0, 1] = False  # a fully masked query row
  explicit = jax.jit(attention.attention_with_dropout, static_argnums=4)(
      q, k, v, mask, 0.0, jax.random.key(0))
  fused = jax.jit(jax.nn.dot_product_attention)(q, k, v, mask=mask)
  np.testing.assert_allclose(explicit, fused, atol=1e-5)
  assert np.isfinite(np.asarray(explicit)).all()


def test_attention_dropout_path_is_random_and_finite():
  config = dataclasses.replace(TINY, attention_dropout_rate=0.5)
  ids = int32([[0, 9, 10, 2, PAD, PAD]])
  segments = int32([[1, 1, 1, 1, 0, 0]])
  params = init(TINY)  # same parameters; rates are not parameters
  run = lambda seed: encode(config, params, ids, segment_ids=segments, deterministic=False,
                            rngs={"dropout": jax.random.key(seed)})
  a, b = run(0), run(1)
  assert np.isfinite(np.asarray(a)).all()
  np.testing.assert_array_equal(a, run(0))
  assert not np.allclose(a, b)


# --- scan and remat -----------------------------------------------------------------------


def stack_layers(params, num_layers):
  """Unscanned params (layer_0..layer_{n-1}) -> the scanned layout (layers, stacked on axis 0)."""
  encoder = dict(params["encoder"])
  layers = [encoder.pop(f"layer_{i}") for i in range(num_layers)]
  encoder["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return {**params, "encoder": encoder}


@functools.partial(jax.jit, static_argnames=("config",))
def mlm_loss_and_grads(config, params, ids, positions):
  def loss(p):
    return jnp.sum(jax.nn.log_softmax(logits_at(config, p, ids, positions))[..., 7])
  return jax.value_and_grad(loss)(params)


GRAD_IDS = int32([[0, 9, 10, 11, 2, PAD], [0, 12, 2, PAD, PAD, PAD]])
GRAD_POSITIONS = int32([[1, 3], [1, 2]])


def test_scan_layers_equals_unrolled_layers():
  ids = GRAD_IDS
  params = init(TINY)
  scanned_config = dataclasses.replace(TINY, scan_layers=True)
  scanned = stack_layers(params, TINY.num_layers)
  # Same tree structure as a scanned model's own init.
  expected = jax.tree.structure(jax.eval_shape(lambda: init(scanned_config)))
  assert jax.tree.structure(scanned) == expected
  hidden, layers = encode(TINY, params, ids, return_all_layers=True)
  s_hidden, s_layers = encode(scanned_config, scanned, ids, return_all_layers=True)
  np.testing.assert_allclose(s_hidden, hidden, atol=1e-5)
  assert len(s_layers) == len(layers) == TINY.num_layers + 1
  for a, b in zip(s_layers, layers):
    np.testing.assert_allclose(a, b, atol=1e-5)
  positions = GRAD_POSITIONS
  loss, grads = mlm_loss_and_grads(TINY, params, ids, positions)
  s_loss, s_grads = mlm_loss_and_grads(scanned_config, scanned, ids, positions)
  np.testing.assert_allclose(s_loss, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               s_grads, stack_layers(grads, TINY.num_layers))


@pytest.mark.parametrize("policy,scan", [("full", False), ("dots_no_batch", False), ("dots", True)])
def test_remat_matches_no_remat(policy, scan):
  base_config = dataclasses.replace(TINY, scan_layers=scan)
  config = dataclasses.replace(base_config, remat_policy=policy)
  ids, positions = GRAD_IDS, GRAD_POSITIONS
  params = stack_layers(init(TINY), TINY.num_layers) if scan else init(TINY)
  loss, grads = mlm_loss_and_grads(base_config, params, ids, positions)
  r_loss, r_grads = mlm_loss_and_grads(config, params, ids, positions)
  np.testing.assert_allclose(r_loss, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), r_grads, grads)


# --- head ---------------------------------------------------------------------------------


def test_label_positions_gather_equals_full_sequence_logits():
  ids = random_ids(2, (2, 6))
  params = init(TINY)
  everywhere = int32([range(6)] * 2)
  full = logits_at(TINY, params, ids, everywhere)
  positions = int32([[4, 0, 4], [5, 1, 2]])
  picked = logits_at(TINY, params, ids, positions)
  # The padded vocabulary (40 -> 128 columns); the padding columns are masked.
  assert picked.shape == (2, 3, TINY.padded_vocab_size) and picked.dtype == jnp.float32
  np.testing.assert_allclose(picked, np.take_along_axis(full, positions[..., None], axis=1),
                             atol=1e-5)
  hidden = logits_at(TINY, params, ids, None)  # no label_positions -> hidden states
  np.testing.assert_allclose(hidden, encode(TINY, params, ids), atol=1e-6)


def test_decoder_is_tied_to_word_embeddings():
  ids = int32([[0, 9, 10, 2]])
  params = init(TINY)
  assert set(params["lm_head"]) == {"dense", "layer_norm", "bias"}  # no separate decoder
  unused = 30  # not in the input: only the decoder can read its embedding row

  def logit_of_unused(p):
    return logits_at(TINY, p, ids, int32([[1]]))[0, 0, unused]

  grad_table = jax.jit(jax.grad(logit_of_unused))(params)["encoder"]["embeddings"]["word_embeddings"]
  grad_table = np.asarray(grad_table["embedding"])
  assert np.abs(grad_table[unused]).sum() > 0
  others = np.delete(np.arange(TINY.vocab_size), [unused, 0, 9, 10, 2])
  assert np.abs(grad_table[others]).sum() == 0
  # Changing that row changes exactly that logit column.
  before = logits_at(TINY, params, ids, int32([[1]]))
  table = params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  edited = jax.tree.map(lambda x: x, params)
  # (A constant shift would not do: the LayerNorm output sums to 0 at init.)
  shift = jax.random.normal(jax.random.key(5), (TINY.hidden_size,))
  edited["encoder"]["embeddings"]["word_embeddings"]["embedding"] = table.at[unused].add(shift)
  after = logits_at(TINY, edited, ids, int32([[1]]))
  changed = np.nonzero(np.abs(after - before)[0, 0] > 1e-6)[0]
  np.testing.assert_array_equal(changed, [unused])


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True])
def test_every_parameter_has_logical_axis_names(scan):
  config = dataclasses.replace(TINY, scan_layers=scan, num_languages=3)
  ids = jnp.zeros((1, 4), jnp.int32)
  # Shapes and boxes only (no compilation): names are attached at definition time.
  variables = jax.eval_shape(lambda: Model(config).init(jax.random.key(0), ids, lang_ids=ids))
  specs = nn.get_partition_spec(variables)
  shapes = nn.meta.unbox(variables)
  for (path, spec), leaf in zip(jax.tree_util.tree_leaves_with_path(specs),
                                jax.tree.leaves(shapes)):
    name = jax.tree_util.keystr(path)
    assert len(spec) == leaf.ndim, name
    assert any(axis is not None for axis in spec), name
    if scan and "layers" in name:
      assert spec[0] == "layers", name


def test_language_embeddings_only_when_configured():
  ids = int32([[0, 9, 10, 2]])
  plain = init(TINY)
  assert "language_embeddings" not in plain["encoder"]["embeddings"]
  config = dataclasses.replace(TINY, num_languages=3)
  langs = np.zeros_like(ids)
  params = init(config)
  assert params["encoder"]["embeddings"]["language_embeddings"]["embedding"].shape == (3, 16)
  assert not np.allclose(encode(config, params, ids, lang_ids=langs),
                         encode(config, params, ids, lang_ids=langs + 2))
  with pytest.raises(ValueError, match="lang_ids"):
    encode(config, params, ids)


def test_count_params_and_padding_rows():
  params = init(TINY)
  # The word table and the MLM bias have the padded vocabulary's rows: 40 -> 128.
  d, f, v, p = 16, 32, 128, 24
  assert TINY.padded_vocab_size == v
  layer = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
  embeddings = v * d + p * d + d + 2 * d
  head = d * d + d + 2 * d + v
  assert count_params(params) == embeddings + TINY.num_layers * layer + head
  # As nn.Embedding(padding_idx=1): the padding rows start at zero.
  emb = params["encoder"]["embeddings"]
  assert not np.any(emb["word_embeddings"]["embedding"][PAD])
  assert not np.any(emb["position_embeddings"]["embedding"][PAD])
  assert not np.any(emb["word_embeddings"]["embedding"][TINY.vocab_size:])  # vocabulary padding


def test_flops_per_token_hand_computed():
  # v is the padded vocabulary (40 -> 128): the decoder multiplies the padding rows too.
  d, f, n, v, length, rate = 16, 32, 2, 128, 8, 0.25
  per_layer = 8 * d * d + 4 * d * f + 4 * length * d      # 2048 + 2048 + 512
  head = rate * (2 * d * d + 2 * d * v)                    # 0.25 * (512 + 4096)
  assert per_layer == 4608 and head == 1152
  assert flops_per_token(TINY, length, rate) == 3 * (n * per_layer + head) == 31104
  # The layer term is 2 FLOPs per matmul weight plus the two L x L attention products.
  params = init(TINY)
  kernels = [x.size for path, x in jax.tree_util.tree_leaves_with_path(params["encoder"]["layer_0"])
             if "kernel" in jax.tree_util.keystr(path)]
  assert 2 * sum(kernels) + 4 * length * d == per_layer


def test_config_from_dict_round_trip_and_errors():
  config = dataclasses.replace(TINY, num_languages=2, dtype="bfloat16")
  assert EncoderConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="hiden_size"):
    EncoderConfig.from_dict({"vocab_size": 10, "hiden_size": 8})
  with pytest.raises(ValueError, match="remat_policy"):
    EncoderConfig(vocab_size=10, remat_policy="some")
  with pytest.raises(ValueError, match="divisible"):
    EncoderConfig(vocab_size=10, hidden_size=10, num_heads=3)


def test_bfloat16_compute_keeps_float32_logits():
  config = dataclasses.replace(TINY, dtype="bfloat16")  # param_dtype stays float32
  ids = int32([[0, 9, 10, 2, PAD]])
  params = init(TINY)
  logits = logits_at(config, params, ids, int32([[1, 2]]))
  assert logits.dtype == jnp.float32
  reference = logits_at(TINY, params, ids, int32([[1, 2]]))
  np.testing.assert_allclose(logits, reference, atol=0.15)
