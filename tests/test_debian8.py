"""The debian8 recipe: unit splits, evaluation sets, decontamination, stats/inspect, users' corpora CLI,
and users' text mixed with a Debian recipe in one build.

The small build (en fr it from ~20 MB of .debs: six gettext packages, LibreOffice help, fortunes, man pages,
FreeDict) uses every source of the recipe and takes ~30 s; the full 8-language build is marked slow.
"""
import collections
import hashlib
import pathlib
import random
import re

import pytest

from conftest import SMALL_CORPUS_PACKAGES
from data_prep import build, cli, debian8, eval_writer, unit_splits
from data_prep.gettext_corpus import Message
from data_prep.sources.base import TextUnit
from data_prep.sources.libreoffice_help import MODULES, SOURCE as HELP
from data_prep.user_corpora import is_test_unit
from xlm_jax.data.corpus import Corpus

SMALL_LANGUAGES = ("en", "fr", "it")


@pytest.fixture(scope="module")
def small_debian8(tmp_path_factory):
  path = tmp_path_factory.mktemp("debian8") / "small"
  return build.build_corpus(path, SMALL_LANGUAGES, packages=SMALL_CORPUS_PACKAGES, vocab_size=2000,
                            min_sentences_per_language=100, progress=False, recipe="debian8",
                            max_tokenizer_sentences=20_000)


def _help_unit(test: bool, module: str = "scalc") -> str:
  """A help file name that the md5 bucket puts in the test (or training) split."""
  for i in range(1000):
    unit = f"text/{module}/01/page{i}.html"
    if unit_splits.is_test_unit(HELP, unit) == test:
      return unit
  raise AssertionError("no such unit in 1000 tries")


def test_split_all_holds_out_units_and_removes_every_test_string():
  held, kept = _help_unit(True), _help_unit(False)
  units = []
  for lang, words in (("en", ["Sum of cells", "Opens a dialog"]), ("de", ["Summe der Zellen", "Öffnet"])):
    units.append(TextUnit(HELP, held, lang, words[0], "p1", "scalc"))
    units.append(TextUnit(HELP, kept, lang, words[1], "p2", "scalc"))
    # A training file repeating the held-out paragraph: the copy must leave training text.
    units.append(TextUnit(HELP, kept, lang, words[0], "p3", "scalc"))
  messages = [Message("sed", "de", "no input files", "keine Eingabedateien"),
              Message("make", "de", "no input files", "keine Eingabedateien"),
              Message("make", "de", "write error here", "Schreibfehler hier")]
  # ("home", "Summe"): a foreign word may answer a train and a test headword (BLI convention);
  # ("files", <a retrieval sentence>) equals evaluation text and must go.
  train_pairs = [("house", "Haus"), ("cell", "Zellen"), ("home", "Summe"), ("files", "keine Eingabedateien")]
  dicts = {"de": type("D", (), {"train": train_pairs, "test": [("sum", "Summe")], "counts": {}})()}
  collected = debian8.Collected(messages, units, [], [], dicts, {}, collections.Counter())
  splits, evals, dict_train = unit_splits.split_all(collected, ["en", "de"], ["sed"], min_retrieval_items=2)

  assert [(i["en"], i["de"]) for i in evals.retrieval] == [("no input files", "keine Eingabedateien"),
                                                          ("Sum of cells", "Summe der Zellen")]
  assert splits.mono["en"] == {"train": ["write error here", "Opens a dialog"],
                               "test": ["no input files", "Sum of cells"]}
  assert splits.parallel["de"]["train"] == [("write error here", "Schreibfehler hier"),
                                            ("Opens a dialog", "Öffnet")]
  assert evals.classification["train"] == [{"id": f"{kept}#p2", "label": "scalc", "text": "Opens a dialog"}]
  assert {(r["lang"], r["text"]) for r in evals.classification["test"]} == {("en", "Sum of cells"),
                                                                           ("de", "Summe der Zellen")}
  assert dict_train == {"de": [("house", "Haus"), ("cell", "Zellen"), ("home", "Summe")]}
  assert evals.bli == {"de": [("sum", "Summe")]}
  # Per language: 1 gettext repeat + 1 help repeat (en, de) from mono; 2 pairs; 1 classification row.
  assert splits.dropped == {"test_overlap_mono": 4, "test_overlap_parallel": 2,
                            "test_overlap_classification": 1, "test_overlap_dictionary": 1}
  with pytest.raises(ValueError, match=r"only 2 multi-way-parallel retrieval items .* \(at least 500"):
    unit_splits.split_all(collected, ["en", "de"], ["sed"])


def _lines(path):
  return pathlib.Path(path).read_text(encoding="utf-8").splitlines()


def eval_strings(corpus: Corpus) -> set[str]:
  """Every string of every evaluation set and test split, read back from the files."""
  out = set()
  for item in eval_writer.read_jsonl(corpus.dir / "eval" / "retrieval.jsonl"):
    out.update(item[lang] for lang in corpus.languages)
  for path in (corpus.dir / "eval" / "bli").glob("*.tsv"):
    for line in _lines(path):
      out.update(line.split("\t"))
  out.update(row["text"] for row in eval_writer.read_jsonl(corpus.dir / "eval/classification/test.jsonl"))
  for lang in corpus.languages:
    out.update(corpus.mono_texts(lang, "test"))
    if lang != "en":
      for en, xx in corpus.parallel_pairs(lang, "test"):
        out.update((en, xx))
  return out


def _all_records(source) -> list[dict]:
  # One batched read: item-by-item access costs a file seek per record (minutes for a full corpus).
  return source.__getitems__(list(range(len(source)))) if len(source) else []


def training_strings(corpus: Corpus) -> list[str]:
  """Every training string: text files, TFDS shards, classification train, dictionary pairs."""
  out = []
  for lang in corpus.languages:
    out += corpus.mono_texts(lang, "train")
    out += [r["text"].decode("utf-8") for r in _all_records(corpus.mono_source(lang, "train"))]
    if lang != "en":
      for en, xx in corpus.parallel_pairs(lang, "train"):
        out += [en, xx]
      for r in _all_records(corpus.parallel_source(lang, "train")):
        out += [r["en"].decode("utf-8"), r["xx"].decode("utf-8")]
  out += [row["text"] for row in eval_writer.read_jsonl(corpus.dir / "eval/classification/train.jsonl")]
  return out


def _pairs(folder: pathlib.Path) -> dict[str, list[list[str]]]:
  return {p.stem: [line.split("\t") for line in _lines(p)] for p in folder.glob("*.tsv")}


def check_no_eval_string_in_training(corpus: Corpus) -> None:
  tests, train = eval_strings(corpus), training_strings(corpus)
  assert len(tests) > 1000 and len(train) > 10 * len(corpus.languages)
  leaked = [text for text in train if text in tests]
  assert not leaked, f"{len(leaked)} evaluation strings in training text, e.g. {leaked[:3]}"
  # Dictionaries (BLI convention): no English headword of a test pair has a training pair, and no
  # training pair equals sentence-level evaluation text. A foreign word may answer both sides.
  bli = _pairs(corpus.dir / "eval" / "bli")
  sentences = tests - {word for pairs in bli.values() for pair in pairs for word in pair}
  for name, train_pairs in _pairs(corpus.dir / "dictionaries").items():
    test_heads = {en for en, _ in bli.get(name, [])}
    assert train_pairs and not [p for p in train_pairs if p[0] in test_heads], name
    assert not [p for p in train_pairs if p[0] in sentences or p[1] in sentences], name


def check_eval_sets(corpus: Corpus) -> None:
  m, langs = corpus.manifest, corpus.languages
  items = eval_writer.read_jsonl(corpus.dir / "eval" / "retrieval.jsonl")
  assert m["eval"]["retrieval_items"] == len(items) >= unit_splits.MIN_RETRIEVAL_ITEMS
  for lang in langs:  # every item in every language, no text twice in a language's pool
    assert all(item[lang] for item in items) and len({item[lang] for item in items}) == len(items)
  assert {item["source"] for item in items} == {"gettext", HELP}
  for lang in langs[1:]:
    assert m["eval"]["bli_pairs"][lang] == len(_lines(corpus.dir / "eval" / "bli" / f"en-{lang}.tsv")) > 0
    words = _lines(corpus.dir / "dictionaries" / f"en-{lang}.tsv")
    assert m["dictionaries"][lang]["word_pairs"] == len(words) > 0
  train = eval_writer.read_jsonl(corpus.dir / "eval/classification/train.jsonl")
  test = eval_writer.read_jsonl(corpus.dir / "eval/classification/test.jsonl")
  assert m["eval"]["classification_train"] == len(train)
  test_langs = collections.Counter(r["lang"] for r in test)
  assert m["eval"]["classification_test"] == dict(sorted(test_langs.items()))
  assert set(m["eval"]["classification_test"]) == set(langs)
  assert {r["label"] for r in train} == {r["label"] for r in test} == set(MODULES)
  # Split by file: held-out files only in test, English only in train.
  assert all(unit_splits.is_test_unit(HELP, r["id"].split("#")[0]) for r in test)
  assert not any(unit_splits.is_test_unit(HELP, r["id"].split("#")[0]) for r in train)


def test_no_eval_string_occurs_in_any_training_shard(small_debian8):
  check_no_eval_string_in_training(small_debian8)


def test_eval_sets_have_the_promised_sizes(small_debian8):
  check_eval_sets(small_debian8)


def test_manifest_records_every_source_package(small_debian8):
  m = small_debian8.manifest
  assert m["recipe"] == "debian8" and m["languages"] == list(SMALL_LANGUAGES)
  names = [p["name"] for p in m["packages"]]
  for source, expected in debian8.packages_by_source(SMALL_LANGUAGES, SMALL_CORPUS_PACKAGES).items():
    assert m["sources"][source]["packages"] + m["sources"][source]["missing"] == expected
    assert set(expected) <= set(names)
  for p in m["packages"]:
    assert p["status"] == "ok" and p["version"] and re.fullmatch(r"[0-9a-f]{64}", p["sha256"])
  assert m["sources"]["fortunes"]["texts"]["it"] > 0 and m["sources"]["manpages"]["texts"]["fr"] > 0
  assert all(m["tokens"][lang] > m["counts"][lang]["mono_train"] for lang in SMALL_LANGUAGES)


def test_stats_and_inspect_commands(small_debian8, capsys):
  assert cli.main(["stats", "--corpus-dir", str(small_debian8.dir)]) == 0
  out = capsys.readouterr().out
  m = small_debian8.manifest
  number, share = r" +(\d+)", r" +0\.\d{3}"
  row = re.search(r"^fr" + 4 * number + 3 * share + 3 * number + "$", out, re.M)
  assert row and [int(g) for g in row.groups()] == [
      m["counts"]["fr"]["mono_train"], m["counts"]["fr"]["mono_test"], m["counts"]["fr"]["parallel_train"],
      m["counts"]["fr"]["parallel_test"], m["tokens"]["fr"], m["dictionaries"]["fr"]["word_pairs"],
      m["eval"]["bli_pairs"]["fr"]]
  assert "retrieval" in out and "recipe debian8" in out
  assert cli.main(["inspect", "--corpus-dir", str(small_debian8.dir), "--seq-len", "32"]) == 0
  out = capsys.readouterr().out
  assert "packing='stream'" in out and "packing='segments'" in out and "en-fr:" in out
  segment_rows = out.split("packing='segments'")[1].split("parallel pairs")[0]
  # The layout of the rows is tests/test_inspect.py's concern; here: the command runs on a debian8 corpus.
  assert "<s>" in segment_rows and "</s>" in segment_rows


def test_users_corpora_build_through_the_cli(tmp_path, capsys):
  rng = random.Random(0)
  words = {"en": "the cat dog house runs fast slow red".split(),
           "de": "der Hund Haus läuft schnell rot".split()}
  (tmp_path / "mono").mkdir()
  for lang, vocab in words.items():
    docs = ["\n".join(" ".join(rng.choice(vocab) for _ in range(6)) + f" {d} {i}" for i in range(4))
            for d in range(200)]
    (tmp_path / "mono" / f"{lang}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
  out = tmp_path / "corpus"
  assert cli.main(["build", "--corpus-dir", str(out), "--mono-dir", str(tmp_path / "mono"),
                   "--vocab-size", "50", "--test-fraction", "0.1", "--quiet"]) == 0
  corpus = Corpus(out)
  assert corpus.manifest["recipe"] == "user" and sorted(corpus.languages) == ["de", "en"]
  for lang in corpus.languages:
    train, test = corpus.mono_texts(lang, "train"), corpus.mono_texts(lang, "test")
    assert len(train) + len(test) == 800 and test and not set(train) & set(test)
    assert len(corpus.mono_source(lang, "train")) == len(train)
  assert re.search(r"^en +\d+ +\d+ +0 +0 ", capsys.readouterr().out, re.M)
  assert cli.main(["build", "--mono-dir", str(tmp_path / "mono")]) == 1
  assert "need --corpus-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_full_debian8_build(tmp_path):
  corpus = build.build_corpus(tmp_path / "debian8", recipe="debian8", progress=False)
  assert corpus.languages == list(build.DEFAULT_LANGUAGES)
  check_eval_sets(corpus)
  check_no_eval_string_in_training(corpus)
  for lang in corpus.languages:
    assert corpus.manifest["counts"][lang]["mono_train"] >= 10_000


# --- users' text mixed with a recipe ----------------------------------------------------------------------

def _doc(prefix: str, extra: str | None, test: bool, fraction: float) -> list[str]:
  """A document (its own first line, plus `extra`) whose md5 unit hash sends it to the wanted split."""
  for k in range(1000):
    lines = [f"{prefix} {k}."] + ([extra] if extra else [])
    if is_test_unit("\n".join(lines).encode("utf-8"), fraction) == test:
      return lines
  raise AssertionError("no such document in 1000 tries")


def test_users_text_and_a_debian_recipe_in_one_build(small_corpus, tmp_path, capsys):
  """`data build --recipe gettext8 --mono-dir --parallel-tsv`: the recipe's corpus (the same packages and
  languages as small_corpus, so its text is small_corpus's) plus users' German, Swahili and en-fr pairs."""
  fraction = 0.5
  debian_train, debian_test = small_corpus.mono_texts("de", "train"), small_corpus.mono_texts("de", "test")
  rng = random.Random(1)
  words = "Haus Baum Weg Licht Wasser Stein Feld Wind".split()
  docs = [_doc("Nutzer A", debian_train[0], False, fraction),  # repeats a Debian training line: duplicate
          _doc("Nutzer B", debian_train[1], True, fraction),   # a user test line: Debian's copy leaves train
          _doc("Nutzer C", debian_test[0], False, fraction)]   # equals a Debian test string: test_overlap
  docs += [[f"{' '.join(rng.choices(words, k=5))} {d}-{i}." for i in range(3)] for d in range(40)]
  mono = tmp_path / "mono"
  mono.mkdir()
  (mono / "de.txt").write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
  (mono / "sw.txt").write_text("".join(f"Habari ya {w} nambari {i}.\n\n" for i in range(300) for w in ["leo"]),
                               encoding="utf-8")
  pairs = [(f"User sentence {i}.", f"Phrase utilisateur {i}.") for i in range(30)]
  (tmp_path / "en-fr.tsv").write_text("".join(f"{en}\t{fr}\n\n" for en, fr in pairs), encoding="utf-8")
  out = tmp_path / "mixed"
  assert cli.main(["build", "--recipe", "gettext8", "--packages", *SMALL_CORPUS_PACKAGES, "--corpus-dir",
                   str(out), "--mono-dir", str(mono), "--parallel-tsv", str(tmp_path / "en-fr.tsv"), "en",
                   "fr", "--vocab-size", "2000", "--min-sentences", "100", "--test-fraction", str(fraction),
                   "--quiet"]) == 0
  assert re.search(r"^sw +\d+ +\d+ +0 +0 ", capsys.readouterr().out, re.M)
  corpus = Corpus(out)
  assert corpus.languages == [*build.DEFAULT_LANGUAGES, "sw"]

  user_test = [line for doc in docs if is_test_unit("\n".join(doc).encode(), fraction) for line in doc]
  user_train = [line for doc in docs if not is_test_unit("\n".join(doc).encode(), fraction) for line in doc]
  expected_train = ([line for line in debian_train if line not in user_test] +
                    [line for line in user_train if line not in debian_train and line not in debian_test])
  assert corpus.mono_texts("de", "train") == expected_train
  assert corpus.mono_texts("de", "test") == debian_test + user_test
  assert debian_train[1] in corpus.mono_texts("de", "test") and docs[2][1] not in expected_train
  fr_train = corpus.parallel_pairs("fr", "train")
  assert set(small_corpus.parallel_pairs("fr", "train")) <= set(fr_train)
  assert {pair for i, pair in enumerate(pairs) if not is_test_unit(f"{pair[0]}\t{pair[1]}".encode(),
                                                                    fraction)} <= set(fr_train)
  for lang, kind in (("de", "mono"), ("sw", "mono"), ("fr", "parallel")):
    source = getattr(corpus, f"{kind}_source")(lang, "train")
    assert len(source) == corpus.num_examples(lang, "train", kind) > 0

  m = corpus.manifest
  assert m["recipe"] == "gettext8+user"
  assert [(p["name"], p["sha256"]) for p in m["packages"]] == [
      (p["name"], p["sha256"]) for p in small_corpus.manifest["packages"]]
  assert m["recipe_dropped"] == small_corpus.manifest["dropped"]
  # B's test line also removes the Debian en-de training pairs whose German side it is.
  debian_pairs = small_corpus.parallel_pairs("de", "train")
  assert corpus.parallel_pairs("de", "train") == [p for p in debian_pairs if p[1] != debian_train[1]]
  leaving_pairs = len(debian_pairs) - len(corpus.parallel_pairs("de", "train"))
  assert m["user_corpora"]["dropped"] == {"duplicate": 1, "test_overlap": 2 + leaving_pairs}
  assert m["dropped"] == dict(collections.Counter(m["recipe_dropped"]) + collections.Counter(
      m["user_corpora"]["dropped"]))
  files = [f for entry in m["user_corpora"]["inputs"] for f in entry["files"]]
  assert {pathlib.Path(f["path"]).name: f["sha256"] for f in files} == {
      name: hashlib.sha256((tmp_path / path).read_bytes()).hexdigest()
      for name, path in (("de.txt", "mono/de.txt"), ("sw.txt", "mono/sw.txt"), ("en-fr.tsv", "en-fr.tsv"))}
  assert set(m["tokens"]) == set(corpus.languages) and m["build_seconds"]["tfds"] >= 0
  # The finished corpus is reused only for the same kind of build.
  assert cli.main(["build", "--corpus-dir", str(out), "--mono-dir", str(mono), "--quiet"]) == 1
  assert "was built with recipe 'gettext8+user', not 'user'" in capsys.readouterr().err


def test_a_failing_mixed_build_names_the_thin_languages_and_leaves_nothing(tmp_path, capsys):
  (tmp_path / "mono").mkdir()
  (tmp_path / "mono" / "de.txt").write_text("Ein Satz.\n", encoding="utf-8")
  out = tmp_path / "mixed"
  assert cli.main(["build", "--recipe", "gettext8", "--packages", "sed", "--languages", "en", "de",
                   "--corpus-dir", str(out), "--mono-dir", str(tmp_path / "mono"), "--quiet"]) == 1
  err = capsys.readouterr().err
  assert "empty language" in err and re.search(r"de \(\d+ sentences\)", err)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["mono"]  # no corpus, no .partial-* folder
  # Debian packages without a recipe would be ignored: refused instead.
  assert cli.main(["build", "--packages", "sed", "--corpus-dir", str(out), "--mono-dir", str(tmp_path / "mono"),
                   "--quiet"]) == 1
  assert "add --recipe or drop them" in capsys.readouterr().err
