"""Vocabulary padding inside the model: real columns unchanged, padding inert, exports unpadded.

A vocabulary of 1001 ids does not divide a tensor axis of 2; with vocab_multiple 128 the tables
have 1024 rows. Every check compares the padded model against a vocab_multiple=1 model holding
the same real rows (convert_params), so a padding column that leaked into a logit, a loss, an
argmax or an export would show up as a difference.
"""
import dataclasses
import functools
import io
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from xlm_jax import config as config_lib
from xlm_jax.data.tokenizer import Tokenizer
from xlm_jax.export import Pretrained, export_model, load_pretrained
from xlm_jax.models.encoder import (PADDED_LOGIT, EncoderConfig, Model, convert_params,
                                    param_shapes, shapes_by_path)
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import masking_config
from xlm_jax.registry import OBJECTIVES
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax import mesh as mesh_lib
from xlm_jax.train import warm_start
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.step import BoundObjective, make_train_step

VOCAB = 1001
PADDED = EncoderConfig(vocab_size=VOCAB, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                       max_positions=40, dropout_rate=0.0, attention_dropout_rate=0.0)
UNPADDED = dataclasses.replace(PADDED, vocab_multiple=1)
# Three layers, the bottom one per language: both scan stacks (language_layers and layers).
ROUTED = dataclasses.replace(PADDED, num_layers=3, num_languages=2, separate_layers=1,
                             separate_embeddings=True)


@functools.partial(jax.jit, static_argnames=("config", "seed"))
def init(config, seed=0):
  ids = jnp.zeros((1, 4), jnp.int32)
  return nn.meta.unbox(Model(config).init(jax.random.key(seed), ids, lang_ids=ids)["params"])


@functools.partial(jax.jit, static_argnames=("config",))
def logits_at(config, params, input_ids, label_positions, lang_ids=None):
  return Model(config).apply({"params": params}, input_ids, label_positions=label_positions,
                             lang_ids=lang_ids)


def host(tree):
  return jax.tree.map(np.array, jax.device_get(tree))  # writable host copies


def table(params):
  return np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])


IDS = np.asarray([[0, 900, 17, 1000, 5, 2, 1, 1], [0, 44, 999, 2, 1, 1, 1, 1]], np.int32)
POSITIONS = np.asarray([[1, 2, 3, 4], [1, 2, 3, 0]], np.int32)


# --- the padded model ------------------------------------------------------------------------


def test_tables_are_padded_and_the_padding_starts_at_zero():
  assert PADDED.padded_vocab_size == 1024 and UNPADDED.padded_vocab_size == VOCAB
  assert EncoderConfig(vocab_size=250002).padded_vocab_size == 250112  # XLM-R
  assert EncoderConfig(vocab_size=1024).padded_vocab_size == 1024      # already a multiple
  params = host(init(PADDED))
  assert table(params).shape == (1024, 16) and params["lm_head"]["bias"].shape == (1024,)
  assert not np.any(table(params)[VOCAB:]) and np.all(np.std(table(params)[5:VOCAB], 0) > 0)
  routed = host(init(ROUTED))
  assert table(routed).shape == (2, 1024, 16) and routed["lm_head"]["bias"].shape == (2, 1024)
  assert not np.any(table(routed)[:, VOCAB:])
  assert table(host(init(UNPADDED))).shape == (VOCAB, 16)
  with pytest.raises(ValueError, match="vocab_multiple must be >= 1"):
    EncoderConfig(vocab_size=10, vocab_multiple=0)


@pytest.mark.parametrize("config", [PADDED, ROUTED], ids=["shared", "separate_embeddings"])
def test_real_logits_equal_an_unpadded_model_with_the_same_rows(config):
  params = init(config)
  unpadded_config = dataclasses.replace(config, vocab_multiple=1)
  unpadded = convert_params(params, config, unpadded_config)
  lang_ids = np.asarray([[0] * 8, [1] * 8], np.int32) if config.num_languages else None
  padded_logits = np.asarray(logits_at(config, params, IDS, POSITIONS, lang_ids))
  plain_logits = np.asarray(logits_at(unpadded_config, unpadded, IDS, POSITIONS, lang_ids))
  assert padded_logits.shape == (2, 4, 1024) and plain_logits.shape == (2, 4, VOCAB)
  np.testing.assert_allclose(padded_logits[..., :VOCAB], plain_logits, atol=1e-6, rtol=0)
  assert np.all(padded_logits[..., VOCAB:] == np.float32(PADDED_LOGIT))
  np.testing.assert_array_equal(padded_logits.argmax(-1), plain_logits.argmax(-1))


def test_padding_columns_never_win_even_against_very_negative_real_logits():
  params = host(init(PADDED))
  # Real columns pushed to -1e30, and garbage in the padding rows (as a careless conversion
  # might leave): a padding column must still lose every argmax and get no probability.
  params["lm_head"]["bias"][:VOCAB] = -1e30
  params["lm_head"]["bias"][VOCAB:] = 50.0
  params["encoder"]["embeddings"]["word_embeddings"]["embedding"][VOCAB:] = 3.0
  logits = np.asarray(logits_at(PADDED, params, IDS, POSITIONS))
  assert np.all(logits.argmax(-1) < VOCAB)
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  probs = np.exp(log_probs)
  assert np.all(probs[..., VOCAB:] == 0) and np.all(np.isfinite(log_probs))
  np.testing.assert_allclose(probs[..., :VOCAB].sum(-1), 1.0, rtol=1e-5)
  # An entropy-style sum p * log p: 0 * (finite) at the padding, never 0 * -inf = NaN.
  assert np.all(np.isfinite(np.sum(probs * log_probs, -1)))


def _mlm_batch(rows=4, length=16, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, VOCAB, (rows, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 0, 2
  ids[1, 10:] = 1
  segments = (ids != 1).astype(np.int32)
  positions = np.where(segments > 0, np.arange(length)[None, :] + 2, 1).astype(np.int32)
  return {"input_ids": ids, "segment_ids": segments, "position_ids": positions,
          "lang_ids": np.zeros_like(ids)}


def _mlm_context(config, **changes):
  return ObjectiveContext(model=Model(config), config=masking_config(**changes), vocab_size=VOCAB,
                          mask_id=4, pad_id=1, special_ids=(0, 1, 2, 3, 4), languages=("en",))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_mlm_loss_and_real_gradients_equal_between_padded_and_unpadded(label_smoothing):
  loss_fn = OBJECTIVES.get("mlm").loss_fn
  params = init(PADDED)
  unpadded = convert_params(params, PADDED, UNPADDED)
  batch, rng = _mlm_batch(), jax.random.key(3)

  @functools.partial(jax.jit, static_argnames=("config",))
  def loss_and_grads(config, params, batch):
    ctx = _mlm_context(config, label_smoothing=label_smoothing)
    return jax.value_and_grad(lambda p: loss_fn(p, batch, rng, ctx)[0])(params)

  loss, grads = loss_and_grads(PADDED, params, batch)
  plain_loss, plain_grads = loss_and_grads(UNPADDED, unpadded, batch)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  assert 5 < float(loss) < 9  # about log(1001): the smoothing term did not swamp it
  grads, plain_grads = host(grads), host(plain_grads)
  np.testing.assert_allclose(table(grads)[:VOCAB], table(plain_grads), atol=1e-7)
  # The padding rows get no gradient, so AdamW (decoupled decay of 0 is 0) keeps them at zero.
  assert not np.any(table(grads)[VOCAB:]) and not np.any(grads["lm_head"]["bias"][VOCAB:])


def _sharded_mlm_step(model_config, mesh_shape):
  """One MLM train step of `model_config` on a (data, fsdp, tensor) mesh; (state, metrics)."""
  config = config_lib.default_config()
  config.optimizer.warmup_steps = 0
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  model = Model(model_config)
  objective = OBJECTIVES.get("mlm")
  bound = {"mlm": BoundObjective(objective, 1.0, _mlm_context(model_config))}
  tx, schedule = make_optimizer(config.optimizer, 100)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:int(np.prod(mesh_shape))])
  state, shardings, _ = create_train_state(model, tx, {"mlm": objective}, 16, mesh,
                                           mesh_lib.logical_rules(config.mesh), seed=0)
  step = jax.jit(make_train_step(bound, tx, schedule, 1), donate_argnums=0,
                 in_shardings=(shardings, {"mono": mesh_lib.batch_sharding(mesh)}),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)))
  batch = mesh_lib.to_global_batch(_mlm_batch(rows=8), mesh)
  state, metrics = step(state, {"mono": batch})
  return state, jax.device_get(metrics)


def test_sharded_train_step_runs_with_a_vocabulary_that_tensor_does_not_divide():
  assert jax.device_count() >= 8, "conftest.py must give 8 CPU devices"
  # Without padding the vocab axis (1001 rows) cannot be split over tensor = 2.
  with pytest.raises(ValueError, match="1001"):
    _sharded_mlm_step(UNPADDED, (2, 2, 2))
  state, metrics = _sharded_mlm_step(PADDED, (2, 2, 2))
  emb = state.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert emb.addressable_shards[0].data.shape == (512, 8)
  _, single = _sharded_mlm_step(PADDED, (1, 1, 1))
  for key in ("loss", "mlm/accuracy", "grad_norm"):
    np.testing.assert_allclose(metrics[key], single[key], rtol=2e-5, err_msg=key)
  assert not np.any(np.asarray(jax.device_get(emb))[VOCAB:])  # still zero after a step


# --- convert_params --------------------------------------------------------------------------


def _leaves_identical(a, b):
  flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(flat_a, flat_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.mark.parametrize("base", [PADDED, ROUTED], ids=["shared", "separate_layers"])
def test_convert_params_round_trips_bit_identically(base):
  unrolled = host(init(base))
  scanned_config = dataclasses.replace(base, scan_layers=True, vocab_multiple=1)
  scanned = convert_params(unrolled, base, scanned_config)
  assert shapes_by_path(scanned) == param_shapes(scanned_config)
  _leaves_identical(convert_params(scanned, scanned_config, base), unrolled)
  # Jax arrays in, jax arrays out, and the same bits as from numpy.
  _leaves_identical(convert_params(init(base), base, scanned_config), scanned)
  # The stacking order is XLM-R's layer order: the scanned model computes the same logits.
  lang_ids = np.zeros_like(IDS) if base.num_languages else None
  scanned_logits = logits_at(scanned_config, scanned, IDS, POSITIONS, lang_ids)
  np.testing.assert_allclose(scanned_logits,
                             logits_at(base, unrolled, IDS, POSITIONS, lang_ids)[..., :VOCAB],
                             atol=1e-5)
  # Cutting the padding keeps every real row, and only real rows.
  np.testing.assert_array_equal(table(scanned), table(unrolled)[..., :VOCAB, :])


def test_convert_params_refuses_other_differences():
  params = host(init(PADDED))
  with pytest.raises(ValueError, match=r"hidden_size \(16 -> 32\)"):
    convert_params(params, PADDED, dataclasses.replace(PADDED, hidden_size=32, vocab_multiple=1))
  with pytest.raises(ValueError, match=r"vocab_size \(1001 -> 1000\)"):
    convert_params(params, PADDED, dataclasses.replace(PADDED, vocab_size=1000))
  # Params that are not the source's: named, not silently cut.
  with pytest.raises(ValueError, match="do not match the source config.*word_embeddings"):
    convert_params(params, UNPADDED, PADDED)
  with pytest.raises(ValueError, match="'encoder', 'lm_head'"):
    convert_params({**params, "heads": {}}, PADDED, UNPADDED)


# --- export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_bytes():
  words = ["river", "stone", "light", "garden", "window", "music", "paper", "winter", "yellow"]
  rng = np.random.default_rng(0)
  sentences = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(300)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=40, hard_vocab_limit=False,
      bos_id=0, pad_id=1, eos_id=2, unk_id=3, user_defined_symbols=["<mask>"], minloglevel=2,
      num_threads=1)
  return model.getvalue()


@pytest.fixture(scope="module")
def padded_export(tokenizer_bytes, tmp_path_factory):
  """(export folder, padded config, padded params, in-training Pretrained of the padded model)."""
  tokenizer = Tokenizer.from_bytes(tokenizer_bytes)
  config = dataclasses.replace(PADDED, vocab_size=tokenizer.vocab_size + 3)
  params = init(config, seed=1)
  folder = tmp_path_factory.mktemp("exports") / "padded"
  export_model(folder, params, config.to_dict(), tokenizer_bytes, {})
  return folder, config, params, Pretrained(Model(config), params, tokenizer, {})


TEXTS = ["river stone light", "a quiet garden under the window", "music"]


def test_export_strips_padding_and_loads_to_the_same_encoder(padded_export):
  folder, config, params, live = padded_export
  assert config.padded_vocab_size == 128 > config.vocab_size
  written = json.loads((folder / "config.json").read_text())["encoder"]
  assert written["vocab_multiple"] == 1 and written["vocab_size"] == config.vocab_size
  loaded = load_pretrained(folder)
  assert loaded.model.config == dataclasses.replace(config, vocab_multiple=1)
  assert table(loaded.params).shape == (config.vocab_size, 16)
  _leaves_identical(host(loaded.params), convert_params(host(params), config, loaded.model.config))
  np.testing.assert_allclose(loaded.encode(TEXTS), live.encode(TEXTS), atol=1e-6, rtol=0)
  ids = np.asarray([[0, 9, 4, 12, 2, 1]], np.int32)
  np.testing.assert_allclose(loaded.mlm_logits(ids), live.mlm_logits(ids), atol=1e-6, rtol=0)


def test_legacy_export_without_vocab_multiple_still_loads(padded_export, tmp_path):
  folder, config, _, live = padded_export
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  for name in ("params.msgpack", "spm.model"):
    (legacy / name).write_bytes((folder / name).read_bytes())
  meta = json.loads((folder / "config.json").read_text())
  del meta["encoder"]["vocab_multiple"]  # written before the field existed
  (legacy / "config.json").write_text(json.dumps(meta))
  loaded = load_pretrained(legacy)
  assert loaded.model.config.vocab_multiple == 1
  np.testing.assert_allclose(loaded.encode(TEXTS), live.encode(TEXTS), atol=1e-6, rtol=0)


# --- checkpoints and warm start written before vocab_multiple -----------------------------------


def test_resume_of_a_legacy_checkpoint_names_the_override(tmp_path):
  legacy = {k: v for k, v in UNPADDED.to_dict().items() if k != "vocab_multiple"}
  # Today's default (128) pads 1001 -> 1024 rows: refused, with the way back named.
  with pytest.raises(ValueError, match=r"--config\.model\.vocab_multiple=1"):
    ckpt_lib.check_same_model(legacy, PADDED.to_dict(), tmp_path)
  ckpt_lib.check_same_model(legacy, UNPADDED.to_dict(), tmp_path)
  # A vocabulary that is already a multiple of 128 has the same arrays: it resumes as it is.
  multiple = {**legacy, "vocab_size": 1024}
  ckpt_lib.check_same_model(multiple, dataclasses.replace(PADDED, vocab_size=1024).to_dict(),
                            tmp_path)


def test_warm_start_moves_a_legacy_unrolled_run_into_a_padded_scanned_one(tmp_path):
  params = host(init(UNPADDED))
  legacy_model = {k: v for k, v in UNPADDED.to_dict().items() if k != "vocab_multiple"}
  checkpointer = ckpt_lib.Checkpointer(tmp_path, async_save=False, data_kinds=())
  checkpointer.save(3, {"params": params}, {}, {"model": legacy_model})
  checkpointer.close()
  # The checkpoint's meta reads back with the legacy value, for resume, eval and export alike.
  reader = ckpt_lib.Checkpointer(tmp_path, async_save=False, data_kinds=())
  assert reader.read_meta(3)["model"]["vocab_multiple"] == 1
  reader.close()
  source = warm_start.read_model_config(tmp_path)
  assert source == UNPADDED
  target = dataclasses.replace(PADDED, scan_layers=True, dropout_rate=0.1)  # dropout: no array
  saved, _ = warm_start.read_state(tmp_path)
  heads = {"ems": {"w": np.ones(3, np.float32)}}
  moved = warm_start.in_this_layout({**saved["params"], "heads": heads}, source, target)
  layout = dataclasses.replace(target, dropout_rate=0.0)
  _leaves_identical({k: moved[k] for k in ("encoder", "lm_head")},
                    convert_params(params, UNPADDED, layout))
  assert moved["heads"] is heads
  # A momentum copy of the encoder alone (EMMA-X's key tower) is moved too.
  key_tower = warm_start.in_this_layout({"key": {"encoder": saved["params"]["encoder"]}}, source,
                                        target)
  _leaves_identical(key_tower["key"]["encoder"],
                    convert_params(params, UNPADDED, layout)["encoder"])
  # Another vocabulary is not a layout change: nothing is moved (matched by shape as before).
  other = dataclasses.replace(target, vocab_size=1000)
  assert warm_start.in_this_layout(saved["params"], source, other) is saved["params"]
  merged, copied, kept = warm_start.merge_matching(host(init(target)), moved)
  assert not kept and len(copied) == len(param_shapes(target))


# --- mlm_logits and fill_mask ----------------------------------------------------------------


def test_mlm_logits_are_the_models_logits_over_the_real_vocabulary(padded_export):
  _, config, params, live = padded_export
  ids = np.asarray([[0, 9, 4, 12, 2, 1, 1], [0, 7, 8, 2, 1, 1, 1]], np.int32)
  logits = live.mlm_logits(ids)
  assert logits.shape == (2, 7, config.vocab_size) and logits.dtype == np.float32
  everywhere = np.tile(np.arange(7, dtype=np.int32), (2, 1))
  direct = np.asarray(logits_at(config, params, ids, everywhere))
  np.testing.assert_allclose(logits, direct[..., :config.vocab_size], atol=1e-6, rtol=0)
  # The HF-style mask equal to the default gives the same; masking a real token changes it.
  np.testing.assert_array_equal(live.mlm_logits(ids, (ids != 1).astype(np.int64)), logits)
  hidden_token = (ids != 1).astype(np.int32)
  hidden_token[0, 3] = 0
  assert not np.allclose(live.mlm_logits(ids, hidden_token)[0, 1], logits[0, 1], atol=1e-4)
  with pytest.raises(ValueError, match="vocab_size"):
    live.mlm_logits(np.asarray([[0, config.vocab_size, 2]]))
  with pytest.raises(ValueError, match="attention_mask"):
    live.mlm_logits(ids, np.ones((2, 3)))


def test_fill_mask_ranks_pieces_at_each_mask(padded_export):
  folder, config, _, live = padded_export
  loaded = load_pretrained(folder)
  texts = ["river <mask> light", "<mask> stone <mask>", "music"]
  with pytest.raises(ValueError, match=r"texts\[2\] has no <mask>"):
    loaded.fill_mask(texts)
  with pytest.raises(TypeError, match="fill_mask takes a list of strings"):
    loaded.fill_mask("river <mask>")
  results = loaded.fill_mask(texts[:2], top_k=4)
  assert [len(r) for r in results] == [1, 2]
  tok = loaded.tokenizer
  for per_text in results:
    for top in per_text:
      scores = [entry["score"] for entry in top]
      assert len(top) == 4 and scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
      assert all(0 <= e["token_id"] < config.vocab_size
                 and e["piece"] == tok.id_to_piece(e["token_id"]) for e in top)
  # The scores are the softmax of mlm_logits at the <mask>, on `<s> pieces </s>` where the lone
  # "▁" before a <mask> is absorbed (as XLM-R's mask token); the padded model agrees.
  pieces = tok.encode(["river <mask> light"])[0]
  mask_at = pieces.index(tok.mask_id)
  assert tok.id_to_piece(pieces[mask_at - 1]) == "▁"
  row = [tok.bos_id] + pieces[:mask_at - 1] + pieces[mask_at:] + [tok.eos_id]
  probs = np.asarray(jax.nn.softmax(loaded.mlm_logits(np.asarray([row]))[0, mask_at]))
  best = np.argsort(-probs)[:4]
  assert [e["token_id"] for e in results[0][0]] == best.tolist()
  np.testing.assert_allclose([e["score"] for e in results[0][0]], probs[best], rtol=1e-5)
  assert live.fill_mask(texts[:1], top_k=4)[0][0][0]["token_id"] == best[0]
