"""Issue 13's defects against the papers' reference code (princeton-nlp/align-mlm, Mao-KU/EMS, the
released ERNIE-M model): each test here failed before its fix.

- ALIGN-MLM / DICT-MLM: `bilingual_rate`, a fixed random share of the vocabulary in a derived language's
  dictionary (modeling_roberta.py RobertaForAlignedMLM, data_collator_dict_mlm.py).
- TLM on English beside derived English (run_tlm_synthetic_transitive.py's XLM baseline).
- DICT-MLM's "princeton" rule (DataCollatorForDictMLM.mask_tokens), checked slot by slot.
- EMS: per-GPU negatives of the reference's size, coupled L2, inputs without specials, dropout on the
  XTR head's language embedding, swish in the FFN, and the paper variant's settings.
- The alignment metric searching every row of the derived table (compute_alignment_*.py).
- One position convention for TLM and CAMLM in ERNIE-M.
"""
import dataclasses
import math
import pathlib
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_dict_mlm import NUM_WORDS, SPECIALS, WordTokenizer, write_corpus
from test_ems import TINY, _batch, _context, _np_info_nce, _np_projection, PAD
from xlm_jax import config as config_lib
from xlm_jax.data import batch_kinds, derived, dictionary as dict_data, pairs, synthetic
from xlm_jax.data.tokenizer import language_ranges
from xlm_jax.evaluation import alignment
from xlm_jax.evaluation.base import EvalModel
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.objectives import align_mlm, dict_mlm, dictionary_swap, ems, tlm, camlm
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import mlm_mask
from xlm_jax.objectives.pair_inputs import pair_model_inputs

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def tokenizer():
  tok = WordTokenizer()
  tok.bos_id, tok.eos_id = 0, 2   # what the pair pipeline reads besides pad_id
  return tok


# --- bilingual_rate ---------------------------------------------------------------------------------------

def reference_share(V, rate, seed):
  """The reference's rule: permute the V source ids, keep the first int(V * rate), drop specials."""
  chosen = np.random.default_rng(seed).permutation(V)[:int(V * rate)]
  return sorted(set(chosen.tolist()) - set(range(len(SPECIALS))))


@pytest.mark.parametrize("rate", [0.25, 0.5, 1.0])
def test_align_mlm_aligns_a_fixed_random_share_of_the_vocabulary(tokenizer, tmp_path, rate):
  corpus = write_corpus(tmp_path, tokenizer)
  V = tokenizer.vocab_size
  cfg = dict(align_mlm.default_config(), dictionary_languages=("en_trans",), bilingual_rate=rate)
  got = align_mlm.load_pair_resources(cfg, corpus, tokenizer, ("en", "en_trans"))["pairs"]
  want = reference_share(V, rate, dict_data.BILINGUAL_SEED)
  assert sorted(got[:, 0].tolist()) == want and (got[:, 1] == got[:, 0] + V).all()
  assert len(want) <= int(V * rate)
  # Fixed per seed (run after run); another seed draws another share.
  again = align_mlm.load_pair_resources(cfg, corpus, tokenizer, ("en", "en_trans"))["pairs"]
  np.testing.assert_array_equal(got, again)
  if rate < 1:
    other = dict_data.load_dictionaries(corpus, ("en_trans",), tokenizer, bilingual_rate=rate,
                                        bilingual_seed=4).pairs
    assert sorted(other[:, 0].tolist()) == reference_share(V, rate, 4) != want


def test_bilingual_rate_defaults_and_word_dictionaries(tokenizer, tmp_path):
  corpus = write_corpus(tmp_path, tokenizer)
  # The reference's default (run_alignedmlm_synthetic_transitive.py, run_dictmlm_...: 0.25).
  assert align_mlm.default_config()["bilingual_rate"] == 0.25
  assert dict_mlm.default_config()["bilingual_rate"] == 0.25
  words = dict(align_mlm.default_config(), dictionary_languages=("de",), bilingual_rate=0.25)
  full = dict(words, bilingual_rate=1.0)
  # Word dictionaries are used whole whatever the rate.
  np.testing.assert_array_equal(
      align_mlm.load_pair_resources(words, corpus, tokenizer, ("en", "de"))["pairs"],
      align_mlm.load_pair_resources(full, corpus, tokenizer, ("en", "de"))["pairs"])
  # DICT-MLM's translation table holds the same share, both directions.
  cfg = dict(dict_mlm.default_config(), dictionary_languages=("en_trans",))
  res = dictionary_swap.load_dictionary_resources(cfg, corpus, tokenizer, ("en", "en_trans"))
  V = tokenizer.vocab_size
  has = np.flatnonzero((res["translations"] >= 0).any(axis=1))
  want = reference_share(V, 0.25, dict_data.BILINGUAL_SEED)
  assert has.tolist() == want + [i + V for i in want]
  with pytest.raises(ValueError, match="bilingual_rate must be in"):
    dict_data.bilingual_subset(np.zeros((1, 2)), 10, 0.0, 0)


# --- TLM on English beside derived English ----------------------------------------------------------------

class TextCorpus:
  """The corpus surface the derived-language code reads: texts per language and split, a tokenizer."""

  def __init__(self, root, texts, tokenizer):
    self.dir, self._texts, self._tokenizer, self.languages = root, texts, tokenizer, ["en"]

  def check_languages(self, languages):
    missing = [lang for lang in languages if lang not in self.languages]
    if missing:
      raise ValueError(f"no language {missing}")

  def mono_texts(self, lang, split):
    return list(self._texts[split])

  def tokenizer(self):
    return self._tokenizer


def english_sentences(count, seed):
  rng = np.random.default_rng(seed)
  return [" ".join(f"en{k}" for k in rng.integers(0, NUM_WORDS, rng.integers(2, 7))) for _ in range(count)]


@pytest.fixture()
def text_corpus(tmp_path, tokenizer):
  return TextCorpus(tmp_path, {"train": english_sentences(60, 0), "test": english_sentences(10, 1)},
                    tokenizer)


def shifted(ids, V):
  return [i + V if i >= len(SPECIALS) else i for i in ids]


def test_derived_pair_source_meets_each_sentence_again(text_corpus, tokenizer):
  """The derived training text is shuffled; the pair source puts every sentence beside its own form."""
  V = tokenizer.vocab_size
  for split in ("train", "test"):
    source = derived.DerivedPairSource(text_corpus, "en_trans", split, tokenizer)
    texts = text_corpus.mono_texts("en", split)
    assert len(source) == len(texts) and derived.num_examples(text_corpus, "en_trans", split,
                                                              "parallel") == len(texts)
    seen = []
    for k in range(len(source)):
      record = source[k]
      assert record["xx_ids"].tolist() == shifted(tokenizer.encode([record["en"]])[0], V)
      seen.append(record["en"])
    assert sorted(seen) == sorted(texts)
  # Training rows really are shuffled (else the test above proves nothing about the inversion).
  order = synthetic.training_row_order(0, 60)
  assert (order != np.arange(60)).any()


def test_tlm_batch_holds_an_english_and_derived_english_pair(text_corpus, tokenizer):
  languages = ("en", "en_trans")
  assert pairs.pair_languages(languages) == ["en_trans"]
  assert pairs.pair_languages(("en", "de_trans")) == []   # its source language is not listed
  dataset = batch_kinds.make_dataset("parallel", text_corpus, tokenizer, languages=languages, seq_len=24,
                                     batch_size=8, alpha=1.0, seed=0, shard_index=0, shard_count=1)
  batch = next(iter(dataset))
  V = tokenizer.vocab_size
  for ids, seg, lang in zip(batch["input_ids"], batch["segment_ids"], batch["lang_ids"]):
    first, second = ids[seg == 1][1:-1], ids[seg == 2][1:-1]
    x_lang, y_lang = lang[seg == 1][0], lang[seg == 2][0]
    assert {int(x_lang), int(y_lang)} == {0, 1}
    en_side, derived_side = (first, second) if x_lang == 0 else (second, first)
    assert (en_side < V).all() and (derived_side >= V).all()
    assert derived_side.tolist() == shifted(en_side.tolist(), V)   # a sentence and its derived form


@pytest.mark.slow
def test_tlm_trains_on_english_and_derived_english_pairs(text_corpus, tokenizer):
  """Smoke test: the TLM loss on such a batch is finite and has labelled positions."""
  languages, V = ("en", "en_trans"), tokenizer.vocab_size
  batch = next(iter(batch_kinds.make_dataset("parallel", text_corpus, tokenizer, languages=languages,
                                             seq_len=24, batch_size=8, alpha=1.0, seed=0, shard_index=0,
                                             shard_count=1)))
  model = Model(EncoderConfig(vocab_size=2 * V, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                              max_positions=40, num_languages=2, dropout_rate=0.0,
                              attention_dropout_rate=0.0))
  ctx = ObjectiveContext(model=model, config=tlm.default_config(), vocab_size=2 * V, mask_id=4, pad_id=1,
                         special_ids=(0, 1, 2, 3, 4), languages=languages, name="tlm",
                         random_ranges=language_ranges(tokenizer, languages))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  params = model.init(jax.random.PRNGKey(0), batch["input_ids"], lang_ids=batch["lang_ids"],
                      label_positions=jnp.zeros((8, 1), jnp.int32))
  loss, metrics, _ = jax.jit(lambda p, b: tlm.tlm_loss(p, b, jax.random.PRNGKey(1), ctx))(
      nn.meta.unbox(params["params"]), batch)
  assert np.isfinite(float(loss)) and float(metrics["weight"]) > 0


# --- DICT-MLM, the princeton rule -------------------------------------------------------------------------

def test_dict_mlm_princeton_rule_slot_by_slot(tokenizer, tmp_path):
  """Per masked slot, as DataCollatorForDictMLM.mask_tokens: heads (p 0.5) + translation -> the
  counterpart shown with its language id; heads without one -> the token itself; tails -> mlm_mask's
  80/10/10. Labels stay the originals."""
  corpus = write_corpus(tmp_path, tokenizer)
  V, languages = tokenizer.vocab_size, ("en", "en_trans")
  cfg = dict(dict_mlm.default_config(), variant="princeton", p_swap=0.5, whole_words=False,
             dictionary_languages=("en_trans",), bilingual_rate=0.5)
  res = dictionary_swap.load_dictionary_resources(cfg, corpus, tokenizer, languages)
  ctx = ObjectiveContext(model=None, config=cfg, vocab_size=2 * V, mask_id=4, pad_id=1,
                         special_ids=(0, 1, 2, 3, 4), languages=languages, train=False, resources=res,
                         name="dict_mlm")
  rng = np.random.default_rng(0)
  rows, length = 32, 48
  ids = rng.integers(5, V, (rows, length))
  ids[1::2] += V                                 # odd rows: derived text
  ids[:, 0], ids[:, -1] = 0, 2
  langs = np.repeat((np.arange(rows) % 2)[:, None], length, axis=1)
  batch = {"input_ids": jnp.asarray(ids, jnp.int32), "lang_ids": jnp.asarray(langs, jnp.int32)}
  has = set(np.flatnonzero((res["translations"] >= 0).any(axis=1)).tolist())

  def one(key):
    plain = mlm_mask(key, batch["input_ids"], special_ids=ctx.special_ids, mask_id=4, vocab_size=2 * V)
    return dict_mlm.dict_mlm_mask(key, batch, ctx), plain
  draw = jax.jit(one)
  heads = chosen_total = 0
  for key in jax.random.split(jax.random.PRNGKey(2), 8):
    out, plain = jax.device_get(draw(key))
    m, r = out.masked, np.arange(rows)[:, None]
    np.testing.assert_array_equal(m.positions, plain.positions)
    np.testing.assert_array_equal(m.labels, ids[r, m.positions])
    shown, plain_shown = m.input_ids[r, m.positions], plain.input_ids[r, m.positions]
    new_lang = out.lang_ids[r, m.positions]
    for b, p in zip(*np.nonzero(m.weights > 0)):
      token = int(ids[b, m.positions[b, p]])
      if out.coin[b, p] and token in has:
        counterpart = token + V if token < V else token - V
        assert shown[b, p] == counterpart and new_lang[b, p] == 1 - langs[b, 0]
      elif out.coin[b, p]:
        assert shown[b, p] == token and new_lang[b, p] == langs[b, 0]
      else:
        assert shown[b, p] == plain_shown[b, p] and new_lang[b, p] == langs[b, 0]
    chosen = m.weights > 0
    heads += int((out.coin & chosen).sum())
    chosen_total += int(chosen.sum())
    np.testing.assert_array_equal(out.swapped, out.coin & out.candidate)
  # Heads come up half the time over ~1.7k slots (4 standard errors).
  assert abs(heads / chosen_total - 0.5) <= 4 * np.sqrt(0.25 / chosen_total)


@pytest.mark.slow
def test_dict_mlm_loss_reads_the_swapped_language_ids(tokenizer, tmp_path):
  """With language embeddings, princeton's flipped ids reach the model: the loss differs from the same
  swap with the row's ids kept."""
  corpus = write_corpus(tmp_path, tokenizer)
  V, languages = tokenizer.vocab_size, ("en", "en_trans")
  model = Model(EncoderConfig(vocab_size=2 * V, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                              max_positions=40, num_languages=2, dropout_rate=0.0,
                              attention_dropout_rate=0.0))
  cfg = dict(dict_mlm.default_config(), variant="princeton", p_swap=1.0, whole_words=False,
             dictionary_languages=("en_trans",), bilingual_rate=1.0, mask_rate=0.5)
  res = dictionary_swap.load_dictionary_resources(cfg, corpus, tokenizer, languages)
  ctx = ObjectiveContext(model=model, config=cfg, vocab_size=2 * V, mask_id=4, pad_id=1,
                         special_ids=(0, 1, 2, 3, 4), languages=languages, train=False, resources=res,
                         name="dict_mlm")
  ids = np.random.default_rng(1).integers(5, V, (4, 16))
  ids[:, 0], ids[:, -1] = 0, 2
  ones = np.ones_like(ids)
  batch = {"input_ids": jnp.asarray(ids, jnp.int32), "segment_ids": jnp.asarray(ones, jnp.int32),
           "position_ids": jnp.asarray(np.cumsum(ones, 1) + 1, jnp.int32),
           "lang_ids": jnp.zeros(ids.shape, jnp.int32)}
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), batch["input_ids"], lang_ids=batch["lang_ids"],
                                    label_positions=jnp.zeros((4, 1), jnp.int32))["params"])
  from xlm_jax.objectives.mlm_core import mono_masked_loss

  @jax.jit
  def losses(p, b):
    mask_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(3))
    out = dict_mlm.dict_mlm_mask(mask_rng, b, ctx)
    kept = mono_masked_loss(p, out.masked, b, dropout_rng, ctx)[0]
    flipped = mono_masked_loss(p, out.masked, dict(b, lang_ids=out.lang_ids), dropout_rng, ctx)[0]
    return dict_mlm.dict_mlm_loss(p, b, jax.random.PRNGKey(3), ctx)[0], kept, flipped, out.lang_ids
  loss, kept, flipped, lang_ids = losses(params, batch)
  assert (np.asarray(lang_ids) == 1).any()
  np.testing.assert_allclose(loss, flipped, rtol=1e-6)
  assert not np.isclose(float(kept), float(flipped))


# --- EMS ---------------------------------------------------------------------------------------------------

ONE_LAYER = Model(dataclasses.replace(TINY, num_layers=1))   # test_ems's encoder, one layer: quicker


def _params(ctx, seed=0):
  """test_ems's parameters, initialised under jit (op-by-op init is slow on a busy CPU)."""
  init = jax.jit(lambda key: ctx.model.init(key, jnp.zeros((1, 8), jnp.int32),
                                            label_positions=jnp.zeros((1, 1), jnp.int32))["params"])
  params = dict(init(jax.random.PRNGKey(seed)))
  params["heads"] = {"ems": jax.jit(lambda key: ems.init_params(key, ctx))(jax.random.PRNGKey(seed + 1))}
  return nn.meta.unbox(params)


def _np_cl_on(ctx, params, x_ids, y_ids):
  """g(mean-pooled last layer) of both sides, pooled in NumPy over the non-padding tokens."""
  encode = jax.jit(lambda p, ids: ctx.model.apply({"params": p}, ids, method="encode"))
  head = params["heads"]["ems"]["projection"]
  def pooled(ids):
    hidden, mask = np.asarray(encode(params, jnp.asarray(ids))), (ids != PAD)[..., None]
    return (hidden * mask).sum(1) / mask.sum(1)
  return _np_projection(head, pooled(x_ids)), _np_projection(head, pooled(y_ids))


def test_ems_negatives_of_a_fixed_group_size():
  """global_negatives off, negatives_group_size 4: blocks of 4 pairs whatever the device count (the
  reference's 152 pairs per GPU); here 4 devices, whose own blocks would be 2 pairs."""
  batch = _batch(seed=3)
  ctx = _context(ONE_LAYER, dp=4, use_xtr=False, global_negatives=False, negatives_group_size=4)
  params = _params(ctx)
  _, metrics = jax.jit(lambda p, b: ems.ems_loss(p, b, jax.random.PRNGKey(0),
                                                 dataclasses.replace(ctx, train=False))[:2])(params, batch)
  z_x, z_y = _np_cl_on(ctx, params, batch["x_input_ids"], batch["y_input_ids"])
  want = np.mean([_np_info_nce(z_x[b:b + 4], z_y[b:b + 4], 0.1) for b in (0, 4)])
  np.testing.assert_allclose(metrics["cl_loss"], want, rtol=1e-5)
  assert ems.negative_groups(dict(ctx.config), 8, 4) == 2
  assert ems.negative_groups(dict(ctx.config, negatives_group_size=None), 8, 4) == 4   # per device
  assert ems.negative_groups(dict(ctx.config, global_negatives=True), 8, 4) == 1
  with pytest.raises(ValueError, match="negatives_group_size"):
    ems.negative_groups(dict(ctx.config, negatives_group_size=3), 8, 1)
  with pytest.raises(ValueError, match="negatives_group_size must be None"):
    ems.init_params(jax.random.PRNGKey(0), _context(ONE_LAYER, negatives_group_size=0))


def test_ems_coupled_l2_adds_w_times_p_to_every_gradient():
  """l2_weight w adds (w / 2) sum p^2 over every parameter: gradient w p, torch Adam's weight_decay."""
  batch = _batch(seed=1)
  ctx = _context(ONE_LAYER, use_cl=False)
  params = _params(ctx)
  w = 1e-2

  @jax.jit
  def losses(p, b):
    evaluation = dataclasses.replace(ctx, train=False)
    plain = ems.ems_loss(p, b, jax.random.PRNGKey(0), evaluation)[0]
    l2 = ems.ems_loss(p, b, jax.random.PRNGKey(0),
                      dataclasses.replace(evaluation, config=dict(ctx.config, l2_weight=w)))[0]
    return plain, l2
  plain, with_l2 = losses(params, batch)
  squares = sum(float(np.sum(np.square(np.asarray(p, np.float64)))) for p in jax.tree.leaves(params))
  np.testing.assert_allclose(with_l2 - plain, 0.5 * w * squares, rtol=1e-4)
  grads = jax.jit(jax.grad(ems.coupled_l2))(params)
  for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(grads)):
    np.testing.assert_allclose(g, 2 * np.asarray(p), rtol=1e-6)


def test_ems_without_specials_encodes_and_pools_the_sentence_only():
  batch = _batch(seed=2)
  ctx = _context(ONE_LAYER, use_xtr=False, sentence_specials=False)
  params = _params(ctx)

  def strip(ids):
    out = np.full_like(ids, PAD)
    for r, row in enumerate(ids):
      tokens = row[row != PAD][1:-1]
      out[r, :len(tokens)] = tokens
    return out
  np.testing.assert_array_equal(ems.strip_specials(jnp.asarray(batch["x_input_ids"]), PAD),
                                strip(batch["x_input_ids"]))
  _, metrics = jax.jit(lambda p, b: ems.ems_loss(p, b, jax.random.PRNGKey(0),
                                                 dataclasses.replace(ctx, train=False))[:2])(params, batch)
  z_x, z_y = _np_cl_on(ctx, params, strip(batch["x_input_ids"]), strip(batch["y_input_ids"]))
  np.testing.assert_allclose(metrics["cl_loss"], _np_info_nce(z_x, z_y, 0.1), rtol=1e-5)


def test_ems_xtr_head_drops_out_the_language_embedding():
  """lang_dropout 1: in training the language vector is all zeros, as if its LayerNorm gave zeros;
  None (the default) takes the encoder's dropout_rate (the reference's emb_dropout feeds both)."""
  model = Model(EncoderConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                              max_positions=24, dropout_rate=0.1))
  assert ems.xtr_head(_context(model)).lang_dropout_rate == 0.1
  assert ems.xtr_head(_context(model, lang_dropout=0.0)).lang_dropout_rate == 0.0
  head = ems.xtr_head(_context(lang_dropout=1.0))
  sentence = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  lang = jnp.asarray([0, 1, 2, 1])
  params = nn.meta.unbox(head.init(jax.random.PRNGKey(1), sentence, lang)["params"])
  train = head.apply({"params": params}, sentence, lang, deterministic=False,
                     rngs={"dropout": jax.random.PRNGKey(2)})
  silenced = jax.tree.map(lambda x: x, params)
  norm = silenced["language_layer_norm"]
  norm["scale"], norm["bias"] = jnp.zeros_like(norm["scale"]), jnp.zeros_like(norm["bias"])
  np.testing.assert_allclose(train, head.apply({"params": silenced}, sentence, lang), rtol=1e-5, atol=1e-6)
  assert not np.allclose(train, head.apply({"params": params}, sentence, lang))


@pytest.mark.parametrize("activation", ["gelu", "swish"])
def test_encoder_ffn_activation(activation):
  config = EncoderConfig(vocab_size=40, hidden_size=8, num_layers=1, num_heads=2, mlp_dim=16,
                         max_positions=24, activation=activation)
  model = Model(config)
  ids = jnp.asarray([[0, 5, 6, 7, 2, 1]])
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), ids, method="encode")["params"])
  _, state = model.apply({"params": params}, ids, method="encode", capture_intermediates=True,
                         mutable=["intermediates"])
  layer = state["intermediates"]["encoder"]["layer_0"]
  pre = np.asarray(layer["intermediate"]["__call__"][0], np.float64)
  erf = np.vectorize(math.erf)
  act = pre / (1 + np.exp(-pre)) if activation == "swish" else 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
  out = params["encoder"]["layer_0"]["output"]
  np.testing.assert_allclose(layer["output"]["__call__"][0], act @ out["kernel"] + out["bias"],
                             rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="activation"):
    EncoderConfig(vocab_size=40, activation="relu")


def test_ems_paper_variant_follows_the_reference_code():
  c = config_lib.load_config(f"{EXPERIMENTS / 'ems.py'}:paper")
  e, o = c.objectives.ems, c.optimizer
  assert not e.global_negatives and e.negatives_group_size == 152
  assert c.train.batch_size % 152 == 0
  assert (o.name, o.learning_rate, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == (
      "amsgrad", 3e-4, 0.9, 0.999, 1e-8, 0.0, 0.0)
  assert e.l2_weight == 1e-5 and not e.sentence_specials and e.lang_dropout == 0.1
  assert (c.model.activation, c.model.layer_norm_eps, c.model.num_layers, c.model.hidden_size) == (
      "swish", 1e-12, 6, 1024)
  assert (o.schedule, o.warmup_steps, c.data.pair_seq_len) == ("cosine", 10_000, 122)
  small = config_lib.load_config(f"{EXPERIMENTS / 'ems.py'}:lightweight,gpus=2")
  assert small.train.batch_size == 2 * 384 and small.objectives.ems.negatives_group_size == 384


# --- The alignment metric ---------------------------------------------------------------------------------

def test_alignment_searches_every_row_of_the_derived_table():
  """Untrained derived rows (the specials' counterparts E[V:V+5]) equal to some queries' rows steal
  their nearest neighbour in the reference's search (all of E[V:2V]); among the dictionary's targets
  only, every query finds its counterpart."""
  rng = np.random.default_rng(0)
  V, dim = 200, 16
  table = rng.normal(size=(2 * V, dim))
  table[V:] = table[:V] + 0.3 * rng.normal(size=(V, dim))
  pairs = synthetic.implicit_dictionary(V)
  queries, _ = alignment.split_source_ids(pairs[:, 0], 0)
  # The rows of the five specials' counterparts (no pair leads to them) copy five queried ids' rows.
  table[V:V + 5] = table[queries[:5]]
  evaluator = alignment.Alignment({"seed": 0, "word": [], "derived": {"en_trans": V},
                                   "derived/en_trans": pairs}, None)
  got = evaluator(EvalModel(encode=None, word_embeddings=lambda: table, config=None))
  # NumPy transcription of test_mapping: argmax over all rows of the second table.
  unit = table / np.linalg.norm(table, axis=1, keepdims=True)
  want = 100.0 * np.mean(np.argmax(unit[queries] @ unit[V:].T, axis=1) == queries)
  assert got["alignment/en_trans/accuracy"] == pytest.approx(want)
  targets_only = alignment.dictionary_alignment_accuracy(table, pairs, 0)
  assert want == pytest.approx(100.0 * (len(queries) - 5) / len(queries)) and targets_only == 100.0


# --- ERNIE-M: one position convention ---------------------------------------------------------------------

def test_ernie_m_tlm_and_camlm_number_positions_alike():
  c = config_lib.load_config(f"{EXPERIMENTS / 'ernie_m.py'}")
  sections = {name: dict(c.objectives[name]) for name in ("tlm", "camlm")}
  assert sections["tlm"]["reset_positions"] == sections["camlm"]["reset_positions"] is False
  row = pairs.parallel_row([7, 8, 9], [10, 11], x_lang_id=0, y_lang_id=1, seq_len=12, bos_id=0, eos_id=2,
                           pad_id=1)
  batch = {k: jnp.asarray(v)[None] for k, v in row.items()}
  model = types.SimpleNamespace(config=types.SimpleNamespace(num_languages=0))
  positions = []
  for name, module in (("tlm", tlm), ("camlm", camlm)):
    cfg = {**module.default_config(), **sections[name]}
    ctx = ObjectiveContext(model=model, config=cfg, vocab_size=20, mask_id=4, pad_id=1,
                           special_ids=(0, 1, 2, 3, 4), languages=("en", "de"))
    positions.append(np.asarray(pair_model_inputs(batch, ctx, cfg["reset_positions"])["position_ids"]))
  np.testing.assert_array_equal(positions[0], positions[1])
  # Continuous from pad_id + 1 over the whole pair, as the released model numbers any input.
  assert positions[0][0, :9].tolist() == list(range(2, 11))


# --- The synthetic variants of the ALIGN-MLM table --------------------------------------------------------

def test_synthetic_variants_of_the_align_mlm_table():
  align = config_lib.load_config(f"{EXPERIMENTS / 'align_mlm.py'}:synthetic,rate=0.5")
  assert align.objectives.align_mlm.bilingual_rate == 0.5 and align.data.languages == ("en", "en_trans")
  dict_cfg = config_lib.load_config(f"{EXPERIMENTS / 'dict_mlm.py'}:synthetic,op=trans+inv")
  d = dict_cfg.objectives.dict_mlm
  assert (d.variant, d.p_swap, d.whole_words, d.bilingual_rate) == ("princeton", 0.5, False, 0.25)
  assert dict_cfg.data.languages == ("en", "en_trans+inv") and dict_cfg.model.num_languages == 2
  xlm = config_lib.load_config(f"{EXPERIMENTS / 'xlm_tlm.py'}:synthetic")
  assert xlm.data.languages == ("en", "en_trans") and set(xlm.objectives) == {"mlm", "tlm"}
  assert xlm.objectives.tlm.reset_positions and xlm.model.num_languages == 2
