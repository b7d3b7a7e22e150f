"""The evaluation tasks end to end: sets read from a corpus, scored through an EvalModel.

Fake encoders with known geometry give known answers: an encoder that puts a sentence and its
translation on the same vector must get P@1 = 1, mining F1 = 1 and CKA = 1, a random one near chance.
"""
import json
import pathlib
import types

import ml_collections
import numpy as np
import pytest

from test_export import WORDS, init_params, tiny_config, tokenizer_bytes  # noqa: F401 (fixture)
from xlm_jax import config as config_lib
from xlm_jax.evaluation import cka, metrics, mining
from xlm_jax.evaluation.base import EvalData, EvalModel, from_data
from xlm_jax.export import export_model, load_pretrained

LATIN = np.array(list("abcdefghijklmnopqrstuvwxyz"))
# "Foreign" text in another script shares no character n-gram with the English side, so the TF-IDF
# baselines see zero similarity between a sentence and its translation.
GREEK = np.array(list("αβγδεζηθικλμνξοπρστυφχψω"))


def random_words(rng, count: int, length: int = 9, alphabet=LATIN) -> list[str]:
  """Distinct random strings of `alphabet`."""
  words = []
  while len(words) < count:
    word = "".join(rng.choice(alphabet, length))
    if word not in words:
      words.append(word)
  return words


def eval_config(**changes) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config_lib.default_config().eval.to_dict())
  config.update(changes)
  return config


def fake_data(tmp_path, eval_cfg, pairs=None, mono=None, languages=("en", "de")):
  """EvalData over a corpus of `pairs` {lang: [(en, xx)]} and test/train text `mono`
  {(lang, split): [text]} (default: the sides of the pairs); files go under tmp_path."""
  pairs = pairs or {}
  mono = mono or {}

  def mono_texts(lang, split):
    if (lang, split) in mono:
      return list(mono[lang, split])
    if lang == "en":
      return [en for p in pairs.values() for en, _ in p]
    return [xx for _, xx in pairs.get(lang, [])]

  corpus = types.SimpleNamespace(dir=pathlib.Path(tmp_path), parallel_pairs=lambda lang, split: pairs[lang],
                                 mono_texts=mono_texts)
  return EvalData(corpus=corpus, tokenizer=None, languages=tuple(languages), seed=0, alpha=0.3,
                  model_config=None, eval_config=eval_cfg)


class TableEncoder:
  """encode() by lookup: a text's vector is table[text], or a fixed random vector of its own."""

  def __init__(self, table, dim, seed=0, num_layers=2):
    self.table, self.dim, self.rng = table, dim, np.random.default_rng(seed)
    self.own = {}
    self.calls = []
    self.config = types.SimpleNamespace(num_layers=num_layers)

  def encode(self, texts, lang=None, pooling="mean", layer=-1):
    self.calls.append((lang, pooling, layer, len(texts)))
    rows = []
    for text in texts:
      if text not in self.table and text not in self.own:
        self.own[text] = self.rng.standard_normal(self.dim)
      rows.append(self.table.get(text, self.own.get(text)))
    return np.stack(rows).astype(np.float32)

  def model(self):
    return EvalModel(encode=self.encode, word_embeddings=None, config=self.config)


def parallel_corpus(rng, n):
  en, de = random_words(rng, n), random_words(rng, n, alphabet=GREEK)
  return list(zip(en, de))


# --- retrieval ---------------------------------------------------------------------------------------

def test_retrieval_hard_subset_and_layer_option(tmp_path):
  rng = np.random.default_rng(0)
  pairs = parallel_corpus(rng, 40)
  # Five items whose foreign side is the English text itself: TF-IDF gets exactly these right (the
  # others share no n-gram with their translations, and a tie goes to item 0).
  pairs[:5] = [(en, en) for en, _ in pairs[:5]]
  data = fake_data(tmp_path, eval_config(pooling="layer", layer=1), {"de": pairs})
  evaluator = from_data("retrieval", data)
  assert evaluator.baseline["retrieval/de-en/hard_items"] == 35
  # An encoder right on the five surface items only: P@1 = 5/40, and 0 where TF-IDF fails.
  vectors = {en: rng.standard_normal(16) for en, _ in pairs}
  for i, (en, de) in enumerate(pairs[5:], start=5):
    # Item i's translation sits on item i+1's English vector (cyclically over 5..39): always wrong.
    vectors[de] = vectors[pairs[5 + (i - 4) % 35][0]]
  encoder = TableEncoder(vectors, 16)
  out = evaluator(encoder.model())
  assert out["retrieval/de-en/p1"] == pytest.approx(5 / 40)
  assert out["retrieval/de-en/hard_p1"] == 0.0
  assert out["retrieval/de-en/tfidf_p1"] == pytest.approx(5 / 40)
  assert {(pooling, layer) for _, pooling, layer, _ in encoder.calls} == {("layer", 1)}
  # An aligned encoder: every item, the hard ones too.
  aligned = {text: vectors[en] for en, de in pairs for text in (en, de)}
  out = evaluator(TableEncoder(aligned, 16).model())
  assert out["retrieval/de-en/p1"] == out["retrieval/en-de/hard_p1"] == 1.0
  assert out["retrieval/mean_hard_p1"] == 1.0


# --- mining ------------------------------------------------------------------------------------------

def test_distractors_are_never_unlabelled_translations():
  pairs = [("A", "a"), ("A", "a2"), ("B", "b"), ("C", "c"), ("X", "x"), ("Z", "a")]
  en_texts = ["A", "B", "C", "X", "Y", "Z", "same"]
  xx_texts = ["a", "a2", "b", "c", "x", "y", "same"]
  gold = [("A", "a")]
  en_pool, xx_pool = mining.distractor_pools(pairs, gold, en_texts, xx_texts, np.random.default_rng(0))
  assert "a2" not in xx_pool          # another translation of the gold "A"
  assert "Z" not in en_pool           # another source of the gold "a"
  assert "same" not in xx_pool and "same" in en_pool  # one string on both sides
  assert "Y" in en_pool and "y" in xx_pool
  assert not {"A", "a"} & (set(en_pool) | set(xx_pool))
  assert not [(en, xx) for en, xx in pairs if en in en_pool and xx in xx_pool]
  # B-b, C-c, X-x: exactly one side of each survives.
  assert sum(en in en_pool for en in "BCX") + sum(xx in xx_pool for xx in "bcx") == 3
  # Two gold items linked by a third known pair would make a right answer wrong: one is kept.
  linked = [("A", "a"), ("A", "a2"), ("B", "a2")]
  assert len(mining.choose_gold(linked, 10, np.random.default_rng(0))) == 1


def _mining_case(tmp_path, rng):
  pairs = parallel_corpus(rng, 120)
  extra_en, extra_de = random_words(rng, 80), random_words(rng, 80, alphabet=GREEK)
  mono = {("en", "test"): [en for en, _ in pairs] + extra_en,
          ("de", "test"): [de for _, de in pairs] + extra_de}
  data = fake_data(tmp_path, eval_config(mining_items=40, mining_distractors=60), {"de": pairs}, mono)
  return pairs, data


def test_mining_aligned_encoder_finds_every_pair_random_does_not(tmp_path):
  rng = np.random.default_rng(1)
  pairs, data = _mining_case(tmp_path, rng)
  evaluator = from_data("mining", data)
  test = evaluator.parts["de"]["test"]
  assert len(test["gold"]) == 20 and len(test["src"]) > 20 and len(test["tgt"]) > 20
  for src, tgt in test["gold"]:
    assert (test["tgt"][tgt], test["src"][src]) in pairs
  aligned = {}
  for en, de in pairs:
    aligned[en] = aligned[de] = rng.standard_normal(32)
  out = evaluator(TableEncoder(aligned, 32).model())
  assert out["mining/de-en/f1"] == 1.0
  assert out["mining/de-en/precision"] == out["mining/de-en/recall"] == 1.0
  assert out["mining/de-en/items"] == 20
  # No translation shares an n-gram with its source: the surface baseline fails.
  assert out["mining/de-en/tfidf_f1"] < 0.3
  random_out = evaluator(TableEncoder({}, 32, seed=5).model())
  assert random_out["mining/de-en/f1"] < 0.3


def test_mining_blockwise_on_many_sentences_matches_small_blocks():
  # Mining scores do not depend on the block size (only memory does).
  rng = np.random.default_rng(2)
  x, y = rng.standard_normal((300, 8)), rng.standard_normal((280, 8))
  big = metrics.mine_pairs(metrics.margin_scores(x, y, 4, block=512))
  small = metrics.mine_pairs(metrics.margin_scores(x, y, 4, block=7))
  np.testing.assert_array_equal(big[0], small[0])
  np.testing.assert_allclose(big[1], small[1], rtol=1e-6)


# --- BLI ---------------------------------------------------------------------------------------------

def _bli_corpus(tmp_path, rng, train_pairs=40):
  en, de = random_words(rng, 60 + train_pairs, 7), random_words(rng, 60 + train_pairs, 7)
  second = random_words(rng, 5, 8)  # a second listed translation of the first five test words
  test = list(zip(en[:60], de[:60])) + list(zip(en[:5], second))
  train = list(zip(en[60:], de[60:]))
  (tmp_path / "eval" / "bli").mkdir(parents=True)
  (tmp_path / "eval" / "bli" / "en-de.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in test))
  (tmp_path / "dictionaries").mkdir()
  (tmp_path / "dictionaries" / "en-de.tsv").write_text("".join(f"{a}\t{b}\n" for a, b in train))
  noise_en, noise_de = random_words(rng, 30, 6), random_words(rng, 30, 6)
  mono = {("en", "train"): [" ".join(noise_en)] * 3, ("de", "train"): [" ".join(noise_de)] * 3}
  return en, de, second, mono


def test_bli_procrustes_undoes_a_rotation_and_any_listed_translation_counts(tmp_path):
  rng = np.random.default_rng(3)
  dim = 16
  en, de, second, mono = _bli_corpus(tmp_path, rng)
  data = fake_data(tmp_path, eval_config(bli_candidates=20, bli_train_pairs=40), mono=mono)
  evaluator = from_data("bli", data)
  s = evaluator.sets["de"]
  assert len(s["queries"]) == 60 and len(s["train"]) == 40
  # Pools: the 20 most frequent words (all noise here, each seen 3 times) plus every gold answer.
  assert len(s["candidates"]) == 20 + 65 and len(evaluator.english_pool) == 20 + 60
  rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  vectors = {}
  for i, word in enumerate(en):
    vectors[word] = rng.standard_normal(dim)
    # The foreign space is the English one rotated: only a learned map can read it.
    vectors[de[i]] = vectors[word] @ rotation
  # The first five queries' gold "first" translation is noise; the second listed one is right.
  for i, word in enumerate(second):
    vectors[de[i]], vectors[word] = rng.standard_normal(dim), vectors[en[i]] @ rotation
  out = evaluator(TableEncoder(vectors, dim).model())
  assert out["bli/en-de/p1"] == out["bli/en-de/p5"] == 1.0
  assert out["bli/en-de/unmapped_p1"] < 0.3
  assert out["bli/en-de/train_pairs"] == 40 and out["bli/en-de/queries"] == 60
  # Fewer training pairs than dimensions: no Procrustes number, the unmapped one only.
  few = from_data("bli", fake_data(tmp_path, eval_config(bli_candidates=20, bli_train_pairs=8), mono=mono))
  out = few(TableEncoder(vectors, dim).model())
  assert "bli/en-de/p1" not in out and "bli/en-de/unmapped_p1" in out


def test_bli_and_classify_are_skipped_with_the_reason_on_a_corpus_without_their_sets(tmp_path):
  data = fake_data(tmp_path, eval_config(), {"de": [("a", "b")]})
  for name in ("bli", "classify"):
    out = from_data(name, data)(TableEncoder({}, 4).model())
    assert list(out) == [f"{name}/skipped"]
    assert "not found" in out[f"{name}/skipped"] and "--recipe debian8" in out[f"{name}/skipped"]


# --- classification ----------------------------------------------------------------------------------

MODULES = ("scalc", "swriter", "smath")


def _classification_corpus(tmp_path, rng):
  folder = tmp_path / "eval" / "classification"
  folder.mkdir(parents=True)
  train = [{"id": f"train{i}", "label": MODULES[i % 3],
            "text": f"{MODULES[i % 3]} {' '.join(random_words(rng, 3, 6))}"} for i in range(90)]
  test = []
  for i in range(30):
    label = MODULES[i % 3] if i < 27 else MODULES[0]  # scalc is the majority: 12 of 30
    for lang in ("en", "de") if i % 10 else ("en",):   # ids 0, 10, 20 have no German version
      test.append({"id": f"test{i}", "label": label, "lang": lang,
                   "text": f"{label} {' '.join(random_words(rng, 3, 6))}"})
  for name, rows in (("train", train), ("test", test)):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return train, test


def test_classify_transfer_gap_majority_and_leakage(tmp_path):
  rng = np.random.default_rng(4)
  train, test = _classification_corpus(tmp_path, rng)
  evaluator = from_data("classify", fake_data(tmp_path, eval_config(), languages=("en", "de")))
  assert evaluator.labels == sorted(MODULES)
  centres = {label: 3 * rng.standard_normal(8) for label in MODULES}

  def vectors(transfer: bool):
    table = {}
    for row in train + test:
      if row.get("lang", "en") == "en" or transfer:
        table[row["text"]] = centres[row["label"]] + 0.3 * rng.standard_normal(8)
    return table

  out = evaluator(TableEncoder(vectors(transfer=True), 8).model())
  assert out["classify/en/accuracy"] == out["classify/de/accuracy"] == 1.0
  assert out["classify/de/transfer_gap"] == 0.0 and out["classify/de/items"] == 27
  english_labels = [row["label"] for row in test if row["lang"] == "en"]
  german_labels = [row["label"] for row in test if row["lang"] == "de"]
  # Training is balanced: the majority is the lowest label index on the tie, "scalc". It labels
  # ids 0, 3, ..., 24 and 27-29: 12 of 30 in English, 11 of 27 in German (id 0 has no German).
  assert english_labels.count("scalc") == 12 and german_labels.count("scalc") == 11
  assert out["classify/en/majority"] == pytest.approx(12 / 30)
  assert out["classify/de/majority"] == pytest.approx(11 / 27)
  # The module name opens every paragraph in both languages: the surface classifier reads it.
  assert out["classify/de/leakage"] == 1.0
  # German vectors that carry no label: English stays right, German falls to about chance.
  out = evaluator(TableEncoder(vectors(transfer=False), 8, seed=9).model())
  assert out["classify/de/en_accuracy"] == 1.0
  assert out["classify/de/accuracy"] < 0.6
  assert out["classify/de/transfer_gap"] == pytest.approx(1.0 - out["classify/de/accuracy"])


# --- CKA and retrieval per layer ---------------------------------------------------------------------

class LayerEncoder(TableEncoder):
  """Layer i applies a fixed rotation R_i to an item's base vector; German differs at layer 0 only."""

  def __init__(self, base, rotations, seed=0):
    super().__init__({}, base[next(iter(base))].shape[0], seed, num_layers=len(rotations) - 1)
    self.base, self.rotations = base, rotations

  def encode(self, texts, lang=None, pooling="mean", layer=-1):
    assert pooling == "layer"
    self.calls.append((lang, pooling, layer, len(texts)))
    rows = []
    for text in texts:
      if layer == 0 and lang == "de":  # the embedding layer does not align the languages
        rows.append(self.rng.standard_normal(self.dim))
      else:
        rows.append(self.base[text] @ self.rotations[layer])
    return np.stack(rows)


def test_cka_is_one_where_languages_align_and_low_where_not(tmp_path):
  rng = np.random.default_rng(5)
  pairs = parallel_corpus(rng, 30)
  base = {}
  for en, de in pairs:
    base[en] = base[de] = rng.standard_normal(12)
  rotations = [np.linalg.qr(rng.standard_normal((12, 12)))[0] for _ in range(3)]
  evaluator = from_data("cka", fake_data(tmp_path, eval_config(cka_items=25), {"de": pairs}))
  encoder = LayerEncoder(base, rotations)
  out = evaluator(encoder.model())
  assert out["cka/items"] == 25
  assert {layer for _, _, layer, _ in encoder.calls} == {0, 1, 2}
  for layer in (1, 2):
    assert out[f"cka/de-en/layer{layer}/cka"] == pytest.approx(1.0)
    assert out[f"cka/de-en/layer{layer}/p1"] == 1.0
  assert out["cka/de-en/layer0/cka"] < 0.7 and out["cka/de-en/layer0/p1"] < 0.3
  assert out["cka/best_layer"] == 1 and out["cka/best_layer_p1"] == 1.0
  languages, layers, table = cka.layer_table(out, "cka")
  assert languages == ["de"] and layers == [0, 1, 2]
  np.testing.assert_allclose(table[0, 1:], 1.0)


def test_layers_of_a_real_tiny_encoder(tokenizer_bytes, tmp_path):  # noqa: F811
  # Smoke test: the real encode() accepts every layer the evaluators ask for, and the numbers
  # are in range. Same text on both sides, so every layer is aligned exactly.
  config = tiny_config(tokenizer_bytes)
  export_model(tmp_path / "export", init_params(config), config.to_dict(), tokenizer_bytes, {"step": 1})
  encoder = load_pretrained(tmp_path / "export")
  model = EvalModel(encode=encoder.encode, word_embeddings=None, config=encoder.model.config)
  texts = [" ".join(WORDS[i:i + 3]) for i in range(10)]
  data = fake_data(tmp_path, eval_config(cka_items=10, pooling="layer", layer=1),
                   {"de": list(zip(texts, texts))})
  out = from_data("cka", data)(model)
  for layer in range(config.num_layers + 1):
    assert out[f"cka/de-en/layer{layer}/cka"] == pytest.approx(1.0)
  out = from_data("retrieval", data)(model)
  assert out["retrieval/de-en/p1"] == 1.0
