"""Bilingual dictionaries: FreeDict reader, merge + filters, split by headword, artifacts.

The dictd databases here are written by the test itself (our own words; offsets computed below with an
independent base64 encoder), so every parsed entry and every count is known by hand.
"""
import collections
import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest

from data_prep import dictionaries, freedict
from xlm_jax.data import dictionary as dict_format

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

ENG_DEU = [
    ("00databaseinfo", "00-database-info\nA dictionary written by the test.\n"),
    ("house", 'house /haʊs/ <n>\nHaus <neut>, Gebäude <neut> [arch.]\n   Synonym: {home}\n'
              '      "a big house"  - ein großes Haus\n'),
    ("bank", "bank /bæŋk/\n1. Bank <fem>\n2. Ufer <neut>; Böschung\n"),
    ("island", "island /ˈaɪlənd/ <n>\nInsel 2.\nEiland\nkleine Insel im Meer\n"),
    ("stir", "stir /stɜː/\nI.  <V> 1.  rühren\n 2.  bewegen\nII.  <V Phras>stir up  1.  aufwühlen\n"
             " 2.  anstiften\n"),
    ("dog", "dog, hound /dɒɡ/ <n>\nHund <masc>\n"),
    ("nothing", "nothing /ˈnʌθɪŋ/\n   see: {none}\n"),
]
DEU_ENG = [
    ("haus", "Haus /haʊs/ <neut>\nhouse, home\n"),
    ("hund", "Hund /hʊnt/ <masc>\ndog\n"),
    ("ufer", "Ufer /ˈuːfɐ/\nshore, bank\n"),
    ("abend", "Abend /ˈaːbn̩t/\nevening, eve\n"),
    ("computer", "Computer /kɔmˈpjuːtɐ/\ncomputer\n"),
    ("zum beispiel", "zum Beispiel /tsʊm ˈbaɪʃpiːl/\nfor example, e.g.\n"),
]
ZIPF = {("house", "en"): 5.7, ("bank", "en"): 5.0, ("island", "en"): 5.0, ("stir", "en"): 3.5,
        ("dog", "en"): 5.0, ("hound", "en"): 2.9, ("home", "en"): 6.0, ("shore", "en"): 4.0,
        ("evening", "en"): 5.0, ("eve", "en"): 2.5, ("Haus", "de"): 5.0, ("Gebäude", "de"): 4.5,
        ("Ufer", "de"): 4.0, ("Böschung", "de"): 2.5, ("Insel", "de"): 4.5, ("Eiland", "de"): 2.0,
        ("rühren", "de"): 3.2, ("bewegen", "de"): 4.5, ("Hund", "de"): 4.8, ("Abend", "de"): 5.0}


def fake_zipf(word, lang):
  return ZIPF.get((word, lang), 0.0)


def b64(value):
  digits = ""
  while True:
    digits = B64[value % 64] + digits
    value //= 64
    if value == 0:
      return digits


def write_database(root, name, entries, extra_keys=()):
  """Writes usr/share/dictd/<name>.{index,dict.dz}; extra_keys = (key, key of the entry it points at)."""
  folder = root / "usr/share/dictd"
  folder.mkdir(parents=True, exist_ok=True)
  data, where = b"", {}
  for key, text in entries:
    raw = text.encode("utf-8")
    where[key] = (len(data), len(raw))
    data += raw
  with gzip.open(folder / f"{name}.dict.dz", "wb") as f:
    f.write(data)
  keys = [(key, where[key]) for key, _ in entries] + [(key, where[target]) for key, target in extra_keys]
  lines = [f"{key}\t{b64(offset)}\t{b64(length)}\n" for key, (offset, length) in sorted(keys)]
  (folder / f"{name}.index").write_text("".join(lines), encoding="utf-8")
  return folder / f"{name}.index", folder / f"{name}.dict.dz"


@pytest.fixture
def roots(tmp_path):
  write_database(tmp_path / "en-de", "freedict-eng-deu", ENG_DEU, extra_keys=[("hound", "dog")])
  write_database(tmp_path / "de-en", "freedict-deu-eng", DEU_ENG)
  return {"dict-freedict-eng-deu": tmp_path / "en-de", "dict-freedict-deu-eng": tmp_path / "de-en"}


def test_dictd_numbers():
  assert [freedict.decode_dictd_number(t) for t in ("A", "B", "/", "BA", "CAB")] == [0, 1, 63, 64, 8193]
  assert all(freedict.decode_dictd_number(freedict.encode_dictd_number(v)) == v for v in (0, 63, 64, 99999))
  with pytest.raises(ValueError, match="not a dictd base64 digit"):
    freedict.decode_dictd_number("A-B")


def test_reader_parses_entries_exactly(roots):
  skipped = collections.Counter()
  entries = freedict.read_freedict(*freedict.find_database(roots["dict-freedict-eng-deu"], "en", "de"),
                                   skipped)
  got = sorted((e.headwords, e.translations) for e in entries)
  assert got == sorted([
      (("house",), ("Haus", "Gebäude")),
      (("bank",), ("Bank", "Ufer", "Böschung")),
      (("island",), ("Insel", "Eiland")),          # "Insel 2." opens sense 2, whose 2nd line is a definition
      (("stir",), ("rühren", "bewegen")),          # the <V Phras> block translates "stir up", not "stir"
      (("dog", "hound"), ("Hund",)),               # two index keys, one entry
  ])
  assert skipped == {"meta_entry": 1, "no_translation": 1, "reference_line": 2, "example_line": 1,
                     "definition_line": 1, "phrase_line": 2}


def test_glued_note_labels_recover_glosses():
  notes = "\n".join(["   Note: archaism"] * 3 + ["   Note: archaismmoon", "   Note: archaismfriend",
                                                  "   Note: archaismyoung man", "   Note: obscure term"])
  labels = freedict.glued_note_labels(notes)
  assert labels == {"archaism"}
  entry_text = "月 /tsuki/\n(noun (common))\n   Note: archaismmoon, month\n"
  skipped = collections.Counter()
  assert freedict.parse_entry(entry_text, skipped, labels).translations == ("moon", "month")
  assert freedict.parse_entry(entry_text, skipped).translations == ()
  assert skipped == {"reference_line": 1}


def test_bad_index_line_names_file_and_line(tmp_path):
  index = tmp_path / "freedict-eng-deu.index"
  index.write_text("house\tA\tB\nbroken\tA\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"freedict-eng-deu.index:2: malformed"):
    freedict.read_index(index)


def test_merge_and_filter_counts(roots):
  result = dictionaries.freedict_dictionary("de", roots, zipf=fake_zipf, test_fraction=0.0, min_test_pairs=0)
  # 11 candidates from eng-deu, 10 from deu-eng; 14 unique clean pairs; 10 frequent.
  assert result.counts == {"entries_en_xx": 5, "entries_xx_en": 6, "candidates": 21, "pairs": 14,
                           "frequent_pairs": 10, "train_pairs": 10, "test_pairs": 0, "test_headwords": 0}
  pair_drops = {k: v for k, v in result.dropped.items() if not k.startswith("freedict_")}
  # "for example" multiword, "e.g." not a word, computer/Computer and bank/Bank identical,
  # house-Haus, dog-Hund and bank-Ufer seen in both directions.
  assert pair_drops == {"multiword": 1, "not_a_word": 1, "identical": 2, "duplicate": 3,
                        "rare_en": 2, "rare_xx": 2}
  assert result.counts["candidates"] == result.counts["frequent_pairs"] + sum(pair_drops.values())
  assert result.train == sorted([("house", "Haus"), ("house", "Gebäude"), ("bank", "Ufer"),
                                 ("island", "Insel"), ("stir", "rühren"), ("stir", "bewegen"),
                                 ("dog", "Hund"), ("home", "Haus"), ("shore", "Ufer"), ("evening", "Abend")])


def test_missing_direction_is_skipped(roots):
  del roots["dict-freedict-deu-eng"]
  result = dictionaries.freedict_dictionary("de", roots, zipf=fake_zipf, min_test_pairs=0)
  assert result.counts["entries_xx_en"] == 0 and result.counts["candidates"] == 11


def test_words_scripts_and_case():
  problems = {(w, lang): dictionaries.word_problem(w, lang) for w, lang in [
      ("e-mail", "en"), ("aujourd'hui", "fr"), ("sb.", "en"), ("G8", "en"), ("two words", "de"),
      ("region", "ja"), ("ファイル", "ja"), ("犬", "ja"), ("дом", "ru"), ("dom", "ru"), ("文件", "zh")]}
  assert problems == {("e-mail", "en"): "", ("aujourd'hui", "fr"): "", ("sb.", "en"): "not_a_word",
                      ("G8", "en"): "not_a_word", ("two words", "de"): "multiword",
                      ("region", "ja"): "wrong_script", ("ファイル", "ja"): "", ("犬", "ja"): "",
                      ("дом", "ru"): "", ("dom", "ru"): "wrong_script", ("文件", "zh"): ""}
  normalised = [dictionaries.normalise_word(w, lang) for w, lang in
                [("Arctic", "en"), ("USB", "en"), ("Haus", "de"), ("Ordinateur", "fr"), ("don\u2019t", "en")]]
  assert normalised == ["arctic", "USB", "Haus", "ordinateur", "don't"]


def test_kana_readings_are_not_paired():
  dropped = collections.Counter()
  entries = [freedict.FreeDictEntry(("犬", "いぬ"), ("dog",)), freedict.FreeDictEntry(("いぬ",), ("doggy",))]
  assert freedict.candidate_pairs([], entries, dropped) == [("dog", "犬"), ("doggy", "いぬ")]
  assert dropped == {"kana_reading": 1}


def test_gettext_terms():
  dropped = collections.Counter()
  messages = [("_File", "文件(_F)"), ("Open…", "打开…"), ("COMMAND", "命令"), ("Save as", "另存为"),
              ("Quit", "")]
  assert dictionaries.gettext_term_pairs(messages, dropped) == [("File", "文件"), ("Open", "打开")]
  assert dropped == {"placeholder": 1, "phrase": 1, "empty": 1}
  assert dictionaries.gettext_term_pairs(messages) == [("File", "文件"), ("Open", "打开")]  # counter optional


def test_split_by_headword_is_disjoint_and_deterministic():
  pairs = [(f"word{i}", f"wort{i}_{j}") for i in range(300) for j in range(1 + i % 3)]
  train, test = dictionaries.split_by_headword(pairs, test_fraction=0.1, min_test_pairs=0)
  assert sorted(train + test) == sorted(pairs)
  assert not {en for en, _ in train} & {en for en, _ in test}
  # Exactly the 30 headwords of lowest md5, computed independently.
  expected = sorted(range(300), key=lambda i: int(hashlib.md5(f"word{i}".encode()).hexdigest(), 16))[:30]
  assert {en for en, _ in test} == {f"word{i}" for i in expected}
  assert dictionaries.split_by_headword(pairs[::-1], test_fraction=0.1, min_test_pairs=0)[1] == test[::-1]
  # min_test_pairs grows the test set past 10%, but never beyond max_test_fraction of the pairs.
  _, grown = dictionaries.split_by_headword(pairs, test_fraction=0.1, min_test_pairs=500)
  assert len(grown) <= 0.5 * len(pairs) < len(grown) + 3
  _, enough = dictionaries.split_by_headword(pairs, test_fraction=0.1, min_test_pairs=100)
  assert 100 <= len(enough) < 103


class FakeTokenizer:
  """The Tokenizer surface save_dictionary uses, with encodings chosen by hand."""
  PIECES = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "\u2581", "\u2581house", "\u2581Haus", "Hund",
            "\u2581dog", "\u2581bank", "Ufer", "\u2581ho", "me"]
  ENCODINGS = {"house": ["\u2581house"], "Haus": ["\u2581Haus"], "dog": ["\u2581dog"],
               "Hund": ["\u2581", "Hund"], "home": ["\u2581ho", "me"], "bank": ["\u2581bank"],
               "Ufer": ["\u2581", "Ufer"], "shore": ["<unk>"]}
  vocab_size = len(PIECES)
  special_ids = (0, 1, 2, 3, 4)

  def encode(self, texts):
    return [[self.PIECES.index(p) for p in self.ENCODINGS[t]] for t in texts]

  def id_to_piece(self, token_id):
    return self.PIECES[token_id]

  def serialized(self):
    return b"fake model"


PAIRS = [("house", "Haus"), ("dog", "Hund"), ("home", "Haus"), ("bank", "Ufer"), ("shore", "Ufer")]


def test_artifact_round_trip(tmp_path):
  path = tmp_path / "dicts" / "en-de.tsv"
  sidecar = dict_format.save_dictionary(path, PAIRS, FakeTokenizer(), metadata={"lang": "de"})
  assert sorted(p.name for p in path.parent.iterdir()) == ["en-de.ids.npy", "en-de.json", "en-de.tsv"]
  assert path.read_text(encoding="utf-8") == "house\tHaus\ndog\tHund\nhome\tHaus\nbank\tUfer\nshore\tUfer\n"
  loaded = dict_format.load_dictionary(path, vocab_size=FakeTokenizer.vocab_size)
  assert loaded.pairs == PAIRS
  # home = "▁ho" + "me" and shore = <unk> are not one piece; "▁" + "Hund" counts as the piece "Hund".
  np.testing.assert_array_equal(loaded.token_ids, [[6, 7], [9, 8], [10, 11]])
  assert loaded.token_ids.dtype == np.int32
  assert sidecar["token_pairs"] == 3 and sidecar["dropped"] == {"not_single_piece": 2}
  assert loaded.metadata == json.loads(json.dumps(sidecar))
  assert loaded.metadata["tokenizer_sha256"] == hashlib.sha256(b"fake model").hexdigest()
  # Saving again without a tokenizer leaves no stale token ids behind.
  dict_format.save_dictionary(path, PAIRS[:2])
  again = dict_format.load_dictionary(path)
  assert again.pairs == PAIRS[:2] and again.token_ids is None and again.metadata["token_pairs"] is None


def test_token_id_outside_vocabulary_is_refused(tmp_path):
  path = tmp_path / "en-de.tsv"
  dict_format.save_dictionary(path, PAIRS, FakeTokenizer())
  with pytest.raises(ValueError, match=r"en-de.ids.npy: row 1 holds token id 9, outside \[0, 8\).*rebuild"):
    dict_format.load_dictionary(path, vocab_size=8)
  with pytest.raises(ValueError, match=r"made for vocab_size 14, not 20.*rebuild"):
    dict_format.load_dictionary(path, vocab_size=20)


def test_malformed_tsv_names_file_and_line(tmp_path):
  path = tmp_path / "en-fr.tsv"
  path.write_text("house\tmaison\nbroken line\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"en-fr.tsv:2: expected 'english<TAB>foreign'"):
    dict_format.load_dictionary(path)
  with pytest.raises(FileNotFoundError, match="xlm-jax data build"):
    dict_format.load_dictionary(tmp_path / "missing.tsv")


def test_word_zipf_uses_wordfreq():
  pytest.importorskip("wordfreq")
  assert dictionaries.word_zipf("house", "en") >= 5
  assert dictionaries.word_zipf("xqzvw", "en") == 0
  assert dictionaries.word_zipf("犬", "ja") >= 4  # exact-token lookup: no MeCab needed
  with pytest.raises(ValueError, match="no word list"):
    dictionaries.word_zipf("x", "tlh")


@pytest.mark.slow
def test_real_freedict_german(tmp_path):
  """Reads the real eng-deu and deu-eng packages (~40 MB of .debs, about a minute on 2 cores)."""
  if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
    pytest.skip("needs apt-get and dpkg-deb")
  from data_prep import debian
  packages = debian.fetch_packages(dictionaries.freedict_packages("de"))
  assert all(p.status == "ok" for p in packages), [p.reason for p in packages]
  roots = {p.name: debian.extract_package(p.path, tmp_path / p.name) for p in packages}
  result = dictionaries.freedict_dictionary("de", roots)
  assert result.counts["entries_en_xx"] > 400_000 and result.counts["entries_xx_en"] > 400_000
  assert 30_000 < result.counts["frequent_pairs"] < 100_000
  pairs = set(result.train) | set(result.test)
  assert {("house", "Haus"), ("dog", "Hund"), ("water", "Wasser")} <= pairs
  assert not {en for en, _ in result.train} & {en for en, _ in result.test}
  assert result.counts["test_pairs"] >= 500
