"""Users' own corpora (data_prep.user_corpora): every input kind, the split rule, dedup, and each bad input.

All text here is written by the tests. Where outputs are spelled out, the split of each unit was worked
out by hand from the documented rule (md5 of the unit's lines joined by "\\n", first 8 bytes big-endian,
mod 10000, test if below test_fraction * 10000); with test_fraction 0.2 the units below fall as noted.
"""
import argparse
import collections
import gzip
import hashlib
import json
import lzma
import pathlib
import random
import shutil
import socket
import sys
import tempfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from data_prep import tfds_writer
from data_prep.user_corpora import (alpha_sample_files, build_user_text, cli_args, collect_inputs,
                                    corpus_views, reading, tfds_text, units)
from data_prep.user_corpora.build_text import RecipeText
from xlm_jax.data import tokenizer_training
from xlm_jax.data.corpus import SPLITS

# Units (test_fraction 0.2 -> test below bucket 2000), buckets computed once by hand from the rule.
DE_DOCS = [["Der Hund schläft.", "Die Katze spielt."],      # 4422 train
           ["Morgen scheint die Sonne."],                   # 132  test
           ["Es regnet heute.", "Der Hund schläft."],       # 2363 train ("Der Hund schläft." repeats)
           ["Guten Morgen."]]                               # 1399 test
EN_DE_BLOCKS = [[("The dog sleeps.", "Der Hund schläft."), ("The cat plays.", "Die Katze spielt.")],  # 6269
                [("Good morning.", "Guten Morgen.")],        # 6051 train, but "Guten Morgen." is a test string
                [("I read a book.", "Ich lese ein Buch.")]]  # 2733 train


def _bucket(lines) -> int:
  return int(hashlib.md5("\n".join(lines).encode()).hexdigest()[:16], 16) % 10000


def _write(path: pathlib.Path, text: str, opener=open) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  with opener(path, "wb") as f:
    f.write(text.encode("utf-8"))
  return path


def _docs_text(docs) -> str:
  return "\n\n".join("\n".join(doc) for doc in docs) + "\n"


def _outputs(work: pathlib.Path) -> dict:
  return {str(p.relative_to(work / "text")): p.read_text(encoding="utf-8")
          for p in sorted((work / "text").rglob("*")) if p.is_file()}


def _build(tmp_path, name="work", **kwargs):
  options = {key: kwargs.pop(key) for key in ("test_fraction", "max_unit_lines", "strict") if key in kwargs}
  work = tmp_path / name
  report = build_user_text(work, collect_inputs(**kwargs), **options)
  return report, _outputs(work)


def test_hand_computed_buckets_match_the_rule():
  assert [_bucket(doc) for doc in DE_DOCS] == [4422, 132, 2363, 1399]
  assert [_bucket(["\t".join(p) for p in block]) for block in EN_DE_BLOCKS] == [6269, 6051, 2733]


# --- each input kind -> exact outputs --------------------------------------------------------------------

def test_cc100_folder_and_moses_pair_exact_outputs(tmp_path):
  _write(tmp_path / "mono" / "de.txt", _docs_text(DE_DOCS))
  en = "\n\n".join("\n".join(e for e, _ in block) for block in EN_DE_BLOCKS) + "\n"
  de = "\n\n".join("\n".join(x for _, x in block) for block in EN_DE_BLOCKS) + "\n"
  _write(tmp_path / "opus" / "Books.de-en.en", en)  # English second in the name: swapped to the front
  _write(tmp_path / "opus" / "Books.de-en.de", de)
  report, out = _build(tmp_path, mono_dirs=[tmp_path / "mono"], parallel_dirs=[tmp_path / "opus"],
                       test_fraction=0.2)
  assert out == {
      "mono/test/de.txt": "Morgen scheint die Sonne.\nGuten Morgen.\n",
      "mono/test/en.txt": "",
      "mono/train/de.txt": "Der Hund schläft.\nDie Katze spielt.\nEs regnet heute.\n",
      "mono/train/en.txt": "",
      "parallel/test/en-de.tsv": "",
      "parallel/train/en-de.tsv": ("The dog sleeps.\tDer Hund schläft.\nThe cat plays.\tDie Katze spielt.\n"
                                   "I read a book.\tIch lese ein Buch.\n")}
  assert report["languages"] == ["en", "de"]
  assert report["counts"] == {
      "en": {"mono_train": 0, "mono_test": 0, "parallel_train": 0, "parallel_test": 0},
      "de": {"mono_train": 3, "mono_test": 2, "parallel_train": 3, "parallel_test": 0}}
  # One repeated training sentence; one training pair whose German side is a (mono) test sentence.
  assert report["dropped"] == {"duplicate": 1, "test_overlap": 1}
  mono, parallel = report["inputs"]
  assert (mono["kind"], mono["lines"], mono["units"]) == ("mono", 9, 4)
  assert (parallel["kind"], parallel["pairs"], parallel["units"]) == ("parallel", 4, 3)


def test_wikipedia_layout_compressed_files_and_explicit_pairs(tmp_path):
  # <lang>/ folders of files (read in sorted path order; a document never spans two files), .gz and .xz.
  _write(tmp_path / "wiki" / "de" / "b" / "02.txt.xz", "Es regnet heute.\nDer Hund schläft.\n", lzma.open)
  _write(tmp_path / "wiki" / "de" / "a.txt.gz", "Der Hund schläft.\nDie Katze spielt.\n", gzip.open)
  _write(tmp_path / "wiki" / "fr.txt", "Il pleut.\n")
  _write(tmp_path / "a.txt", "Good morning.\n")
  _write(tmp_path / "b.txt", "Bonjour.\n")
  _write(tmp_path / "p.tsv", "Ich lese ein Buch.\tI read a book.\n")  # de first, en second
  _write(tmp_path / "wiki" / "de" / "b" / "wiki_00", "Nicht gelesen.\n")  # listed as skipped, not read
  with pytest.warns(UserWarning, match=r"wiki/de: 1 files not named \*\.txt\[\.gz\|\.xz\], e\.g\. wiki_00"):
    report, out = _build(tmp_path, mono_dirs=[tmp_path / "wiki"], parallel=[{"en": tmp_path / "a.txt",
                         "fr": tmp_path / "b.txt"}], parallel_tsvs=[(tmp_path / "p.tsv", "de", "en")],
                         test_fraction=0.0)
  assert out["mono/train/de.txt"] == "Der Hund schläft.\nDie Katze spielt.\nEs regnet heute.\n"
  assert out["mono/train/fr.txt"] == "Il pleut.\n"
  assert out["parallel/train/en-fr.tsv"] == "Good morning.\tBonjour.\n"
  assert out["parallel/train/en-de.tsv"] == "I read a book.\tIch lese ein Buch.\n"
  assert all(out[f"{kind}/test/{name}"] == "" for kind, name in
             [("mono", "de.txt"), ("mono", "fr.txt"), ("mono", "en.txt"), ("parallel", "en-de.tsv")])
  assert report["languages"] == ["en", "de", "fr"]
  assert report["dropped"] == {"duplicate": 1}
  assert len(report["skipped_inputs"]) == 1
  assert [entry["units"] for entry in report["inputs"]] == [2, 1, 1, 1]
  # Every file read is recorded as stored (compressed or not), for the manifest.
  def record(path):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest}
  de = [tmp_path / "wiki" / "de" / "a.txt.gz", tmp_path / "wiki" / "de" / "b" / "02.txt.xz"]
  assert [entry["files"] for entry in report["inputs"]] == [
      [record(p) for p in de], [record(tmp_path / "wiki" / "fr.txt")],
      [record(tmp_path / "a.txt"), record(tmp_path / "b.txt")], [record(tmp_path / "p.tsv")]]


def test_blocks_empty_sides_tabs_and_long_units(tmp_path):
  # TSV: a blank line ends a block; a row with one empty side is dropped and counted; a tab inside a
  # Moses side would add a column, so it becomes a space (counted in "changed").
  _write(tmp_path / "x.tsv", "a\tb\nc\td\n\ne\t\nf\tg\n")
  _write(tmp_path / "m.en", "one\ttwo\n")
  _write(tmp_path / "m.de", "eins\n")
  # With max_unit_lines 3, a 7-line document becomes units of 3, 3 and 1 lines (2 cuts); 3 lines stay whole.
  _write(tmp_path / "mono" / "de.txt", "".join(f"Satz {i}.\n" for i in range(7)) + "\nA.\nB.\nC.\n")
  report, out = _build(tmp_path, mono_dirs=[tmp_path / "mono"], parallel_tsvs=[(tmp_path / "x.tsv", "en", "de")],
                       parallel=[{"en": tmp_path / "m.en", "de": tmp_path / "m.de"}], test_fraction=0.0,
                       max_unit_lines=3)
  assert out["parallel/train/en-de.tsv"] == "one two\teins\na\tb\nc\td\nf\tg\n"  # explicit pairs first
  assert report["dropped"] == {"empty_side": 1}
  assert report["changed"] == {"tab_in_parallel_side": 1}
  mono = report["inputs"][0]
  assert (mono["units"], mono["unit_cuts"]) == (4, 2)
  assert [entry["units"] for entry in report["inputs"][1:]] == [1, 2]


def _reference(mono_docs: dict, parallel_blocks: dict, fraction: float, max_unit: int) -> dict:
  """The split/dedup/overlap rules on lists in memory, for comparison with the streaming build."""
  outputs = {}
  for kind, by_lang in (("mono", mono_docs), ("parallel", parallel_blocks)):
    for lang, docs in by_lang.items():
      for doc in docs:
        for start in range(0, len(doc), max_unit):
          unit = doc[start:start + max_unit]
          rows = unit if kind == "mono" else ["\t".join(pair) for pair in unit]
          split = "test" if _bucket(rows) < fraction * 10000 else "train"
          outputs.setdefault((kind, lang, split), []).extend(unit)
  test_strings = set()
  for (kind, _, split), items in outputs.items():
    if split == "test":
      test_strings.update(items if kind == "mono" else [s for pair in items for s in pair])
  result, dropped = {}, {"duplicate": 0, "test_overlap": 0}
  for (kind, lang, split), items in outputs.items():
    seen, kept = set(), []
    for item in items:
      sides = [item] if kind == "mono" else list(item)
      if split == "train" and any(s in test_strings for s in sides):
        dropped["test_overlap"] += 1
      elif item in seen:
        dropped["duplicate"] += 1
      else:
        kept.append(item)
      seen.add(item)
    name = f"{kind}/{split}/{lang}.txt" if kind == "mono" else f"{kind}/{split}/en-{lang}.tsv"
    result[name] = "".join((x if kind == "mono" else "\t".join(x)) + "\n" for x in kept)
  return result, dropped


def test_streaming_build_equals_the_in_memory_rules_and_is_deterministic(tmp_path):
  rng = random.Random(0)
  words = ["alpha", "beta", "gamma", "delta"]

  def sentence():
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 3)))

  def docs(n):
    return [[sentence() for _ in range(rng.randint(1, 9))] for _ in range(n)]

  mono = {"de": docs(40), "en": docs(40)}
  blocks = [[(sentence(), sentence().upper()) for _ in range(rng.randint(1, 9))] for _ in range(40)]
  for lang, lang_docs in mono.items():
    _write(tmp_path / "mono" / f"{lang}.txt", _docs_text(lang_docs))
  _write(tmp_path / "p.tsv", "\n\n".join("\n".join("\t".join(p) for p in b) for b in blocks) + "\n")
  kwargs = dict(mono_dirs=[tmp_path / "mono"], parallel_tsvs=[(tmp_path / "p.tsv", "en", "de")],
                test_fraction=0.3, max_unit_lines=4)
  report, out = _build(tmp_path, **kwargs)
  expected, dropped = _reference(mono, {"de": blocks}, 0.3, 4)
  assert {name: text for name, text in out.items() if text} == {n: t for n, t in expected.items() if t}
  assert report["dropped"] == dropped
  assert min(dropped.values()) > 30 and report["counts"]["de"]["parallel_test"] > 10
  again, out_again = _build(tmp_path, name="again", **kwargs)
  assert out_again == out
  report.pop("seconds"), again.pop("seconds")
  assert again == report


def test_recipe_text_goes_first_and_its_test_and_eval_strings_leave_users_training_text(tmp_path):
  # The recipe's split is kept as given; users' documents split by hash (test_fraction 0: all train).
  recipe = RecipeText(mono={"en": {"train": ["Open the file.", "Close it."], "test": ["Quit now."]},
                            "de": {"train": ["Datei öffnen."], "test": []}},
                      parallel={"de": {"train": [("Open the file.", "Datei öffnen.")], "test": []}},
                      eval_strings=["An evaluation item."])
  _write(tmp_path / "mono" / "en.txt", "Close it.\nQuit now.\nAn evaluation item.\nMy own line.\n")
  report = build_user_text(tmp_path / "work", collect_inputs(mono_dirs=[tmp_path / "mono"]),
                           test_fraction=0.0, recipe=recipe)
  out = _outputs(tmp_path / "work")
  assert out["mono/train/en.txt"] == "Open the file.\nClose it.\nMy own line.\n"
  assert out["mono/test/en.txt"] == "Quit now.\n"
  assert out["parallel/train/en-de.tsv"] == "Open the file.\tDatei öffnen.\n"
  assert report["languages"] == ["en", "de"] and report["dropped"] == {"duplicate": 1, "test_overlap": 2}
  with pytest.raises(ValueError, match=r"recipe en-de train: item 1 is 'a\\tb'.*no '\\n\\t'"):
    bad = RecipeText(mono={"de": {"train": ["x"]}}, parallel={"de": {"train": [("a", "a\tb")]}})
    build_user_text(tmp_path / "bad", collect_inputs(mono_dirs=[tmp_path / "mono"]), recipe=bad)


# --- bad input -------------------------------------------------------------------------------------------

def test_invalid_utf8_is_skipped_and_counted_or_fails_when_strict(tmp_path):
  path = tmp_path / "mono" / "de.txt"
  path.parent.mkdir()
  path.write_bytes(b"Gut.\nKaputt \xff hier.\nAuch gut.\n")
  with pytest.warns(UserWarning, match=r"de\.txt:2: invalid UTF-8 .* at byte offset 12 in the file"):
    report, out = _build(tmp_path, mono_dirs=[path.parent], test_fraction=0.0)
  assert out["mono/train/de.txt"] == "Gut.\nAuch gut.\n"
  assert report["dropped"] == {"invalid_utf8": 1}
  assert report["first_defects"]["invalid_utf8"].startswith(f"{path}:2: invalid UTF-8")
  with pytest.raises(ValueError, match=r"de\.txt:2: invalid UTF-8 .*byte offset 12.*strict=False"):
    _build(tmp_path, name="strict", mono_dirs=[path.parent], strict=True)
  assert not (tmp_path / "strict" / "text").exists()  # a failed build leaves no half-written text
  # In line-aligned files a bad line drops its pair, and the pairs after it stay aligned.
  _write(tmp_path / "a.en", "one\ntwo\nthree\n")
  (tmp_path / "a.de").write_bytes(b"eins\nzw\xe4i\ndrei\n")
  with pytest.warns(UserWarning, match=r"a\.de:2: invalid UTF-8"):
    report, out = _build(tmp_path, name="pairs", parallel=[{"en": tmp_path / "a.en", "de": tmp_path / "a.de"}],
                         test_fraction=0.0)
  assert out["parallel/train/en-de.tsv"] == "one\teins\nthree\tdrei\n"
  assert report["dropped"] == {"invalid_utf8": 1}


def test_invalid_utf8_in_compressed_file_names_the_decompressed_offset(tmp_path):
  path = tmp_path / "mono" / "de.txt.gz"
  path.parent.mkdir()
  with gzip.open(path, "wb") as f:
    f.write(b"Gut.\n\nNoch \xc3\x28 mehr.\n")
  with pytest.raises(ValueError, match=r"de\.txt\.gz:3: invalid UTF-8 .*offset 11 of the decompressed"):
    _build(tmp_path, mono_dirs=[path.parent], strict=True)


def test_overlong_line_is_skipped_without_holding_it(tmp_path, monkeypatch):
  monkeypatch.setattr(reading, "MAX_LINE_BYTES", 40)
  monkeypatch.setattr(reading, "READ_BYTES", 16)  # the long line spans many reads
  _write(tmp_path / "mono" / "de.txt", "Kurz.\n" + "x" * 100 + "\nAuch kurz.\n" + "y" * 50)
  with pytest.warns(UserWarning, match=r"de\.txt:2: line of 100 bytes, longer than 40"):
    report, out = _build(tmp_path, mono_dirs=[tmp_path / "mono"], test_fraction=0.0)
  assert out["mono/train/de.txt"] == "Kurz.\nAuch kurz.\n"
  assert report["dropped"] == {"line_too_long": 2}
  assert report["inputs"][0]["lines"] == 4 and report["inputs"][0]["bytes"] == 6 + 101 + 11 + 50


def test_empty_files_are_named(tmp_path):
  _write(tmp_path / "a" / "de.txt", "")
  with pytest.raises(ValueError, match=r"a/de\.txt is empty \(0 bytes\)"):
    collect_inputs(mono_dirs=[tmp_path / "a"])
  _write(tmp_path / "b" / "de.txt", "\n  \n\n")
  with pytest.raises(ValueError, match=r"b/de\.txt contains no text"):
    _build(tmp_path, mono_dirs=[tmp_path / "b"])
  _write(tmp_path / "c.tsv", "\t\n\n")
  with pytest.raises(ValueError, match=r"c\.tsv contains no text"):
    _build(tmp_path, name="w2", parallel_tsvs=[(tmp_path / "c.tsv", "en", "de")])


def test_parallel_files_of_different_lengths_name_both(tmp_path):
  _write(tmp_path / "p" / "x.en-de.en", "a\nb\nc\n")
  _write(tmp_path / "p" / "x.en-de.de", "A\nB\nC\nD\nE\n")
  with pytest.raises(ValueError, match=r"x\.en-de\.en has 3 lines, .*x\.en-de\.de has 5"):
    _build(tmp_path, parallel_dirs=[tmp_path / "p"])
  _write(tmp_path / "q" / "y.en-de.en", "a\n")
  with pytest.raises(ValueError, match=r"y\.en-de\.en has no partner .*y\.en-de\.de"):
    collect_inputs(parallel_dirs=[tmp_path / "q"])


def test_unknown_language_codes_are_named(tmp_path):
  _write(tmp_path / "m" / "german.txt", "Hallo.\n")
  with pytest.raises(ValueError, match=r"m/german\.txt: 'german' is not a known language code"):
    collect_inputs(mono_dirs=[tmp_path / "m"])
  _write(tmp_path / "p" / "x.en-qq.en", "a\n")
  _write(tmp_path / "p" / "x.en-qq.qq", "b\n")
  with pytest.raises(ValueError, match=r"x\.en-qq\.qq: 'qq' is not a known language code"):
    collect_inputs(parallel_dirs=[tmp_path / "p"])
  _write(tmp_path / "r" / "x.de-fr.tsv", "a\tb\n")
  with pytest.raises(ValueError, match=r"pairs de-fr, but the corpus stores English-centred pairs"):
    collect_inputs(parallel_dirs=[tmp_path / "r"])
  # Suffixes and extra codes are fine; other files in a mono folder are listed, not read.
  _write(tmp_path / "s" / "zh-Hans.txt", "你好。\n")
  _write(tmp_path / "s" / "hi_rom.txt.xz", "", lzma.open)
  _write(tmp_path / "s" / "README.md", "about\n")
  with pytest.warns(UserWarning, match="README.md: not <lang>.txt"):
    inputs = collect_inputs(mono_dirs=[tmp_path / "s"], languages=["zh-Hans"])
  assert [m.lang for m in inputs.mono] == ["zh-Hans"]
  assert [s.replace(f"{tmp_path}/s/", "") for s in inputs.skipped] == [
      "README.md (not <lang>.txt[.gz|.xz] or a <lang>/ folder)", "hi_rom.txt.xz (language hi_rom not requested)"]


def test_tsv_rows_with_wrong_column_count(tmp_path):
  _write(tmp_path / "x.tsv", "a\tb\nc\td\te\nf\tg\n")
  with pytest.warns(UserWarning, match=r"x\.tsv:2: expected 2 tab-separated columns \(a<TAB>b\), got 3"):
    report, out = _build(tmp_path, parallel_tsvs=[(tmp_path / "x.tsv", "en", "de")], test_fraction=0.0)
  assert out["parallel/train/en-de.tsv"] == "a\tb\nf\tg\n"
  assert report["dropped"] == {"tsv_columns": 1}
  with pytest.raises(ValueError, match=r"x\.tsv:2: expected 2 tab-separated columns .* got 3"):
    _build(tmp_path, name="strict", parallel_tsvs=[(tmp_path / "x.tsv", "en", "de")], strict=True)


# --- TFDS ------------------------------------------------------------------------------------------------

TINY_DOCS = {"train": [("Der Hund schläft.\n\nDie Katze spielt.", ["Satz eins.", "Satz zwei."], 1),
                       ("Es regnet heute.", [], 2)],
             "validation": [("Guten Morgen.", ["Hallo."], 3)]}


class UserCorporaTinyDocs(tfds.core.GeneratorBasedBuilder):
  """A three-example dataset with a Text, a Sequence(Text) and an int feature."""
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="de")]

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):  # no checksums file to look up (see data_prep/tfds_writer.py)
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "sentences": tfds.features.Sequence(tfds.features.Text()),
        "id": tfds.features.Scalar(dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in TINY_DOCS}

  def _generate_examples(self, split):
    for index, (text, sentences, number) in enumerate(TINY_DOCS[split]):
      yield index, {"text": text, "sentences": sentences, "id": number}


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
  """data_dir with user_corpora_tiny_docs/de prepared as array_record, and a tfrecord copy in another."""
  root = tmp_path_factory.mktemp("tfds")
  tfds.disable_progress_bar()
  builder = UserCorporaTinyDocs(config="de", data_dir=str(root / "array_record"), file_format="array_record")
  with tempfile.TemporaryDirectory() as downloads:
    builder.download_and_prepare(download_dir=downloads)
  # The same dataset as `tfds build` writes it by default: tfrecord files of serialized tf.train.Example.
  src = pathlib.Path(builder.data_dir)
  dst = root / "tfrecord" / src.relative_to(root / "array_record")
  dst.mkdir(parents=True)
  shutil.copy(src / "features.json", dst)
  info = json.loads((src / "dataset_info.json").read_text())
  info["fileFormat"] = "tfrecord"
  (dst / "dataset_info.json").write_text(json.dumps(info))
  for split, examples in TINY_DOCS.items():
    with open(dst / f"user_corpora_tiny_docs-{split}.tfrecord-00000-of-00001", "wb") as f:
      for text, sentences, number in examples:
        record = builder.info.features.serialize_example({"text": text, "sentences": sentences, "id": number})
        length = len(record).to_bytes(8, "little")
        f.write(length + tfds_text.masked_crc32c(length).to_bytes(4, "little") + record +
                tfds_text.masked_crc32c(record).to_bytes(4, "little"))
  return root


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_text_field_by_name(tiny_tfds, tmp_path, monkeypatch, file_format):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tiny_tfds / file_format))  # the default data dir
  report, out = _build(tmp_path, tfds_specs=["tfds:user_corpora_tiny_docs/de:text"], test_fraction=0.0)
  # Splits in sorted order (train, validation); one example = one unit; blank lines inside dropped.
  assert out["mono/train/de.txt"] == "Der Hund schläft.\nDie Katze spielt.\nEs regnet heute.\nGuten Morgen.\n"
  assert report["inputs"][0]["examples"] == 3 and report["inputs"][0]["units"] == 3
  report, out = _build(tmp_path, name="seq", tfds_specs=["fr=tfds:user_corpora_tiny_docs/de:train:sentences"],
                       tfds_data_dir=tiny_tfds / file_format, test_fraction=0.0)
  assert report["languages"] == ["fr"]
  assert out["mono/train/fr.txt"] == "Satz eins.\nSatz zwei.\n"  # the empty example adds nothing
  assert "tensorflow" not in sys.modules


def test_tfds_bad_specs_fields_and_splits(tiny_tfds):
  data_dir = tiny_tfds / "array_record"
  with pytest.raises(ValueError, match="is not of the form"):
    collect_inputs(tfds_specs=["wiki40b/de:text"])
  with pytest.raises(ValueError, match="cannot tell its language"):
    collect_inputs(tfds_specs=["tfds:user_corpora_tiny_docs:text"], tfds_data_dir=data_dir)
  with pytest.raises(ValueError, match=r"no feature 'body'; the dataset has \['id', 'sentences', 'text'\]"):
    collect_inputs(tfds_specs=["tfds:user_corpora_tiny_docs/de:body"], tfds_data_dir=data_dir)
  with pytest.raises(ValueError, match="feature 'id' is .*not text"):
    collect_inputs(tfds_specs=["tfds:user_corpora_tiny_docs/de:id"], tfds_data_dir=data_dir)
  with pytest.raises(ValueError, match=r"user_corpora_tiny_docs has no config 'dee'; close matches: de \("):
    collect_inputs(tfds_specs=["de=tfds:user_corpora_tiny_docs/dee:text"], tfds_data_dir=data_dir)
  with pytest.raises(ValueError, match=r"no split 'test'; it has \['train', 'validation'\]"):
    collect_inputs(tfds_specs=["tfds:user_corpora_tiny_docs/de:test:text"], tfds_data_dir=data_dir)


def test_tfds_reads_an_older_prepared_version(tiny_tfds, tmp_path):
  shutil.copytree(tiny_tfds / "array_record" / "user_corpora_tiny_docs" / "de" / "1.0.0",
                  tmp_path / "data" / "user_corpora_tiny_docs" / "de" / "0.9.0")
  report, out = _build(tmp_path, tfds_specs=["tfds:user_corpora_tiny_docs/de:validation:text"],
                       tfds_data_dir=tmp_path / "data", test_fraction=0.0)
  assert out["mono/train/de.txt"] == "Guten Morgen.\n"


def test_tfds_unknown_name_suggests_close_matches(tmp_path):
  with pytest.raises(ValueError, match=r"'wiki40c' is not known to TFDS .*close matches: wiki40b"):
    collect_inputs(tfds_specs=["tfds:wiki40c/de:text"], tfds_data_dir=tmp_path)


def test_tfds_unprepared_dataset_fails_fast_without_network(tmp_path, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("user corpora must not open network connections")
  for name in ("create_connection", "getaddrinfo"):
    monkeypatch.setattr(socket, name, no_network)
  monkeypatch.setattr(socket.socket, "connect", no_network)
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match=(r"wiki40b/de is not prepared under .*cannot reach the TFDS "
                                               rf"servers to download wiki40b/de; .*copy it to {tmp_path}/wiki40b/de")):
    collect_inputs(tfds_specs=["tfds:wiki40b/de:text"], tfds_data_dir=tmp_path)
  assert time.perf_counter() - start < 5


def test_tfds_invalid_utf8_is_skipped_and_counted(monkeypatch):
  source = tfds_text.TfdsText("de", "any", None, None, "text", pathlib.Path("."))
  examples = [("any/train[0]", [b"Gut.\n\nAuch gut.", b"Kaputt \xff."]), ("any/train[1]", [b"\xc3"])]
  monkeypatch.setattr(tfds_text, "iter_documents", lambda source, builder: iter(examples))
  defects, stats = reading.LineDefects(), collections.Counter()
  with pytest.warns(UserWarning, match=r"any/train\[0\]: invalid UTF-8 \(invalid start byte\) at byte 7"):
    assert list(units.tfds_units(source, 100, defects, stats)) == [["Gut.", "Auch gut."]]
  assert defects.dropped == {"invalid_utf8": 2} and stats["examples"] == 2
  with pytest.raises(ValueError, match=r"any/train\[0\]: invalid UTF-8"):
    list(units.tfds_units(source, 100, reading.LineDefects(strict=True), collections.Counter()))


def test_crc32c_known_value():
  assert tfds_text.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


# --- streaming views for the later stages ----------------------------------------------------------------

def test_views_feed_tfds_writer_and_sample_like_the_list_version(tmp_path):
  _write(tmp_path / "mono" / "de.txt", "".join(f"Satz {i}.\n\n" for i in range(30)))
  _write(tmp_path / "mono" / "en.txt", "".join(f"Sentence {i}.\n\n" for i in range(7)))
  report, out = _build(tmp_path, mono_dirs=[tmp_path / "mono"], test_fraction=0.2)
  mono, parallel = corpus_views(tmp_path / "work", report)
  assert sorted(mono) == ["de", "en"] and list(parallel) == ["de"]  # no pairs, but the files exist
  assert [list(view) for view in parallel["de"].values()] == [[], []]
  lists = {lang: out[f"mono/train/{lang}.txt"].splitlines() for lang in mono}
  assert {lang: list(mono[lang]["train"]) for lang in mono} == lists
  views = {lang: mono[lang]["train"] for lang in mono}
  assert alpha_sample_files(views, 0.3, 25, seed=3) == tokenizer_training.alpha_sample(lists, 0.3, 25, seed=3)
  dataset = tfds_writer.write_mono(tmp_path / "tfds", "de", mono["de"])
  builder = tfds.builder_from_directory(str(dataset))
  assert {split: builder.info.splits[split].num_examples for split in builder.info.splits} == {
      split: report["counts"]["de"][f"mono_{split}"] for split in SPLITS}


def test_command_line_flags_make_the_same_inputs(tmp_path):
  _write(tmp_path / "mono" / "de.txt", "Hallo.\n")
  _write(tmp_path / "a.en", "Hello.\n")
  _write(tmp_path / "a.fr", "Bonjour.\n")
  _write(tmp_path / "b.tsv", "Ciao.\tHi.\n")
  parser = argparse.ArgumentParser()
  cli_args.add_user_corpus_arguments(parser)
  args = parser.parse_args(["--mono-dir", str(tmp_path / "mono"), "--parallel", f"en:{tmp_path}/a.en",
                            f"fr:{tmp_path}/a.fr", "--parallel-tsv", str(tmp_path / "b.tsv"), "it", "en",
                            "--test-fraction", "0", "--strict"])
  assert cli_args.has_user_inputs(args)
  inputs = cli_args.inputs_from_args(args)
  assert [(p.lang, type(p).__name__) for p in inputs.parallel] == [("fr", "ParallelFiles"), ("it", "ParallelTsv")]
  report = build_user_text(tmp_path / "work", inputs, **cli_args.build_options(args))
  assert report["languages"] == ["en", "de", "fr", "it"]
  assert _outputs(tmp_path / "work")["parallel/train/en-it.tsv"] == "Hi.\tCiao.\n"
  with pytest.raises(ValueError, match="--parallel expects LANG:PATH"):
    cli_args.inputs_from_args(parser.parse_args(["--parallel", "a.en", "fr:a.fr"]))
