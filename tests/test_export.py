"""Export folder round trip, sentence encoding, atomic writes and error messages."""
import dataclasses
import functools
import io
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from xlm_jax import atomic_files
from xlm_jax.export import Pretrained, export_model, load_pretrained
from xlm_jax.models.encoder import EncoderConfig, Model, convert_params

WORDS = ["river", "stone", "light", "garden", "window", "music", "paper", "winter", "yellow",
         "quiet", "travel", "number", "before", "under", "little"]
TEXTS = ["river stone light", "a quiet garden under the yellow window", "music",
         "little paper numbers travel before winter " * 3]


@pytest.fixture(scope="module")
def tokenizer_bytes():
  """A tiny SentencePiece model trained on generated sentences, with the XLM-R special ids."""
  rng = np.random.default_rng(0)
  sentences = [" ".join(rng.choice(WORDS, size=rng.integers(3, 9))) for _ in range(300)]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences), model_writer=model, vocab_size=60, hard_vocab_limit=False,
      bos_id=0, pad_id=1, eos_id=2, unk_id=3, user_defined_symbols=["<mask>"], minloglevel=2,
      num_threads=1)
  return model.getvalue()


def tiny_config(tokenizer_bytes, **changes):
  vocab = spm.SentencePieceProcessor(model_proto=tokenizer_bytes).get_piece_size()
  return EncoderConfig(vocab_size=vocab + 3, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                       max_positions=40, **changes)


def init_params(config):
  ids = jnp.zeros((1, 4), jnp.int32)
  return jax.jit(Model(config).init)(jax.random.key(1), ids, lang_ids=ids)["params"]


@pytest.fixture(scope="module")
def exported(tokenizer_bytes, tmp_path_factory):
  config = tiny_config(tokenizer_bytes)
  params = init_params(config)
  target = tmp_path_factory.mktemp("exports") / "model"
  returned = export_model(target, params, config.to_dict(), tokenizer_bytes,
                          {"languages": ["en", "de"], "step": 7})
  assert returned == target
  return target, config, params


def test_round_trip_is_bit_identical(exported, tokenizer_bytes):
  target, config, params = exported
  assert sorted(os.listdir(target)) == ["config.json", "params.msgpack", "spm.model"]
  assert sorted(os.listdir(target.parent)) == ["model"]  # no staging folder left behind
  model, loaded, tokenizer, meta = load_pretrained(target)  # a NamedTuple: unpacks
  # Exports carry no vocabulary padding: the same arrays without their padding rows.
  unpadded = dataclasses.replace(config, vocab_multiple=1)
  assert config.padded_vocab_size > config.vocab_size and model.config == unpadded
  original = convert_params(params, config, unpadded)
  assert jax.tree.structure(loaded) == jax.tree.structure(original)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(original)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  assert (target / "spm.model").read_bytes() == tokenizer_bytes
  assert tokenizer.serialized() == tokenizer_bytes
  assert meta["languages"] == ["en", "de"] and meta["metadata"] == {"step": 7}
  assert meta["special_ids"]["bos"] == 0 and meta["special_ids"]["pad"] == 1
  assert meta["special_ids"]["mask"] == 4 and meta["special_ids"]["all"] == [0, 1, 2, 3, 4]
  assert meta["encoder"] == unpadded.to_dict() and meta["xlm_jax_version"]


@functools.partial(jax.jit, static_argnames=("config",))
def all_hidden_states(config, params, ids, lang_ids=None):
  return Model(config).apply({"params": params}, ids, lang_ids=lang_ids, method=Model.encode,
                             return_all_layers=True)[1]


def direct_hidden_states(config, params, text, tokenizer_bytes):
  """All hidden states of one unpadded `<s> text </s>`, tokenized by SentencePiece itself."""
  processor = spm.SentencePieceProcessor(model_proto=tokenizer_bytes)
  ids = jnp.asarray([[0] + processor.encode(text) + [2]], jnp.int32)
  return [np.asarray(h[0]) for h in all_hidden_states(config, params, ids)]


def test_encode_equals_direct_computation(exported, tokenizer_bytes):
  target, config, params = exported
  encoder = load_pretrained(target)
  # batch_size=3 over 4 texts: padded rows, padded lengths and a partial last batch.
  mean = encoder.encode(TEXTS, batch_size=3)
  cls = encoder.encode(TEXTS, pooling="cls", batch_size=3)
  first_layer = encoder.encode(TEXTS, pooling="layer", layer=0, batch_size=3)
  assert mean.shape == (4, 16) and mean.dtype == np.float32
  for i, text in enumerate(TEXTS):
    layers = direct_hidden_states(config, params, text, tokenizer_bytes)
    np.testing.assert_allclose(mean[i], layers[-1].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(cls[i], layers[-1][0], atol=1e-5)
    np.testing.assert_allclose(first_layer[i], layers[0].mean(axis=0), atol=1e-5)
  np.testing.assert_allclose(encoder.encode(TEXTS, pooling="layer", layer=-1, batch_size=3), mean,
                             atol=1e-6)
  # Truncation keeps <s> ... </s> within max_len.
  short = encoder.encode([TEXTS[3]], max_len=5)
  ids = [0] + spm.SentencePieceProcessor(model_proto=tokenizer_bytes).encode(TEXTS[3])[:3] + [2]
  hidden = all_hidden_states(config, params, jnp.asarray([ids]))[-1]
  np.testing.assert_allclose(short[0], np.asarray(hidden[0]).mean(axis=0), atol=1e-5)
  assert encoder.encode([]).shape == (0, 16)


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
def test_sharded_encode_equals_one_device(exported, mesh_shape):
  """load_pretrained(mesh=) lays the params out as training does (FSDP: no device holds a whole
  weight) and encode splits its rows over the batch axes: the vectors are the one-device ones."""
  from jax.sharding import NamedSharding
  from xlm_jax.mesh import MESH_AXES
  target, config, _ = exported
  mesh = jax.make_mesh(mesh_shape, MESH_AXES, devices=jax.devices()[:8])
  sharded = load_pretrained(target, mesh=mesh)
  embedding = sharded.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  assert isinstance(embedding.sharding, NamedSharding)
  # Every device holds 1/fsdp of the hidden dimension (and 1/tensor of the vocabulary rows).
  rows, width = embedding.addressable_shards[0].data.shape
  assert width == config.hidden_size // mesh_shape[1]
  assert rows == embedding.shape[0] // mesh_shape[2]
  one_device = load_pretrained(target)
  for kwargs in ({}, {"pooling": "cls"}, {"pooling": "layer", "layer": 1}):
    # batch_size 3 becomes a multiple of the data-parallel size; the filler rows are dropped.
    np.testing.assert_allclose(sharded.encode(TEXTS, batch_size=3, **kwargs),
                               one_device.encode(TEXTS, batch_size=3, **kwargs), atol=2e-5)
  with pytest.raises(ValueError, match="not xlm-jax's"):
    one_device.shard(jax.make_mesh((8,), ("batch",), devices=jax.devices()[:8]))


def test_encode_argument_errors(exported):
  encoder = load_pretrained(exported[0])
  with pytest.raises(ValueError, match="pooling"):
    encoder.encode(TEXTS, pooling="max")
  with pytest.raises(ValueError, match="pooling='layer'"):
    encoder.encode(TEXTS, layer=1)
  with pytest.raises(ValueError, match="max_len"):
    encoder.encode(TEXTS, max_len=100)
  with pytest.raises(ValueError, match="unknown language 'xx'"):
    encoder.encode(TEXTS, lang="xx")
  with pytest.raises(TypeError, match="list of strings"):
    encoder.encode("one text")


def test_language_embeddings_select_by_lang(tokenizer_bytes, tmp_path):
  config = tiny_config(tokenizer_bytes, num_languages=2)
  params = init_params(config)
  with pytest.raises(ValueError, match="languages"):
    export_model(tmp_path / "bad", params, config.to_dict(), tokenizer_bytes, {"step": 1})
  assert not (tmp_path / "bad").exists()
  export_model(tmp_path / "xlm", params, config.to_dict(), tokenizer_bytes,
               {"languages": ["en", "fr"]})
  encoder = load_pretrained(tmp_path / "xlm")
  english, french = encoder.encode(TEXTS[:2], lang="en"), encoder.encode(TEXTS[:2], lang="fr")
  assert not np.allclose(english, french)
  # lang "fr" = language embedding row 1, as the pipeline's lang_ids index config.data.languages.
  ids = jnp.asarray([[0] + encoder.tokenizer.encode([TEXTS[0]])[0] + [2]])
  hidden = all_hidden_states(config, nn.meta.unbox(params), ids, jnp.ones_like(ids))[-1]
  np.testing.assert_allclose(french[0], np.asarray(hidden[0]).mean(axis=0), atol=1e-5)
  with pytest.raises(ValueError, match="pass lang="):
    encoder.encode(TEXTS)


def test_in_training_encoder_without_export(exported, tokenizer_bytes):
  # The evaluator wraps live params the same way, without writing anything.
  target, config, params = exported
  from xlm_jax.data.tokenizer import Tokenizer
  live = Pretrained(Model(config), jax.device_put(params), Tokenizer.from_bytes(tokenizer_bytes), {})
  with jax.transfer_guard("disallow"):  # as in the training loop: no hidden host<->device copies
    vectors = live.encode(TEXTS)
  np.testing.assert_allclose(vectors, load_pretrained(target).encode(TEXTS), atol=1e-6)


def test_crash_mid_export_leaves_no_partial_folder(exported, tokenizer_bytes, tmp_path,
                                                   monkeypatch):
  _, config, params = exported
  calls = []

  def crash_after_first_file(fd):
    calls.append(fd)
    if len(calls) == 2:
      raise OSError("simulated crash while writing the export")

  monkeypatch.setattr(atomic_files.os, "fsync", crash_after_first_file)
  with pytest.raises(OSError, match="simulated crash"):
    export_model(tmp_path / "new", params, config.to_dict(), tokenizer_bytes, {})
  assert os.listdir(tmp_path) == []  # neither the target nor a staging folder

  monkeypatch.undo()
  export_model(tmp_path / "old", params, config.to_dict(), tokenizer_bytes, {"step": 1})
  before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
  monkeypatch.setattr(atomic_files.os, "fsync", crash_after_first_file)
  calls.clear()
  with pytest.raises(OSError, match="simulated crash"):
    export_model(tmp_path / "old", params, config.to_dict(), tokenizer_bytes, {"step": 2})
  assert os.listdir(tmp_path) == ["old"]
  assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
  # A successful re-export replaces the old one completely.
  monkeypatch.undo()
  export_model(tmp_path / "old", params, config.to_dict(), tokenizer_bytes, {"step": 2})
  assert json.loads((tmp_path / "old" / "config.json").read_text())["metadata"] == {"step": 2}
  assert os.listdir(tmp_path) == ["old"]


def test_bad_paths_and_mismatched_params(exported, tokenizer_bytes, tmp_path):
  target, config, params = exported
  with pytest.raises(FileNotFoundError, match="does_not_exist"):
    load_pretrained(tmp_path / "does_not_exist")
  partial = tmp_path / "partial"
  partial.mkdir()
  (partial / "config.json").write_bytes((target / "config.json").read_bytes())
  (partial / "spm.model").write_bytes(tokenizer_bytes)
  with pytest.raises(FileNotFoundError, match="params.msgpack"):
    load_pretrained(partial)
  other = dataclasses.replace(config, mlp_dim=48)
  with pytest.raises(ValueError, match="do not match encoder_config"):
    export_model(tmp_path / "wrong", params, other.to_dict(), tokenizer_bytes, {})
  with pytest.raises(ValueError, match="unknown field"):
    export_model(tmp_path / "wrong", params, {**config.to_dict(), "heads": 2}, tokenizer_bytes, {})
  with pytest.raises(ValueError, match="JSON-serializable"):
    export_model(tmp_path / "wrong", params, config.to_dict(), tokenizer_bytes, {"x": object()})
  assert not (tmp_path / "wrong").exists()


def test_bfloat16_params_round_trip(tokenizer_bytes, tmp_path):
  config = tiny_config(tokenizer_bytes, param_dtype="bfloat16", dtype="bfloat16")
  params = nn.meta.unbox(init_params(config))
  export_model(tmp_path / "bf16", params, config.to_dict(), tokenizer_bytes, {})
  loaded = load_pretrained(tmp_path / "bf16").params
  unpadded = convert_params(params, config, dataclasses.replace(config, vocab_multiple=1))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(unpadded)):
    assert a.dtype == jnp.bfloat16 and np.array_equal(np.asarray(a), np.asarray(b))


def test_a_model_trained_without_specials_encodes_without_them(exported, tokenizer_bytes,
                                                               tmp_path):
  """EMS's reference recipe (objectives.ems.sentence_specials=False) reads sentences without
  <s> and </s>; its export says so and encode pools the pieces alone, as training did."""
  _, config, params = exported
  from xlm_jax import config as config_lib
  from xlm_jax.train import trainer
  # The run's objectives decide what the trainer's evaluation and export record.
  assert not trainer.sentence_specials(config_lib.load_config("experiments/ems.py:paper"))
  assert trainer.sentence_specials(config_lib.load_config("experiments/ems.py"))
  target = tmp_path / "no_specials"
  export_model(target, params, config.to_dict(), tokenizer_bytes,
               {"languages": ["en"], "sentence_specials": False})
  encoder = load_pretrained(target)
  assert not encoder.sentence_specials and load_pretrained(exported[0]).sentence_specials
  vectors = encoder.encode(TEXTS + [""], batch_size=3)
  processor = spm.SentencePieceProcessor(model_proto=tokenizer_bytes)
  for i, text in enumerate(TEXTS):
    hidden = all_hidden_states(config, params, jnp.asarray([processor.encode(text)]))[-1]
    np.testing.assert_allclose(vectors[i], np.asarray(hidden[0]).mean(axis=0), atol=1e-5)
  assert not np.allclose(vectors[0], load_pretrained(exported[0]).encode(TEXTS[:1])[0], atol=1e-3)
  np.testing.assert_array_equal(vectors[-1], 0.0)  # nothing to pool
  with pytest.raises(ValueError, match="without <s> and </s>"):
    encoder.encode(TEXTS, pooling="cls")
