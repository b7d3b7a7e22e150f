"""Extra-anchor code-switching: replacement rate, the 15%-of-words cap, both switch orders, and that only
whole dictionary words change, each into one of its translations. Rates are checked within 4 standard
errors of a binomial proportion."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_dict_mlm import (LANGUAGES, NUM_WORDS, WordTokenizer, expected_by_language, random_batch,
                           whole_words_numpy, write_corpus)
from xlm_jax.objectives import dictionary_swap, mlm, mlm_code_switch
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.registry import OBJECTIVES

ROWS, LENGTH, DRAWS = 32, 64, 24


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tokenizer = WordTokenizer()
  corpus = write_corpus(tmp_path_factory.mktemp("switch_corpus"), tokenizer)
  english = {t: targets for (lang, t), targets in expected_by_language(tokenizer).items() if lang == 0}
  return types.SimpleNamespace(tokenizer=tokenizer, corpus=corpus, expected=english)


def context(s, model=None, **overrides):
  cfg = dict(mlm_code_switch.default_config(), **overrides)
  languages = LANGUAGES
  resources = dictionary_swap.load_dictionary_resources(cfg, s.corpus, s.tokenizer, languages)
  return ObjectiveContext(model=model, config=cfg, vocab_size=s.tokenizer.vocab_size, mask_id=4, pad_id=1,
                          special_ids=(0, 1, 2, 3, 4), languages=languages, train=False,
                          resources=resources, name="mlm_code_switch")


def text_batch(tokenizer, dictionary_share, seed):
  """Rows `<s> words </s>`: `dictionary_share` of the words are dictionary words (en0..en39 all have
  translations), the rest filler words x0..x19 or the continuation piece "s"."""
  rng = np.random.default_rng(seed)
  dict_words = [tokenizer.id(f"▁en{k}") for k in range(NUM_WORDS)]
  filler = [tokenizer.id(f"▁x{k}") for k in range(20)]
  ids = np.where(rng.random((ROWS, LENGTH)) < dictionary_share, rng.choice(dict_words, (ROWS, LENGTH)),
                 rng.choice(filler, (ROWS, LENGTH)))
  ids[rng.random((ROWS, LENGTH)) < 0.05] = tokenizer.id("s")
  ids[:, 0], ids[:, -1] = 0, 2
  return ids


def draws(ctx, ids):
  """code_switch over DRAWS keys, the rows read as English text (numpy)."""
  fn = jax.jit(lambda key, x: mlm_code_switch.code_switch(key, x, jnp.zeros_like(x), ctx))
  outs = [fn(key, jnp.asarray(ids, jnp.int32)) for key in jax.random.split(jax.random.PRNGKey(2), DRAWS)]
  return [jax.device_get(o) for o in outs]


def check_valid(s, ids, outs):
  """Only whole dictionary words change, each into one of its English-side translations; returns the
  number of words."""
  whole = whole_words_numpy(ids, s.tokenizer)
  has = np.vectorize(lambda t: t in s.expected)(ids)
  starts = np.array([p.startswith("▁") for p in s.tokenizer.pieces])
  num_words = int((starts[ids] & (ids > 4)).sum())
  for switched, dictionary_word, replaced, words in outs:
    assert int(words) == num_words
    np.testing.assert_array_equal(dictionary_word, whole & has)
    np.testing.assert_array_equal(switched != ids, replaced)
    assert not (replaced & ~dictionary_word).any()
    for old, new in zip(ids[replaced], switched[replaced]):
      assert new in s.expected[old]
  return num_words


def test_registered_with_config_fields():
  objective = OBJECTIVES.get("mlm_code_switch")
  cfg = objective.default_config()
  assert objective.batch_kind == "mono" and cfg["weight"] == 1.0
  assert (cfg["replace_rate"], cfg["max_switch_rate"], cfg["switch_order"]) == (0.3, 0.15, "replace_then_cap")


@pytest.mark.parametrize("order", mlm_code_switch.SWITCH_ORDERS)
def test_rate_when_the_cap_does_not_bind(setup, order):
  """Dictionary words ~ 8% of words: each is replaced with probability 0.3 under both orders."""
  ids = text_batch(setup.tokenizer, 0.08, seed=1)
  outs = draws(context(setup, switch_order=order), ids)
  num_words = check_valid(setup, ids, outs)
  candidates = sum(int(o[1].sum()) for o in outs)
  replaced = sum(int(o[2].sum()) for o in outs)
  assert max(int(o[2].sum()) for o in outs) < int(0.15 * num_words)  # the cap never reached
  se = np.sqrt(0.3 * 0.7 / candidates)
  assert candidates > 2000 and abs(replaced / candidates - 0.3) <= 4 * se, (replaced, candidates)


def test_cap_binds_when_the_dictionary_covers_most_words(setup):
  """~80% dictionary words: 0.3 of them would be 24% of words, so exactly floor(0.15 * words) switch
  ("replace_then_cap"), or 0.3 of floor(0.15 * words) selected words ("select_then_replace")."""
  ids = text_batch(setup.tokenizer, 0.8, seed=2)
  capped = draws(context(setup, switch_order="replace_then_cap"), ids)
  num_words = check_valid(setup, ids, capped)
  limit = int(np.floor(0.15 * num_words))
  assert all(int(o[2].sum()) == limit for o in capped)
  # The capped subset is spread over the candidates, not the first ones in the batch.
  hit_rows = np.stack([o[2].any(axis=1) for o in capped])
  assert hit_rows.mean() > 0.9
  selected = draws(context(setup, switch_order="select_then_replace"), ids)
  check_valid(setup, ids, selected)
  replaced = sum(int(o[2].sum()) for o in selected)
  se = np.sqrt(0.3 * 0.7 / (limit * DRAWS))
  assert abs(replaced / (limit * DRAWS) - 0.3) <= 4 * se, (replaced, limit * DRAWS)


def test_loss_is_mlm_on_the_switched_text(setup):
  from xlm_jax.models.encoder import EncoderConfig, Model
  model = Model(EncoderConfig(vocab_size=setup.tokenizer.vocab_size, hidden_size=16, num_layers=1,
                              num_heads=2, mlp_dim=32, max_positions=80, dropout_rate=0.0,
                              attention_dropout_rate=0.0))
  batch = random_batch(setup.tokenizer, rows=4, length=32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["input_ids"])["params"]
  ctx = context(setup, model=model, replace_rate=1.0, max_switch_rate=1.0)
  rng = jax.random.PRNGKey(9)

  def both(p, b, r):
    switch_rng, mlm_rng = jax.random.split(r)
    switched = mlm_code_switch.code_switch(switch_rng, b["input_ids"], b["lang_ids"], ctx)[0]
    return (mlm_code_switch.code_switch_mlm_loss(p, b, r, ctx),
            mlm.mlm_loss(p, dict(b, input_ids=switched), mlm_rng, ctx), switched)
  (loss, metrics, _), (expected, _, _), switched = jax.jit(both)(params, batch, rng)
  assert (np.asarray(switched) != np.asarray(batch["input_ids"])).any()
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(metrics["switch_rate"], metrics["dictionary_word_rate"])  # rate 1, no cap
  assert float(metrics["switch_rate"]) > 0
