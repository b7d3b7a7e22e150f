"""ALIGN-MLM: L = L_MLM + lambda * (-mean cos) over dictionary pairs of the tied word-embedding table,
checked against NumPy on a tiny model, in the full and the sampled form."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_dict_mlm import DE_PAIRS, FR_PAIRS, JA_PAIRS, WordTokenizer, random_batch, write_corpus
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import align_mlm, mlm
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.registry import OBJECTIVES


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tokenizer = WordTokenizer()
  corpus = write_corpus(tmp_path_factory.mktemp("align_corpus"), tokenizer)
  model = Model(EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                              mlp_dim=32, max_positions=80, dropout_rate=0.0, attention_dropout_rate=0.0))
  batch = random_batch(tokenizer, rows=4, length=32)
  # Unboxed, as the trainer holds them (word_embedding_table also accepts boxed ones).
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), batch["input_ids"])["params"])
  return types.SimpleNamespace(tokenizer=tokenizer, corpus=corpus, model=model, batch=batch, params=params)


def context(s, **overrides):
  cfg = dict(align_mlm.default_config(), **overrides)
  languages = ("en", "de", "fr", "ja")
  resources = align_mlm.load_pair_resources(cfg, s.corpus, s.tokenizer, languages)
  return ObjectiveContext(model=s.model, config=cfg, vocab_size=s.tokenizer.vocab_size, mask_id=4,
                          pad_id=1, special_ids=(0, 1, 2, 3, 4), languages=languages, train=False,
                          resources=resources, name="align_mlm")


def numpy_align_loss(table, pairs):
  table = np.asarray(table, np.float64)
  cos = [table[i] @ table[j] / (np.linalg.norm(table[i]) * np.linalg.norm(table[j])) for i, j in pairs]
  return -float(np.mean(cos))


def word_pairs(tokenizer):
  return [(tokenizer.encode([en])[0][-1], tokenizer.encode([xx])[0][-1])
          for en, xx in DE_PAIRS + FR_PAIRS + JA_PAIRS]


def test_registered_with_config_fields():
  objective = OBJECTIVES.get("align_mlm")
  cfg = objective.default_config()
  assert objective.batch_kind == "mono" and cfg["weight"] == 1.0 and cfg["align_weight"] == 10.0
  assert cfg["align_pairs_per_step"] == 0


def test_full_dictionary_loss_matches_numpy(setup):
  ctx = context(setup)
  assert sorted(map(tuple, ctx.resources["pairs"].tolist())) == sorted(word_pairs(setup.tokenizer))
  rng = jax.random.PRNGKey(5)
  # One compiled program for both (compiles dominate this file's time on a busy CPU).
  both = jax.jit(lambda p, b, r: (align_mlm.align_mlm_loss(p, b, r, ctx),
                                  mlm.mlm_loss(p, b, jax.random.split(r)[0], ctx)))
  (loss, metrics, _), (mlm_value, mlm_metrics, _) = both(setup.params, setup.batch, rng)
  table = setup.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  expected_align = numpy_align_loss(table, word_pairs(setup.tokenizer))
  np.testing.assert_allclose(metrics["align_loss"], expected_align, rtol=1e-5)
  np.testing.assert_allclose(metrics["mean_cos"], -expected_align, rtol=1e-5)
  np.testing.assert_allclose(metrics["mlm_loss"], mlm_value, rtol=1e-5)
  np.testing.assert_allclose(loss, float(mlm_value) + 10.0 * expected_align, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)
  assert metrics["weight"] == mlm_metrics["weight"]
  np.testing.assert_allclose(metrics["accuracy"], mlm_metrics["accuracy"])


def test_sampled_pairs_loss_matches_numpy_and_is_unbiased(setup):
  ctx = context(setup, align_pairs_per_step=7, align_weight=2.5)
  pairs = np.asarray(ctx.resources["pairs"])
  table = setup.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  rng = jax.random.PRNGKey(11)
  _, metrics, _ = jax.jit(lambda p, b, r: align_mlm.align_mlm_loss(p, b, r, ctx))(setup.params, setup.batch, rng)
  # Documented key use: the second half of split(rng) draws the pair indices.
  index = np.asarray(align_mlm.sample_pair_indices(jax.random.split(rng)[1], len(pairs), 7))
  assert index.shape == (7,) and index.min() >= 0 and index.max() < len(pairs)
  np.testing.assert_allclose(metrics["align_loss"], numpy_align_loss(table, pairs[index]), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], metrics["mlm_loss"] + 2.5 * metrics["align_loss"], rtol=1e-6)
  # Over many keys, the sampled term averages to the full one (4 standard errors).
  def sampled(key):
    return align_mlm.alignment_loss(table, jnp.asarray(pairs)[
        align_mlm.sample_pair_indices(key, len(pairs), 7)])[0]
  values = np.asarray(jax.jit(jax.vmap(sampled))(jax.random.split(rng, 4000)))
  full = numpy_align_loss(table, pairs)
  assert abs(values.mean() - full) <= 4 * values.std() / np.sqrt(len(values))


def test_gradient_reaches_only_dictionary_rows(setup):
  pairs = np.array([[6, 46], [7, 47], [6, 87]])
  table = setup.params["encoder"]["embeddings"]["word_embeddings"]["embedding"]
  grad = np.asarray(jax.grad(lambda t: align_mlm.alignment_loss(t, jnp.asarray(pairs))[0])(table))
  touched = np.flatnonzero(np.abs(grad).sum(axis=1))
  assert set(touched.tolist()) == {6, 7, 46, 47, 87}
  # A step against the gradient raises the mean cosine.
  before = -numpy_align_loss(table, pairs)
  after = -numpy_align_loss(np.asarray(table) - 1e-4 * grad, pairs)
  assert after > before


def test_table_lookup_errors(setup):
  with pytest.raises(ValueError, match="separate_embeddings"):
    align_mlm.word_embedding_table(setup.params, types.SimpleNamespace(separate_embeddings=True))
  with pytest.raises(ValueError, match="encoder/embeddings/word_embeddings/embedding"):
    align_mlm.word_embedding_table({"encoder": {}}, setup.model.config)
  ctx = context(setup, dictionary_languages=("en_trans",))  # ids up to 2 V, the model has V
  with pytest.raises(ValueError, match="model.vocab_size = 2 V"):
    align_mlm.align_mlm_loss(setup.params, setup.batch, jax.random.PRNGKey(0), ctx)
