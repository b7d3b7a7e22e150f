"""The "alignment" evaluator: 100% on an embedding table built to be aligned, chance on a random one,
Procrustes recovering a rotated table, and on a derived language's one-to-one dictionary the same numbers
as the two-table definition of the synthetic-language papers (written out below as a reference)."""
import logging
import types

import ml_collections
import numpy as np
import pytest

from test_dict_mlm import NUM_WORDS, WordTokenizer, write_corpus
from xlm_jax.data import synthetic
from xlm_jax.evaluation import alignment
from xlm_jax.models.encoder import EncoderConfig
from xlm_jax.evaluation.base import EvalData, EvalModel, from_data

DIM = 32


def random_rotation(rng, dim):
  q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


def test_metric_on_aligned_random_and_rotated_tables():
  rng = np.random.default_rng(0)
  n = 1000  # 5% = 50 Procrustes pairs > DIM, so the map is determined
  pairs = np.stack([np.arange(n), np.arange(n) + n], axis=1)
  source = rng.normal(size=(n, DIM))
  aligned = np.concatenate([source, source + 0.01 * rng.normal(size=(n, DIM))])
  random = rng.normal(size=(2 * n, DIM))
  rotated = np.concatenate([source, source @ random_rotation(rng, DIM)])
  assert alignment.dictionary_alignment_accuracy(aligned, pairs, seed=0) == 100.0
  assert alignment.dictionary_alignment_accuracy(aligned, pairs, seed=0, procrustes=True) == 100.0
  # Chance is 1/1000 = 0.1%; 900 queries give ~1 hit.
  assert alignment.dictionary_alignment_accuracy(random, pairs, seed=0) < 2.0
  assert alignment.dictionary_alignment_accuracy(random, pairs, seed=0, procrustes=True) < 2.0
  # A rotation hides the alignment from plain nearest neighbours; Procrustes on 5% (50 pairs) finds it.
  assert alignment.dictionary_alignment_accuracy(rotated, pairs, seed=0) < 10.0
  assert alignment.dictionary_alignment_accuracy(rotated, pairs, seed=0, procrustes=True) == 100.0


def two_table_alignment_accuracy(E_orig, E_derived, ids, seed: int, procrustes: bool = False) -> float:
  """Reference: % of a seeded 90% of `ids` whose cosine nearest row among E_derived[ids] is its own row
  (row i of E_derived is the counterpart of row i of E_orig), optionally after the orthogonal map learned
  on the next 5% of the same permutation. Written out independently of the evaluator's code."""
  def normalise(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

  orig, derived = normalise(E_orig), normalise(E_derived)
  ids = np.asarray(ids, np.int64)
  shuffled = np.random.default_rng(seed).permutation(ids)
  num_eval, num_train = int(round(0.9 * len(ids))), int(round(0.05 * len(ids)))
  eval_ids, train_ids = shuffled[:num_eval], shuffled[num_eval:num_eval + num_train]
  queries = orig[eval_ids]
  if procrustes:
    u, _, vt = np.linalg.svd(orig[train_ids].T @ derived[train_ids])
    queries = normalise(queries @ (u @ vt))
  nearest = ids[(queries @ derived[ids].T).argmax(axis=1)]
  return 100.0 * float(np.mean(nearest == eval_ids))


def implicit_accuracy(E_orig, E_derived, ids, seed: int, procrustes: bool = False) -> float:
  """dictionary_alignment_accuracy on the table [E_orig; E_derived] with the implicit pairs (i, i + V)."""
  V = len(E_orig)
  pairs = np.stack([ids, np.asarray(ids) + V], axis=1)
  return alignment.dictionary_alignment_accuracy(np.concatenate([E_orig, E_derived]), pairs, seed, procrustes)


def test_same_numbers_as_the_two_table_definition():
  rng = np.random.default_rng(1)
  V = 1000  # 5% of the ids > DIM: a rank-deficient SVD would leave the map's null space arbitrary
  pairs = synthetic.implicit_dictionary(V)
  table = rng.normal(size=(2 * V, DIM))
  table[V:] = table[:V] + 1.2 * rng.normal(size=(V, DIM))  # partly aligned: scores strictly inside (0, 100)
  for procrustes in (False, True):
    ours = alignment.dictionary_alignment_accuracy(table, pairs, seed=3, procrustes=procrustes)
    theirs = two_table_alignment_accuracy(table[:V], table[V:], pairs[:, 0], seed=3, procrustes=procrustes)
    assert 0 < ours < 100 and ours == pytest.approx(theirs)


def test_derived_metric_on_identical_random_and_rotated_tables():
  """The derived-language case: E[V:2V] a scaled, unrelated or rotated copy of E[:V] (ids = moved ids)."""
  rng = np.random.default_rng(0)
  table = rng.normal(size=(600, 16))
  ids = np.arange(5, 600)
  assert implicit_accuracy(table, table * 3.0, ids, seed=0) == 100.0
  # Unrelated tables: about chance (1 in 595).
  assert implicit_accuracy(table, rng.normal(size=(600, 16)), ids, seed=0) < 3.0
  rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  rotated = table @ rotation + 0.01 * rng.normal(size=table.shape)
  assert implicit_accuracy(table, rotated, ids, seed=0) < 3.0
  assert implicit_accuracy(table, rotated, ids, seed=0, procrustes=True) == 100.0
  # The evaluated 90% and the 5% the map learns from are disjoint and fixed by the seed.
  eval_ids, train_ids = alignment.split_source_ids(ids, seed=0)
  assert len(eval_ids) == 536 and len(train_ids) == 30 and not set(eval_ids) & set(train_ids)
  np.testing.assert_array_equal(eval_ids, alignment.split_source_ids(ids, seed=0)[0])


def test_any_listed_translation_counts():
  # Source 0 has translations 10 and 11; its row equals row 11's, so its nearest target is 11: a hit.
  table = np.eye(12)
  table[0] = table[11]
  pairs = np.array([[0, 10], [0, 11]] + [[i, i + 5] for i in range(1, 5)])
  for i in range(1, 5):
    table[i] = table[i + 5]
  table[10] = -table[11]
  assert alignment.dictionary_alignment_accuracy(table, pairs, seed=0) == 100.0


@pytest.fixture()
def run(tmp_path):
  tokenizer = WordTokenizer()
  corpus = write_corpus(tmp_path, tokenizer)  # dictionaries/ (unused here) and en_trans
  bli = tmp_path / "eval" / "bli"
  bli.mkdir(parents=True)
  # One-to-one held-out pairs, plus a two-piece foreign word the evaluator must drop.
  (bli / "en-de.tsv").write_text("".join(f"en{k}\tde{k}\n" for k in range(NUM_WORDS))
                                 + "en1\tnotaword\n", encoding="utf-8")
  config = ml_collections.ConfigDict({"seed": 0, "data": {"languages": ("en", "de", "fr", "en_trans")}})
  model_config = EncoderConfig(vocab_size=2 * tokenizer.vocab_size, hidden_size=DIM, num_heads=2)
  return types.SimpleNamespace(config=config, corpus=corpus,
                               tokenizer=tokenizer, model=types.SimpleNamespace(config=model_config))


def state_with(table):
  """The model as the evaluator sees it: its word-embedding table."""
  return EvalModel(encode=None, word_embeddings=lambda: table, config=None)


def build_alignment(run):
  return from_data("alignment", EvalData(
      corpus=run.corpus, tokenizer=run.tokenizer, languages=tuple(run.config.data.languages),
      seed=run.config.seed, alpha=0.3, model_config=run.model.config, eval_config=None))


def test_evaluator_scores_bli_and_derived_sets(run, caplog):
  """A 2-dimensional table: the 2 Procrustes pairs of 40 BLI words (5%) determine the map."""
  tok, V, dim = run.tokenizer, run.tokenizer.vocab_size, 2
  rng = np.random.default_rng(2)
  aligned = rng.normal(size=(2 * V, dim)).astype(np.float32)
  for k in range(NUM_WORDS):  # de_k ~ en_k (not equal: the derived copies must stay distinct)
    aligned[tok.id(f"▁de{k}")] = aligned[tok.id(f"▁en{k}")] * (1 + 1e-5 * rng.normal(size=dim))
  aligned[V:] = aligned[:V]   # derived id i + V = id i
  with caplog.at_level(logging.INFO):
    evaluator = build_alignment(run)
  assert "skipping fr" in caplog.text  # no eval/bli/en-fr.tsv
  out = evaluator(state_with(aligned))
  assert out["alignment/de/pairs"] == NUM_WORDS
  for name in ("de", "en_trans"):
    assert out[f"alignment/{name}/accuracy"] == 100.0
    assert out[f"alignment/{name}/procrustes_accuracy"] == 100.0
  assert out["alignment/mean_accuracy"] == 100.0
  assert all(isinstance(v, float) for v in out.values())
  random = evaluator(state_with(rng.normal(size=(2 * V, dim)).astype(np.float32)))
  assert random["alignment/en_trans/accuracy"] < 5.0      # chance: 1 / (V - 5) < 1%
  assert random["alignment/de/accuracy"] < 20.0        # chance: 1 / 40 = 2.5%, over 36 queries
  assert set(random) == set(out)
  # With more dimensions than Procrustes pairs the Procrustes score is left out, with a note.
  caplog.clear()
  with caplog.at_level(logging.INFO):
    wide = evaluator(state_with(np.tile(aligned, (1, 16))))
  assert wide["alignment/de/accuracy"] == 100.0 and "alignment/de/procrustes_accuracy" not in wide
  assert "no Procrustes score for de" in caplog.text


def test_evaluator_skips_derived_languages_the_model_lacks(run, caplog):
  run.model = types.SimpleNamespace(config=EncoderConfig(vocab_size=run.tokenizer.vocab_size,
                                                         hidden_size=DIM, num_heads=2))
  with caplog.at_level(logging.INFO):
    evaluator = build_alignment(run)
  assert "skipping en_trans: its ids reach" in caplog.text
  out = evaluator(state_with(np.ones((run.tokenizer.vocab_size, DIM), np.float32)))
  assert not any(k.startswith("alignment/en_trans/") for k in out) and "alignment/de/accuracy" in out
  run.model = types.SimpleNamespace(config=types.SimpleNamespace(separate_embeddings=True, vocab_size=10))
  with pytest.raises(ValueError, match="separate_embeddings"):
    build_alignment(run)
