"""Dictionary arrays (xlm_jax.data.dictionary) and DICT-MLM's swap statistics.

Every dictionary here is written by the test with xlm_jax.data.dictionary.save_dictionary through a
word-level tokenizer of our own (one piece per known word), so the expected translations of each id are
known by construction. Statistical checks draw thousands of masked dictionary words and allow
4 standard errors of a binomial proportion (a false failure about once in 16 000 runs).
"""
import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax.data import dictionary as dict_data
from xlm_jax.data import synthetic
from xlm_jax.objectives import dict_mlm, dictionary_swap, mlm, mlm_core
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import mlm_mask

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
NUM_WORDS = 40


class WordTokenizer:
  """A tokenizer with one piece per word: "▁en3" for a spaced word, or a bare "▁" then "ja0" (the
  form a one-piece word takes after a space when its "▁" form is no piece); "s" and "ing" only
  continue a word; "犬" and "猫" are pieces of an unspaced script (each a word of its own)."""

  def __init__(self, extra_pieces=0):
    self.pieces = (SPECIALS + ["▁"] + [f"▁{lang}{k}" for lang in ("en", "de", "fr")
                                        for k in range(NUM_WORDS)]
                   + [f"▁x{k}" for k in range(20)] + ["s", "ing", "ja0", "ja1", "犬", "猫"]
                   + [f"▁y{k}" for k in range(extra_pieces)])
    self.ids = {piece: i for i, piece in enumerate(self.pieces)}
    self.vocab_size, self.special_ids, self.mask_id, self.pad_id = len(self.pieces), (0, 1, 2, 3, 4), 4, 1

  def id(self, piece):
    return self.ids[piece]

  def id_to_piece(self, i):
    return self.pieces[i]

  def encode(self, texts):
    out = []
    for text in texts:
      ids = []
      for word in text.split():
        if "▁" + word in self.ids:
          ids.append(self.ids["▁" + word])
        elif word in self.ids:
          ids += [self.ids["▁"], self.ids[word]]
        else:
          ids.append(3)
      out.append(ids)
    return out

  def serialized(self):
    return "\n".join(self.pieces).encode()


LANGUAGES = ("en", "de", "fr", "ja")
DE_PAIRS = [(f"en{k}", f"de{k}") for k in range(30)] + [("en0", "de31"), ("en1", "de32")]
# "de9" is also a French word here (a piece two languages share), meaning en1.
FR_PAIRS = [(f"en{k}", f"fr{k}") for k in range(0, 40, 2)] + [("en1", "de9")]
JA_PAIRS = [("en5", "ja0"), ("en7", "ja1"), ("en9", "犬")]


def write_corpus(root, tokenizer):
  """A corpus folder with dictionaries/en-{de,fr,ja} and the derived language en_trans (derived/trans,
  as `xlm-jax data derive` writes it); returns a Corpus stand-in."""
  for lang, pairs in (("de", DE_PAIRS), ("fr", FR_PAIRS), ("ja", JA_PAIRS)):
    dict_data.save_dictionary(root / "dictionaries" / f"en-{lang}.tsv", pairs, tokenizer)
  synthetic.derive_corpus(["en0 en1 en2", "en3 x4"], tokenizer, "trans", seed=0,
                          output_dir=root / "derived" / "trans")
  return types.SimpleNamespace(dir=root, languages=["en", "de", "fr", "ja"])


def expected_translations(tokenizer, word_pairs):
  """{id: set of ids}: both directions, built independently of the code under test."""
  table = collections.defaultdict(set)
  for en, xx in word_pairs:
    a, b = tokenizer.encode([en])[0][-1], tokenizer.encode([xx])[0][-1]
    table[a].add(b)
    table[b].add(a)
  return table


def expected_by_language(tokenizer):
  """{(language index, id): set of ids}: an id's translations when read as a word of that language."""
  table = collections.defaultdict(set)
  for lang, pairs in (("de", DE_PAIRS), ("fr", FR_PAIRS), ("ja", JA_PAIRS)):
    for en, xx in pairs:
      a, b = tokenizer.encode([en])[0][-1], tokenizer.encode([xx])[0][-1]
      table[0, a].add(b)
      table[LANGUAGES.index(lang), b].add(a)
  return table


@pytest.fixture(scope="module")
def tokenizer():
  return WordTokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
  return write_corpus(tmp_path_factory.mktemp("dict_corpus"), tokenizer)


# --- xlm_jax.data.dictionary ------------------------------------------------------------------------------

def test_translation_table_lists_every_translation_both_ways(corpus, tokenizer):
  arrays = dict_data.load_dictionaries(corpus, ("de", "fr", "ja"), tokenizer, LANGUAGES)
  expected = expected_translations(tokenizer, DE_PAIRS + FR_PAIRS + JA_PAIRS)
  by_language = expected_by_language(tokenizer)
  assert len(arrays.pairs) == len(DE_PAIRS) + len(FR_PAIRS) + len(JA_PAIRS)
  assert arrays.sizes == {"de": len(DE_PAIRS), "fr": len(FR_PAIRS), "ja": len(JA_PAIRS)}
  table, tags = arrays.translations, arrays.source_languages
  assert table.shape == tags.shape == (tokenizer.vocab_size, 3)  # en0: de0, de31, fr0
  for i in range(tokenizer.vocab_size):
    row = table[i]
    valid = row[row >= 0]
    assert set(valid.tolist()) == expected.get(i, set()), tokenizer.id_to_piece(i)
    assert (row[len(valid):] == -1).all()  # valid entries first, then padding
    entries = set(zip(valid.tolist(), tags[i, :len(valid)].tolist()))
    assert len(entries) == len(valid)
    assert entries == {(t, lang) for (lang, src), targets in by_language.items() if src == i
                       for t in targets}
  # "▁de9": en9 when read as German, en1 when read as French.
  de9 = tokenizer.id("▁de9")
  assert set(zip(table[de9, :2].tolist(), tags[de9, :2].tolist())) == {(tokenizer.id("▁en9"), 1),
                                                                      (tokenizer.id("▁en1"), 2)}
  capped, _ = dict_data.translation_table(arrays.pairs, tokenizer.vocab_size, max_translations=2)
  assert capped.shape[1] == 2 and set(capped[tokenizer.id("▁en0")]) == {tokenizer.id("▁de0"),
                                                                         tokenizer.id("▁de31")}


def test_derived_language_gives_the_implicit_dictionary(corpus, tokenizer):
  V = tokenizer.vocab_size
  arrays = dict_data.load_dictionaries(corpus, ("en_trans",), tokenizer, ("en", "en_trans"))
  assert arrays.translations.shape == (2 * V, 1)
  assert (arrays.source_languages[5:V] == 0).all() and (arrays.source_languages[V + 5:] == 1).all()
  moved = np.arange(5, V)
  np.testing.assert_array_equal(arrays.translations[moved, 0], moved + V)
  np.testing.assert_array_equal(arrays.translations[moved + V, 0], moved)
  assert (arrays.translations[:5] == -1).all()
  starts, boundary = dict_data.word_boundaries(tokenizer, 2 * V)
  np.testing.assert_array_equal(starts[:V], starts[V:])
  assert boundary[tokenizer.id("▁")] and boundary[tokenizer.id("▁") + V] and boundary.sum() == 2
  assert starts[tokenizer.id("犬")] and not starts[tokenizer.id("ja0")] and not starts[tokenizer.id("s")]
  with pytest.raises(ValueError, match=r"derived with another.*xlm-jax data derive"):
    dict_data.load_dictionaries(corpus, ("en_trans",), WordTokenizer(extra_pieces=1))


def test_missing_dictionary_names_file_and_command(corpus, tokenizer):
  with pytest.raises(FileNotFoundError, match=r"en-ru\.tsv not found.*xlm-jax data build"):
    dict_data.load_dictionaries(corpus, ("de", "ru"), tokenizer)
  assert dict_data.dictionary_names(("en", "de", "fr")) == ("de", "fr")  # English has none
  assert dict_data.dictionary_names(("en", "de"), ("fr", "en")) == ("fr",)
  with pytest.raises(ValueError, match="vocab_size"):  # ids made for another vocabulary
    dict_data.load_dictionaries(corpus, ("de",), WordTokenizer(extra_pieces=7))


# --- DICT-MLM ---------------------------------------------------------------------------------------------

def context(tokenizer, corpus, model=None, **overrides):
  cfg = dict(dict_mlm.default_config(), **overrides)
  languages = LANGUAGES
  resources = dictionary_swap.load_dictionary_resources(cfg, corpus, tokenizer, languages)
  return ObjectiveContext(model=model, config=cfg, vocab_size=tokenizer.vocab_size, mask_id=4, pad_id=1,
                          special_ids=(0, 1, 2, 3, 4), languages=languages, train=False,
                          resources=resources, name="dict_mlm")


def random_batch(tokenizer, rows=64, length=64, seed=0):
  """Rows `<s> ... </s>`, English (even rows) or German (odd rows, lang_ids 1) words and filler
  words, some followed by "s" (then not whole words)."""
  rng = np.random.default_rng(seed)
  filler = [tokenizer.id(f"▁x{k}") for k in range(20)]
  ids = np.empty((rows, length), np.int64)
  for r in range(rows):
    words = [tokenizer.id(f"▁{('en', 'de')[r % 2]}{k}") for k in range(NUM_WORDS)]
    ids[r] = rng.choice(words + filler, size=length)
  ids[rng.random((rows, length)) < 0.1] = tokenizer.id("s")
  ids[:, 0], ids[:, -1] = 0, 2
  ids[:, 10], ids[:, 11] = tokenizer.id("▁"), tokenizer.id("ja0")  # a one-piece word after a bare "▁"
  ones = np.ones_like(ids)
  langs = np.repeat((np.arange(rows) % 2)[:, None], length, axis=1)
  return {"input_ids": jnp.asarray(ids, jnp.int32), "segment_ids": jnp.asarray(ones, jnp.int32),
          "position_ids": jnp.asarray(np.cumsum(ones, 1) + 1, jnp.int32),
          "lang_ids": jnp.asarray(langs, jnp.int32)}


def whole_words_numpy(ids, tokenizer):
  starts = np.array([p.startswith("▁") or p in "犬猫" or i < 5 for i, p in enumerate(tokenizer.pieces)])
  bare = np.array([p == "▁" for p in tokenizer.pieces])
  out = np.zeros(ids.shape, bool)
  for r, c in np.ndindex(*ids.shape):
    begins = (starts[ids[r, c]] and not bare[ids[r, c]]) or (c > 0 and bare[ids[r, c - 1]])
    out[r, c] = begins and c + 1 < ids.shape[1] and starts[ids[r, c + 1]]
  return out


def test_whole_word_positions(tokenizer, corpus):
  pieces = ("▁en0", "s", "▁en1", "▁", "ja0", "▁en2", "犬", "猫", "s")
  ids = np.array([[0] + [tokenizer.id(p) for p in pieces] + [2] + [tokenizer.id("▁en3")]])
  res = context(tokenizer, corpus).resources
  got = np.asarray(dictionary_swap.whole_word_positions(jnp.asarray(ids), res["starts_word"], res["is_boundary"]))
  # <s> en0+s(no) s(no) en1(yes) ▁(no) ja0(yes) en2(yes) 犬(yes: 猫 is a word) 猫+s(no) s(no)
  # </s>(yes, special) en3(cut by the row's end: no)
  assert got.tolist() == [[True, False, False, True, False, True, True, True, False, False, True, False]]
  np.testing.assert_array_equal(got, whole_words_numpy(ids, tokenizer))


def make_drawer(ctx):
  """jitted (key, batch) -> (dict_mlm_mask, plain mlm_mask with the same key); compiled once per ctx."""
  def one(key, batch):
    plain = mlm_mask(key, batch["input_ids"], special_ids=ctx.special_ids, mask_id=4,
                     vocab_size=ctx.vocab_size)
    return dict_mlm.dict_mlm_mask(key, batch, ctx), plain
  return jax.jit(one)


def draw(drawer, batch, num_draws):
  """Outputs of `num_draws` keys, stacked on a leading axis (numpy)."""
  outs = [drawer(key, batch) for key in jax.random.split(jax.random.PRNGKey(1), num_draws)]
  return jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(outs))


def check_swap_statistics(out, plain, batch, tokenizer, variant, p_swap, whole_words=True,
                          language_aware=True):
  """Checks every draw position by position; returns nothing, asserts."""
  ids, langs = np.asarray(batch["input_ids"]), np.asarray(batch["lang_ids"])
  by_language = expected_by_language(tokenizer)
  union = expected_translations(tokenizer, DE_PAIRS + FR_PAIRS + JA_PAIRS)

  def translations(lang, token):
    return by_language.get((lang, token), set()) if language_aware else union.get(token, set())
  whole = whole_words_numpy(ids, tokenizer) if whole_words else np.ones(ids.shape, bool)
  m = out.masked
  rows = np.arange(ids.shape[0])[:, None]
  for d in range(len(m.weights)):
    pos, chosen = m.positions[d], m.weights[d] > 0
    np.testing.assert_array_equal(pos, plain.positions[d])       # masking itself is the MLM's
    np.testing.assert_array_equal(out.original[d], ids[rows, pos])
    pos_langs = langs[rows, pos]
    has = np.vectorize(lambda lang, t: bool(translations(lang, t)))(pos_langs, ids[rows, pos])
    np.testing.assert_array_equal(out.candidate[d], chosen & has & whole[rows, pos])
    assert not (out.swapped[d] & ~out.candidate[d]).any()
    swapped, kept = out.swapped[d], ~out.swapped[d]
    # Only the chosen positions change, and outside swaps exactly as mlm_mask changed them.
    untouched = np.ones(ids.shape, bool)
    untouched[rows, pos] = False
    np.testing.assert_array_equal(m.input_ids[d][untouched], ids[untouched])
    shown = m.input_ids[d][rows, pos]
    np.testing.assert_array_equal(shown[kept], plain.input_ids[d][rows, pos][kept])
    if variant == "target_swap":
      assert (shown[swapped] == 4).all()
      np.testing.assert_array_equal(m.labels[d][kept], out.original[d][kept])
      changed = m.labels[d]
    else:
      np.testing.assert_array_equal(m.labels[d], out.original[d])
      changed = shown
    for lang, orig, new in zip(pos_langs[swapped], out.original[d][swapped], changed[swapped]):
      assert new in translations(lang, orig)
  n_candidates, n_swapped = out.candidate.sum(), out.swapped.sum()
  assert n_candidates > 1000
  se = np.sqrt(p_swap * (1 - p_swap) / n_candidates)
  assert abs(n_swapped / n_candidates - p_swap) <= 4 * se, (n_swapped, n_candidates)


P_SWAP = 0.4


# "princeton" changes tails and heads differently (tests/test_paper_fidelity.py checks it slot by slot).
@pytest.fixture(scope="module", params=("target_swap", "input_swap"))
def drawer(request, tokenizer, corpus):
  return request.param, make_drawer(context(tokenizer, corpus, variant=request.param, p_swap=P_SWAP))


def test_swap_rate_and_validity(drawer, tokenizer):
  """Swapped share of masked dictionary words = p_swap (4 SE over ~5k of them); nothing else moves."""
  variant, fn = drawer
  batch = random_batch(tokenizer)
  out, plain = draw(fn, batch, 16)
  check_swap_statistics(out, plain, batch, tokenizer, variant, P_SWAP)


def test_translation_choice_is_uniform(drawer, tokenizer):
  """en0 has three translations (de0, de31, fr0); each is chosen a third of the time (4 SE)."""
  variant, fn = drawer
  en0 = tokenizer.id("▁en0")
  batch = random_batch(tokenizer)
  ids = np.full(batch["input_ids"].shape, en0)
  ids[:, 0], ids[:, -1] = 0, 2
  batch["input_ids"] = jnp.asarray(ids, jnp.int32)
  batch["lang_ids"] = jnp.zeros_like(batch["lang_ids"])  # English text
  out, _ = draw(fn, batch, 16)
  changed = out.masked.labels if variant == "target_swap" else out.masked.input_ids[
      np.arange(16)[:, None, None], np.arange(ids.shape[0])[None, :, None], out.masked.positions]
  picked = changed[out.swapped]
  counts = collections.Counter(picked.tolist())
  assert set(counts) == {tokenizer.id("▁de0"), tokenizer.id("▁de31"), tokenizer.id("▁fr0")}
  se = np.sqrt((1 / 3) * (2 / 3) / len(picked))
  for c in counts.values():
    assert abs(c / len(picked) - 1 / 3) <= 4 * se


def test_swap_all_without_whole_word_or_language_checks(tokenizer, corpus):
  """p_swap = 1 swaps every candidate; with whole_words off "▁en3" + "s" is a candidate too, and with
  language_aware off any translation of the piece counts, whatever the row's language."""
  ctx = context(tokenizer, corpus, variant="input_swap", p_swap=1.0, whole_words=False,
                language_aware=False)
  batch = random_batch(tokenizer)
  out, plain = draw(make_drawer(ctx), batch, 4)
  np.testing.assert_array_equal(out.swapped, out.candidate)
  ids = np.asarray(batch["input_ids"])
  rows = np.arange(ids.shape[0])[None, :, None]
  assert (~whole_words_numpy(ids, tokenizer)[rows, out.masked.positions] & out.candidate).any()
  # The per-position checks hold as well (here with p_swap = 1: every candidate swapped).
  check_swap_statistics(out, plain, batch, tokenizer, "input_swap", 1.0, whole_words=False,
                        language_aware=False)


def test_language_aware_lookup(tokenizer, corpus):
  """A token is translated as a word of its text's language only; -1 where it has none there."""
  res = context(tokenizer, corpus).resources
  ids = jnp.asarray([[tokenizer.id(p) for p in ("▁en0", "▁de0", "▁de9", "犬")]])
  key = jax.random.PRNGKey(0)
  for lang, expected in ((0, [True, False, False, False]), (1, [False, True, True, False]),
                         (2, [False, False, True, False]), (3, [False, False, False, True])):
    choice, has = dictionary_swap.pick_translation(key, res, ids, jnp.full(ids.shape, lang))
    assert np.asarray(has)[0].tolist() == expected
    assert (np.asarray(choice)[~np.asarray(has)] == -1).all()
  choice, _ = dictionary_swap.pick_translation(key, res, ids[:, 2:3], jnp.full((1, 1), 2))
  assert int(choice[0, 0]) == tokenizer.id("▁en1")  # "▁de9" read as French
  _, has = dictionary_swap.pick_translation(key, res, ids)  # no languages: every entry counts
  assert np.asarray(has).all()


def test_random_replacements_stay_in_the_row_language_range(tokenizer, corpus):
  """With a vocabulary split by language, a random replacement is drawn from the row's own range."""
  import dataclasses
  ranges = np.array([[6, 46], [46, 86], [86, 126], [126, 146]], np.int32)  # en, de, fr, x
  ctx = dataclasses.replace(context(tokenizer, corpus, mask_token_rate=0.0, random_token_rate=1.0),
                            random_ranges=ranges)
  batch = random_batch(tokenizer)
  lang = np.arange(batch["input_ids"].shape[0]) % 4
  batch["lang_ids"] = jnp.asarray(np.repeat(lang[:, None], batch["input_ids"].shape[1], 1), jnp.int32)
  m = jax.device_get(jax.jit(lambda k, b: mlm_core.mask_mono_batch(k, b["input_ids"], b, ctx))(
      jax.random.PRNGKey(4), batch))
  shown = m.input_ids[np.arange(len(lang))[:, None], m.positions]
  low, high = ranges[lang, 0][:, None], ranges[lang, 1][:, None]
  chosen = m.weights > 0
  assert chosen.sum() > 300 and ((shown >= low) & (shown < high))[chosen].all()


def test_loss_with_no_swap_is_the_mlm_loss(tokenizer, corpus):
  """p_swap = 0: the same keys give exactly mlm_loss (masking and dropout keys are used alike)."""
  from xlm_jax.models.encoder import EncoderConfig, Model
  model = Model(EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                              mlp_dim=32, max_positions=80, dropout_rate=0.0, attention_dropout_rate=0.0))
  batch = random_batch(tokenizer, rows=4, length=32)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["input_ids"])["params"]
  rng = jax.random.PRNGKey(3)
  base = context(tokenizer, corpus, model=model, p_swap=0.0)
  both = jax.jit(lambda p, b, r: (dict_mlm.dict_mlm_loss(p, b, r, base), mlm.mlm_loss(p, b, r, base)))
  (loss, metrics, _), (mlm_value, mlm_metrics, _) = both(params, batch, rng)
  np.testing.assert_allclose(loss, mlm_value, rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], mlm_metrics["accuracy"])
  assert float(metrics["weight"]) == float(mlm_metrics["weight"]) > 0
  assert float(metrics["swap_rate"]) == 0 and float(metrics["dictionary_rate"]) > 0
