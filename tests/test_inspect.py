"""`xlm-jax data inspect` (data_prep/inspect_batches.py) on the small real corpus: every batch kind, every
language, and tables whose columns really line up (piece i is the piece of id i, positions follow the kind's
layout, rows hold real sentences of their language)."""
import shutil

import pytest

from data_prep import inspect_batches

SEQ_LEN = 24
SECTIONS = ("mono, packing='stream'", "mono, packing='segments'", "sentences", "parallel (", "parallel_pairs")


def parse(report: str) -> dict:
  """{section title: {row label: [table, ...]}}; a table is {line name: [cells]} (wrapped parts joined)."""
  sections, rows, table = {}, None, None
  for line in report.splitlines():
    if not line.strip():
      continue  # blank lines separate the wrapped parts of a long row
    if not line.startswith(" "):
      rows = sections.setdefault(line, {})
    elif line.startswith("  ") and not line.startswith("   ") and line.endswith(":"):
      label = line.strip()[:-1]
      rows[label] = []
    elif line.startswith("    ") and not line.startswith("      "):
      table = {}
      rows[label].append(table)
    else:
      name, *cells = line.split()
      table.setdefault(name, []).extend(cells)
  return sections


def section(sections, start):
  (title,) = [t for t in sections if t.startswith(start)]
  return sections[title]


@pytest.fixture(scope="module")
def report(small_corpus):
  return inspect_batches.inspect_text(small_corpus.dir, seq_len=SEQ_LEN)


def check_table(table, tokenizer):
  lengths = {name: len(cells) for name, cells in table.items()}
  assert len(set(lengths.values())) == 1, lengths  # every line has one cell per token
  assert table["piece"] == [tokenizer.id_to_piece(int(i)) for i in table["id"]]
  return [int(i) for i in table["id"]]


def test_every_kind_and_language_is_shown_with_aligned_columns(report, small_corpus):
  tokenizer = small_corpus.tokenizer()
  languages = small_corpus.languages
  sections = parse(report)
  pair_labels = {f"en-{lang}" for lang in languages if lang != "en"}
  for start in SECTIONS:
    rows = section(sections, start)
    assert set(rows) == (pair_labels if start.startswith("parallel") else set(languages)), start
    for label, tables in rows.items():
      assert tables, (start, label)
      for table in tables:
        ids = check_table(table, tokenizer)
        assert ids[0] == 0 and len(ids) <= SEQ_LEN  # <s> first, padding cut off
        assert ids[-1] == 2 or start.startswith("mono, packing='stream'")  # only a stream row ends mid-sentence
        positions = [int(p) for p in table["pos"]]
        if "seg" not in table:  # a parallel_pairs side: default positions
          assert positions == list(range(2, 2 + len(ids))) and len(ids) <= SEQ_LEN // 2
          continue
        segments = [int(s) for s in table["seg"]]
        if start.startswith("parallel"):
          # One pair: continuous positions, segment 1 then 2, English on one side, the pair language on the other.
          assert positions == list(range(2, 2 + len(ids)))
          first, second = segments.count(1), segments.count(2)
          assert segments == [1] * first + [2] * second and ids[first - 1:first + 1] == [2, 2]
          sides = {tuple(set(table["lang"][:first])), tuple(set(table["lang"][first:]))}
          assert sides == {("en",), (label[3:],)}
        else:
          assert set(table["lang"]) == {label}
          for k in set(segments):  # positions restart at 2 in every segment
            assert [p for p, s in zip(positions, segments) if s == k] == list(range(2, 2 + segments.count(k)))
          if start.startswith("mono, packing='stream'"):
            assert segments == [1] * SEQ_LEN and len(ids) == SEQ_LEN


def test_sentence_rows_are_real_sentences_of_their_language(report, small_corpus):
  tokenizer = small_corpus.tokenizer()
  rows = section(parse(report), "sentences")
  for lang, tables in rows.items():
    prefixes = {tuple(ids[:SEQ_LEN - 2]) for ids in tokenizer.encode(small_corpus.mono_texts(lang, "train"))}
    for table in tables:
      assert tuple(int(i) for i in table["id"][1:-1]) in prefixes, lang


def test_derived_language_rows_show_shifted_pieces(small_corpus, tmp_path):
  copy = tmp_path / "corpus"
  shutil.copytree(small_corpus.dir, copy)
  text = inspect_batches.inspect_text(copy, seq_len=16, languages=["en", "de", "en_trans"])
  rows = section(parse(text), "sentences")
  assert set(rows) == {"en", "de", "en_trans"}
  (table,) = rows["en_trans"]
  tokenizer = small_corpus.tokenizer()
  V = tokenizer.vocab_size
  shifted = [(p, int(i)) for p, i in zip(table["piece"], table["id"]) if int(i) >= V]
  assert shifted and all(p == "T:" + tokenizer.id_to_piece(i - V) for p, i in shifted)
  # A derived language pairs with its source language (each sentence beside its derived form).
  assert set(section(parse(text), "parallel (")) == {"en-de", "en-en_trans"}
