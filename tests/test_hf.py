"""Hugging Face XLM-R interop (xlm_jax/export/hf.py): logit parity with transformers on real
multilingual text, bit-identical round trips both ways, tokenizer ids, and bad input.

Models are random `XLMRobertaForMaskedLM`s built here (the hub is unreachable); their weights are
perturbed away from Hugging Face's init (LayerNorm 1/0, zero biases), so a swapped or dropped
tensor cannot hide. Needs the `hf` extra (transformers + CPU torch), which the test command
installs.
"""
import dataclasses
import io
import json
import logging
import os
import pathlib

import numpy as np
import pytest

try:
  import torch
  import transformers
except ImportError as err:
  if os.environ.get("CI"):  # the test command installs the extra: missing means a broken install
    raise
  pytest.skip(f"needs the hf extra (pip install -e '.[test,hf]'): {err}", allow_module_level=True)

import jax  # noqa: E402
import sentencepiece as spm  # noqa: E402
from safetensors import safe_open  # noqa: E402

import xlm_jax  # noqa: E402
from xlm_jax import cli  # noqa: E402
from xlm_jax.data.tokenizer import Tokenizer  # noqa: E402
from xlm_jax.export import hf  # noqa: E402
from xlm_jax.export.export import export_model, load_pretrained  # noqa: E402
from xlm_jax.models.encoder import EncoderConfig, Model, convert_params  # noqa: E402

# (spm pieces, layers, heads, hidden, intermediate, type_vocab_size, max_positions, eps)
SHAPES = {
    "2l_4h": (1000, 2, 4, 64, 128, 1, 130, 1e-5),
    "3l_2h_types2": (1200, 3, 2, 48, 80, 2, 100, 1e-5),
    "1l_8h_wide": (800, 1, 8, 128, 512, 1, 514, 1e-5),
    "4l_3h_eps12": (1500, 4, 3, 96, 192, 1, 130, 1e-12),
}


@pytest.fixture(scope="module")
def texts(small_corpus):
  """Real held-out sentences of every corpus language (ja and zh included)."""
  return {lang: small_corpus.mono_texts(lang, "test")[:40] for lang in small_corpus.languages}


@pytest.fixture(scope="module")
def xlmr_spm(small_corpus):
  """pieces -> an XLM-R-layout SentencePiece model (<unk>=0, <s>=1, </s>=2, no <pad>) trained
  on the corpus, as fairseq trained XLM-R's."""
  train = [t for lang in small_corpus.languages for t in small_corpus.mono_texts(lang, "train")]
  cache = {}

  def make(pieces):
    if pieces not in cache:
      out = io.BytesIO()
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(train), model_writer=out, vocab_size=pieces,
          model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
          character_coverage=0.98, num_threads=1, minloglevel=2)
      cache[pieces] = out.getvalue()
    return cache[pieces]
  return make


def _perturb(model, seed):
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for param in model.parameters():  # the tied decoder is the embedding: perturbed once
      param.add_(0.05 * torch.randn(param.shape, generator=generator))


def make_hf_folder(folder, spm_bytes, shape, seed=0):
  pieces, layers, heads, hidden, ffn, types, positions, eps = shape
  torch.manual_seed(seed)
  config = transformers.XLMRobertaConfig(
      vocab_size=pieces + 2, hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=ffn, type_vocab_size=types,
      max_position_embeddings=positions, layer_norm_eps=eps, pad_token_id=1, bos_token_id=0,
      eos_token_id=2, initializer_range=0.1)
  model = transformers.XLMRobertaForMaskedLM(config).eval()
  _perturb(model, seed)
  model.save_pretrained(folder)
  (pathlib.Path(folder) / hf.SPM_FILE).write_bytes(spm_bytes)
  tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(folder)
  tokenizer.save_pretrained(folder)
  return model, tokenizer


def _batch(tokenizer, texts, max_length=48):
  rows = [t for lang in sorted(texts) for t in texts[lang][:3]]
  return tokenizer(rows, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_logits_match_transformers(tmp_path, xlmr_spm, texts, name):
  shape = SHAPES[name]
  model, tokenizer = make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape, seed=len(name))
  batch = _batch(tokenizer, texts)
  assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
  with torch.no_grad():
    want = model(**batch).logits.numpy()
  export = hf.convert_from_hf(tmp_path / "hf", tmp_path / "export")
  ours = load_pretrained(export)
  got = ours.mlm_logits(batch["input_ids"].numpy(), batch["attention_mask"].numpy())
  assert got.shape == want.shape
  # Every position, padding included (both models let padding queries see the real keys).
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # In training the table is padded to a multiple of vocab_multiple (128): same real logits.
  config = ours.model.config
  padded = EncoderConfig.from_dict({**config.to_dict(), "vocab_multiple": 128})
  assert padded.padded_vocab_size > config.vocab_size
  params = convert_params(jax.device_get(ours.params), config, padded)
  logits = Model(padded).apply({"params": params}, batch["input_ids"].numpy(),
                               label_positions=np.broadcast_to(
                                   np.arange(want.shape[1]), want.shape[:2]),
                               attention_mask=(batch["attention_mask"].numpy()[:, None, None, :]
                                               .astype(bool).repeat(want.shape[1], axis=2)))
  np.testing.assert_allclose(np.asarray(logits)[..., :config.vocab_size], want, atol=1e-4, rtol=0)
  assert np.asarray(logits)[..., config.vocab_size:].max() < want.min() - 1e3


def _tensors(folder, name=hf.SAFETENSORS_FILE):
  with safe_open(str(folder / name), framework="numpy") as f:
    return {name: f.get_tensor(name) for name in f.keys()}


def test_hf_to_xlm_jax_to_hf_is_bit_identical(tmp_path, xlmr_spm):
  shape = SHAPES["3l_2h_types2"]
  make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape, seed=3)
  hf.convert_from_hf(tmp_path / "hf", tmp_path / "export")
  assert cli.main(["convert", "--from", "xlm-jax", str(tmp_path / "export"),
                   "--out", str(tmp_path / "back")]) == 0
  before, after = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
  assert sorted(before) == sorted(after)
  for name in before:
    assert before[name].shape == after[name].shape, name
    assert before[name].view(np.uint32).tobytes() == after[name].view(np.uint32).tobytes(), name
  want = json.loads((tmp_path / "hf" / "config.json").read_text())
  got = json.loads((tmp_path / "back" / "config.json").read_text())
  for field in hf._CONFIG_FIELDS:
    assert got[field] == want[field], field
  assert hf.MASK_ID_FIELD not in got  # <mask> was last already: nothing moved
  assert (tmp_path / "back" / hf.SPM_FILE).read_bytes() == (tmp_path / "hf" / hf.SPM_FILE).read_bytes() or \
      _same_pieces(tmp_path / "back" / hf.SPM_FILE, tmp_path / "hf" / hf.SPM_FILE)


def _same_pieces(a, b):
  from sentencepiece import sentencepiece_model_pb2 as pb
  pa = pb.ModelProto.FromString(pathlib.Path(a).read_bytes()).pieces
  pb_ = pb.ModelProto.FromString(pathlib.Path(b).read_bytes()).pieces
  return [(p.piece, p.type, p.score) for p in pa] == [(p.piece, p.type, p.score) for p in pb_]


@pytest.fixture(scope="module")
def native_export(small_corpus, tmp_path_factory):
  """An encoder initialised here with the corpus's own tokenizer (<mask> at id 4), exported."""
  tokenizer = Tokenizer(small_corpus.tokenizer_path)
  config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2,
                         num_heads=4, mlp_dim=128, max_positions=130, initializer_range=0.2,
                         scan_layers=True)
  ids = np.zeros((1, 4), np.int32)
  params = jax.device_get(Model(config).init(jax.random.key(7), ids)["params"])
  import flax.linen as nn
  params = jax.tree.map(lambda x: x + 0.05 * np.random.default_rng(1).standard_normal(x.shape)
                        .astype(np.float32), nn.meta.unbox(params))
  folder = tmp_path_factory.mktemp("native") / "export"
  export_model(folder, params, config.to_dict(), tokenizer.serialized())
  return folder


def test_xlm_jax_to_hf_to_xlm_jax_is_bit_identical(tmp_path, native_export, texts):
  original = load_pretrained(native_export)
  assert original.tokenizer.mask_id == 4
  hf.convert_to_hf(native_export, tmp_path / "hf")
  assert json.loads((tmp_path / "hf" / "config.json").read_text())[hf.MASK_ID_FIELD] == 4
  assert cli.main(["convert", "--from", "hf", str(tmp_path / "hf"),
                   "--out", str(tmp_path / "again")]) == 0
  again = load_pretrained(tmp_path / "again")
  # Hugging Face has one tensor per layer: the import is unrolled, the original was scanned.
  assert original.model.config.scan_layers and not again.model.config.scan_layers
  assert again.model.config == dataclasses.replace(original.model.config, scan_layers=False)
  want = jax.tree_util.tree_leaves_with_path(jax.device_get(original.params))
  got = dict(jax.tree_util.tree_leaves_with_path(convert_params(
      jax.device_get(again.params), again.model.config, original.model.config)))
  assert len(want) == len(got)
  for path, value in want:
    assert np.asarray(value).tobytes() == np.asarray(got[path]).tobytes(), path
  for lang, rows in texts.items():
    assert again.tokenizer.encode(rows) == original.tokenizer.encode(rows), lang
  assert again.tokenizer.mask_id == 4


def test_transformers_loads_the_export_without_warnings(tmp_path, native_export):
  hf.convert_to_hf(native_export, tmp_path / "hf")
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger("transformers")
  logger.addHandler(handler)
  try:
    model, info = transformers.XLMRobertaForMaskedLM.from_pretrained(
        tmp_path / "hf", output_loading_info=True)
    transformers.XLMRobertaTokenizer.from_pretrained(tmp_path / "hf")
  finally:
    logger.removeHandler(handler)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info.get("mismatched_keys"), info
  loud = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
  assert not [m for m in loud if "weight" in m.lower() or "initialized" in m.lower()], loud
  assert model.roberta.embeddings.word_embeddings.weight.data_ptr() == \
      model.lm_head.decoder.weight.data_ptr()  # still tied


def test_tokenizer_ids_match_both_ways(tmp_path, xlmr_spm, native_export, texts):
  assert {"ja", "zh"} <= set(texts)
  # Hugging Face -> xlm-jax: the converted tokenizer gives Hugging Face's ids, literally.
  shape = SHAPES["2l_4h"]
  _, hf_tokenizer = make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape)
  _, _, ours, _ = hf.read_hf_folder(tmp_path / "hf")
  for lang, rows in texts.items():
    want = [hf_tokenizer(t, add_special_tokens=False)["input_ids"] for t in rows]
    assert ours.encode(rows) == want, lang
  assert (ours.bos_id, ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, 2, 3)
  assert ours.mask_id == hf_tokenizer.mask_token_id == ours.vocab_size - 1
  # xlm-jax -> Hugging Face: every id maps through the one <mask> move.
  hf.convert_to_hf(native_export, tmp_path / "out")
  theirs = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path / "out")
  native = load_pretrained(native_export).tokenizer
  to_hf = np.argsort(hf._vocab_order(native.vocab_size, native.mask_id))
  for lang, rows in texts.items():
    want = [theirs(t, add_special_tokens=False)["input_ids"] for t in rows]
    assert [[int(to_hf[i]) for i in ids] for ids in native.encode(rows)] == want, lang
    for ids in native.encode(rows):  # the same pieces on both sides
      assert theirs.convert_ids_to_tokens([int(to_hf[i]) for i in ids]) == \
          [native.id_to_piece(i) for i in ids]


def test_fill_mask_top5_matches_transformers(tmp_path, native_export):
  hf.convert_to_hf(native_export, tmp_path / "hf")
  model = transformers.XLMRobertaForMaskedLM.from_pretrained(tmp_path / "hf").eval()
  tokenizer = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path / "hf")
  ours = load_pretrained(native_export)
  texts = ["Datei <mask> gefunden", "The <mask> is not found", "ファイルが<mask>"]
  got = ours.fill_mask(texts, top_k=5)
  for text, masks in zip(texts, got):
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
      logits = model(**batch).logits[0]
    at = (batch["input_ids"][0] == tokenizer.mask_token_id).nonzero()[:, 0]
    assert len(masks) == len(at) == 1
    want = tokenizer.convert_ids_to_tokens(torch.topk(logits[at[0]], 5).indices.tolist())
    assert [m["piece"] for m in masks[0]] == want, text


def test_pytorch_bin_reads_like_safetensors(tmp_path, xlmr_spm):
  shape = SHAPES["2l_4h"]
  model, _ = make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape, seed=5)
  params_st, config_st, _, _ = hf.read_hf_folder(tmp_path / "hf")
  (tmp_path / "hf" / hf.SAFETENSORS_FILE).unlink()
  torch.save(model.state_dict(), tmp_path / "hf" / hf.TORCH_FILE)
  params_pt, config_pt, _, info = hf.read_hf_folder(tmp_path / "hf")
  assert config_pt == config_st and info["weights_file"] == hf.TORCH_FILE
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params_st),
                               jax.tree_util.tree_leaves_with_path(params_pt)):
    assert np.array_equal(a, b), path


def test_load_pretrained_reads_a_hf_folder(tmp_path, xlmr_spm, texts):
  shape = SHAPES["2l_4h"]
  make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape)
  model = xlm_jax.load_pretrained(tmp_path / "hf")
  vectors = model.encode(texts["de"][:3])
  assert vectors.shape == (3, 64) and np.isfinite(vectors).all()


def test_pooler_is_left_out_with_a_message(tmp_path, xlmr_spm, caplog):
  shape = SHAPES["2l_4h"]
  pieces, layers, heads, hidden, ffn, types, positions, eps = shape
  make_hf_folder(tmp_path / "hf", xlmr_spm(pieces), shape)
  tensors = _tensors(tmp_path / "hf")
  tensors["roberta.pooler.dense.weight"] = np.ones((hidden, hidden), np.float32)
  tensors["roberta.pooler.dense.bias"] = np.ones((hidden,), np.float32)
  from safetensors.numpy import save_file
  save_file(tensors, tmp_path / "hf" / hf.SAFETENSORS_FILE, metadata={"format": "pt"})
  with caplog.at_level(logging.WARNING):
    export = hf.convert_from_hf(tmp_path / "hf", tmp_path / "export")
  assert "roberta.pooler.dense.weight" in caplog.text
  meta = json.loads((export / "config.json").read_text())["metadata"]["converted_from"]
  assert set(meta["ignored"]) == {"roberta.pooler.dense.weight", "roberta.pooler.dense.bias"}


# --- Bad input: each message names the file and the field --------------------------------------


@pytest.fixture
def hf_folder(tmp_path, xlmr_spm):
  shape = SHAPES["2l_4h"]
  make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape)
  return tmp_path / "hf"


def _edit_config(folder, **changes):
  path = folder / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))


def test_folder_without_config(hf_folder, tmp_path):
  (hf_folder / "config.json").unlink()
  with pytest.raises(ValueError, match=r"config.json is missing"):
    hf.convert_from_hf(hf_folder, tmp_path / "export")


def test_non_xlmr_model_type(hf_folder, tmp_path):
  _edit_config(hf_folder, model_type="bert")
  with pytest.raises(ValueError, match=r"config.json: model_type 'bert' is not XLM-R"):
    hf.convert_from_hf(hf_folder, tmp_path / "export")


def test_shape_mismatch_names_tensor_and_field(hf_folder, tmp_path):
  _edit_config(hf_folder, intermediate_size=130)
  with pytest.raises(ValueError, match=r"model.safetensors: roberta.encoder.layer.0.intermediate"
                                       r".dense.weight has shape \(128, 64\).*intermediate_size 130"):
    hf.convert_from_hf(hf_folder, tmp_path / "export")


def test_truncated_safetensors(hf_folder, tmp_path):
  path = hf_folder / hf.SAFETENSORS_FILE
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(ValueError, match=r"model.safetensors is cut short: its header describes"):
    hf.convert_from_hf(hf_folder, tmp_path / "export")
  assert not (tmp_path / "export").exists()  # nothing half-written


def test_tokenizer_size_disagrees_with_embeddings(hf_folder, tmp_path, xlmr_spm):
  (hf_folder / hf.SPM_FILE).write_bytes(xlmr_spm(800))
  with pytest.raises(ValueError, match=r"sentencepiece.bpe.model gives 802 ids.*config.json says "
                                       r"vocab_size 1002"):
    hf.convert_from_hf(hf_folder, tmp_path / "export")


def test_cli_reports_bad_input_in_one_line(hf_folder, tmp_path, capsys):
  _edit_config(hf_folder, hidden_act="relu")
  assert cli.main(["convert", "--from", "hf", str(hf_folder), "--out", str(tmp_path / "x")]) == 2
  assert "hidden_act 'relu'" in capsys.readouterr().err


def test_activation_travels_as_hidden_act(tmp_path, small_corpus):
  """EMS's swish FFN is written as HF's "silu" and read back as swish; XLM-R's gelu stays gelu."""
  tokenizer = Tokenizer(small_corpus.tokenizer_path)
  for ours, theirs in (("swish", "silu"), ("gelu", "gelu")):
    config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=1,
                           num_heads=2, mlp_dim=64, max_positions=66, activation=ours)
    written = hf.hf_config(config, tokenizer, None)
    assert written["hidden_act"] == theirs
    folder = tmp_path / ours
    folder.mkdir()
    (folder / hf.CONFIG_FILE).write_text(json.dumps(written))
    assert hf.read_hf_config(folder)[0].activation == ours


def test_language_specific_model_is_refused(tmp_path, small_corpus):
  tokenizer = Tokenizer(small_corpus.tokenizer_path)
  config = EncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=1,
                         num_heads=2, mlp_dim=64, max_positions=66, num_languages=2)
  ids = np.zeros((1, 4), np.int32)
  import flax.linen as nn
  params = nn.meta.unbox(Model(config).init(jax.random.key(0), ids, lang_ids=ids)["params"])
  export_model(tmp_path / "export", params, config.to_dict(), tokenizer.serialized(),
               extra_metadata={"languages": ["en", "de"]})
  with pytest.raises(ValueError, match=r"language embeddings.*XLM-R has no language inputs"):
    hf.convert_to_hf(tmp_path / "export", tmp_path / "hf")
  assert not (tmp_path / "hf").exists()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path, native_export):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "notes.txt").write_text("keep me")
  with pytest.raises(ValueError, match="refusing to replace it"):
    hf.convert_to_hf(native_export, tmp_path / "mine")
  assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --- Continued pre-training from a Hugging Face folder (init_from=hf:PATH) --------------------


def _run_overrides(corpus_dir, folder, **extra):
  fields = {
      "data.corpus_dir": str(corpus_dir), "data.build_if_missing": False, "data.seq_len": 32,
      "data.eval_sentences": 8, "train.batch_size": 8, "train.total_steps": 50,
      "train.log_every": 1, "train.checkpoint_every": 100, "train.eval_every": 0,
      "train.progress_bar": False, "train.async_checkpointing": False,
      "optimizer.warmup_steps": 5, "eval.retrieval_items": 16, "export.enabled": False,
      # Dropout off, so the first step's loss is a deterministic function of the batch.
      "model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0,
      "init_from": f"hf:{folder}",
  }
  fields.update(extra)
  return [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in fields.items()]


# Two 50-step runs: minutes on 2 cores, so `-m slow`. The default suite still checks the warm start
# from a Hugging Face folder (test_init_from_hf_with_language_embeddings_starts_at_xlmr).
@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["ems.py", "emma_x.py:ctl"])
def test_init_from_hf_trains_from_the_converted_model(small_corpus, tmp_path, monkeypatch, xlmr_spm,
                                                      experiment):
  from xlm_jax import config as config_lib
  from xlm_jax import mesh as mesh_lib
  from xlm_jax.train import trainer
  from xlm_jax.train import warm_start as warm_start_lib
  from xlm_jax.train.optimizer import make_optimizer
  from xlm_jax.train.state import create_train_state

  shape = SHAPES["2l_4h"]
  make_hf_folder(tmp_path / "hf", xlmr_spm(shape[0]), shape, seed=11)
  repo = pathlib.Path(__file__).resolve().parents[1]
  config = config_lib.load_config(str(repo / "experiments" / experiment),
                                  _run_overrides(small_corpus.dir, tmp_path / "hf"))
  first = []
  original = trainer._next_batches

  def recording(*args):
    batches = original(*args)
    if not first:
      first.append(jax.device_get(batches))
    return batches
  monkeypatch.setattr(trainer, "_next_batches", recording)
  summary = trainer.train_and_evaluate(config, tmp_path / "work")
  assert summary["step"] == 50
  logged = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
  step1 = next(r for r in logged if r["step"] == 1)
  assert np.isfinite([r["train/loss"] for r in logged if "train/loss" in r][-1])

  # The same run's pieces, built again: the warm-started encoder and MLM head are the converted
  # Hugging Face model, bit for bit, and the tokenizer is the model's.
  corpus = trainer.open_corpus(config)
  tokenizer = trainer.open_tokenizer(config, corpus)
  _, _, hf_tokenizer, _ = hf.read_hf_folder(tmp_path / "hf")
  assert tokenizer.serialized() == hf_tokenizer.serialized()
  mcfg = trainer.model_config(config, tokenizer)
  assert (mcfg.hidden_size, mcfg.num_layers, mcfg.vocab_size) == (64, 2, shape[0] + 2)
  model = Model(mcfg)
  mesh = mesh_lib.make_mesh(config.mesh)
  bound = trainer.bind_objectives(config, model, tokenizer,
                                  trainer.load_objective_resources(config, corpus, tokenizer),
                                  data_parallel_size=mesh_lib.data_parallel_size(mesh))
  tx, _ = make_optimizer(config.optimizer, config.train.total_steps)
  state, shardings, _ = create_train_state(model, tx, bound, config.data.seq_len, mesh,
                                           mesh_lib.logical_rules(config.mesh), config.seed)
  state, info = warm_start_lib.warm_start(state, shardings, bound, config.seed, config.init_from)
  assert all(path.startswith("heads/") for path in info["kept"])  # only the objectives' heads
  hf_params, hf_config, _, _ = hf.read_hf_folder(tmp_path / "hf")
  want = convert_params(hf_params, hf_config, dataclasses.replace(
      hf_config, vocab_multiple=mcfg.vocab_multiple, scan_layers=mcfg.scan_layers))
  got = jax.device_get(trainer.model_params(state.params))
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(want),
                               jax.tree_util.tree_leaves_with_path(got)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), path
  # The first step's losses are the converted model's losses on that step's batch and masks:
  # the run's own update step, applied to a state holding the independently converted weights.
  placed = {k: jax.device_put(v, shardings.params[k]) for k, v in want.items()}
  state = state.replace(params={**state.params, **placed})
  tx, schedule = make_optimizer(config.optimizer, config.train.total_steps)
  fns = trainer.jit_update_steps(bound, tx, schedule, shardings, mesh)
  batches = {kind: mesh_lib.to_global_batch(batch, mesh) for kind, batch in first[0].items()}
  _, metrics = trainer.run_group(fns, state, batches)
  losses = {k: v for k, v in jax.device_get(metrics).items() if k.endswith("loss")}
  # EMMA-X trains MLM beside its contrastive loss; EMS's XTR predicts the other sentence's tokens
  # through the same tied decoder and MLM head.
  assert any(("mlm" if "emma" in experiment else "xtr") in k for k in losses), losses
  for key, value in losses.items():
    np.testing.assert_allclose(step1[f"train/{key}"], value, rtol=1e-5, atol=1e-5, err_msg=key)


def test_streamed_params_file_is_flax_msgpack(monkeypatch):
  import flax.serialization
  from xlm_jax.export.export import write_params_msgpack
  rng = np.random.default_rng(0)
  tree = {"encoder": {"w": rng.standard_normal((6, 5)).astype(np.float32),
                      "b": np.zeros((5,), np.float32)},
          "lm_head": {"bias": rng.standard_normal(7).astype(np.float32)}}
  # Arrays above flax's chunk size are split into chunks: make that happen at test size.
  monkeypatch.setattr(flax.serialization, "MAX_CHUNK_SIZE", 64)
  out = io.BytesIO()
  write_params_msgpack(tree, out)
  assert out.getvalue() == flax.serialization.msgpack_serialize(tree)
  restored = flax.serialization.msgpack_restore(out.getvalue())
  assert np.array_equal(restored["encoder"]["w"], tree["encoder"]["w"])


def test_safetensors_reader_matches_the_library(tmp_path):
  from safetensors.numpy import save_file
  rng = np.random.default_rng(0)
  tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32),
             "b": rng.standard_normal((7,)).astype(np.float16),
             "c": rng.standard_normal((2, 2, 2)).astype(np.float64)}
  save_file(tensors, tmp_path / "w.safetensors", metadata={"format": "pt"})
  ours = hf._SafetensorsFile(tmp_path / "w.safetensors")
  assert sorted(ours.names) == ["a", "b", "c"]
  for name, value in tensors.items():
    assert ours.shape(name) == value.shape
    assert np.array_equal(ours.get(name), value.astype(np.float32)), name
  # And the library reads what our streaming writer writes.
  with open(tmp_path / "ours.safetensors", "wb") as f:
    hf._safetensors_writer([(n, v.shape, lambda v=v: v.astype(np.float32))
                            for n, v in tensors.items()], {"format": "pt"})(f)
  back = _tensors(tmp_path, "ours.safetensors")
  for name, value in tensors.items():
    assert np.array_equal(back[name], value.astype(np.float32)), name

