"""Tests for the grain MLM input pipeline (xlm_jax/data/pipeline.py, packing.py, sampling.py).

Sentences are synthetic: sentence i of language L starts with the unique word "L_i" followed by a few
filler words, so every row can be decoded back to the sentences (and language) it came from.
"""
import json

from etils import epath
import grain
import numpy as np
import pytest

from xlm_jax.data import packing, pipeline, sampling

BOS, PAD, EOS = 0, 1, 2  # Contract ids (<s>, <pad>, </s>); <unk>=3, <mask>=4.


def sentence(lang: str, i: int) -> str:
  return " ".join([f"{lang}_{i}"] + [f"{lang}w{(7 * i + j) % 13}" for j in range(i % 6)])


def make_sources(sizes: dict[str, int]) -> dict[str, list[dict]]:
  # bytes, as TFDS data sources return them.
  return {lang: [{"text": sentence(lang, i).encode(), "lang": lang.encode()} for i in range(n)]
          for lang, n in sizes.items()}


class WhitespaceTokenizer:
  """Words -> ids from a vocabulary fixed up front (ids must not depend on which thread asks first)."""
  bos_id, pad_id, eos_id = BOS, PAD, EOS

  def __init__(self, sources):
    words = sorted({w for src in sources.values() for rec in src for w in rec["text"].decode().split()})
    self.vocab = {w: 5 + k for k, w in enumerate(words)}
    self.words = {k: w for w, k in self.vocab.items()}

  def encode(self, texts):
    return [[self.vocab[w] for w in t.split()] for t in texts]

  def decode(self, ids):
    return " ".join(self.words[i] for i in ids)


SIZES = {"en": 60, "de": 23}


@pytest.fixture(scope="module")
def corpus():
  sources = make_sources(SIZES)
  return sources, WhitespaceTokenizer(sources)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def rows_of(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def segments_of(rows):
  """Every (row index, segment tokens) in packed rows."""
  out = []
  for r, (ids, seg) in enumerate(zip(rows["input_ids"], rows["segment_ids"])):
    for k in range(1, seg.max() + 1):
      out.append((r, ids[seg == k]))
  return out


# --- language sampling -------------------------------------------------------------------------------

def test_language_sampling_probs_hand_computed():
  counts = {"a": 100, "b": 400, "c": 1600}
  # alpha 0.5: q ~ sqrt(p) ~ 10 : 20 : 40.
  q = sampling.language_sampling_probs(counts, 0.5)
  assert q == pytest.approx({"a": 1 / 7, "b": 2 / 7, "c": 4 / 7})
  assert sampling.language_sampling_probs(counts, 1.0) == pytest.approx({"a": 1 / 21, "b": 4 / 21, "c": 16 / 21})
  assert sampling.language_sampling_probs(counts, 0.0) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
  with pytest.raises(ValueError, match=r"\['b'\]"):
    sampling.language_sampling_probs({"a": 3, "b": 0}, 0.3)
  with pytest.raises(ValueError, match="alpha"):
    sampling.language_sampling_probs(counts, -1.0)


def test_sampling_frequencies_match_q_and_rows_are_monolingual():
  sizes = {"a": 100, "b": 400, "c": 1600}
  sources = make_sources(sizes)
  tok = WhitespaceTokenizer(sources)
  languages = ["c", "a", "b"]  # lang_ids follow this order, not the alphabet.
  it = pipeline.make_mono_iterator(sources, tok, languages=languages, seq_len=16, batch_size=10, alpha=0.5,
                                   shard_index=0, shard_count=1)
  rows = rows_of(take(it, 70))
  it.close()
  row_lang = rows["lang_ids"][:, 0]
  assert (rows["lang_ids"] == row_lang[:, None]).all()  # stream rows have no padding: one id per row
  for r, ids in enumerate(rows["input_ids"]):
    words = tok.decode([i for i in ids if i > 4]).split()
    assert {w.split("_")[0].split("w")[0] for w in words} == {languages[row_lang[r]]}
  freq = np.bincount(row_lang, minlength=3) / len(row_lang)
  # grain mixes deterministically in integer proportions (smallest weight scaled to 100), so over 700
  # rows the frequencies are within a few rows of q.
  np.testing.assert_allclose(freq, [4 / 7, 1 / 7, 2 / 7], atol=0.01)


# --- packing -----------------------------------------------------------------------------------------

def expected_stream(tok, sources, lang, order):
  return np.concatenate([tok.encode([sources[lang][i]["text"].decode()])[0] + [EOS] for i in order])


def test_stream_packing_reproduces_token_stream(corpus):
  sources, tok = corpus
  seq_len = 12
  batches = list(pipeline.make_eval_dataset(sources, tok, languages=["en"], seq_len=seq_len, batch_size=4,
                                            packing="stream", shard_index=0, shard_count=1))
  rows = rows_of(batches)
  real = rows["segment_ids"] > 0
  n_real = int(real[:, 0].sum())
  stream = expected_stream(tok, sources, "en", range(SIZES["en"]))
  assert n_real == int(np.ceil(len(stream) / (seq_len - 1)))
  assert (rows["input_ids"][:n_real, 0] == BOS).all()
  # Rows are exactly seq_len; only the last real row of the pass may end in padding.
  assert real[:n_real - 1].all()
  body = rows["input_ids"][:n_real, 1:][real[:n_real, 1:]]
  np.testing.assert_array_equal(body, stream)
  pos = rows["position_ids"][:n_real]
  np.testing.assert_array_equal(pos[0], np.arange(PAD + 1, PAD + 1 + seq_len))
  assert (pos[~real[:n_real]] == PAD).all() and (rows["input_ids"][:n_real][~real[:n_real]] == PAD).all()
  assert (rows["lang_ids"] == 0).all()


def test_stream_packing_infinite_has_no_padding_and_crosses_epochs(corpus):
  sources, tok = corpus
  seq_len = 9
  it = pipeline.make_mono_iterator(sources, tok, languages=["de"], seq_len=seq_len, batch_size=8,
                                   shuffle=False, shard_index=0, shard_count=1)
  rows = rows_of(take(it, 10))
  it.close()
  assert (rows["segment_ids"] == 1).all() and (rows["input_ids"][:, 0] == BOS).all()
  np.testing.assert_array_equal(rows["position_ids"], np.broadcast_to(np.arange(2, 2 + seq_len), (80, seq_len)))
  stream = expected_stream(tok, sources, "de", list(range(SIZES["de"])) * 20)
  np.testing.assert_array_equal(rows["input_ids"][:, 1:].ravel(), stream[:80 * (seq_len - 1)])
  assert (rows["lang_ids"] == 0).all()


def test_segment_packing_first_fit_hand_computed():
  # Sentence token counts 6, 3, 5, 2, 1 -> segments of 8, 5, 7, 4, 3 tokens; seq_len 10, 2 bins:
  # group 1: [8] [5] (7 fits neither -> emit); group 2: 7 -> bin 0, 4 -> bin 1, 3 -> bin 0 (7 + 3 = 10).
  chunks = [[[10, 11, 12, 13, 14, 15], [20, 21, 22]], [[30, 31, 32, 33, 34], [40, 41], [50]]]
  parent = grain.MapDataset.source(chunks).map(lambda c: packing.segment_chunk(c, BOS, EOS, 10))
  ds = packing.SegmentPackIterDataset(parent.to_iter_dataset(), seq_len=10, pad_id=PAD, lang_id=3, num_bins=2)
  rows = list(ds)
  expected = [
    [0, 10, 11, 12, 13, 14, 15, 2, 1, 1],
    [0, 20, 21, 22, 2, 1, 1, 1, 1, 1],
    [0, 30, 31, 32, 33, 34, 2, 0, 50, 2],
    [0, 40, 41, 2, 1, 1, 1, 1, 1, 1],
  ]
  np.testing.assert_array_equal([r["input_ids"] for r in rows], expected)
  np.testing.assert_array_equal(rows[2]["segment_ids"], [1, 1, 1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(rows[2]["position_ids"], [2, 3, 4, 5, 6, 7, 8, 2, 3, 4])
  np.testing.assert_array_equal(rows[3]["segment_ids"], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(rows[3]["position_ids"], [2, 3, 4, 5, 1, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(rows[3]["lang_ids"], [3, 3, 3, 3, 0, 0, 0, 0, 0, 0])
  # Too long: keeps <s>, the first seq_len - 2 tokens and </s>.
  np.testing.assert_array_equal(packing.segment_chunk([list(range(5, 20))], BOS, EOS, 6)[0], [0, 5, 6, 7, 8, 2])


def test_segment_packing_rows_follow_contract(corpus):
  sources, tok = corpus
  seq_len = 16
  it = pipeline.make_mono_iterator(sources, tok, languages=["en", "de"], seq_len=seq_len, batch_size=6,
                                   packing="segments", seed=3, shard_index=0, shard_count=1)
  rows = rows_of(take(it, 8))
  it.close()
  for r, seg in segments_of(rows):
    assert seg[0] == BOS and seg[-1] == EOS and not np.isin(seg[1:-1], [BOS, EOS, PAD]).any()
  for ids, seg, pos, lang in zip(rows["input_ids"], rows["segment_ids"], rows["position_ids"], rows["lang_ids"]):
    pad = seg == 0
    assert (ids[pad] == PAD).all() and (pos[pad] == PAD).all() and (lang[pad] == 0).all()
    assert pad[seg.argmin():].all() if pad.any() else True  # padding only at the end
    for k in range(1, seg.max() + 1):
      np.testing.assert_array_equal(pos[seg == k], np.arange(PAD + 1, PAD + 1 + (seg == k).sum()))
    assert len(set(lang[~pad])) == 1


class BatchedSource:
  """A TFDS-like data source: len(), [i] and a batched __getitems__ (counted)."""

  def __init__(self, records):
    self.records, self.batched_reads = records, 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def __getitems__(self, keys):
    self.batched_reads += 1
    return [self.records[k] for k in keys]


def test_each_epoch_is_a_fresh_permutation_of_the_shard(corpus):
  sources, tok = corpus
  source = BatchedSource(sources["de"])
  it = pipeline.make_mono_iterator({"de": source}, tok, languages=["de"], seq_len=10, batch_size=4,
                                   seed=11, tokenize_chunk=5, shard_index=0, shard_count=1)
  body = rows_of(take(it, 12))["input_ids"][:, 1:].ravel()
  it.close()
  sentences = [tok.decode(piece[:-1]) for piece in np.split(body, np.flatnonzero(body == EOS) + 1)[:-1]]
  n = SIZES["de"]
  assert len(sentences) >= 3 * n
  epochs = [sentences[e * n:(e + 1) * n] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == sorted(sentence("de", i) for i in range(n))
  assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != [sentence("de", i) for i in range(n)]
  assert source.batched_reads >= 3 * n // 5


# --- determinism, checkpoints, sharding --------------------------------------------------------------

def test_same_seed_same_batches_different_seed_different(corpus):
  sources, tok = corpus
  kw = dict(languages=["en", "de"], seq_len=12, batch_size=4, shard_index=0, shard_count=1)
  runs = {}
  for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
    it = pipeline.make_mono_iterator(sources, tok, seed=seed, **kw)
    runs[name] = take(it, 6)
    it.close()
  assert_batches_equal(runs["a"], runs["b"])
  assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(runs["a"], runs["c"]))


@pytest.mark.parametrize("packing_mode, prefetch", [("stream", 4), ("segments", 4), ("segments", 0)])
def test_restored_iterator_continues_exactly(corpus, tmp_path, packing_mode, prefetch):
  sources, tok = corpus
  kw = dict(languages=["en", "de"], seq_len=12, batch_size=3, packing=packing_mode, seed=1,
            shard_index=0, shard_count=1, tokenize_chunk=7, segment_bins=4, prefetch=prefetch)
  it = pipeline.make_mono_iterator(sources, tok, **kw)
  take(it, 5)  # 15 rows: with 4-row groups the state falls inside a segment group
  state = it.get_state()
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)  # what orbax CheckpointSave does
  expected = take(it, 12)  # crosses an epoch of "de" (23 sentences)
  it.close()

  fresh = pipeline.make_mono_iterator(sources, tok, **kw)
  fresh.set_state(json.loads(json.dumps(state)))
  assert_batches_equal(take(fresh, 12), expected)
  fresh.close()

  restored = grain.checkpoint.CheckpointHandler().restore(
    epath.Path(tmp_path), item=pipeline.make_mono_iterator(sources, tok, **kw))
  assert_batches_equal(take(restored, 12), expected)
  restored.close()


def eval_sentences(sources, tok, **kw):
  batches = list(pipeline.make_eval_dataset(sources, tok, seq_len=16, batch_size=5, packing="segments", **kw))
  return batches, [tok.decode(seg[1:-1]) for _, seg in segments_of(rows_of(batches))]


def test_host_shards_are_disjoint_and_cover_everything(corpus):
  sources, tok = corpus
  seen = [eval_sentences(sources, tok, languages=["en", "de"], shard_index=s, shard_count=2)[1] for s in (0, 1)]
  assert not set(seen[0]) & set(seen[1])
  everything = sorted(sentence(lang, i) for lang, n in SIZES.items() for i in range(n))
  assert sorted(seen[0] + seen[1]) == everything
  # Training streams are sharded the same way: shard 1 never sees shard 0's sentences.
  it = pipeline.make_mono_iterator(sources, tok, languages=["en", "de"], seq_len=16, batch_size=4,
                                   packing="segments", shard_index=1, shard_count=2)
  train_seen = {tok.decode(seg[1:-1]) for _, seg in segments_of(rows_of(take(it, 10)))}
  it.close()
  assert train_seen <= set(seen[1])
  # Default sharding is per JAX process: a single process reads everything.
  default_pass = eval_sentences(sources, tok, languages=["en", "de"])[1]
  assert sorted(default_pass) == everything


def test_eval_pass_is_finite_fixed_shape_and_covers_each_sentence_once(corpus):
  sources, tok = corpus
  batches, seen = eval_sentences(sources, tok, languages=["en", "de"], shard_index=0, shard_count=1)
  assert all(b[k].shape == (5, 16) and b[k].dtype == np.int32 for b in batches for k in b)
  assert sorted(seen) == sorted(sentence(lang, i) for lang, n in SIZES.items() for i in range(n))
  # Unshuffled and chained: all "en" rows (lang 0) come before "de" rows (lang 1).
  assert sorted(seen[:SIZES["en"]]) == sorted(sentence("en", i) for i in range(SIZES["en"]))
  real_rows = rows_of(batches)["segment_ids"].max(axis=1) > 0
  row_langs = rows_of(batches)["lang_ids"][real_rows, 0]
  assert (np.diff(row_langs) >= 0).all() and set(row_langs) == {0, 1}
  assert real_rows[:real_rows.sum()].all()  # pad rows only at the end of the last batch
  assert not real_rows[-1]  # this corpus does not fill the last batch exactly: the pad rows are there
  last = batches[-1]
  assert (last["input_ids"][~real_rows[-5:]] == PAD).all() and (last["segment_ids"][~real_rows[-5:]] == 0).all()
  again, _ = eval_sentences(sources, tok, languages=["en", "de"], shard_index=0, shard_count=1)
  assert_batches_equal(batches, again)


def test_sentencepiece_tokenizer_and_bytes_text(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  sources = make_sources({"fr": 40})
  lines = [rec["text"].decode() for rec in sources["fr"]]
  (tmp_path / "train.txt").write_text("\n".join(lines * 5))
  spm.SentencePieceTrainer.train(
    input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "spm"), vocab_size=40, hard_vocab_limit=False,
    bos_id=0, pad_id=1, eos_id=2, unk_id=3, user_defined_symbols=["<mask>"], minloglevel=2)
  proc = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))

  class SpmTokenizer:
    bos_id, pad_id, eos_id = proc.bos_id(), proc.pad_id(), proc.eos_id()

    def encode(self, texts):
      return proc.encode(texts)

  assert (SpmTokenizer.bos_id, SpmTokenizer.pad_id, SpmTokenizer.eos_id) == (BOS, PAD, EOS)
  batches = list(pipeline.make_eval_dataset(sources, SpmTokenizer(), languages=["fr"], seq_len=20, batch_size=4,
                                            packing="stream", shard_index=0, shard_count=1))
  rows = rows_of(batches)
  body = rows["input_ids"][:, 1:][rows["segment_ids"][:, 1:] > 0]
  pieces = np.split(body, np.flatnonzero(body == EOS) + 1)[:-1]  # each sentence ends with </s>
  assert [proc.decode(piece[:-1].tolist()) for piece in pieces] == lines


# --- bad input ---------------------------------------------------------------------------------------

def test_bad_input_raises_value_errors_that_say_what_to_do(corpus):
  sources, tok = corpus
  kw = dict(seq_len=8, batch_size=2, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match=r"no source for languages \['xx'\]"):
    pipeline.make_mono_dataset(sources, tok, languages=["en", "xx"], **kw)
  with pytest.raises(ValueError, match="packing must be one of"):
    pipeline.make_mono_dataset(sources, tok, languages=["en"], packing="greedy", **kw)
  with pytest.raises(ValueError, match="none for shard 3 of 5"):
    pipeline.make_mono_dataset({"en": sources["en"][:2]}, tok, languages=["en"], seq_len=8, batch_size=2,
                               shard_index=3, shard_count=5)
  it = pipeline.make_mono_iterator({"en": [{"txt": b"a"}]}, tok, languages=["en"], prefetch=0, **kw)
  with pytest.raises(ValueError, match="no 'text' field"):
    next(it)
  empty = {"en": [{"text": b""}] * 5}
  it = pipeline.make_mono_iterator(empty, tok, languages=["en"], prefetch=0, tokenize_chunk=2, **kw)
  with pytest.raises(ValueError, match="empty after tokenization"):
    next(it)


# --- pre-tokenized sources, language-aware encoding, counts -------------------------------------------

class IdSource:
  """A pre-tokenized source, as xlm_jax.data.derived.DerivedSource: records {"ids": int array}."""
  pretokenized = True

  def __init__(self, rows):
    self.rows = [np.asarray(r, np.int32) for r in rows]

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return {"ids": self.rows[i]}


class TaggedTokenizer(WhitespaceTokenizer):
  """Per-language id ranges like a no_anchors tokenizer: the same word gets another id per language."""

  def __init__(self, sources, languages):
    super().__init__(sources)
    span = len(self.vocab)
    self.language_ranges = {lang: (5 + k * span, 5 + (k + 1) * span) for k, lang in enumerate(languages)}

  def encode(self, texts, lang):
    offset = self.language_ranges[lang][0] - 5
    return [[i + offset for i in ids] for ids in super().encode(texts)]


def test_pretokenized_source_is_read_as_ids_and_counted(corpus):
  sources, tok = corpus
  rows = [[900 + i, 901, 902][:1 + i % 3] for i in range(10)] + [[]]  # the last one is empty
  counts = pipeline.ExampleCounts()
  batches = list(pipeline.make_eval_dataset({"en": sources["en"][:3], "en_x": IdSource(rows)}, tok,
                                            languages=["en", "en_x"], seq_len=8, batch_size=4, packing="stream",
                                            shard_index=0, shard_count=1, counts=counts))
  packed = rows_of(batches)
  mine = packed["lang_ids"][:, 0] == 1
  body = packed["input_ids"][mine][:, 1:][packed["segment_ids"][mine][:, 1:] > 0]
  np.testing.assert_array_equal(body, np.concatenate([r + [EOS] for r in rows if r]))
  assert counts.as_dict() == {"en": {"read": 3, "skipped_empty": 0}, "en_x": {"read": 11, "skipped_empty": 1}}
  it = pipeline.make_mono_iterator({"en": BadIdSource()}, tok, languages=["en"], seq_len=8, batch_size=2,
                                   shard_index=0, shard_count=1, prefetch=0)
  with pytest.raises(ValueError, match="no 'ids' field"):
    next(it)


class BadIdSource(IdSource):
  def __init__(self):
    super().__init__([[5]])

  def __getitem__(self, i):
    return {"tokens": [5]}


def test_language_tagged_tokenizer_is_called_with_the_language(corpus):
  sources, _ = corpus
  tok = TaggedTokenizer(sources, ["en", "de"])
  batches = list(pipeline.make_eval_dataset(sources, tok, languages=["de", "en"], seq_len=12, batch_size=4,
                                            packing="segments", shard_index=0, shard_count=1))
  rows = rows_of(batches)
  real = ~np.isin(rows["input_ids"], [BOS, PAD, EOS])
  for lang_id, lang in enumerate(["de", "en"]):
    low, high = tok.language_ranges[lang]
    ids = rows["input_ids"][real & (rows["lang_ids"] == lang_id)]
    assert len(ids) and ((ids >= low) & (ids < high)).all()


def test_pad_batch_fills_every_batch_kind():
  batch = {"x_input_ids": np.full((1, 3), 7, np.int32), "x_lang_ids": np.array([2], np.int32),
           "position_ids": np.full((1, 3), 5, np.int32), "segment_ids": np.ones((1, 3), np.int32)}
  padded = packing.pad_batch(batch, 3, PAD)
  np.testing.assert_array_equal(padded["x_input_ids"], [[7, 7, 7], [1, 1, 1], [1, 1, 1]])
  np.testing.assert_array_equal(padded["x_lang_ids"], [2, 0, 0])
  np.testing.assert_array_equal(padded["position_ids"][1:], PAD)
  np.testing.assert_array_equal(padded["segment_ids"][1:], 0)
