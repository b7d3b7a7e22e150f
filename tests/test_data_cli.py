"""`xlm-jax data tokenizers` and `xlm-jax data derive` on a small real corpus (a copy of `small_corpus`)."""
import hashlib
import json
import pathlib
import shutil

import pytest

from data_prep import cli
from xlm_jax.data import synthetic
from xlm_jax.data.tokenizer_variants import LanguageTaggedTokenizer
from xlm_jax.data.tokenizer import Tokenizer

SPECIALS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def corpus_dir(small_corpus, tmp_path_factory):
  """A private copy, so the commands' tokenizers/ and derived/ folders never touch the shared corpus."""
  copy = tmp_path_factory.mktemp("data_cli") / "corpus"
  shutil.copytree(small_corpus.dir, copy)
  return copy


def _digests(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: pathlib.Path) -> list[list[int]]:
  return [json.loads(line)["ids"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_union_tokenizer_shares_pieces_and_is_reproducible(corpus_dir, small_corpus, capsys):
  argv = ["tokenizers", "--corpus-dir", str(corpus_dir), "--kind", "union", "--vocab-size-per-lang", "1000",
          "--languages", "en", "de", "fr", "--seed", "3"]
  assert cli.main(argv) == 0
  out_dir = corpus_dir / "tokenizers" / "union"
  assert {p.name for p in out_dir.iterdir()} == {"spm.model", "spm.vocab", "anchors.json"}
  summary = json.loads((out_dir / "anchors.json").read_text(encoding="utf-8"))
  tokenizer = Tokenizer(out_dir / "spm.model")
  assert tokenizer.vocab_size == summary["vocab_size"]
  assert f"vocab_size {summary['vocab_size']}; {summary['num_anchors']} anchors" in capsys.readouterr().out
  # Each language learned at most 995 pieces; shared ones appear once, so the union is smaller than 3 x 995.
  assert summary["vocab_size"] == 5 + sum(summary["pieces_per_language"].values()) - sum(
      len(langs) - 1 for langs in summary["anchors"].values())
  assert summary["num_anchors"] == len(summary["anchors"]) > 0
  assert all(len(langs) >= 2 for langs in summary["anchors"].values())
  # Real English and French test sentences use some of the same ids.
  ids = {lang: {i for row in tokenizer.encode(small_corpus.mono_texts(lang, "test")) for i in row} - set(SPECIALS)
         for lang in ("en", "fr")}
  shared = {tokenizer.id_to_piece(i) for i in ids["en"] & ids["fr"]}
  assert shared & set(summary["anchors"])
  before = _digests(out_dir)
  assert cli.main(argv) == 0
  assert _digests(out_dir) == before


def test_no_anchors_tokenizer_has_disjoint_ranges_and_is_reproducible(corpus_dir, small_corpus, capsys):
  from xlm_jax import cli as xlm_cli  # the top-level CLI forwards `data ...` here
  argv = ["data", "tokenizers", "--corpus-dir", str(corpus_dir), "--kind", "no_anchors",
          "--vocab-size-per-lang", "1000", "--seed", "1"]
  assert xlm_cli.main(argv) == 0
  out_dir = corpus_dir / "tokenizers" / "no_anchors"
  tokenizer = LanguageTaggedTokenizer.load(out_dir)
  assert list(tokenizer.languages) == small_corpus.languages
  ranges = [tokenizer.language_ranges[lang] for lang in small_corpus.languages]
  # Contiguous, disjoint, after the specials, covering the vocabulary; each printed.
  assert ranges[0][0] == 5 and ranges[-1][1] == tokenizer.vocab_size
  assert all(start < end for start, end in ranges)
  assert all(prev[1] == nxt[0] for prev, nxt in zip(ranges, ranges[1:]))
  printed = capsys.readouterr().out
  assert all(f"[{start}, {end})" in printed for start, end in ranges)
  en, fr = (set(i for row in tokenizer.encode(small_corpus.mono_texts(lang, "test")[:50], lang) for i in row)
            - set(SPECIALS) for lang in ("en", "fr"))
  assert en and fr and not en & fr
  before = _digests(out_dir)
  assert xlm_cli.main(argv) == 0
  assert _digests(out_dir) == before


def test_derive_writes_shifted_text_dictionary_and_eval_sets(corpus_dir, small_corpus, capsys):
  # A classification test set of our own: two English rows and one German row.
  rows = [{"id": "a", "label": "x", "lang": "en", "text": "Print the version and exit."},
          {"id": "b", "label": "y", "lang": "de", "text": "Version anzeigen und beenden."},
          {"id": "c", "label": "y", "lang": "en", "text": "Show this help."}]
  classification = corpus_dir / "eval" / "classification" / "test.jsonl"
  classification.parent.mkdir(parents=True, exist_ok=True)
  classification.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  tokenizer = small_corpus.tokenizer()
  V = tokenizer.vocab_size
  overlap = corpus_dir / "overlap.txt"
  overlap.write_text(f"10\n\n{tokenizer.id_to_piece(20)}\n", encoding="utf-8")
  try:
    assert cli.main(["derive", "--corpus-dir", str(corpus_dir), "--op", "trans", "--overlap", str(overlap),
                     "--seed", "2"]) == 0
  finally:
    classification.unlink()
  out_dir = corpus_dir / "derived" / "trans"
  pairs, meta = synthetic.read_dictionary(out_dir / "dictionary.npy")
  kept = [i for i in range(V) if i not in SPECIALS + (10, 20)]
  assert pairs.tolist() == [[i, i + V] for i in kept] and meta["vocab_size"] == 2 * V
  assert f"implicit dictionary: {len(kept)} pairs (i, i + {V}) in {out_dir / 'dictionary.npy'}" in (
      capsys.readouterr().out)
  shift = lambda row: [i if i in SPECIALS + (10, 20) else i + V for i in row]  # noqa: E731
  test_texts = small_corpus.mono_texts("en", "test")
  assert _rows(out_dir / "eval" / "test.jsonl") == [shift(r) for r in tokenizer.encode(test_texts)]
  en_texts = [r["text"] for r in rows if r["lang"] == "en"]
  assert _rows(out_dir / "eval" / "classification_test.jsonl") == [shift(r) for r in tokenizer.encode(en_texts)]
  manifest = json.loads((out_dir / "derived.json").read_text(encoding="utf-8"))
  assert manifest["eval_sources"]["classification_test"]["ids"] == ["a", "c"]
  assert manifest["op"] == "trans" and manifest["overlap_ids"] == [10, 20]
  train = _rows(out_dir / "train.jsonl")
  assert sorted(map(tuple, train)) == sorted(
      tuple(shift(r)) for r in tokenizer.encode(small_corpus.mono_texts("en", "train")))


def test_derive_composition_uses_ascii_folder_and_is_reproducible(corpus_dir, small_corpus):
  argv = ["derive", "--corpus-dir", str(corpus_dir), "--op", "inv+trans", "--lang", "de", "--seed", "4"]
  cli.run(argv)
  out_dir = corpus_dir / "derived" / "trans+inv"
  manifest = json.loads((out_dir / "derived.json").read_text(encoding="utf-8"))
  assert manifest["op"] == "trans∘inv" and manifest["source_language"] == "de"
  assert sorted(manifest["eval_sets"]) == ["test"]  # the corpus has no classification set
  derived_test = _rows(out_dir / "eval" / "test.jsonl")
  assert len(derived_test) == len(small_corpus.mono_texts("de", "test"))
  V = small_corpus.tokenizer().vocab_size
  assert all(i in SPECIALS or V <= i < 2 * V for row in derived_test for i in row)
  before = _digests(out_dir)
  cli.run(argv)
  assert _digests(out_dir) == before


def test_bad_input_names_the_problem(small_corpus, tmp_path, capsys):
  corpus = str(small_corpus.dir)
  with pytest.raises(SystemExit):
    cli.run(["tokenizers", "--corpus-dir", corpus, "--kind", "shared"])
  assert "invalid choice: 'shared'" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"unknown synthetic-language op 'shuffle'.*trans∘perm"):
    cli.run(["derive", "--corpus-dir", corpus, "--op", "shuffle"])
  with pytest.raises(FileNotFoundError, match="xlm-jax data build"):
    cli.run(["derive", "--corpus-dir", str(tmp_path / "none"), "--op", "trans"])
  with pytest.raises(FileNotFoundError, match="xlm-jax data build"):
    cli.run(["tokenizers", "--corpus-dir", str(tmp_path / "none"), "--kind", "union"])
  with pytest.raises(ValueError, match="language 'xx' is not in corpus"):
    cli.run(["derive", "--corpus-dir", corpus, "--op", "trans", "--lang", "xx"])
  with pytest.raises(ValueError, match="language 'xx' is not in corpus"):
    cli.run(["tokenizers", "--corpus-dir", corpus, "--kind", "union", "--languages", "en", "xx"])
  with pytest.raises(ValueError, match=r"names \['en'\] more than once"):
    cli.run(["tokenizers", "--corpus-dir", corpus, "--kind", "union", "--languages", "en", "en"])
  with pytest.raises(FileNotFoundError, match="overlap file"):
    cli.run(["derive", "--corpus-dir", corpus, "--op", "trans", "--overlap", str(tmp_path / "none.txt")])
  # main() turns them into one line and exit code 1.
  assert cli.main(["derive", "--corpus-dir", corpus, "--op", "trans", "--lang", "xx"]) == 1
  assert "error: language 'xx'" in capsys.readouterr().err


def test_top_level_cli_hands_data_arguments_to_data_prep(capsys):
  """`xlm-jax data -h` is data_prep's help, not an error of the top-level parser."""
  from xlm_jax import cli as top_cli
  with pytest.raises(SystemExit) as exit_info:
    top_cli.main(["data", "-h"])
  assert exit_info.value.code == 0
  assert "tokenizers" in capsys.readouterr().out
