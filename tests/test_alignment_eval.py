"""The "alignment" evaluator: 100% on an embedding table built to be aligned, chance on a random one,
Procrustes recovering a rotated table, and the same numbers as data_prep.synthetic.alignment_accuracy
on a derived language's one-to-one dictionary."""
import logging
import types

import ml_collections
import numpy as np
import pytest

from data_prep import synthetic
from test_dict_mlm import NUM_WORDS, WordTokenizer, write_corpus
from xlm_jax.evaluation import alignment
from xlm_jax.models.encoder import EncoderConfig
from xlm_jax.registry import EVALUATORS

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


def test_same_numbers_as_synthetic_alignment_accuracy():
  rng = np.random.default_rng(1)
  V = 1000  # 5% of the ids > DIM: a rank-deficient SVD would leave the map's null space arbitrary
  pairs = synthetic.implicit_dictionary(V)
  table = rng.normal(size=(2 * V, DIM))
  table[V:] = table[:V] + 1.2 * rng.normal(size=(V, DIM))  # partly aligned: scores strictly inside (0, 100)
  for procrustes, reference in ((False, synthetic.alignment_accuracy),
                                (True, synthetic.procrustes_alignment_accuracy)):
    ours = alignment.dictionary_alignment_accuracy(table, pairs, seed=3, procrustes=procrustes)
    theirs = reference(table[:V], table[V:], pairs[:, 0], seed=3)
    assert 0 < ours < 100 and ours == pytest.approx(theirs)


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
  return types.SimpleNamespace(params={"encoder": {"embeddings": {"word_embeddings": {"embedding": table}}}})


def test_evaluator_scores_bli_and_derived_sets(run, caplog):
  """A 2-dimensional table: the 2 Procrustes pairs of 40 BLI words (5%) determine the map."""
  tok, V, dim = run.tokenizer, run.tokenizer.vocab_size, 2
  rng = np.random.default_rng(2)
  aligned = rng.normal(size=(2 * V, dim)).astype(np.float32)
  for k in range(NUM_WORDS):  # de_k ~ en_k (not equal: the derived copies must stay distinct)
    aligned[tok.id(f"▁de{k}")] = aligned[tok.id(f"▁en{k}")] * (1 + 1e-5 * rng.normal(size=dim))
  aligned[V:] = aligned[:V]   # derived id i + V = id i
  with caplog.at_level(logging.INFO):
    evaluator = EVALUATORS.get("alignment")(run)
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
    evaluator = EVALUATORS.get("alignment")(run)
  assert "skipping en_trans: its ids reach" in caplog.text
  out = evaluator(state_with(np.ones((run.tokenizer.vocab_size, DIM), np.float32)))
  assert not any(k.startswith("alignment/en_trans/") for k in out) and "alignment/de/accuracy" in out
  run.model = types.SimpleNamespace(config=types.SimpleNamespace(separate_embeddings=True, vocab_size=10))
  with pytest.raises(ValueError, match="separate_embeddings"):
    EVALUATORS.get("alignment")(run)
