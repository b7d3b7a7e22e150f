"""data_prep and the corpus readers, on real Debian catalogues (`small_corpus`) and on .mo files we write."""
import collections
import hashlib
import json
import pathlib
import pickle
import re

import polib
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer, hashing as tfds_hashing
from tensorflow_datasets.core.utils import shard_utils
from tensorflow_datasets.proto import tf_example_pb2

from data_prep import build, cli, debian, gettext_corpus, hashed_order, splits, tfds_writer
from data_prep.gettext_corpus import Message
from xlm_jax.data import corpus as corpus_lib, tokenizer_training
from xlm_jax.data.corpus import Corpus, EmptySource
from xlm_jax.data.tokenizer import Tokenizer


# --- gettext parsing and cleaning ------------------------------------------------------------------------

def _write_mo(root: pathlib.Path, locale: str, domain: str, entries) -> None:
  catalogue = polib.POFile()
  catalogue.metadata = {"Content-Type": "text/plain; charset=UTF-8",
                        "Plural-Forms": "nplurals=2; plural=(n != 1);"}
  for entry in entries:
    catalogue.append(polib.POEntry(**entry))
  folder = root / "usr" / "share" / "locale" / locale / "LC_MESSAGES"
  folder.mkdir(parents=True, exist_ok=True)
  catalogue.save_as_mofile(str(folder / f"{domain}.mo"))


GERMAN_ENTRIES = [
    dict(msgid="_Open file", msgstr="Datei _öffnen"),                       # GTK accelerator, both sides
    dict(msgctxt="menu", msgid="Save _As", msgstr="Speichern _unter"),
    dict(msgctxt="dialog", msgid="Save _As", msgstr="Speichern _unter"),    # same pair again: duplicate
    dict(msgid="&Quit the editor", msgstr="Editor &beenden"),               # vim/Qt accelerator
    dict(msgid="%d file was copied", msgid_plural="%d files were copied",   # plural: singular + form 0
         msgstr_plural={0: "%d Datei wurde kopiert", 1: "%d Dateien wurden kopiert"}),
    dict(msgid="  -n, --quiet    suppress automatic printing\n"
               "  -s, --separate   consider files as separate\n",
         msgstr="  -n, --quiet    automatische Ausgabe unterdrücken\n"
                "  -s, --separate   Dateien getrennt betrachten\n"),
    dict(msgid="line one of the help\nline two of the help\n",              # 2 lines -> 1 line: no alignment
         msgstr="Zeile eins und Zeile zwei der Hilfe\n"),
    dict(msgid="Cancel", msgstr="Abbrechen"),                               # one English word
    dict(msgid="%s: %s", msgstr="%s : %s"),                                 # placeholders only
    dict(msgid="GNU sed home page", msgstr="GNU sed home page"),            # untranslated copy
    dict(msgid="LC_ALL overrides the locale", msgstr="LC_ALL überschreibt die Locale"),
    dict(msgid="Press \x1b to leave now", msgstr="Drücke \x1b zum Verlassen"),
]


def test_mo_catalogues_are_cleaned_and_every_drop_is_counted(tmp_path):
  _write_mo(tmp_path, "de", "demo-gnulib", GERMAN_ENTRIES)
  _write_mo(tmp_path, "zh_CN", "demo", [dict(msgid="_Open file", msgstr="打开文件(_O)")])
  # Skipped locales: English variants and Traditional Chinese are not our languages.
  _write_mo(tmp_path, "en@quot", "demo", [dict(msgid="Open the file", msgstr="Open the “file”")])
  _write_mo(tmp_path, "zh_TW", "demo", [dict(msgid="Open the file", msgstr="開啟檔案")])

  messages, dropped = gettext_corpus.extract_messages([tmp_path], ["de", "zh"])

  de = {(m.en, m.xx) for m in messages if m.lang == "de"}
  assert de == {
      ("Open file", "Datei öffnen"),
      ("Save As", "Speichern unter"),
      ("Quit the editor", "Editor beenden"),
      ("%d file was copied", "%d Datei wurde kopiert"),
      ("-n, --quiet suppress automatic printing", "-n, --quiet automatische Ausgabe unterdrücken"),
      ("-s, --separate consider files as separate", "-s, --separate Dateien getrennt betrachten"),
      ("LC_ALL overrides the locale", "LC_ALL überschreibt die Locale"),
  }
  assert [(m.program, m.lang, m.en, m.xx) for m in messages if m.lang == "zh"] == [
      ("demo", "zh", "Open file", "打开文件")]
  assert {m.program for m in messages} == {"demo"}  # demo-gnulib belongs to the program demo
  assert dropped == collections.Counter({"line_count_mismatch": 1, "too_few_words": 1, "format_only": 1,
                                         "untranslated": 1, "duplicate": 1, "control_chars": 1})


def test_accelerators_placeholders_and_locales():
  assert gettext_corpus.strip_accelerators("Cance_l") == "Cancel"
  assert gettext_corpus.strip_accelerators("ファイル(&F)") == "ファイル"
  # Two underscores in one message: identifiers, not an accelerator.
  assert gettext_corpus.strip_accelerators("max_depth and min_depth") == "max_depth and min_depth"
  assert gettext_corpus.strip_accelerators("set GREP_COLORS to _Change") == "set GREP_COLORS to Change"
  assert gettext_corpus.strip_accelerators("Tom &amp; Jerry") == "Tom &amp; Jerry"
  assert gettext_corpus.is_format_only("%1$s (%-10.3lu) -> %(name)s {0} ${HOME}")
  assert not gettext_corpus.is_format_only("%s: файл не найден")
  locales = ("de", "zh_CN", "zh_TW", "en_GB", "en", "ja.sjis")
  assert [gettext_corpus.language_of_locale(l) for l in locales] == ["de", "zh", None, None, None, None]


# --- splits ----------------------------------------------------------------------------------------------

def test_split_removes_every_test_string_from_training():
  messages = [
      Message("tar", "de", "memory exhausted now", "Speicher erschöpft jetzt"),        # held out
      Message("coreutils", "de", "memory exhausted now", "Speicher erschöpft jetzt"),  # same pair: leak
      Message("coreutils", "de", "write error occurred", "Schreibfehler aufgetreten"),
      Message("coreutils", "de", "cannot stat file", "Speicher erschöpft jetzt"),      # translation leaks
      Message("coreutils", "fr", "memory exhausted now", "mémoire épuisée"),           # English leaks
      Message("coreutils", "fr", "write error occurred", "erreur d'écriture"),
      Message("tar", "fr", "archive is compressed", "l'archive est compressée"),
  ]
  result = splits.split_messages(messages, ["en", "de", "fr"], ["tar"])
  assert result.parallel["de"] == {"train": [("write error occurred", "Schreibfehler aufgetreten")],
                                   "test": [("memory exhausted now", "Speicher erschöpft jetzt")]}
  assert result.parallel["fr"]["train"] == [("write error occurred", "erreur d'écriture")]
  # "cannot stat file" stays English training text: only its translation occurs in a test set.
  assert result.mono["en"] == {"train": ["write error occurred", "cannot stat file"],
                               "test": ["memory exhausted now", "archive is compressed"]}
  assert result.mono["de"] == {"train": ["Schreibfehler aufgetreten"], "test": ["Speicher erschöpft jetzt"]}
  assert result.dropped == {"test_overlap": 3, "test_overlap_en": 1}
  assert list(result.mono) == ["en", "de", "fr"]


def test_heldout_programs_are_deterministic_and_never_everything():
  assert splits.choose_heldout_programs({"tar", "coreutils", "git", "sed"}) == ["sed", "tar"]
  custom = {"alpha", "beta", "gamma"}  # none of the fixed list: the lowest md5 bucket is held out
  assert splits.choose_heldout_programs(custom) == [min(custom, key=splits.program_bucket)]
  assert len(splits.choose_heldout_programs({"tar", "sed"})) == 1
  assert splits.program_bucket("tar") == int(hashlib.md5(b"tar").hexdigest(), 16) % 100


def _all_text(corpus: Corpus, split: str) -> set[str]:
  text = set()
  for lang in corpus.languages:
    text.update(corpus.mono_texts(lang, split))
    if lang != "en":
      for en, xx in corpus.parallel_pairs(lang, split):
        text.update((en, xx))
  return text


def test_no_heldout_string_occurs_in_any_training_text(small_corpus):
  test_text, train_text = _all_text(small_corpus, "test"), _all_text(small_corpus, "train")
  assert test_text and train_text
  assert not test_text & train_text
  assert small_corpus.manifest["heldout_programs"] == ["diffutils", "grep", "sed"]


# --- manifest, text files and TFDS agree ------------------------------------------------------------------

def test_manifest_records_packages_counts_and_tokenizer(small_corpus):
  m = small_corpus.manifest
  assert [p["name"] for p in m["packages"]] == ["sed", "grep", "diffutils", "make", "apt", "coreutils"]
  for p in m["packages"]:
    assert p["status"] == "ok" and p["version"] and re.fullmatch(r"[0-9a-f]{64}", p["sha256"])
    cached = debian.DEFAULT_CACHE_DIR.expanduser() / p["filename"]
    if cached.exists():  # the .deb we built from is the one the manifest names
      assert debian.file_sha256(cached) == p["sha256"]
  assert m["tokenizer"]["sha256"] == hashlib.sha256(small_corpus.tokenizer_path.read_bytes()).hexdigest()
  assert m["format_version"] == 1 and sum(m["dropped"].values()) > 0
  for lang in small_corpus.languages:
    for split in ("train", "test"):
      texts = small_corpus.mono_texts(lang, split)
      assert len(texts) == m["counts"][lang][f"mono_{split}"] == small_corpus.num_examples(lang, split) > 0
      assert len(set(texts)) == len(texts)  # deduplicated


def test_tfds_sources_hold_the_same_text_as_the_text_files(small_corpus):
  for lang in ("en", "ja"):
    source = small_corpus.mono_source(lang, "train")
    records = [source[i] for i in range(len(source))]
    assert {r["lang"] for r in records} == {lang.encode()}
    assert sorted(r["text"].decode() for r in records) == sorted(small_corpus.mono_texts(lang, "train"))
  source = small_corpus.parallel_source("zh", "test")
  pairs = sorted((source[i]["en"].decode(), source[i]["xx"].decode()) for i in range(len(source)))
  assert pairs == sorted(small_corpus.parallel_pairs("zh", "test"))
  pickle.loads(pickle.dumps(source))  # grain workers receive sources by pickling


def test_empty_split_reads_as_empty_source(tmp_path):
  tfds_writer.write_mono(tmp_path / "tfds", "de", {"train": ["ein Satz hier", "noch ein Satz"], "test": []})
  manifest = {"name": "tiny", "languages": ["de"], "created": "", "packages": [], "heldout_programs": [],
              "counts": {"de": {"mono_train": 2, "mono_test": 0, "parallel_train": 0, "parallel_test": 0}},
              "dropped": {}, "tokenizer": {}, "format_version": 1}
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  corpus = Corpus(tmp_path, ["de"])
  empty = corpus.mono_source("de", "test")
  assert isinstance(empty, EmptySource) and len(empty) == 0
  assert sorted(corpus.mono_source("de", "train")[i]["text"] for i in range(2)) == [b"ein Satz hier",
                                                                                    b"noch ein Satz"]


# --- streaming TFDS writer ------------------------------------------------------------------------------

def _read_split(dataset: pathlib.Path, split: str) -> list[dict]:
  source = tfds.builder_from_directory(str(dataset)).as_data_source(split)
  return [source[i] for i in range(len(source))]


def _dataset_files(dataset: pathlib.Path) -> dict[str, str]:
  """File names, with the metadata files' text (the shards' bytes differ: see below)."""
  return {p.name: p.read_text() if p.suffix == ".json" else "" for p in sorted(dataset.iterdir())}


def test_hashed_order_is_tfds_order_with_runs_merged_in_levels(tmp_path, monkeypatch):
  hasher = tfds_hashing.Hasher("train")
  assert all(hashed_order.tfds_key_hash("train", k) == hasher.hash_key(k).to_bytes(16, "big")
             for k in (0, 1, 99, 123456))
  # 500 records of 15 bytes, each costing 15 + 160 of the 352-byte buffer: a run of 3 records is spilled
  # whenever the buffer fills, 166 runs in all, merged 3 at a time in several levels.
  monkeypatch.setattr(hashed_order, "MAX_OPEN_RUNS", 3)
  order = hashed_order.HashedOrder(tmp_path / "runs", "train", buffer_bytes=352)
  for key in range(500):
    order.add(key, b"record %08d" % key)
  assert (order.num_examples, order.total_bytes) == (500, 500 * 15)
  assert len(list((tmp_path / "runs").iterdir())) == 166
  expected = [b"record %08d" % k for k in sorted(range(500), key=hasher.hash_key)]
  assert list(order) == expected
  assert list((tmp_path / "runs").iterdir()) == []  # every run file is deleted once read


@pytest.mark.parametrize("shards", [1, 8])
def test_streaming_writer_equals_tfds_writer_record_for_record(tmp_path, monkeypatch, shards):
  # Small shard sizes make TFDS's own rule pick several shards (8 here) for this small input.
  if shards > 1:
    monkeypatch.setattr(shard_utils.ShardConfig, "min_shard_size", 2000)
    monkeypatch.setattr(shard_utils.ShardConfig, "max_shard_size", 5000)
  mono = {"train": [f"Satz {i}: grüße, 你好 {'x' * (i % 7)}" for i in range(300)], "test": ["a", "", "b"]}
  pairs = {"train": [(f"pair {i}", f"Paar {i}\u00e4") for i in range(40)], "test": []}
  for kind, splits_in, lang in (("mono", mono, "de"), ("parallel", pairs, "fr")):
    reference = tfds_writer.write_with_tfds(kind, tmp_path / "tfds", lang, splits_in)
    write = tfds_writer.write_mono if kind == "mono" else tfds_writer.write_parallel
    # A 1 KB sort buffer: the records are sorted in runs on disk and merged.
    streamed = write(tmp_path / "streamed", lang, splits_in, buffer_bytes=1000)
    assert _dataset_files(streamed) == _dataset_files(reference)
    train_shards = [name for name in _dataset_files(streamed) if "-train.array_record-" in name]
    assert len(train_shards) == (shards if kind == "mono" else 1)  # 40 short pairs fit one shard
    for split, items in splits_in.items():
      if items:
        assert _read_split(streamed, split) == _read_split(reference, split)
        assert len(_read_split(streamed, split)) == len(items)
    assert json.loads((streamed / "dataset_info.json").read_text())["moduleName"] == "data_prep.tfds_writer"
  # Our serialization of one example parses to TFDS's (TFDS's byte order of the map entries varies
  # from process to process, so bytes are not comparable; the parsed messages are).
  features = tfds.features.FeaturesDict({"en": tfds.features.Text(), "xx": tfds.features.Text(),
                                         "lang": tfds.features.Text()})
  example = {"en": "a\tb", "xx": "ü" * 200, "lang": "de"}
  ours = tfds_writer.example_encoder(tfds_writer.XlmjParallel, "de")(("a\tb", "ü" * 200))
  theirs = example_serializer.ExampleSerializer(features.get_serialized_info()).serialize_example(
      features.encode_example(example))
  assert tf_example_pb2.Example.FromString(ours) == tf_example_pb2.Example.FromString(theirs)


def test_streaming_writer_reads_views_once_and_leaves_nothing_on_failure(tmp_path):
  class Lines:  # a view as data_prep.user_corpora gives them: len(), bool() and one pass per iter()
    def __init__(self, n, fail_at=None):
      self.n, self.fail_at, self.passes = n, fail_at, 0

    def __len__(self):
      return self.n

    def __iter__(self):
      self.passes += 1
      for i in range(self.n):
        if i == self.fail_at:
          raise OSError("disk went away")
        yield f"line {i}"

  view = Lines(50)
  dataset = tfds_writer.write_mono(tmp_path, "de", {"train": view, "test": Lines(0)})
  assert view.passes == 1 and len(_read_split(dataset, "train")) == 50
  before = _dataset_files(dataset)
  with pytest.raises(OSError, match="disk went away"):
    tfds_writer.write_mono(tmp_path, "de", {"train": Lines(50, fail_at=30)})
  assert _dataset_files(dataset) == before  # the finished dataset is untouched
  assert sorted(p.name for p in dataset.parent.iterdir()) == ["1.0.0"]  # no .incomplete-* left
  with pytest.raises(ValueError, match="every split is empty"):
    tfds_writer.write_mono(tmp_path, "it", {"train": Lines(0), "test": []})
  assert not (tmp_path / "xlmj_mono" / "it" / "1.0.0").exists()


# --- tokenizer -------------------------------------------------------------------------------------------

def test_tokenizer_special_ids_and_round_trip(small_corpus):
  tok = Tokenizer(small_corpus.tokenizer_path)
  assert tok.vocab_size == 2000
  assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.special_ids == (0, 1, 2, 3, 4)
  assert [tok.id_to_piece(i) for i in range(5)] == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  plain = [s for s in small_corpus.mono_texts("en", "train") if re.fullmatch(r"[A-Za-z0-9 ,.]+", s)][:200]
  ids = tok.encode(plain)
  assert all(0 not in row and 2 not in row and 3 not in row for row in ids)  # no <s>/</s> added, no <unk>
  assert [tok.decode(row) for row in ids] == plain
  assert tok.encode(["a <mask> b"])[0].count(4) == 1
  again = Tokenizer.from_bytes(tok.serialized())
  assert pickle.loads(pickle.dumps(tok)).encode(plain) == again.encode(plain) == ids


def test_alpha_sampling_matches_hand_computed_shares():
  texts = {"a": [f"a{i}" for i in range(900)], "b": [f"b{i}" for i in range(100)]}
  # p = (0.9, 0.1); alpha 0.5: q ∝ (0.949, 0.316) = (0.75, 0.25).
  sample = tokenizer_training.alpha_sample(texts, alpha=0.5, max_sentences=1000, seed=0)
  counts = collections.Counter(s[0] for s in sample)
  assert counts == {"a": 750, "b": 250}
  b_counts = collections.Counter(s for s in sample if s[0] == "b")
  assert set(b_counts.values()) == {2, 3} and sum(v == 3 for v in b_counts.values()) == 50  # 2 copies + 50
  assert sample == sorted(sample) == tokenizer_training.alpha_sample(texts, 0.5, 1000, seed=0)
  assert sample != tokenizer_training.alpha_sample(texts, 0.5, 1000, seed=1)


def test_tokenizer_training_is_reproducible(small_corpus):
  sentences = sorted(small_corpus.mono_texts("de", "train") + small_corpus.mono_texts("ja", "train"))
  first = tokenizer_training.train_sentencepiece(sentences, vocab_size=1000, seed=3)
  second = tokenizer_training.train_sentencepiece(sentences, vocab_size=1000, seed=3)
  assert first == second
  with pytest.raises(ValueError, match="vocab_size=100000"):
    tokenizer_training.train_sentencepiece(sentences[:50], vocab_size=100000)


# --- bad input -------------------------------------------------------------------------------------------

def test_missing_corpus_names_the_folder_and_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"does not exist.*xlm-jax data build --corpus-dir"):
    Corpus(tmp_path / "nowhere")
  (tmp_path / "half").mkdir()
  with pytest.raises(FileNotFoundError, match=r"manifest.json not found"):
    Corpus(tmp_path / "half")
  command = r"nowhere.*xlm-jax data build --corpus-dir .*--languages en de"
  with pytest.raises(FileNotFoundError, match=command):
    build.ensure_corpus(tmp_path / "nowhere", ["en", "de"], build_if_missing=False)


def test_corrupt_manifest_is_named(small_corpus, tmp_path):
  (tmp_path / "manifest.json").write_text('{"name": "x", "languages": [')
  with pytest.raises(ValueError, match=r"manifest.json is not valid JSON.*--force"):
    Corpus(tmp_path)
  (tmp_path / "manifest.json").write_text('{"name": "x", "languages": ["en"]}')
  with pytest.raises(ValueError, match=r"lacks the fields \['created', 'packages'"):
    Corpus(tmp_path)


def test_unknown_and_empty_languages_are_named(small_corpus, tmp_path):
  with pytest.raises(ValueError, match=r"'sw' is not in corpus .*available: en, de, fr"):
    Corpus(small_corpus.dir, ["en", "sw"])
  manifest = dict(small_corpus.manifest)
  manifest["counts"] = dict(manifest["counts"], de=dict(manifest["counts"]["de"], mono_train=0))
  (tmp_path / "manifest.json").write_text(json.dumps(manifest))
  with pytest.raises(ValueError, match=r"'de' has an empty train split"):
    Corpus(tmp_path, ["en", "de"])
  with pytest.raises(ValueError, match="no parallel en-en"):
    small_corpus.parallel_pairs("en", "train")


def test_build_with_too_little_text_fails_and_leaves_nothing(tmp_path):
  target = tmp_path / "corpus"
  # sed is a held-out program, so its text is all test text: the training split is empty.
  with pytest.warns(UserWarning, match="no-such-package-xlmj"):
    with pytest.raises(ValueError, match=r"empty language: .*de \(0 sentences\).*no-such-package-xlmj"):
      build.build_corpus(target, ["en", "de"], packages=["sed", "no-such-package-xlmj"],
                         min_sentences_per_language=10, progress=False)
  assert list(tmp_path.iterdir()) == []  # no corpus, no .partial-* folder


def test_existing_corpus_is_reused_not_rebuilt(small_corpus):
  created = small_corpus.manifest["created"]
  again = build.build_corpus(small_corpus.dir, ["en", "de"], packages=["no-such-package-xlmj"],
                             progress=False)
  assert again.manifest["created"] == created
  with pytest.raises(ValueError, match=r"lacks \['pl'\].*--force"):
    build.build_corpus(small_corpus.dir, ["en", "pl"], progress=False)


def test_training_builds_a_recipes_whole_language_set_on_first_use(tmp_path, monkeypatch):
  # A recipe's folder is shared by every run naming it: a first run on en/fr must build all of
  # the recipe's languages (and any other one it asks for), not leave an en/fr corpus behind.
  from xlm_jax import cli as train_cli
  from xlm_jax import config as config_lib
  built = []

  class Stop(Exception):
    pass

  def fake_build(corpus_dir, languages, **kwargs):
    built.append(tuple(languages))
    raise Stop
  monkeypatch.setattr(build, "build_corpus", fake_build)
  for languages, want in ((("en", "fr"), build.DEFAULT_LANGUAGES),
                          (("en", "en_trans", "ja"), build.DEFAULT_LANGUAGES),   # derived: its base
                          (("en", "pl"), build.DEFAULT_LANGUAGES + ("pl",))):
    config = config_lib.load_config("experiments/quickstart.py", [
        f"data.corpus_dir={tmp_path / 'nowhere'}", f"data.languages={list(languages)!r}"])
    with pytest.raises(Stop):
      train_cli._ensure_corpus(config)
    assert built.pop() == want


def test_ensure_corpus_checks_only_the_runs_languages(small_corpus):
  # An existing corpus with fewer languages than the recipe still serves a run on its languages.
  assert build.ensure_corpus(small_corpus.dir, ["en", "de"],
                             build_languages=build.DEFAULT_LANGUAGES).languages == small_corpus.languages
  with pytest.raises(ValueError, match=r"build_languages \['en'\] lacks \['de'\]"):
    build.ensure_corpus(small_corpus.dir, ["en", "de"], build_languages=["en"])


def test_content_digest_ignores_the_build_time_only():
  manifest = {"name": "debian8", "created": "2026-12-07T10:00:00+00:00", "build_seconds": {"total": 90},
              "counts": {"en": {"mono_train": 10}}, "tokenizer": {"sha256": "ab"}}
  rebuilt = {**manifest, "created": "2026-12-08T00:37:24+00:00", "build_seconds": {"total": 49}}
  assert corpus_lib.content_digest(rebuilt) == corpus_lib.content_digest(manifest)
  for changed in ({"counts": {"en": {"mono_train": 11}}}, {"tokenizer": {"sha256": "ac"}}):
    assert corpus_lib.content_digest({**manifest, **changed}) != corpus_lib.content_digest(manifest)


def test_stats_command(small_corpus, tmp_path, capsys):
  assert cli.main(["stats", "--corpus-dir", str(small_corpus.dir)]) == 0
  out = capsys.readouterr().out
  assert re.search(r"^ja +\d+ +\d+ +\d+ +\d+ +0\.\d{3}", out, re.M) and "held-out programs" in out
  assert cli.main(["stats", "--corpus-dir", str(tmp_path / "none")]) == 1
  assert "xlm-jax data build" in capsys.readouterr().err
