"""Labelled task data for `xlm-jax finetune` (xlm_jax/data/tasks.py).

The TFDS loaders read small datasets written in the exact TFDS format of the real ones: each
test builder takes its FeaturesDict and version from the installed TFDS's own builder (xnli,
multi_nli, paws_x_wiki, wikiann, xtreme_pos) and is prepared by TFDS's download_and_prepare
under a test-only name, so only the examples are made up.
"""
import copy
import json

import numpy as np
import pytest

from xlm_jax.data import tasks
from xlm_jax.data.tokenizer import Tokenizer
from xlm_jax.data.tokenizer_training import train_sentencepiece

XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur",
                  "vi", "zh")
XNLI_NAMES = {"xnli": "xlmj_test_xnli", "multi_nli": "xlmj_test_multi_nli"}


def _prepare(data_dir, aux_dir, real_name, class_name, splits, config=""):
  """Prepares `splits` ({split: [example]}) with the features of TFDS's `real_name` builder."""
  import tensorflow_datasets as tfds
  import tensorflow_datasets.text  # noqa: F401  registers xnli, multi_nli, wikiann without TF
  tfds.disable_progress_bar()
  real = tfds.builder(f"{real_name}/{config}" if config else real_name,
                      data_dir=str(aux_dir / "real"))
  features, version = real.info.features, str(real.info.version)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=copy.deepcopy(features))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split):
    for index, example in enumerate(splits[split]):
      yield index, example

  namespace = {"VERSION": tfds.core.Version(version), "_info": _info,
               "_split_generators": _split_generators, "_generate_examples": _generate_examples}
  if config:
    namespace["BUILDER_CONFIGS"] = [tfds.core.BuilderConfig(name=config, version=version)]
  # skip_registration: a test-only name must not enter TFDS's global registry.
  builder_cls = type(class_name, (tfds.core.GeneratorBasedBuilder,), namespace,
                     skip_registration=True)
  builder = builder_cls(data_dir=str(data_dir), file_format="array_record",
                        **({"config": config} if config else {}))
  builder.download_and_prepare(download_dir=str(aux_dir / "downloads"))
  return builder


def _xnli_record(i, missing=()):
  return {"premise": {l: f"{l} premise {i}" for l in XNLI_LANGUAGES},
          "hypothesis": {l: f"{l} hypothesis {i}" for l in XNLI_LANGUAGES if l not in missing},
          "label": ("entailment", "neutral", "contradiction")[i % 3]}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """One data_dir with tiny xnli, multi_nli, paws_x_wiki (en, de), wikiann (en, de) and
  xtreme_pos (en, de) datasets under test-only names."""
  root = tmp_path_factory.mktemp("tfds")
  data_dir, aux = root / "data", root / "aux"
  _prepare(data_dir, aux, "multi_nli", "XlmjTestMultiNli", {
      "train": [{"premise": f"train premise {i}", "hypothesis": f"train hypothesis {i}",
                 "label": ("entailment", "neutral", "contradiction")[i % 3]} for i in range(6)]})
  # Record 0 of the test split has no Swahili hypothesis (TranslationVariableLanguages).
  _prepare(data_dir, aux, "xnli", "XlmjTestXnli", {
      "validation": [_xnli_record(i) for i in range(3)],
      "test": [_xnli_record(i, missing=("sw",) if i == 0 else ()) for i in range(4)]})
  for lang in ("en", "de"):
    _prepare(data_dir, aux, "paws_x_wiki", "XlmjTestPawsXWiki", {
        split: [{"sentence1": f"{lang} {split} a{i}", "sentence2": f"{lang} {split} b{i}",
                 "label": i % 2} for i in range(4)] for split in ("train", "validation", "test")},
             config=lang)
    _prepare(data_dir, aux, "wikiann", "XlmjTestWikiann", {
        split: [{"tokens": [f"{lang}{i}", "lives", "in", "Paris"],
                 "tags": ["B-PER", "O", "O", "B-LOC"], "langs": [lang] * 4,
                 "spans": ["PER: x", "LOC: Paris"]} for i in range(3)]
        for split in ("train", "validation", "test")}, config=lang)
    _prepare(data_dir, aux, "xtreme_pos", "XlmjTestXtremePos", {
        split: [{"tokens": [f"{lang}{i}", "runs"], "upos": ["NOUN", "VERB"]} for i in range(2)]
        for split in ("train", "dev", "test")}, config=f"xtreme_pos_{lang}")
  return data_dir


def test_xnli_trains_on_multi_nli_and_tests_every_translation(tfds_dir):
  data = tasks.tfds_task("xnli", tfds_dir, builder_names=XNLI_NAMES)
  assert data.kind == "classify" and data.parallel_ids
  assert data.label_names == ("entailment", "neutral", "contradiction")
  assert sorted(data.train.inputs) == sorted((f"train premise {i}", f"train hypothesis {i}")
                                             for i in range(6))
  # Labels follow the ClassLabel names, whatever order TFDS stored the records in.
  assert all(data.label_names[label] == ("entailment", "neutral", "contradiction")[
      int(text.split()[-1]) % 3] for (text, _), label in zip(data.train.inputs, data.train.labels))
  assert sorted(data.dev.inputs) == [(f"en premise {i}", f"en hypothesis {i}") for i in range(3)]
  assert sorted(data.test) == sorted(XNLI_LANGUAGES)
  de = data.test["de"]
  assert all(p.split()[-1] == h.split()[-1] and p.startswith("de ") and h.startswith("de ")
             for p, h in de.inputs)
  assert len(de) == 4 and len(data.test["sw"]) == 3  # the record without Swahili is left out
  # One item, one id in every language: the transfer gap compares them.
  en_ids = dict(zip(data.test["en"].ids, data.test["en"].inputs))
  assert all(en_ids[i][0].split()[-1] == p.split()[-1] for i, (p, _) in zip(de.ids, de.inputs))


def test_tfds_language_choice_and_unknown_language(tfds_dir):
  data = tasks.tfds_task("xnli", tfds_dir, languages=["de", "fr"], builder_names=XNLI_NAMES)
  assert sorted(data.test) == ["de", "fr"]
  with pytest.raises(ValueError, match=r"no language \['xx'\]; it has \['ar'"):
    tasks.tfds_task("xnli", tfds_dir, languages=["xx"], builder_names=XNLI_NAMES)


def test_paws_x_and_its_xtreme_alias_read_per_language_configs(tfds_dir):
  names = {"paws_x_wiki": "xlmj_test_paws_x_wiki"}
  data = tasks.tfds_task("paws_x_wiki", tfds_dir, builder_names=names)
  assert data.label_names == ("different_meaning", "paraphrase")
  assert sorted(data.test) == ["de", "en"] and not data.parallel_ids
  assert sorted(data.train.inputs) == [(f"en train a{i}", f"en train b{i}") for i in range(4)]
  assert sorted(data.dev.inputs)[0] == ("en validation a0", "en validation b0")
  assert sorted(data.test["de"].inputs)[0] == ("de test a0", "de test b0")
  alias = tasks.tfds_task("xtreme_pawsx", tfds_dir, builder_names=names)
  assert alias.test["de"].inputs == data.test["de"].inputs
  assert "translate-train" in alias.source["note"]


def test_wikiann_and_xtreme_pos_give_words_and_tags(tfds_dir):
  ner = tasks.tfds_task("wikiann", tfds_dir, builder_names={"wikiann": "xlmj_test_wikiann"})
  assert ner.kind == "tag" and ner.is_bio
  assert ner.label_names == ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
  assert sorted(ner.test) == ["de", "en"]
  words, tags = ner.test["de"].inputs[0], ner.test["de"].labels[0]
  assert words[1:] == ("lives", "in", "Paris") and words[0].startswith("de")
  assert [ner.label_names[t] for t in tags] == ["B-PER", "O", "O", "B-LOC"]
  pos = tasks.tfds_task("xtreme_pos", tfds_dir,
                        builder_names={"xtreme_pos": "xlmj_test_xtreme_pos"})
  assert not pos.is_bio and "NOUN" in pos.label_names
  assert [pos.label_names[t] for t in pos.dev.labels[0]] == ["NOUN", "VERB"]  # split "dev"
  assert sorted(pos.test) == ["de", "en"]


def test_tfds_not_prepared_says_where_it_looked_and_how_to_prepare(tmp_path, tfds_dir):
  empty = tmp_path / "nothing"
  with pytest.raises(ValueError) as err:
    tasks.tfds_task("wikiann", empty)
  message = str(err.value)
  assert f"not prepared in {empty}" in message and "never downloads" in message
  assert f"tfds build wikiann/en --data_dir {empty} --file_format array_record" in message
  assert "download_and_prepare()" in message
  assert not empty.exists()  # nothing was created, nothing downloaded
  # A language whose config is not prepared: named, with its own command.
  with pytest.raises(ValueError, match="tfds build wikiann/fr"):
    tasks.tfds_task("wikiann", tfds_dir, languages=["fr"],
                    builder_names={"wikiann": "xlmj_test_wikiann"})
  with pytest.raises(ValueError, match="tfds build xnli --data_dir"):
    tasks.tfds_task("xnli", empty)
  # XNLI prepared, its English training data (MultiNLI) not: that one is named, and why.
  with pytest.raises(ValueError, match=r"'multi_nli' \(the English training data of xnli"):
    tasks.tfds_task("xnli", tfds_dir, builder_names={"xnli": "xlmj_test_xnli"})
  # XNLI prepared, its English training data (MultiNLI) not: that one is named, and why.
  with pytest.raises(ValueError, match=r"'multi_nli' \(the English training data of xnli"):
    tasks.tfds_task("xnli", tfds_dir, builder_names={"xnli": "xlmj_test_xnli"})


def test_load_task_dispatch_checks_the_kind(tfds_dir, tmp_path):
  with pytest.raises(ValueError, match="tfds:xtreme_pos is a tag task, not classify"):
    tasks.load_task("tfds:xtreme_pos", "classify", tfds_data_dir=tfds_dir)
  with pytest.raises(ValueError, match="unknown TFDS task 'squad'"):
    tasks.load_task("tfds:squad", "classify", tfds_data_dir=tfds_dir)
  with pytest.raises(ValueError, match="classification task only"):
    tasks.load_task("corpus", "tag")


# ------------------------------------------------------------------------------- user folders


def test_tsv_folder_reads_texts_and_pairs_and_carves_dev(tmp_path):
  folder = tmp_path / "task"
  folder.mkdir()
  (folder / "train.tsv").write_text("".join(f"text {i}\t{'ab'[i % 2]}\n" for i in range(40)),
                                    encoding="utf-8")
  (folder / "test.de.tsv").write_text("Text eins\ta\n\nText zwei\tb\n", encoding="utf-8")
  (folder / "test.fr.tsv").write_text("texte\ta\n", encoding="utf-8")
  data = tasks.folder_task(folder, "classify", seed=3, dev_fraction=0.25)
  assert data.label_names == ("a", "b") and sorted(data.test) == ["de", "fr"]
  assert data.test["de"].inputs == ["Text eins", "Text zwei"] and data.test["de"].labels == [0, 1]
  assert data.test["de"].ids == ["1", "3"]  # line numbers (the blank line is skipped)
  # Dev is carved by a seeded hash: disjoint, complete, the same again, another with another seed.
  assert len(data.train) + len(data.dev) == 40 and not set(data.train.ids) & set(data.dev.ids)
  assert 3 <= len(data.dev) <= 20
  assert tasks.folder_task(folder, "classify", seed=3, dev_fraction=0.25).dev == data.dev
  assert tasks.folder_task(folder, "classify", seed=4, dev_fraction=0.25).dev.ids != data.dev.ids
  (folder / "dev.tsv").write_text("first\ta\n", encoding="utf-8")
  assert tasks.folder_task(folder, "classify").dev.inputs == ["first"]
  pairs = tmp_path / "pairs"
  pairs.mkdir()
  (pairs / "train.tsv").write_text("a1\tb1\tyes\na2\tb2\tno\n", encoding="utf-8")
  (pairs / "dev.tsv").write_text("a3\tb3\tno\n", encoding="utf-8")
  (pairs / "test.de.tsv").write_text("x\ty\tyes\n", encoding="utf-8")
  data = tasks.folder_task(pairs, "classify")
  assert data.train.inputs == [("a1", "b1"), ("a2", "b2")] and data.test["de"].labels == [1]


def test_bad_tsv_lines_are_named_by_file_and_line(tmp_path):
  folder = tmp_path / "task"
  folder.mkdir()
  (folder / "train.tsv").write_text("good\ta\nalso good\tb\nno label here\n", encoding="utf-8")
  (folder / "test.de.tsv").write_text("x\ta\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"train\.tsv:3: expected 'text<TAB>label'"):
    tasks.folder_task(folder, "classify")
  (folder / "train.tsv").write_text("good\ta\nalso good\tb\n", encoding="utf-8")
  (folder / "test.de.tsv").write_text("x\ta\ny\tc\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"test\.de\.tsv:2: label 'c' does not occur"):
    tasks.folder_task(folder, "classify")
  with pytest.raises(FileNotFoundError, match="train.conll.*is this a classify task"):
    tasks.folder_task(folder, "tag")


def test_conll_folder_reads_sentences_and_names_a_malformed_line(tmp_path):
  folder = tmp_path / "ner"
  folder.mkdir()
  (folder / "train.conll").write_text(
      "-DOCSTART-\tO\n\nJohn\tB-PER\nlives\tO\n\nParis\tB-LOC\nis\tO\nbig\tO\n",
      encoding="utf-8")
  (folder / "dev.conll").write_text("Anna B-PER\nsings O\n", encoding="utf-8")  # spaces work too
  (folder / "test.de.conll").write_text("Anna\tB-PER\nsingt\tO\n", encoding="utf-8")
  data = tasks.folder_task(folder, "tag")
  assert data.label_names == ("O", "B-LOC", "B-PER") and data.is_bio
  assert data.train.inputs == [("John", "lives"), ("Paris", "is", "big")]
  assert data.train.labels == [(2, 0), (1, 0, 0)] and data.train.ids == ["3", "6"]
  assert data.dev.inputs == [("Anna", "sings")] and data.test["de"].labels == [(2, 0)]
  (folder / "test.de.conll").write_text("Anna\tB-PER\nsingt\tO\n\nkaputt\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"test\.de\.conll:4: malformed CoNLL line 'kaputt'"):
    tasks.folder_task(folder, "tag")


# ------------------------------------------------------------------------------- corpus task


def _write_corpus_task(folder, files=12):
  """eval/classification in the debian8 format: ids '<file>#<paragraph>', two modules."""
  out = folder / "eval" / "classification"
  out.mkdir(parents=True)
  train = [{"id": f"text/f{f}.xhp#p{p}", "label": ("scalc", "swriter")[f % 2],
            "text": f"file {f} paragraph {p}"} for f in range(files) for p in range(3)]
  test = [{"id": f"text/t{t}.xhp#p0", "label": label, "lang": lang, "text": f"{lang} {t}"}
          for t, label in enumerate(("scalc", "swriter", "smath")) for lang in ("en", "de")]
  (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
  (out / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test), encoding="utf-8")


def test_corpus_task_carves_dev_by_help_file(tmp_path):
  _write_corpus_task(tmp_path)
  data = tasks.corpus_task(tmp_path, seed=0, dev_fraction=0.3)
  assert data.label_names == ("scalc", "swriter") and data.parallel_ids
  file_of = lambda i: i.split("#")[0]
  dev_files, train_files = {file_of(i) for i in data.dev.ids}, {file_of(i) for i in data.train.ids}
  assert dev_files and not dev_files & train_files  # whole files, never split
  assert len(data.train) + len(data.dev) == 36
  assert tasks.corpus_task(tmp_path, seed=0, dev_fraction=0.3).dev == data.dev
  # The "smath" test rows have a module never trained on: not scored, but counted.
  assert sorted(data.test) == ["de", "en"] and len(data.test["de"]) == 2
  assert data.source["test_rows_with_unseen_labels"] == 2
  with pytest.raises(FileNotFoundError, match="has no classification task.*--recipe debian8"):
    tasks.corpus_task(tmp_path / "elsewhere")



def test_subsample_keeps_translations_together_and_is_stable(tmp_path):
  _write_corpus_task(tmp_path)
  data = tasks.corpus_task(tmp_path, seed=0, dev_fraction=0.3)
  small = data.subsample(max_train=5, max_eval=1, seed=3)
  assert len(small.train) == 5 and set(small.train.ids) <= set(data.train.ids)
  assert len(small.dev) == 1 and all(len(split) == 1 for split in small.test.values())
  # The same item (one id) is kept in every language, so the transfer gap stays defined.
  assert small.test["de"].ids == small.test["en"].ids
  assert small.train.labels == [data.train.labels[data.train.ids.index(i)] for i in small.train.ids]
  assert data.subsample(max_train=5, max_eval=1, seed=3) == small
  assert data.subsample() == data and data.subsample(max_train=10_000) == data


# ------------------------------------------------------------------------------- token ids


@pytest.fixture(scope="module")
def tokenizer():
  words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
  rng = np.random.default_rng(0)
  sentences = [" ".join(rng.choice(words, 6)) for _ in range(300)]
  return Tokenizer.from_bytes(train_sentencepiece(sentences, vocab_size=30, num_threads=1))


def test_classification_ids_follow_xlmr_single_and_pair_formats(tokenizer):
  bos, eos = tokenizer.bos_id, tokenizer.eos_id
  a, b = "alpha beta gamma delta", "zeta eta"
  ids_a, ids_b = tokenizer.encode([a, b])
  split = tasks.TaskSplit("en", [a, (a, b)], [0, 1], ["0", "1"])
  encoded = tasks.encode_split(split, "classify", tokenizer, max_len=64)
  assert encoded.rows[0].tolist() == [bos, *ids_a, eos]
  assert encoded.rows[1].tolist() == [bos, *ids_a, eos, eos, *ids_b, eos]
  assert encoded.labels.tolist() == [0, 1]
  # Cut to max_len, the longer side first (Hugging Face's longest_first).
  room = len(ids_b) + 2
  short = tasks.encode_split(split, "classify", tokenizer, max_len=room + 4)
  assert short.rows[1].tolist() == [bos, *ids_a[:room - len(ids_b)], eos, eos, *ids_b, eos]
  assert len(short.rows[0]) == room + 4 and short.rows[0][-1] == eos


def test_pretokenized_splits_are_framed_not_tokenized(tokenizer):
  split = tasks.TaskSplit("en_trans", [(9, 10, 11), (12,)], [1, 0], ["a", "b"], pretokenized=True)
  encoded = tasks.encode_split(split, "classify", tokenizer, max_len=4)
  assert [r.tolist() for r in encoded.rows] == [[tokenizer.bos_id, 9, 10, tokenizer.eos_id],
                                                [tokenizer.bos_id, 12, tokenizer.eos_id]]
  with pytest.raises(ValueError, match="classification only"):
    tasks.encode_split(split, "tag", tokenizer, max_len=4)


def test_tagging_ids_label_the_first_piece_of_each_word(tokenizer):
  words = ("alphabeta", "eta", "gammadelta")
  pieces = tokenizer.encode(list(words))
  assert len(pieces[0]) > 1  # a word of several pieces: the case that matters
  split = tasks.TaskSplit("en", [words], [(2, 0, 1)], ["0"])
  encoded = tasks.encode_split(split, "tag", tokenizer, max_len=64)
  row, labels = encoded.rows[0].tolist(), encoded.labels[0].tolist()
  assert row == [tokenizer.bos_id, *pieces[0], *pieces[1], *pieces[2], tokenizer.eos_id]
  first = [1, 1 + len(pieces[0]), 1 + len(pieces[0]) + len(pieces[1])]
  assert encoded.word_positions[0].tolist() == first
  assert [labels[p] for p in first] == [2, 0, 1]
  assert sum(l != tasks.IGNORED_LABEL for l in labels) == 3
  # max_len cuts the last word off: it has no position (-1), and the row still ends with </s>.
  cut = tasks.encode_split(split, "tag", tokenizer, max_len=first[2] + 1)
  assert cut.word_positions[0].tolist() == first[:2] + [-1]
  assert len(cut.rows[0]) == first[2] + 1 and cut.rows[0][-1] == tokenizer.eos_id
