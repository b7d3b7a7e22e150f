"""The "parallel", "parallel_pairs" and "sentences" pipelines (xlm_jax/data/pairs.py, sentences.py, rows.py).

Pairs are synthetic: pair i of en-L is ("E_L_i" + filler, "L_i" + filler), so every row decodes back to the
pair, the side order and the language it came from. Field layouts are checked against hand-written arrays.
"""
import json

from etils import epath
import grain
import numpy as np
import pytest

from xlm_jax.data import pairs, pipeline, sentences

BOS, PAD, EOS = 0, 1, 2
LANGUAGES = ["de", "en", "fr"]  # English is not first: lang ids must follow this order
SIZES = {"de": 90, "fr": 30}


def english(lang, i):
  return " ".join([f"E_{lang}_{i}"] + [f"ew{(3 * i + j) % 11}" for j in range(i % 7)])


def foreign(lang, i):
  return " ".join([f"{lang}_{i}"] + [f"{lang}w{(5 * i + j) % 11}" for j in range(i % 4)])


def make_pair_sources(sizes):
  return {lang: [{"en": english(lang, i).encode(), "xx": foreign(lang, i).encode(), "lang": lang.encode()}
                 for i in range(n)] for lang, n in sizes.items()}


def make_mono_sources(sizes):
  return {lang: [{"text": foreign(lang, i).encode()} for i in range(n)] for lang, n in sizes.items()}


class WordTokenizer:
  """Words -> ids from a vocabulary fixed up front; shared by all languages (encode(texts))."""
  bos_id, pad_id, eos_id = BOS, PAD, EOS

  def __init__(self, texts):
    words = sorted({w for t in texts for w in t.split()})
    self.vocab = {w: 5 + k for k, w in enumerate(words)}
    self.words = {k: w for w, k in self.vocab.items()}

  def encode(self, texts):
    return [[self.vocab[w] for w in t.split()] for t in texts]

  def decode(self, ids):
    return " ".join(self.words[int(i)] for i in ids)


PAIRS = make_pair_sources(SIZES)
MONO = make_mono_sources({"de": 40, "en": 25, "fr": 12})
TOK = WordTokenizer([r[k].decode() for src in PAIRS.values() for r in src for k in ("en", "xx")]
                    + [r["text"].decode() for src in MONO.values() for r in src])


def pair_iter(kind, sources=PAIRS, **kw):
  args = dict(languages=LANGUAGES, seq_len=24, batch_size=4, shard_index=0, shard_count=1, seed=0)
  args.update(kw)
  return iter(pairs.make_pair_dataset(kind, sources, TOK, **args))


def take(it, n):
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def stack(batches):
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def parallel_sides(row_ids, row_seg):
  """(x text, y text) of a parallel row, checking the special tokens around the sides."""
  first, second = row_ids[row_seg == 1], row_ids[row_seg == 2]
  assert first[0] == BOS and first[-1] == EOS and second[0] == EOS and second[-1] == EOS
  return TOK.decode(first[1:-1]), TOK.decode(second[1:-1])


# --- layouts, by hand ------------------------------------------------------------------------------

def test_truncate_pair_cuts_the_longer_side_first():
  x, y = list(range(10, 20)), [20, 21, 22]
  assert pairs.truncate_pair(x, y, 13) == (x, y)                    # fits: untouched
  assert pairs.truncate_pair(x, y, 8) == ([10, 11, 12, 13, 14], y)  # only the longer side is cut
  assert pairs.truncate_pair(y, x, 8) == (y, [10, 11, 12, 13, 14])  # whichever side that is
  assert pairs.truncate_pair(x, x, 7) == (x[:4], x[:3])             # both long: halves, x keeps the odd token
  assert pairs.truncate_pair(x[:4], x[:6], 6) == (x[:3], x[:3])
  assert pairs.truncate_pair([1, 2, 3], [4, 5, 6, 7], 6) == ([1, 2, 3], [4, 5, 6])


def test_parallel_row_exact_layout():
  row = pairs.parallel_row([10, 11, 12], [20, 21], x_lang_id=2, y_lang_id=0, seq_len=12,
                           bos_id=BOS, eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(row["input_ids"], [0, 10, 11, 12, 2, 2, 20, 21, 2, 1, 1, 1])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0, 0])
  np.testing.assert_array_equal(row["position_ids"], [2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 1, 1])
  np.testing.assert_array_equal(row["lang_ids"], [2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0])
  assert all(v.dtype == np.int32 and v.shape == (12,) for v in row.values())
  # Too long (budget 8 - 4 = 4): x (5 tokens) is cut to 4 - 1 = 3, y (1 token) stays; no padding left.
  row = pairs.parallel_row([10, 11, 12, 13, 14], [20], x_lang_id=1, y_lang_id=3, seq_len=8,
                           bos_id=BOS, eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(row["input_ids"], [0, 10, 11, 12, 2, 2, 20, 2])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(row["position_ids"], [2, 3, 4, 5, 6, 7, 8, 9])
  np.testing.assert_array_equal(row["lang_ids"], [1, 1, 1, 1, 1, 3, 3, 3])


def test_pair_row_and_sentence_row_exact_layout():
  row = pairs.pair_row([10, 11, 12, 13], [20], x_lang_id=2, y_lang_id=0, pair_seq_len=5,
                       bos_id=BOS, eos_id=EOS, pad_id=PAD)
  np.testing.assert_array_equal(row["x_input_ids"], [0, 10, 11, 12, 2])  # cut to pair_seq_len - 2 tokens
  np.testing.assert_array_equal(row["y_input_ids"], [0, 20, 2, 1, 1])
  assert row["x_lang_ids"] == 2 and row["y_lang_ids"] == 0 and row["x_lang_ids"].dtype == np.int32
  row = sentences.sentence_row([10, 11, 12, 13], sentence_len=5, seq_len=7, lang_id=2, bos_id=BOS, eos_id=EOS,
                               pad_id=PAD)
  np.testing.assert_array_equal(row["input_ids"], [0, 10, 11, 12, 2, 1, 1])
  np.testing.assert_array_equal(row["segment_ids"], [1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(row["position_ids"], [2, 3, 4, 5, 6, 1, 1])
  np.testing.assert_array_equal(row["lang_ids"], [2, 2, 2, 2, 2, 0, 0])


# --- the pipelines -----------------------------------------------------------------------------------

def test_parallel_rows_are_source_pairs_with_contract_fields():
  rows = stack(take(pair_iter("parallel"), 30))
  en_id, ids = LANGUAGES.index("en"), {lang: LANGUAGES.index(lang) for lang in SIZES}
  for r in range(len(rows["input_ids"])):
    seg, lang = rows["segment_ids"][r], rows["lang_ids"][r]
    x, y = parallel_sides(rows["input_ids"][r], seg)
    n = int((seg > 0).sum())
    assert (seg[:n] > 0).all() and (rows["input_ids"][r][n:] == PAD).all()
    np.testing.assert_array_equal(rows["position_ids"][r][:n], np.arange(2, 2 + n))
    assert (rows["position_ids"][r][n:] == PAD).all() and (lang[n:] == 0).all()
    foreign_first = not x.startswith("E_")
    en_text, xx_text = (y, x) if foreign_first else (x, y)
    code, i = xx_text.split()[0].split("_")
    # Seq_len 24 fits every pair whole: the sides are exactly the source pair.
    assert (en_text, xx_text) == (english(code, int(i)), foreign(code, int(i)))
    x_lang, y_lang = (ids[code], en_id) if foreign_first else (en_id, ids[code])
    assert (lang[seg == 1] == x_lang).all() and (lang[seg == 2] == y_lang).all()


def test_parallel_pipeline_truncates_longer_side_first():
  rows = stack(take(pair_iter("parallel", seq_len=9, foreign_first_rate=0.0), 20))
  for ids, seg in zip(rows["input_ids"], rows["segment_ids"]):
    x, y = parallel_sides(ids, seg)
    code, i = y.split()[0].split("_")
    en_ids, xx_ids = TOK.encode([english(code, int(i)), foreign(code, int(i))])
    want_x, want_y = pairs.truncate_pair(en_ids, xx_ids, 9 - 4)
    assert (x, y) == (TOK.decode(want_x), TOK.decode(want_y))


def test_parallel_pairs_rows_are_translations_in_seeded_random_order():
  rows = stack(take(pair_iter("parallel_pairs", pair_seq_len=12), 30))
  assert rows["x_input_ids"].shape == (120, 12) and rows["x_lang_ids"].shape == (120,)
  en_id = LANGUAGES.index("en")
  for x_ids, y_ids, x_lang, y_lang in zip(rows["x_input_ids"], rows["y_input_ids"], rows["x_lang_ids"],
                                          rows["y_lang_ids"]):
    texts = []
    for ids in (x_ids, y_ids):
      n = int((ids != PAD).sum())
      assert ids[0] == BOS and ids[n - 1] == EOS and (ids[n:] == PAD).all()
      texts.append(TOK.decode(ids[1:n - 1]))
    if x_lang == en_id:
      code, i = texts[1].split()[0].split("_")
      assert texts == [english(code, int(i)), foreign(code, int(i))] and y_lang == LANGUAGES.index(code)
    else:
      code, i = texts[0].split()[0].split("_")
      assert texts == [foreign(code, int(i)), english(code, int(i))] and y_lang == en_id
      assert x_lang == LANGUAGES.index(code)


@pytest.mark.parametrize("kind", pairs.PAIR_KINDS)
@pytest.mark.parametrize("rate", [0.0, 0.25, 0.5, 1.0])
def test_side_order_rate(kind, rate):
  en_id = LANGUAGES.index("en")
  rows = stack(take(pair_iter(kind, foreign_first_rate=rate, batch_size=50), 16))  # 800 pairs
  if kind == "parallel":
    first_lang = rows["lang_ids"][:, 0]
  else:
    first_lang = rows["x_lang_ids"]
  share = float(np.mean(first_lang != en_id))
  # Binomial(800, rate): 4 standard deviations are at most 0.071.
  assert abs(share - rate) <= 0.071 if 0 < rate < 1 else share == rate


def test_pair_languages_mixed_with_alpha_over_parallel_sizes():
  rows = stack(take(pair_iter("parallel_pairs", alpha=0.5, batch_size=20), 30))
  foreign = np.where(rows["x_lang_ids"] == LANGUAGES.index("en"), rows["y_lang_ids"], rows["x_lang_ids"])
  share_de = float(np.mean(foreign == LANGUAGES.index("de")))
  # q ∝ sqrt(90) : sqrt(30) -> de 0.634; grain mixes deterministically in proportion.
  assert share_de == pytest.approx(np.sqrt(3) / (np.sqrt(3) + 1), abs=0.02)


@pytest.mark.parametrize("kind", pairs.PAIR_KINDS + ("sentences",))
def test_same_seed_same_batches_different_seed_different(kind):
  def run(seed):
    if kind == "sentences":
      return take(iter(sentences.make_sentence_dataset(MONO, TOK, languages=LANGUAGES, seq_len=10, batch_size=4,
                                                       seed=seed, shard_index=0, shard_count=1)), 8)
    return take(pair_iter(kind, seed=seed), 8)
  assert_batches_equal(run(3), run(3))
  assert not all(np.array_equal(a[k], b[k]) for a, b in zip(run(3), run(4)) for k in a)


def sentence_iter(**kw):
  args = dict(languages=LANGUAGES, seq_len=10, sentence_len=6, batch_size=3, seed=2, shard_index=0,
              shard_count=1, chunk_size=7)
  args.update(kw)
  return iter(sentences.make_sentence_dataset(MONO, TOK, **args))


@pytest.mark.parametrize("kind, prefetch", [("parallel", 4), ("parallel_pairs", 0), ("sentences", 4)])
def test_restored_iterator_continues_exactly(kind, prefetch, tmp_path):
  def make():
    if kind == "sentences":
      return sentence_iter(prefetch=prefetch)
    return pair_iter(kind, batch_size=3, chunk_size=7, prefetch=prefetch)
  it = make()
  for _ in range(7):  # 21 rows: mid-chunk, and fr (30 pairs, 12 sentences) wraps an epoch after
    next(it)
  state = it.get_state()
  grain.checkpoint.CheckpointHandler().save(epath.Path(tmp_path), item=it)
  expected = take(it, 25)
  fresh = make()
  fresh.set_state(json.loads(json.dumps(state)))
  assert_batches_equal(take(fresh, 25), expected)
  restored = grain.checkpoint.CheckpointHandler().restore(epath.Path(tmp_path), item=make())
  assert_batches_equal(take(restored, 25), expected)


def eval_pairs(kind, shard_index, shard_count, batch_size=7):
  batches = list(pairs.make_pair_dataset(kind, PAIRS, TOK, languages=LANGUAGES, seq_len=24, batch_size=batch_size,
                                         num_epochs=1, shuffle=False, shard_index=shard_index,
                                         shard_count=shard_count))
  rows, seen = stack(batches), []
  for r in range(len(rows["input_ids"]) if kind == "parallel" else len(rows["x_input_ids"])):
    if kind == "parallel":
      if rows["segment_ids"][r].max() == 0:
        continue
      x, y = parallel_sides(rows["input_ids"][r], rows["segment_ids"][r])
    else:
      if rows["x_input_ids"][r][0] == PAD:
        continue
      x, y = (TOK.decode(ids[1:int((ids != PAD).sum()) - 1])
              for ids in (rows["x_input_ids"][r], rows["y_input_ids"][r]))
    seen.append(tuple(sorted((x, y))))
  return batches, seen


@pytest.mark.parametrize("kind", pairs.PAIR_KINDS)
def test_eval_pass_is_finite_padded_and_host_shards_are_disjoint(kind):
  everything = sorted(tuple(sorted((english(l, i), foreign(l, i)))) for l, n in SIZES.items() for i in range(n))
  batches, seen = eval_pairs(kind, 0, 1)
  assert sorted(seen) == everything and len(seen) == len(set(seen))
  assert len(batches) == int(np.ceil(120 / 7))
  last = batches[-1]
  pad_rows = 7 * len(batches) - 120
  for key, value in last.items():
    assert value.shape[0] == 7
    fill = PAD if key.endswith("input_ids") or key == "position_ids" else 0
    assert (value[7 - pad_rows:] == fill).all(), key
  # Languages one after another in `languages` order: all de pairs, then fr.
  assert all(s[0].startswith("E_de") for s in seen[:90])
  shards = [eval_pairs(kind, s, 3)[1] for s in range(3)]
  assert sorted(sum(shards, [])) == everything
  assert all(not set(a) & set(b) for k, a in enumerate(shards) for b in shards[k + 1:])


def test_pairs_with_an_empty_side_are_skipped_and_counted():
  sources = {"de": [{"en": b"E_de_0", "xx": b""}, {"en": b"E_de_1", "xx": b"de_1"}, {"en": b" ", "xx": b"de_2"},
                    {"en": b"E_de_3", "xx": b"de_3"}]}
  counts = pipeline.ExampleCounts()
  dataset = pairs.make_pair_dataset("parallel", sources, TOK, languages=["en", "de"], seq_len=12, batch_size=4,
                                    num_epochs=1, shuffle=False, shard_index=0, shard_count=1, counts=counts)
  (batch,) = list(dataset)
  kept = [parallel_sides(ids, seg) for ids, seg in zip(batch["input_ids"], batch["segment_ids"]) if seg.max()]
  assert sorted(map(sorted, kept)) == [["E_de_1", "de_1"], ["E_de_3", "de_3"]]
  assert counts.as_dict() == {"en-de": {"read": 4, "skipped_empty": 2}} and counts.skipped() == 2
  assert dataset.example_counts is counts
  # A pair language whose every pair is empty raises instead of looping forever.
  empty = {"de": [{"en": b"", "xx": b"de_1"}] * 3}
  it = pair_iter("parallel", sources=empty, languages=["en", "de"], chunk_size=2, prefetch=0)
  with pytest.raises(ValueError, match="empty after tokenization"):
    next(it)


def test_sentences_rows_one_sentence_each_truncated_and_padded():
  batches = list(sentences.make_sentence_dataset(MONO, TOK, languages=LANGUAGES, seq_len=10, sentence_len=6,
                                                 batch_size=8, num_epochs=1, shuffle=False, shard_index=0,
                                                 shard_count=1))
  rows = stack(batches)
  real = rows["segment_ids"].max(axis=1) > 0
  assert real.sum() == 77 and not real[77:].any()
  k = 0
  for lang_id, lang in enumerate(LANGUAGES):
    for i in range(len(MONO[lang])):
      ids = TOK.encode([foreign(lang, i)])[0][:4]
      want = sentences.sentence_row(ids, sentence_len=6, seq_len=10, lang_id=lang_id, bos_id=BOS, eos_id=EOS,
                                    pad_id=PAD)
      for key in want:
        np.testing.assert_array_equal(rows[key][k], want[key], err_msg=f"{lang} {i} {key}")
      k += 1
  assert (rows["segment_ids"].max(axis=1) <= 1).all() and ((rows["segment_ids"] > 0).sum(axis=1) <= 6).all()


# --- bad input ---------------------------------------------------------------------------------------

def test_bad_input_raises_value_errors_that_name_the_problem():
  with pytest.raises(ValueError, match="need 'en' in data.languages"):
    pairs.make_pair_dataset("parallel", PAIRS, TOK, languages=["de", "fr"], seq_len=12, batch_size=2)
  with pytest.raises(ValueError, match="non-English language"):
    pairs.make_pair_dataset("parallel", PAIRS, TOK, languages=["en"], seq_len=12, batch_size=2)
  with pytest.raises(ValueError, match=r"seq_len must be >= 6"):
    pairs.make_pair_dataset("parallel", PAIRS, TOK, languages=LANGUAGES, seq_len=5, batch_size=2)
  with pytest.raises(ValueError, match="pair_seq_len must be >= 3"):
    pairs.make_pair_dataset("parallel_pairs", PAIRS, TOK, languages=LANGUAGES, seq_len=12, pair_seq_len=2,
                            batch_size=2)
  with pytest.raises(ValueError, match="foreign_first_rate must be in"):
    pairs.make_pair_dataset("parallel", PAIRS, TOK, languages=LANGUAGES, seq_len=12, batch_size=2,
                            foreign_first_rate=1.5)
  with pytest.raises(ValueError, match=r"no source for languages \['fr'\]"):
    pairs.make_pair_dataset("parallel", {"de": PAIRS["de"]}, TOK, languages=LANGUAGES, seq_len=12, batch_size=2)
  with pytest.raises(ValueError, match="sentence_len <= seq_len"):
    sentences.make_sentence_dataset(MONO, TOK, languages=LANGUAGES, seq_len=8, sentence_len=9, batch_size=2)
  it = pair_iter("parallel", sources={"de": [{"en": b"E_de_1", "text": b"de_1"}]}, languages=["en", "de"],
                 prefetch=0)
  with pytest.raises(ValueError, match="en-de: record .* lacks the field 'en' or 'xx'"):
    next(it)
