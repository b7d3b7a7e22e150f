"""Synthetic derived languages: hand-built id sequences with exact expected outputs, and the corpus artifact on
a SentencePiece model trained here on generated sentences. (The embedding-alignment metric of a derived
language is tested in test_alignment_eval.py.)"""
import hashlib
import json

import numpy as np
import pytest

from xlm_jax.data import synthetic, tokenizer_training
from xlm_jax.data.tokenizer import Tokenizer

# A hand-made vocabulary (V = 20) in the contract's layout: specials at 0..4.
PIECES = ["<s>", "<pad>", "</s>", "<unk>", "<mask>",
          "▁the", "▁cat", "s", "▁sat", "▁on", "▁mat", ".", "▁.", "?", "▁", "▁run", "ning", ",", "▁big", "!"]
V = len(PIECES)
THE, CAT, S, SAT, ON, MAT, DOT, WDOT, QMARK, BLANK, RUN, NING, COMMA, BIG, BANG = range(5, 20)

# "▁the ▁cat s ▁sat ▁on ▁the ▁mat ." : six words, the "." glued to "mat".
CATS_SAT = [THE, CAT, S, SAT, ON, THE, MAT, DOT]
CATS_SAT_LABELS = ["DET", "NOUN", "VERB", "ADP", "DET2", "NOUN2"]


def _derive(ids_list, op, **kwargs):
  kwargs.setdefault("pieces", PIECES)
  return synthetic.derive(ids_list, op, V, kwargs.pop("seed", 0), **kwargs)


# --- inv ---------------------------------------------------------------------------------------------------

def test_inv_reverses_words_keeps_pieces_in_order_and_final_punctuation_last():
  out, labels = _derive([CATS_SAT], "inv", labels=[CATS_SAT_LABELS])
  assert out == [[MAT, THE, ON, SAT, CAT, S, THE, DOT]]
  # "." glued to "mat" stays last without a label of its own; "mat" takes its label to the front.
  assert labels == [["NOUN2", "DET2", "ADP", "VERB", "NOUN", "DET"]]


def test_inv_punctuation_word_keeps_its_label_last():
  # "▁run ning ▁big ▁cat ▁." : the final "▁." is a word of its own (as in tagging data).
  out, labels = _derive([[RUN, NING, BIG, CAT, WDOT]], "inv", labels=[["V", "A", "N", "P"]])
  assert out == [[CAT, BIG, RUN, NING, WDOT]]
  assert labels == [["N", "A", "V", "P"]]


def test_inv_edge_cases():
  sequences = [
      [SAT, BLANK, QMARK],                       # "▁" "?" : a punctuation tail of two pieces
      [S, CAT, SAT],                             # a sentence whose first piece has no "▁" still starts a word
      [THE, CAT, COMMA, SAT, BANG],              # a comma inside stays with its word
      [DOT, QMARK],                              # only punctuation: nothing to reverse
      [THE, CAT, BLANK],                         # a trailing bare "▁" is not punctuation
      [],
  ]
  out, _ = _derive(sequences, "inv")
  assert out == [[SAT, BLANK, QMARK], [SAT, CAT, S], [SAT, CAT, COMMA, THE, BANG], [DOT, QMARK],
                 [BLANK, CAT, THE], []]


def test_inv_leaves_specials_in_place_and_treats_packed_sentences_separately():
  # <s> sentence </s> <pad> <pad>; <unk> inside a word moves with the word.
  out, _ = _derive([[0, THE, CAT, 3, SAT, DOT, 2, 1, 1],
                    [0, THE, CAT, 2, SAT, ON, DOT, 2]], "inv")
  assert out == [[0, SAT, CAT, 3, THE, DOT, 2, 1, 1],
                 [0, CAT, THE, 2, ON, SAT, DOT, 2]]


def test_word_order_ops_need_pieces_and_labels_must_match_words():
  with pytest.raises(ValueError, match="needs pieces"):
    synthetic.derive([CATS_SAT], "inv", V, 0)
  with pytest.raises(ValueError, match="sequence 0 has 6 words but 2 labels"):
    _derive([CATS_SAT], "inv", labels=[["A", "B"]])
  with pytest.raises(ValueError, match="unknown synthetic-language op"):
    _derive([CATS_SAT], "inv∘perm")
  with pytest.raises(ValueError, match="outside"):
    _derive([[V]], "trans")


# --- trans -------------------------------------------------------------------------------------------------

def test_trans_shifts_non_special_ids_and_keeps_overlap():
  out, labels = _derive([[0, THE, CAT, S, 3, 4, DOT, 2, 1]], "trans", overlap={THE, DOT},
                        labels=[["a", "b"]])
  assert out == [[0, THE, CAT + V, S + V, 3, 4, DOT, 2, 1]]
  assert labels == [["a", "b"]]  # trans never moves words


def test_compositions():
  out, labels = _derive([CATS_SAT], "trans∘inv", overlap={DOT}, labels=[CATS_SAT_LABELS])
  assert out == [[MAT + V, THE + V, ON + V, SAT + V, CAT + V, S + V, THE + V, DOT]]
  assert labels == [["NOUN2", "DET2", "ADP", "VERB", "NOUN", "DET"]]
  assert _derive([CATS_SAT], "inv+trans", overlap={DOT})[0] == out  # ASCII spelling, either order
  permuted, _ = _derive([CATS_SAT], "perm", seed=5)
  composed, _ = _derive([CATS_SAT], "trans∘perm", seed=5)
  assert composed == [[i + V for i in permuted[0]]]


# --- perm --------------------------------------------------------------------------------------------------

def test_perm_is_the_seeded_permutation_of_each_sentence():
  words = [[THE], [CAT, S], [SAT], [ON], [THE], [MAT]]
  for index in (0, 7):
    order = synthetic.sentence_rng(3, index).permutation(len(words))
    out, labels = _derive([CATS_SAT], "perm", seed=3, first_index=index, labels=[CATS_SAT_LABELS])
    assert out == [[t for w in order for t in words[w]] + [DOT]]
    assert labels == [[CATS_SAT_LABELS[w] for w in order]]


def test_perm_labels_follow_words_and_batching_changes_nothing():
  rng = np.random.default_rng(0)
  word_pool = [[THE], [CAT, S], [SAT], [ON], [MAT], [RUN, NING], [BIG, COMMA]]
  sentences, labels = [], []
  for _ in range(40):
    chosen = [word_pool[i] for i in rng.integers(0, len(word_pool), size=rng.integers(1, 9))]
    sentences.append([t for w in chosen for t in w] + [DOT])
    labels.append([w[0] for w in chosen])  # a word's label = its first id: checkable after reordering
  out, out_labels = _derive(sentences, "perm", seed=11, labels=labels)
  for seq, seq_labels, source in zip(out, out_labels, sentences):
    assert seq[-1] == DOT and sorted(seq) == sorted(source)
    firsts = [t for t in seq[:-1] if PIECES[t].startswith("▁")]
    assert firsts == seq_labels
  assert _derive(sentences, "perm", seed=11, labels=labels) == (out, out_labels)
  first, _ = _derive(sentences[:13], "perm", seed=11)
  rest, _ = _derive(sentences[13:], "perm", seed=11, first_index=13)
  assert first + rest == out
  assert _derive(sentences, "perm", seed=12)[0] != out


# --- overlap file ------------------------------------------------------------------------------------------

def test_read_overlap_file(tmp_path):
  good = tmp_path / "overlap.txt"
  good.write_text("5\n▁cat\n\n  .  \n", encoding="utf-8")
  assert synthetic.read_overlap_file(good, PIECES) == {THE, CAT, DOT}
  bad = tmp_path / "bad.txt"
  bad.write_text("5\n▁dog\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.txt:2: '▁dog' is neither an id nor a piece"):
    synthetic.read_overlap_file(bad, PIECES)
  bad.write_text("\n\n20\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.txt:3: id 20 is outside"):
    synthetic.read_overlap_file(bad, PIECES)
  with pytest.raises(FileNotFoundError):
    synthetic.read_overlap_file(tmp_path / "missing.txt", PIECES)


# --- the corpus artifact -----------------------------------------------------------------------------------

NOUNS = ["file", "folder", "printer", "window", "user", "disk", "network", "device", "message", "server"]
VERBS = ["opens", "copies", "deletes", "finds", "saves", "moves", "checks", "prints"]
ADJECTIVES = ["new", "old", "hidden", "remote", "empty", "large"]


def _sentences(count, seed):
  rng = np.random.default_rng(seed)
  pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
  return [f"The {pick(ADJECTIVES)} {pick(NOUNS)} {pick(VERBS)} the {pick(NOUNS)}{pick(['.', '?', '!'])}"
          for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer.from_bytes(tokenizer_training.train_sentencepiece(_sentences(300, 0), vocab_size=50,
                                                                     num_threads=1))


def test_derive_corpus_writes_shuffled_text_dictionary_and_aligned_eval_sets(tokenizer, tmp_path):
  texts, eval_texts = _sentences(200, 1), _sentences(20, 2)
  eval_labels = [["L%d" % w for w in range(len(text.split()))] for text in eval_texts]
  overlap_file = tmp_path / "overlap.txt"
  overlap_file.write_text("▁disk\n7\n", encoding="utf-8")
  overlap = {tokenizer.encode(["disk"])[0][0], 7}
  result = synthetic.derive_corpus(texts, tokenizer, "trans∘inv", seed=4, output_dir=tmp_path / "out",
                                   overlap=overlap_file, eval_texts={"test": eval_texts},
                                   eval_labels={"test": eval_labels})
  vocab = tokenizer.vocab_size
  pieces = [tokenizer.id_to_piece(i) for i in range(vocab)]
  unshuffled, _ = synthetic.derive(tokenizer.encode(texts), "trans∘inv", vocab, 4, overlap, pieces=pieces)
  # Content-parallel but not row-aligned.
  assert sorted(map(tuple, result.ids)) == sorted(map(tuple, unshuffled))
  assert sum(a == b for a, b in zip(result.ids, unshuffled)) < 20
  derived_ids = {t for seq in result.ids for t in seq}
  assert tokenizer.encode(["disk"])[0][0] in derived_ids and not {i + vocab for i in overlap} & derived_ids
  written, no_labels = synthetic.read_sequences(tmp_path / "out" / "train.jsonl")
  assert written == result.ids and no_labels is None
  # Evaluation sets stay row-aligned; labels follow the reversed words ("." is glued, so no label moves last).
  want_eval, want_labels = synthetic.derive(tokenizer.encode(eval_texts), "trans∘inv", vocab, 4, overlap,
                                            eval_labels, pieces=pieces)
  assert synthetic.read_sequences(tmp_path / "out" / "eval" / "test.jsonl") == (want_eval, want_labels)
  assert want_labels[0] == eval_labels[0][::-1]
  # The implicit dictionary: every moved id i paired with i + V, as int32 [N, 2] with a JSON sidecar.
  pairs, meta = synthetic.read_dictionary(tmp_path / "out" / "dictionary.npy")
  moved = [i for i in range(vocab) if i > 4 and i not in overlap]
  assert pairs.dtype == np.int32 and pairs.tolist() == [[i, i + vocab] for i in moved]
  assert meta["shape"] == [len(moved), 2] and meta["vocab_size"] == 2 * vocab
  manifest = json.loads((tmp_path / "out" / "derived.json").read_text())
  assert manifest["overlap_ids"] == sorted(overlap) and manifest["vocab_size"] == 2 * vocab
  assert manifest["num_sequences"] == 200


def test_derive_corpus_is_reproducible_and_replaces_atomically(tokenizer, tmp_path):
  texts = _sentences(100, 3)
  eval_sets = {"test": _sentences(10, 4)}

  def digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}

  synthetic.derive_corpus(texts, tokenizer, "trans∘perm", 9, tmp_path / "a", eval_texts=eval_sets)
  synthetic.derive_corpus(texts, tokenizer, "trans∘perm", 9, tmp_path / "b", eval_texts=eval_sets)
  assert digest(tmp_path / "a") == digest(tmp_path / "b")
  synthetic.derive_corpus(texts, tokenizer, "trans", 9, tmp_path / "a")  # replaces the old folder whole
  assert "eval/test.jsonl" not in digest(tmp_path / "a")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folders left behind
