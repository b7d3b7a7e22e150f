"""Vocabulary modes and derived languages at runtime (xlm_jax/data/tokenizer.py, derived.py, batch_kinds.py),
on a private copy of the small real corpus: tokenizers/ and derived/ are built there on first use."""
import json
import shutil

import numpy as np
import pytest

from xlm_jax.data import batch_kinds, derived, sentences
from xlm_jax.data.corpus import Corpus
from xlm_jax.data.tokenizer import (Tokenizer, effective_vocab_size, language_ranges, load_tokenizer,
                                    needs_language)

SPECIALS = {0, 1, 2, 3, 4}
LANGS = ["de", "en", "fr"]  # English not first: lang ids follow this order


@pytest.fixture(scope="module")
def corpus(small_corpus, tmp_path_factory):
  copy = tmp_path_factory.mktemp("vocabulary") / "corpus"
  # Other tests may have built vocabulary variants inside the shared corpus: start without them.
  shutil.copytree(small_corpus.dir, copy, ignore=shutil.ignore_patterns("tokenizers"))
  return Corpus(copy)


def source_texts(corpus, lang, n, split="train"):
  """The first n texts in the order the pipelines read them (the TFDS source, not the text file)."""
  source = corpus.mono_source(lang, split)
  return [source[i]["text"].decode() for i in range(n)]


def finite(kind, corpus, tokenizer, languages, **kw):
  args = dict(languages=languages, seq_len=32, batch_size=16, alpha=0.3, seed=0, packing="stream",
              num_epochs=1, shuffle=False, max_examples=40, shard_index=0, shard_count=1)
  args.update(kw)
  batches = list(batch_kinds.make_dataset(kind, corpus, tokenizer, **args))
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_joint_is_the_corpus_model_and_ignores_the_language(corpus):
  tokenizer = load_tokenizer(corpus)
  assert tokenizer.serialized() == corpus.tokenizer_path.read_bytes()
  assert not needs_language(tokenizer)
  texts = corpus.mono_texts("de", "test")[:5]
  assert tokenizer.encode(texts, "de") == tokenizer.encode(texts)
  assert language_ranges(tokenizer, LANGS) is None
  assert effective_vocab_size(tokenizer, LANGS) == tokenizer.vocab_size
  with pytest.raises(ValueError, match=r"unknown vocabulary 'shared'.*no_anchors"):
    load_tokenizer(corpus, "shared")


def test_no_anchors_built_on_first_use_and_every_pipeline_encodes_by_language(corpus):
  folder = corpus.dir / "tokenizers" / "no_anchors"
  assert not folder.exists()
  tokenizer = load_tokenizer(corpus, "no_anchors", vocab_size_per_lang=1000, languages=LANGS)
  assert (folder / "tokenizer.json").is_file() and needs_language(tokenizer)
  stamp = (folder / "tokenizer.json").stat().st_mtime_ns
  assert load_tokenizer(corpus, "no_anchors").vocab_size == tokenizer.vocab_size  # reused, not rebuilt
  assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
  ranges = language_ranges(tokenizer, LANGS)
  np.testing.assert_array_equal(ranges, [tokenizer.language_ranges[lang] for lang in LANGS])
  assert ranges.dtype == np.int32 and effective_vocab_size(tokenizer, LANGS) == tokenizer.vocab_size

  def in_own_range(ids, lang_ids):
    real = ~np.isin(ids, list(SPECIALS))
    low, high = ranges[lang_ids[real]].T
    return real.sum() > 0 and bool(((ids[real] >= low) & (ids[real] < high)).all())

  for packing in ("stream", "segments"):
    rows = finite("mono", corpus, tokenizer, LANGS, packing=packing)
    assert set(rows["lang_ids"][:, 0]) == {0, 1, 2} and in_own_range(rows["input_ids"], rows["lang_ids"])
  rows = finite("parallel", corpus, tokenizer, LANGS)
  assert in_own_range(rows["input_ids"], rows["lang_ids"])
  rows = finite("parallel_pairs", corpus, tokenizer, LANGS, batch_size=80)
  for side in "xy":
    ids, lang = rows[f"{side}_input_ids"], rows[f"{side}_lang_ids"]
    assert in_own_range(ids, np.broadcast_to(lang[:, None], ids.shape))
  assert {0, 1} <= set(rows["x_lang_ids"]) and {2, 1} <= set(rows["y_lang_ids"])
  # Row by row, the sentences pipeline holds exactly the language-tagged encoding of the source text.
  rows = finite("sentences", corpus, tokenizer, LANGS, max_examples=10, batch_size=30)
  k = 0
  for lang_id, lang in enumerate(LANGS):
    for ids in tokenizer.encode(source_texts(corpus, lang, 10), lang):
      want = sentences.sentence_row(ids, sentence_len=32, seq_len=32, lang_id=lang_id, bos_id=0, eos_id=2, pad_id=1)
      np.testing.assert_array_equal(rows["input_ids"][k], want["input_ids"])
      k += 1
  with pytest.raises(ValueError, match=r"built for languages .*not \['pt'\].*xlm-jax data tokenizers"):
    load_tokenizer(corpus, "no_anchors", languages=["en", "pt"])


def test_union_built_on_first_use_is_a_shared_vocabulary(corpus):
  tokenizer = load_tokenizer(corpus, "union", vocab_size_per_lang=1000, seed=1)
  summary = json.loads((corpus.dir / "tokenizers" / "union" / "anchors.json").read_text(encoding="utf-8"))
  assert isinstance(tokenizer, Tokenizer) and tokenizer.vocab_size == summary["vocab_size"]
  assert summary["languages"] == corpus.languages and summary["num_anchors"] > 0
  assert language_ranges(tokenizer, LANGS) is None and not needs_language(tokenizer)
  rows = finite("mono", corpus, tokenizer, LANGS)
  (text,) = source_texts(corpus, "de", 1)
  stream = np.asarray(tokenizer.encode([text])[0])
  np.testing.assert_array_equal(rows["input_ids"][0, 1:1 + len(stream)], stream[:31])


def test_derived_language_rows_are_the_derived_ids(corpus):
  tokenizer = load_tokenizer(corpus)
  V = tokenizer.vocab_size
  languages = ["en", "en_trans"]
  assert effective_vocab_size(tokenizer, languages) == 2 * V
  np.testing.assert_array_equal(language_ranges(tokenizer, languages), [[5, V], [V + 5, 2 * V]])
  # Stream packing: the en_trans rows are <s> + the derived rows, in file order, each followed by </s>.
  rows = finite("mono", corpus, tokenizer, languages, max_examples=30)  # derives en_trans on first use
  folder = corpus.dir / "derived" / "trans"
  manifest = json.loads((folder / "derived.json").read_text(encoding="utf-8"))
  assert manifest["source_language"] == "en" and manifest["op"] == "trans"
  train = [json.loads(line)["ids"] for line in (folder / "train.jsonl").read_text().splitlines()]
  assert derived.num_examples(corpus, "en_trans", "train") == len(train) == corpus.num_examples("en", "train")
  mine = rows["lang_ids"][:, 0] == 1
  body = rows["input_ids"][mine][:, 1:][rows["segment_ids"][mine][:, 1:] > 0]
  stream = np.concatenate([row + [2] for row in train[:30]])
  np.testing.assert_array_equal(body, stream)
  assert (body[~np.isin(body, list(SPECIALS))] >= V).all()
  # Sentences: one derived row per row; the test split reads eval/test.jsonl.
  rows = finite("sentences", corpus, tokenizer, ["en_trans"], split="test", max_examples=12, batch_size=12)
  test = [json.loads(line)["ids"] for line in (folder / "eval" / "test.jsonl").read_text().splitlines()]
  for k, ids in enumerate(test[:12]):
    want = sentences.sentence_row(ids, sentence_len=32, seq_len=32, lang_id=0, bos_id=0, eos_id=2, pad_id=1)
    np.testing.assert_array_equal(rows["input_ids"][k], want["input_ids"])
  # Parallel kinds pair a derived language with its source, sentence by sentence (TLM on
  # English / derived English: the XLM baseline of the ALIGN-MLM table).
  rows = finite("parallel", corpus, tokenizer, ["en", "en_trans"], max_examples=5)
  assert set(rows["lang_ids"][rows["segment_ids"] > 0].tolist()) == {0, 1}


def test_derived_names_and_bad_input(corpus):
  assert derived.split_derived("en_trans+inv") == ("en", "trans∘inv")
  assert derived.split_derived("en_inv+trans") == ("en", "trans∘inv")
  assert derived.split_derived("zh_CN") is None and derived.split_derived("en") is None
  assert derived.shifts_ids("de_trans+perm") and not derived.shifts_ids("de_inv")
  tokenizer = load_tokenizer(corpus)
  kw = dict(seq_len=16, batch_size=2, alpha=0.3, seed=0, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match=r"unknown batch kind 'pairs'; known kinds: mono, parallel, parallel_pairs, "
                                       "sentences"):
    batch_kinds.make_dataset("pairs", corpus, tokenizer, languages=["en"], **kw)
  with pytest.raises(ValueError, match=r"'en_foo' is not a language of corpus .*derived language is '<lang>_<op>'"):
    batch_kinds.make_dataset("mono", corpus, tokenizer, languages=["en", "en_foo"], **kw)
  with pytest.raises(ValueError, match="needs source language 'pt'"):
    batch_kinds.make_dataset("mono", corpus, tokenizer, languages=["en", "pt_trans"], **kw)
  finite("sentences", corpus, tokenizer, ["en_trans"], max_examples=2)  # builds derived/trans if missing
  with pytest.raises(ValueError, match=r"derived\.json: field 'source_language' is 'en'.*'de_trans'"):
    batch_kinds.make_dataset("mono", corpus, tokenizer, languages=["de_trans"], **kw)
  with pytest.raises(ValueError, match=r"derived\.json: field 'seed' is 0, not the requested 5"):
    batch_kinds.make_dataset("mono", corpus, tokenizer, languages=["en_trans"], derive_seed=5, **kw)
  no_anchors = load_tokenizer(corpus, "no_anchors", vocab_size_per_lang=1000)
  with pytest.raises(ValueError, match="cannot be used with the no_anchors vocabulary"):
    batch_kinds.make_dataset("mono", corpus, no_anchors, languages=["en", "en_trans"], **kw)
  bad = corpus.dir / "derived" / "inv"
  (bad / "eval").mkdir(parents=True)
  (bad / "derived.json").write_text(json.dumps({"source_language": "en", "op": "inv", "seed": 0,
                                                "tokenizer_sha256": derived.hashlib.sha256(
                                                    tokenizer.serialized()).hexdigest()}))
  (bad / "train.jsonl").write_text('{"ids": [5, 6]}\n{"idz": [7]}\n')
  with pytest.raises(ValueError, match=r"train\.jsonl:2: field 'ids' is not a list of token ids"):
    batch_kinds.make_dataset("mono", corpus, tokenizer, languages=["en_inv"], **kw)
