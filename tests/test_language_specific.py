"""Language-specific embeddings, softmax and bottom layers (Conneau, Wu et al. 2020).

A NumPy re-implementation routes every token by hand; gradients must not cross languages; the
knobs off give the old model; scan, remat, an 8-device mesh and an export agree with the plain
unrolled model.
"""
import dataclasses
import functools
import io
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm

from xlm_jax import config as config_lib
from xlm_jax.export import export_model, load_pretrained
from xlm_jax.models.encoder import EncoderConfig, Model, convert_params, flops_per_token
from xlm_jax import mesh as mesh_lib

PAD = 1
TINY = EncoderConfig(vocab_size=40, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                     max_positions=24, dropout_rate=0.0, attention_dropout_rate=0.0)
# 3 languages, separate embeddings, and of the 2 layers the bottom one is language-specific.
SEP = dataclasses.replace(TINY, num_languages=3, separate_embeddings=True, separate_layers=1)
ROUTED_LAYERS = ("layer_0",)

# Row 0: language 1 only. Row 1: a TLM pair, `<s> x </s>` in language 1, `</s> y </s>` in
# language 2, then padding (language 0 on padding, as the pipeline writes it).
IDS = np.asarray([[0, 9, 10, 11, 12, 2, 13, 2], [0, 14, 15, 2, 2, 16, 17, 2]], np.int32)
MIXED_LANGS = np.asarray([[1] * 8, [1, 1, 1, 1, 2, 2, 2, 2]], np.int32)
LABELS = np.asarray([[1, 3], [2, 6]], np.int32)  # row 1: one label in each language


@functools.partial(jax.jit, static_argnames=("config",))
def init(config):
  ids = jnp.zeros((1, 4), jnp.int32)
  return nn.meta.unbox(Model(config).init(jax.random.key(0), ids, lang_ids=ids)["params"])


@functools.partial(jax.jit, static_argnames=("config",))
def all_layers(config, params, ids, lang_ids):
  return Model(config).apply({"params": params}, ids, lang_ids=lang_ids, method=Model.encode,
                             return_all_layers=True)[1]


def logits_at(config, params, ids, positions, lang_ids):
  return Model(config).apply({"params": params}, ids, label_positions=positions, lang_ids=lang_ids)


def mlm_loss(config, params, ids, positions, lang_ids):
  logits = logits_at(config, params, ids, positions, lang_ids)
  return -jnp.sum(jax.nn.log_softmax(logits)[..., 7]), logits


# One compiled function per config serves every test: ((loss, logits), grads).
loss_and_grads = jax.jit(jax.value_and_grad(mlm_loss, argnums=1, has_aux=True),
                         static_argnames=("config",))


def logits_of(config, params, ids, positions, lang_ids):
  return loss_and_grads(config, params, ids, positions, lang_ids)[0][1]


def language_specific(path: str) -> bool:
  return (any(f"['{name}']" in path for name in ROUTED_LAYERS + ("language_layers",))
          or "word_embeddings" in path or "position_embeddings" in path
          or path == "['lm_head']['bias']")


def leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


# --- configuration ------------------------------------------------------------------------


def test_config_and_input_errors_name_the_field():
  with pytest.raises(ValueError, match="separate_embeddings.*num_languages"):
    EncoderConfig(vocab_size=10, separate_embeddings=True)
  with pytest.raises(ValueError, match="separate_layers.*num_languages"):
    EncoderConfig(vocab_size=10, separate_layers=1)
  for k in (-1, 3):
    with pytest.raises(ValueError, match=r"separate_layers \(%d\).*num_layers=2" % k):
      dataclasses.replace(SEP, separate_layers=k)
  assert EncoderConfig.from_dict(SEP.to_dict()) == SEP
  params = init(SEP)
  with pytest.raises(ValueError, match="separate_embeddings, separate_layers.*pass lang_ids"):
    jax.eval_shape(lambda: logits_at(SEP, params, IDS, LABELS, None))
  with pytest.raises(ValueError, match="do not fit input_ids"):
    jax.eval_shape(lambda: logits_at(SEP, params, IDS, LABELS, MIXED_LANGS[:, :3]))
  with pytest.raises(ValueError, match="pass lang_ids"):  # the tied decoder, called directly
    jax.eval_shape(lambda: Model(SEP).apply({"params": params}, jnp.ones((1, 16)),
                                            method=lambda m, q: m.encoder.attend(q)))


def test_knobs_off_is_the_old_model():
  # Values recorded from the encoder before the knobs existed (same seed, same input).
  params = init(TINY)
  paths = set(leaves(params))
  assert len(paths) == 2 * 16 + 5 + 5
  assert {"['encoder']['embeddings']['word_embeddings']['embedding']",
          "['encoder']['layer_1']['attention']['out']['kernel']", "['lm_head']['bias']"} <= paths
  # 40 ids padded to 128 rows (vocab_multiple). The real rows are the old ones: the random draw
  # of a row does not depend on the table's length (partitionable threefry).
  assert params["encoder"]["embeddings"]["word_embeddings"]["embedding"].shape == (128, 16)
  assert params["lm_head"]["bias"].shape == (128,)
  ids = np.asarray([[0, 9, 10, 11, 2, PAD], [0, 12, 13, 2, PAD, PAD]], np.int32)
  logits = logits_of(TINY, params, ids, np.asarray([[1, 3], [2, 1]], np.int32), None)
  np.testing.assert_allclose(logits[..., 5:8], [
      [[0.0014868, -0.0215886, -0.0319161], [-0.0286534, 0.0040343, 0.0762946]],
      [[0.1061189, -0.0692898, -0.0498543], [-0.0069408, -0.0230833, -0.0480009]]], atol=2e-6)


# --- routing, checked by hand -------------------------------------------------------------


def gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def layer_norm(x, p, eps=1e-5):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def numpy_layer(x, p, key_is_real, heads):
  """One post-LN layer on one row [T, D]; `p` holds per-token parameters ([T, ...] leaves)."""
  a = p["attention"]
  q, k, v = (np.einsum("td,tdhe->the", x, a[n]["kernel"]) + a[n]["bias"]
             for n in ("query", "key", "value"))
  scores = np.einsum("the,she->hts", q, k) / math.sqrt(q.shape[-1])
  scores = np.where(key_is_real[None, None, :], scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  attended = np.einsum("hts,she->the", probs, v)
  out = np.einsum("the,thed->td", attended, a["out"]["kernel"]) + a["out"]["bias"]
  x = layer_norm(x + out, p["attention_layer_norm"])
  ffn = gelu(np.einsum("td,tdf->tf", x, p["intermediate"]["kernel"]) + p["intermediate"]["bias"])
  ffn = np.einsum("tf,tfd->td", ffn, p["output"]["kernel"]) + p["output"]["bias"]
  return layer_norm(x + ffn, p["output_layer_norm"])


def per_token(tree, langs, routed):
  """Each leaf as [T, ...]: the token's language copy when routed, else the shared value."""
  return jax.tree.map(lambda x: x[langs] if routed else np.broadcast_to(x, (len(langs),) + x.shape),
                      jax.tree.map(np.asarray, tree))


def test_numpy_reference_routes_every_token_by_its_language():
  params = init(SEP)
  hidden = [np.asarray(h) for h in all_layers(SEP, params, IDS, MIXED_LANGS)]
  logits = np.asarray(logits_of(SEP, params, IDS, LABELS, MIXED_LANGS))
  emb = jax.tree.map(np.asarray, params["encoder"]["embeddings"])
  for row in range(2):
    ids, langs = IDS[row], MIXED_LANGS[row]
    positions = np.arange(len(ids)) + PAD + 1
    x = (emb["word_embeddings"]["embedding"][langs, ids]
         + emb["position_embeddings"]["embedding"][langs, positions]
         + emb["token_type_embeddings"]["embedding"][0]
         + emb["language_embeddings"]["embedding"][langs])
    x = layer_norm(x, emb["layer_norm"])
    np.testing.assert_allclose(hidden[0][row], x, atol=1e-5)
    for i in range(SEP.num_layers):
      layer = per_token(params["encoder"][f"layer_{i}"], langs, routed=i < SEP.separate_layers)
      x = numpy_layer(x, layer, ids != PAD, SEP.num_heads)
      np.testing.assert_allclose(hidden[i + 1][row], x, atol=1e-4, err_msg=f"layer {i}")

    # The language-specific softmax at each label position, by hand.
    head = jax.tree.map(np.asarray, params["lm_head"])
    table = emb["word_embeddings"]["embedding"]
    for j, position in enumerate(LABELS[row]):
      lang = langs[position]
      h = gelu(hidden[-1][row, position] @ head["dense"]["kernel"] + head["dense"]["bias"])
      h = layer_norm(h, head["layer_norm"])
      real = slice(0, SEP.vocab_size)  # the padding columns are masked (test_vocab_padding.py)
      np.testing.assert_allclose(logits[row, j, real],
                                 (h @ table[lang].T + head["bias"][lang])[real], atol=1e-5)
      other = (lang + 1) % SEP.num_languages
      assert not np.allclose(logits[row, j, real],
                             (h @ table[other].T + head["bias"][other])[real], atol=1e-2)


def copy_of_language(params, lang):
  """A separate model's params reduced to one language: the tree of the plain model."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x[lang] if language_specific(jax.tree_util.keystr(p)) else x, params)


def test_one_language_is_the_shared_model_with_that_languages_copy():
  # The same number of languages, but nothing language-specific except XLM's language embedding.
  plain = dataclasses.replace(SEP, separate_embeddings=False, separate_layers=0)
  params = init(SEP)
  outputs = {}
  for lang in (0, 2):
    langs = np.full_like(IDS, lang)
    sliced = copy_of_language(params, lang)
    assert jax.tree.structure(sliced) == jax.tree.structure(jax.eval_shape(lambda: init(plain)))
    outputs[lang] = logits_of(SEP, params, IDS, LABELS, langs)
    np.testing.assert_allclose(outputs[lang], logits_of(plain, sliced, IDS, LABELS, langs),
                               atol=1e-5)
  assert not np.allclose(outputs[0], outputs[2], atol=1e-2)


# --- gradients ----------------------------------------------------------------------------


def test_language_specific_parameters_learn_only_from_their_language():
  # Language 1 only; padding tokens carry language 0 (as in pipeline batches).
  ids = IDS.copy()
  ids[1, 5:] = PAD
  langs = np.where(ids == PAD, 0, 1).astype(np.int32)
  labels = np.asarray([[1, 3], [2, 4]], np.int32)  # real tokens (a pad label would read lang 0)
  _, grads = loss_and_grads(SEP, init(SEP), ids, labels, langs)
  for path, g in leaves(grads).items():
    if language_specific(path):
      assert g.shape[0] == SEP.num_languages, path
      assert np.all(g[0] == 0) and np.all(g[2] == 0), path  # exactly zero, not just small
      assert np.any(g[1] != 0), path
    else:
      assert np.any(g != 0), path  # shared layers, head transform, embedding LayerNorm
  # A TLM row of languages 1 and 2: both learn, language 0 still does not.
  _, grads = loss_and_grads(SEP, init(SEP), IDS, LABELS, MIXED_LANGS)
  for path, g in leaves(grads).items():
    if language_specific(path):
      assert np.all(g[0] == 0) and np.any(g[1] != 0) and np.any(g[2] != 0), path


# --- scan, remat, sharding ----------------------------------------------------------------


def to_scanned(params, separate_layers, num_layers):
  """Unrolled layer_i -> encoder/language_layers (the first k) and encoder/layers (the rest)."""
  encoder = dict(params["encoder"])
  layers = [encoder.pop(f"layer_{i}") for i in range(num_layers)]
  stack = lambda group: jax.tree.map(lambda *xs: jnp.stack(xs), *group)
  encoder["language_layers"] = stack(layers[:separate_layers])
  encoder["layers"] = stack(layers[separate_layers:])
  return {**params, "encoder": encoder}


SCANNED = dataclasses.replace(SEP, scan_layers=True, remat_policy="dots")


@pytest.mark.parametrize("config", [SCANNED, dataclasses.replace(SEP, remat_policy="full")])
def test_scan_and_remat_equal_the_unrolled_model(config):
  scan = config.scan_layers
  params = init(SEP)
  converted = to_scanned(params, SEP.separate_layers, SEP.num_layers) if scan else params
  if scan:
    assert jax.tree.structure(converted) == jax.tree.structure(
        jax.eval_shape(lambda: init(config)))
  (loss, logits), grads = loss_and_grads(SEP, params, IDS, LABELS, MIXED_LANGS)
  (c_loss, c_logits), c_grads = loss_and_grads(config, converted, IDS, LABELS, MIXED_LANGS)
  np.testing.assert_allclose(c_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(c_logits, logits, atol=1e-5)
  expected = to_scanned(grads, SEP.separate_layers, SEP.num_layers) if scan else grads
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), c_grads, expected)


def test_sharded_forward_and_grads_equal_single_device():
  config = SCANNED
  cfg = config_lib.default_config()
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
  mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:8])
  rules = mesh_lib.logical_rules(cfg.mesh)
  ids4 = jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(lambda: Model(config).init(jax.random.key(0), ids4, lang_ids=ids4))
  shardings = mesh_lib.shardings_from_boxed(abstract, mesh, rules)["params"]
  specs = nn.get_partition_spec(abstract)["params"]
  for path, spec in zip(leaves(nn.meta.unbox(abstract["params"])), jax.tree.leaves(
      specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))):
    if language_specific(path):
      assert "languages" in spec[:2], path  # leading axis (after "layers" when scanned)
  # 4 rows over data*fsdp = 4; vocab over tensor, embed over fsdp, languages replicated.
  rows = np.concatenate([IDS, IDS[::-1]]), np.concatenate([MIXED_LANGS, MIXED_LANGS[::-1]])
  labels = np.concatenate([LABELS, LABELS[::-1]])
  params = to_scanned(init(SEP), SEP.separate_layers, SEP.num_layers)
  (loss, logits), grads = loss_and_grads(config, params, rows[0], labels, rows[1])

  sharded_params = jax.device_put(params, shardings)
  table = sharded_params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  assert table.sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
  assert table.addressable_shards[0].data.shape == (3, 64, 8)  # 40 ids padded to 128 rows
  batch = jax.device_put((rows[0], labels, rows[1]), mesh_lib.batch_sharding(mesh))
  (s_loss, s_logits), s_grads = loss_and_grads(config, sharded_params, *batch)
  np.testing.assert_allclose(s_logits, logits, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(s_loss, loss, rtol=2e-5)
  for (path, a), b in zip(leaves(s_grads).items(), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=path)


# --- cost and export ----------------------------------------------------------------------


def dot_flops(jaxpr) -> int:
  """2 x multiply-adds of every dot_general in a jaxpr, sub-jaxprs (scan bodies x length) too."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if isinstance(inner, jax.extend.core.Jaxpr):
          total += dot_flops(inner) * eqn.params.get("length", 1)
  return total


def test_flops_per_token_counts_the_routing_as_executed():
  # v is the padded vocabulary (40 -> 128): the executed decoder includes the padding rows.
  d, f, v, n, k, languages, length, rate = 16, 32, 128, 2, 1, 3, 8, 0.25
  projections = 8 * d * d + 4 * d * f
  # A routed layer: every projection once per language, plus one-hot picks of its 9 D + F
  # bias and LayerNorm values; the decoder once per language, plus picking the V biases.
  routed = languages * projections + 2 * languages * (9 * d + f)
  layers = (n - k) * projections + k * routed + n * 4 * length * d
  head = rate * (2 * d * d + languages * (2 * d * v + 2 * v))
  assert flops_per_token(SEP, length, rate) == 3 * (layers + head) == 65568
  # The forward pass really performs a third of that: count the matmuls XLA is given.
  for config in (SEP, dataclasses.replace(SEP, scan_layers=True),
                 dataclasses.replace(SEP, separate_embeddings=False),
                 dataclasses.replace(SEP, separate_layers=0)):
    params = jax.eval_shape(lambda c=config: init(c))
    jaxpr = jax.make_jaxpr(functools.partial(logits_at, config))(
        params, IDS, LABELS, MIXED_LANGS).jaxpr
    tokens, predictions = IDS.size, LABELS.size
    expected = flops_per_token(config, length, predictions / tokens) / 3 * tokens
    assert dot_flops(jaxpr) == pytest.approx(expected), config


@pytest.fixture(scope="module")
def tokenizer_bytes():
  """A tiny SentencePiece model trained on generated words, with the XLM-R special ids."""
  rng = np.random.default_rng(0)
  words = ["river", "stone", "light", "garden", "window", "music", "paper", "winter", "yellow"]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(" ".join(rng.choice(words, size=6)) for _ in range(200)),
      model_writer=model, vocab_size=40, hard_vocab_limit=False, bos_id=0, pad_id=1, eos_id=2,
      unk_id=3, user_defined_symbols=["<mask>"], minloglevel=2, num_threads=1)
  return model.getvalue()


def test_export_round_trip_encodes_each_language_with_its_own_parts(tokenizer_bytes, tmp_path):
  assert spm.SentencePieceProcessor(model_proto=tokenizer_bytes).get_piece_size() <= 40
  config = SEP
  params = init(config)
  export_model(tmp_path / "sep", params, config.to_dict(), tokenizer_bytes,
               {"languages": ["en", "de", "fr"]})
  encoder = load_pretrained(tmp_path / "sep")
  # Exported without the vocabulary padding: the [languages, V] tables keep their real rows.
  unpadded = dataclasses.replace(config, vocab_multiple=1)
  assert encoder.model.config == unpadded
  for (path, a), b in zip(leaves(encoder.params).items(),
                          jax.tree.leaves(convert_params(params, config, unpadded))):
    assert np.array_equal(a, b), path
  texts = ["river stone light", "yellow garden"]
  by_lang = {lang: encoder.encode(texts, lang=lang, batch_size=2) for lang in ("en", "fr")}
  assert not np.allclose(by_lang["en"], by_lang["fr"], atol=1e-3)
  # "fr" is language index 2: the mean of the last layer run with lang_ids 2 everywhere.
  ids = np.full((2, 8), PAD, np.int32)  # the shape of IDS: all_layers is already compiled
  for i, pieces in enumerate(encoder.tokenizer.encode(texts)):
    ids[i, :len(pieces) + 2] = [0] + pieces + [2]
  hidden = np.asarray(all_layers(config, params, ids, np.full_like(ids, 2))[-1])
  for i in range(2):
    real = ids[i] != PAD
    np.testing.assert_allclose(by_lang["fr"][i], hidden[i, real].mean(axis=0), atol=1e-5)
  with pytest.raises(ValueError, match="language-specific parts.*pass lang="):
    encoder.encode(texts)
