"""A mistyped command never destroys data, and every error says what to fix.

Each bad input below is refused with a message naming the file, flag or field and what to do, and
every folder it involves is byte-for-byte as it was (folder_checksums before == after).
"""
import hashlib
import json
import pathlib
import random
import re

import jax
import jax.numpy as jnp
import ml_collections
import pytest
import sentencepiece as spm

from data_prep import cli as data_cli
from test_export import tokenizer_bytes  # noqa: F401 (a fixture: the same tiny SentencePiece model)
from xlm_jax import atomic_files
from xlm_jax import cli
from xlm_jax import config as config_lib
from xlm_jax.export import export_model, load_pretrained
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.registry import OBJECTIVES

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")
EMMA_X = str(REPO / "experiments" / "emma_x.py")


def folder_checksums(path) -> dict[str, str]:
  """{path relative to `path`: sha256} of every file under `path` (empty for a missing folder)."""
  path = pathlib.Path(path)
  return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(path.rglob("*")) if p.is_file()}


def listing(path) -> list[str]:
  """Every file and folder under `path`, relative (catches new empty folders, which have no sum)."""
  return sorted(str(p.relative_to(path)) for p in pathlib.Path(path).rglob("*"))


# --- 1. export into a folder that is not an export ------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tokenizer_bytes):
  vocab = spm.SentencePieceProcessor(model_proto=tokenizer_bytes).get_piece_size()
  config = EncoderConfig(vocab_size=vocab + 3, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32,
                         max_positions=40)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = jax.jit(Model(config).init)(jax.random.key(1), ids, lang_ids=ids)["params"]
  return config, params


@pytest.fixture
def export_dir(tiny, tokenizer_bytes, tmp_path):
  config, params = tiny
  return export_model(tmp_path / "export", params, config.to_dict(), tokenizer_bytes, {"step": 1})


def test_export_refuses_a_folder_that_is_not_an_export(tiny, tokenizer_bytes, tmp_path):
  config, params = tiny
  user = tmp_path / "my_documents"
  user.mkdir()
  (user / "notes.txt").write_bytes(b"my notes\n")
  (user / "config.json").write_bytes(b"{}")  # one marker alone does not make an export
  before, names = folder_checksums(tmp_path), listing(tmp_path)
  with pytest.raises(ValueError, match=r"my_documents is not empty and is not an xlm-jax export "
                                       r"\(it has no params\.msgpack; it holds config\.json, notes\.txt\)"):
    export_model(user, params, config.to_dict(), tokenizer_bytes, {})
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == names  # no staging folder either
  # A file in the way is refused too; an empty folder and an earlier export are replaced.
  (tmp_path / "file").write_bytes(b"x")
  with pytest.raises(ValueError, match="file exists and is not a folder"):
    export_model(tmp_path / "file", params, config.to_dict(), tokenizer_bytes, {})
  assert (tmp_path / "file").read_bytes() == b"x"
  (tmp_path / "empty").mkdir()
  export_model(tmp_path / "empty", params, config.to_dict(), tokenizer_bytes, {"step": 1})
  export_model(tmp_path / "empty", params, config.to_dict(), tokenizer_bytes, {"step": 2})
  assert json.loads((tmp_path / "empty" / "config.json").read_text())["metadata"] == {"step": 2}


def test_atomic_writer_checks_markers_for_every_caller(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  before = folder_checksums(tmp_path)
  with pytest.raises(ValueError, match=r"out is not empty and is not an thing \(it has no a\.json"):
    atomic_files.write_directory_atomically(tmp_path / "out", {"a.json": b"{}"}, markers=("a.json",),
                                            what="thing")
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == ["out", "out/keep.txt"]


# --- 2, 3, 4. config values: ranges, the model's own checks, English for pivot evaluators ------------

RANGE_CASES = [
    ("optimizer.learning_rate=-1", r"'optimizer\.learning_rate' must be > 0, got -1\.0"),
    ("optimizer.warmup_steps=-1", r"'optimizer\.warmup_steps' must be >= 0"),
    ("optimizer.b1=1.0", r"'optimizer\.b1' must be in \[0, 1\), got 1\.0"),
    ("optimizer.b2=-0.1", r"'optimizer\.b2' must be in \[0, 1\)"),
    ("optimizer.eps=0", r"'optimizer\.eps' must be > 0"),
    ("optimizer.weight_decay=-0.01", r"'optimizer\.weight_decay' must be >= 0"),
    ("optimizer.clip_norm=-1", r"'optimizer\.clip_norm' must be >= 0"),
    ("optimizer.end_lr_ratio=1.5", r"'optimizer\.end_lr_ratio' must be in \[0, 1\]"),
    ("train.total_steps=0", r"'train\.total_steps' must be >= 1"),
    ("train.batch_size=-8", r"'train\.batch_size' must be >= 1"),
    ("train.grad_accum_steps=0", r"'train\.grad_accum_steps' must be >= 1"),
    ("train.log_every=0", r"'train\.log_every' must be >= 1"),
    ("train.eval_every=-1", r"'train\.eval_every' must be >= 0"),
    ("train.checkpoint_every=0", r"'train\.checkpoint_every' must be >= 1"),
    ("train.keep_checkpoints=0", r"'train\.keep_checkpoints' must be >= 1"),
    ("train.max_wall_seconds=-5", r"'train\.max_wall_seconds' must be >= 0"),
    ("data.seq_len=2", r"'data\.seq_len' must be >= 3"),
    ("data.alpha=-0.3", r"'data\.alpha' must be in \[0, 1\]"),
    ("data.foreign_first_rate=2", r"'data\.foreign_first_rate' must be in \[0, 1\]"),
    ("mesh.fsdp=0", r"'mesh\.fsdp' must be -1 \(the devices left\) or >= 1"),
    ("model.dropout_rate=1.0", r"model\.dropout_rate must be in \[0, 1\), got 1\.0"),
    ("model.attention_dropout_rate=-0.1", r"model\.attention_dropout_rate must be in \[0, 1\)"),
    ("model.layer_norm_eps=0", r"model\.layer_norm_eps must be > 0"),
    ("model.num_layers=0", r"model\.num_layers must be >= 1"),
    ("objectives.mlm.mask_rate=0", r"'objectives\.mlm\.mask_rate' must be in \(0, 1\]"),
    ("objectives.mlm.mask_token_rate=1.5", r"'objectives\.mlm\.mask_token_rate' must be in \[0, 1\]"),
    ("objectives.mlm.weight=-1", r"'objectives\.mlm\.weight' must be >= 0"),
    ("objectives.mlm.label_smoothing=1", r"'objectives\.mlm\.label_smoothing' must be in \[0, 1\)"),
]


@pytest.mark.parametrize("override,message", RANGE_CASES, ids=[c[0].split("=")[0] for c in RANGE_CASES])
def test_out_of_range_values_name_the_field_and_the_override(override, message):
  with pytest.raises(ValueError, match=re.escape(f"--config.{override}: ") + ".*" + message):
    config_lib.load_config(QUICKSTART, [override])


def test_objective_fields_temperatures_and_rate_sums():
  with pytest.raises(ValueError, match=r"'objectives\.emma_x\.temperature_high' must be > 0, got 0\.0"):
    config_lib.load_config(EMMA_X, ["objectives.emma_x.temperature_high=0"])
  with pytest.raises(ValueError, match=r"'objectives\.emma_x\.queue_size' must be >= 1"):
    config_lib.load_config(EMMA_X, ["objectives.emma_x.queue_size=0"])
  with pytest.raises(ValueError, match=r"'objectives\.emma_x\.momentum' must be in \[0, 1\]"):
    config_lib.load_config(EMMA_X, ["objectives.emma_x.momentum=1.5"])
  with pytest.raises(ValueError, match=r"mask_token_rate \(0\.8\) \+ objectives\.mlm\.random_token_rate "
                                       r"\(0\.5\) must be <= 1"):
    config_lib.load_config(QUICKSTART, ["objectives.mlm.random_token_rate=0.5"])


def test_emma_x_queue_must_hold_one_steps_keys():
  # 2 keys per pair of the parallel_pairs batch (train.batch_size pairs) + mono_candidates.
  with pytest.raises(ValueError, match=r"objectives\.emma_x\.queue_size \(64\) is smaller than the keys "
                                       r"EMMA-X enqueues per step: 2 x train\.batch_size \(32\) \+ "
                                       r"mono_candidates \(4\) = 68; set queue_size >= 68"):
    config_lib.load_config(EMMA_X + ":tiny,queue=64,mono=4")
  assert config_lib.load_config(EMMA_X + ":tiny,queue=68,mono=4").objectives.emma_x.queue_size == 68
  with pytest.raises(ValueError, match=r"mono_candidates \(40\) exceeds the rows of the 'sentences' batch"):
    config_lib.load_config(EMMA_X + ":tiny,mono=40")


def test_a_bad_value_in_the_experiment_file_names_the_file(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("from xlm_jax.config import default_config\n"
                 "def get_config(arg=None):\n  c = default_config()\n"
                 "  c.optimizer.learning_rate = -1.0\n  return c\n")
  before = folder_checksums(tmp_path)
  with pytest.raises(ValueError, match=re.escape(f"{bad}: config field 'optimizer.learning_rate' must be > 0")):
    config_lib.load_config(str(bad))
  assert folder_checksums(tmp_path) == before


def test_train_with_a_negative_learning_rate_stops_before_writing(tmp_path, capsys):
  code = cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(tmp_path / "w"),
                   "--config.optimizer.learning_rate=-1"])
  assert code == 2
  assert ("--config.optimizer.learning_rate=-1: config field 'optimizer.learning_rate' must be > 0, "
          "got -1.0") in capsys.readouterr().err
  assert listing(tmp_path) == []  # no workdir, no corpus


def test_every_numeric_field_has_a_range():
  from xlm_jax.models.encoder_config import in_range
  reference = config_lib.default_config()
  numeric = [f"{section}.{key}" if section else key
             for section, node in [("", reference)] + [(k, v) for k, v in reference.items()
                                                       if isinstance(v, ml_collections.ConfigDict)]
             if section not in ("model", "objectives")
             for key, value in node.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)]
  unlisted = [p for p in numeric if p not in config_lib._RANGES and p not in config_lib._MESH_AXES]
  assert not unlisted
  OBJECTIVES._import_all()  # every registered objective's defaults
  assert len(OBJECTIVES.names()) > 5
  for name in OBJECTIVES.names():
    for field, value in OBJECTIVES.get(name).default_config().items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = config_lib.objective_field_range(field)
        assert bounds is not None, f"objectives.{name}.{field} has no range"
        assert in_range(value, *bounds), f"default of objectives.{name}.{field} is out of its range"


def test_model_fields_are_checked_by_the_model_config_alone(tmp_path):
  # The model's choices are listed once, by the model: config validation agrees with EncoderConfig.
  assert not [path for path in config_lib._CHOICES if path.startswith("model.")]
  config = config_lib.load_config(QUICKSTART, ["model.param_dtype='float16'"])
  assert EncoderConfig.from_dict({**config.model.to_dict(), "vocab_size": 10}).param_dtype == "float16"
  bad = tmp_path / "heads.py"
  bad.write_text("from xlm_jax.config import default_config\n"
                 "def get_config(arg=None):\n  c = default_config()\n"
                 "  c.model.hidden_size = 100\n  c.model.num_heads = 3\n  return c\n")
  with pytest.raises(ValueError, match=re.escape(f"{bad}: model.hidden_size (100) must be divisible by "
                                                 "model.num_heads (3)")):
    config_lib.load_config(str(bad))
  with pytest.raises(ValueError, match=r"--config\.model\.remat_policy='most': model\.remat_policy must be "
                                       r"one of \('none', 'full', 'dots', 'dots_no_batch'\)"):
    config_lib.load_config(QUICKSTART, ["model.remat_policy='most'"])
  with pytest.raises(ValueError, match=r"EncoderConfig: dropout_rate must be in \[0, 1\)"):
    EncoderConfig(vocab_size=10, dropout_rate=1.5)


def test_pivot_evaluators_need_english():
  with pytest.raises(ValueError, match=r"eval\.evaluators \['retrieval'\] pair every language with English, "
                                       r"but data\.languages \['de', 'fr'\] has no 'en'; add 'en' to "
                                       r"data\.languages, or drop 'retrieval' from eval\.evaluators"):
    config_lib.load_config(QUICKSTART, ["data.languages=('de', 'fr')"])
  with pytest.raises(ValueError, match=r"\['retrieval', 'geometry'\]"):
    config_lib.load_config(QUICKSTART, ["data.languages=('de', 'fr')",
                                        "eval.evaluators=('mlm', 'retrieval', 'geometry')"])
  # Without them English is not needed, and the order of the overrides does not matter.
  config = config_lib.load_config(QUICKSTART, ["data.languages=('de', 'fr')", "eval.evaluators=('mlm',)"])
  assert list(config.data.languages) == ["de", "fr"]


# --- 5, 6. command line and experiment files ---------------------------------------------------------

def test_override_without_value_does_not_swallow_the_next_flag(tmp_path, capsys):
  with pytest.raises(ValueError, match=r"override --config\.train\.total_steps has no value \(it is followed "
                                       r"by '--workdir'\); write --config\.train\.total_steps=<value>"):
    cli._split_overrides(["train", "--config.train.total_steps", "--workdir", "w"])
  with pytest.raises(ValueError, match=r"\(nothing follows it\)"):
    cli._split_overrides(["train", "--config.train.total_steps"])
  assert cli._split_overrides(["--config.optimizer.learning_rate", "-1", "x"]) == (
      ["x"], ["optimizer.learning_rate=-1"])  # a negative number is a value, not a flag
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["train", "--config", QUICKSTART, "--config.train.total_steps", "--workdir", str(tmp_path / "w")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "--config.train.total_steps has no value" in err and "--config.train.total_steps=<value>" in err
  assert listing(tmp_path) == []


EXPERIMENT_FILES = {
    "returns_none": ("from xlm_jax.config import default_config\n"
                     "def get_config(arg=None):\n  c = default_config()\n",
                     r"returns_none\.py: get_config\(\) returned NoneType None, not an "
                     r"ml_collections\.ConfigDict; end get_config with `return c`"),
    "no_function": ("CONFIG = {}\n", r"no_function\.py has no get_config\(arg=None\) function"),
    "not_callable": ("get_config = 3\n", r"not_callable\.py: get_config is a int, not a function"),
    "syntax": ("def get_config(arg=None)\n  return None\n",
               r"syntax\.py is not valid Python \(line 1: .*\); fix it"),
    "raises": ("def get_config(arg=None):\n  return {}['missing']\n",
               r"raises\.py: get_config\(\) failed: KeyError: 'missing'"),
}


@pytest.mark.parametrize("name", sorted(EXPERIMENT_FILES))
def test_broken_experiment_files_are_named(name, tmp_path, capsys):
  text, message = EXPERIMENT_FILES[name]
  path = tmp_path / f"{name}.py"
  path.write_text(text)
  before = folder_checksums(tmp_path)
  with pytest.raises(ValueError, match=message):
    config_lib.load_config(str(path))
  code = cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "w")])
  assert code == 2 and re.search(message, capsys.readouterr().err)
  assert folder_checksums(tmp_path) == before and not (tmp_path / "w").exists()


def test_config_and_workdir_paths_of_the_wrong_kind_are_named(tmp_path, capsys):
  (tmp_path / "workdir_file").write_text("not a folder")
  before = folder_checksums(tmp_path)
  assert cli.main(["train", "--config", QUICKSTART + ":smoke", "--workdir", str(tmp_path / "workdir_file")]) == 2
  assert f"--workdir {tmp_path / 'workdir_file'} is a file, not a folder" in capsys.readouterr().err
  assert cli.main(["eval", "--workdir", str(tmp_path / "workdir_file")]) == 2
  assert f"--workdir {tmp_path / 'workdir_file'} is a file, not a folder" in capsys.readouterr().err
  assert cli.main(["train", "--config", str(tmp_path), "--workdir", str(tmp_path / "w")]) == 2
  assert f"experiment file {tmp_path} is a folder, not a file" in capsys.readouterr().err
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == ["workdir_file"]


# --- 7, 10. encode() arguments and damaged export folders ---------------------------------------------

def test_encode_names_the_item_that_is_not_a_string(export_dir):
  encoder = load_pretrained(export_dir)
  before = folder_checksums(export_dir)
  with pytest.raises(TypeError, match=r"texts\[1\] is int 3"):
    encoder.encode(["river stone", 3])
  with pytest.raises(TypeError, match=r"texts\[0\] is NoneType None"):
    encoder.encode([None])
  with pytest.raises(TypeError, match=r"texts\[0\] is bytes b'river' \(decode bytes first"):
    encoder.encode([b"river"])
  with pytest.raises(TypeError, match=r"got one str; wrap a single text as \[text\]"):
    encoder.encode("river stone")
  with pytest.raises(TypeError, match=r"list of strings, got int"):
    encoder.encode(5)
  assert encoder.encode(("river", "stone")).shape == (2, 16)  # any sequence of strings is fine
  assert folder_checksums(export_dir) == before


def test_truncated_params_file_is_named(export_dir):
  params = export_dir / "params.msgpack"
  params.write_bytes(params.read_bytes()[:-100])
  before = folder_checksums(export_dir)
  with pytest.raises(ValueError, match=re.escape(str(params)) + r" cannot be read \(.*\); the file "
                                       r"\(\d+ bytes\) is damaged or cut short: export again"):
    load_pretrained(export_dir)
  assert folder_checksums(export_dir) == before


def test_config_json_that_disagrees_with_the_params_names_file_and_field(export_dir, tiny):
  config, _ = tiny
  path = export_dir / "config.json"
  meta = json.loads(path.read_text())
  meta["encoder"]["vocab_size"] = config.vocab_size + 7
  path.write_text(json.dumps(meta))
  before = folder_checksums(export_dir)
  with pytest.raises(ValueError, match=(
      re.escape(f"{export_dir / 'params.msgpack'}: the parameters do not match {path}: ") +
      r".*encoder/embeddings/word_embeddings/embedding has shape \(%d, 16\) but .*config\.json says "
      r"vocab_size %d" % (config.vocab_size, config.vocab_size + 7))):
    load_pretrained(export_dir)
  assert folder_checksums(export_dir) == before
  meta["encoder"]["vocab_size"] = config.vocab_size
  meta["encoder"]["num_layers"] = 2
  path.write_text(json.dumps(meta))
  before = folder_checksums(export_dir)
  with pytest.raises(ValueError, match=r"encoder/layer_1/\S+ is missing, but .*config\.json's encoder builds "
                                       r"it \(check num_layers or scan_layers\)"):
    load_pretrained(export_dir)
  assert folder_checksums(export_dir) == before
  meta["encoder"]["num_layers"] = "one"
  path.write_text(json.dumps(meta))
  before = folder_checksums(export_dir)
  with pytest.raises(ValueError, match=re.escape(str(path)) + r": 'encoder' is not a valid encoder config "
                                       r"\(EncoderConfig: num_layers must be a number >= 1, got 'one'\)"):
    load_pretrained(export_dir)
  assert folder_checksums(export_dir) == before


# --- 8. data tokenizers flags ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-5", "2.5", "many"])
def test_vocab_size_per_lang_must_be_a_positive_integer(value, tmp_path, capsys):
  (tmp_path / "corpus").mkdir()
  before = folder_checksums(tmp_path)
  with pytest.raises(SystemExit) as exit_info:
    data_cli.main(["tokenizers", "--corpus-dir", str(tmp_path / "corpus"), "--kind", "union",
                   "--vocab-size-per-lang", value])
  assert exit_info.value.code == 2
  assert (f"argument --vocab-size-per-lang: must be a whole number >= 1, got '{value}'"
          in capsys.readouterr().err)
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == ["corpus"]


# --- 9. users' corpora ---------------------------------------------------------------------------------

def _documents(words, count: int, seed: int) -> str:
  rng = random.Random(seed)
  docs = ["\n".join(" ".join(rng.choice(words) for _ in range(6)) + f" {d} {i}." for i in range(3))
          for d in range(count)]
  return "\n\n".join(docs) + "\n"


EN_WORDS = "the cat dog house runs fast slow red green".split()
DE_WORDS = "der Hund läuft über die Brücke schön grün Straße".split()


def _build(tmp_path, mono, *flags):
  return data_cli.main(["build", "--corpus-dir", str(tmp_path / "corpus"), "--mono-dir", str(mono),
                        "--vocab-size", "50", "--test-fraction", "0.1", "--quiet", *flags])


def test_binary_file_as_a_language_fails_and_names_it(tmp_path, capsys):
  mono = tmp_path / "mono"
  mono.mkdir()
  (mono / "de.txt").write_text(_documents(DE_WORDS, 60, 0), encoding="utf-8")
  (mono / "en.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
  before = folder_checksums(tmp_path)
  assert _build(tmp_path, mono) == 1
  err = capsys.readouterr().err
  assert f"{mono / 'en.txt'}:3: NUL byte at byte offset 8 in the file: {mono / 'en.txt'} is a binary file" in err
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == ["mono", "mono/de.txt", "mono/en.txt"]
  # Binary without NUL bytes: most lines do not decode, so the file is refused as well.
  (mono / "en.txt").write_bytes(bytes(range(128, 256)) * 8)
  before = folder_checksums(tmp_path)
  assert _build(tmp_path, mono) == 1
  assert f"{mono / 'en.txt'}: 1 of its first 1 lines are not valid UTF-8" in capsys.readouterr().err
  assert folder_checksums(tmp_path) == before and not (tmp_path / "corpus").exists()


def test_latin1_file_fails_with_a_hint_then_builds_with_encoding(tmp_path, capsys):
  mono = tmp_path / "mono"
  mono.mkdir()
  (mono / "en.txt").write_text(_documents(EN_WORDS, 60, 1), encoding="utf-8")
  german = _documents(DE_WORDS, 60, 2)
  # cp1252 text; one line holds 0x81, which cp1252 does not define.
  (mono / "de.txt").write_bytes(german.encode("cp1252") + b"kaputt \x81 hier.\n")
  before = folder_checksums(tmp_path)
  assert _build(tmp_path, mono) == 1
  err = capsys.readouterr().err
  assert re.search(re.escape(str(mono / "de.txt")) + r": \d+ of its first \d+ lines are not valid UTF-8 \(first: "
                   + re.escape(str(mono / "de.txt")) + r":\d+\).* pass its encoding, e.g\. --encoding latin-1", err)
  assert folder_checksums(tmp_path) == before and not (tmp_path / "corpus").exists()

  with pytest.warns(UserWarning, match=r"de\.txt:\d+: invalid cp1252"):
    assert _build(tmp_path, mono, "--encoding", "cp1252") == 0
  captured = capsys.readouterr()
  assert "dropped unreadable lines: undecodable 1" in captured.err
  assert re.search(r"first undecodable: .*de\.txt:\d+: invalid cp1252", captured.err)
  assert re.search(r"^dropped: .*undecodable 1", captured.out, re.M)  # the stats table
  manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text(encoding="utf-8"))
  users = manifest["user_corpora"]
  assert users["dropped"]["undecodable"] == 1 and users["encoding"] == "cp1252"
  assert users["first_defects"]["undecodable"].startswith(f"{mono / 'de.txt'}:")
  text = (tmp_path / "corpus" / "text" / "mono" / "train" / "de.txt").read_text(encoding="utf-8")
  assert "Brücke" in text and "Straße" in text and "kaputt" not in text


def test_min_sentences_applies_to_users_languages(tmp_path, capsys):
  mono = tmp_path / "mono"
  mono.mkdir()
  (mono / "en.txt").write_text(_documents(EN_WORDS, 60, 3), encoding="utf-8")
  (mono / "de.txt").write_text("Ein Satz.\n\nNoch ein Satz.\n", encoding="utf-8")
  before = folder_checksums(tmp_path)
  assert _build(tmp_path, mono, "--min-sentences", "20") == 1
  err = capsys.readouterr().err
  assert re.search(r"empty language: too little training text in users' inputs for de \([0-2] training "
                   r"sentences, from .*de\.txt\); at least 20 needed \(--min-sentences\)", err)
  assert "en (" not in err
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == ["mono", "mono/de.txt", "mono/en.txt"]


def test_corpus_dir_that_is_not_a_corpus_is_never_replaced(tmp_path, capsys):
  mono = tmp_path / "mono"
  mono.mkdir()
  (mono / "en.txt").write_text(_documents(EN_WORDS, 60, 4), encoding="utf-8")
  (tmp_path / "corpus").mkdir()
  (tmp_path / "corpus" / "thesis.tex").write_text("years of work")
  before = folder_checksums(tmp_path)
  assert _build(tmp_path, mono, "--force", "--vocab-size", "40") == 1  # a build that would succeed
  assert (f"{tmp_path / 'corpus'} is not empty and is not an xlm-jax corpus (it has no manifest.json; it "
          "holds thesis.tex)") in capsys.readouterr().err
  assert folder_checksums(tmp_path) == before


@pytest.mark.parametrize("flags,message", [
    (["--encoding", "utf-16"], "argument --encoding: encoding 'utf-16' is not ASCII-compatible"),
    (["--encoding", "klingon"], "argument --encoding: unknown encoding 'klingon'"),
    (["--test-fraction", "1"], "argument --test-fraction: must be a number in [0, 1), got '1'"),
    (["--max-unit-lines", "0"], "argument --max-unit-lines: must be a whole number >= 1, got '0'"),
    (["--min-sentences", "-1"], "argument --min-sentences: must be a whole number >= 0, got '-1'"),
    (["--vocab-size", "0"], "argument --vocab-size: must be a whole number >= 1, got '0'"),
])
def test_build_flags_are_checked_before_reading(flags, message, tmp_path, capsys):
  (tmp_path / "mono").mkdir()
  (tmp_path / "mono" / "en.txt").write_text("Hello.\n")
  before = folder_checksums(tmp_path)
  with pytest.raises(SystemExit):
    _build(tmp_path, tmp_path / "mono", *flags)
  assert message in capsys.readouterr().err
  assert folder_checksums(tmp_path) == before and listing(tmp_path) == ["mono", "mono/en.txt"]
