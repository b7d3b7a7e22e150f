"""Hugging Face XLM-R interop: convert both ways, without torch.

    xlm-jax convert --from hf PATH --out EXPORT_DIR        (read_hf_folder -> export_model)
    xlm-jax convert --from xlm-jax EXPORT_DIR --out HF_DIR  (write_hf_folder)
    --config.init_from=hf:PATH                               (the trainer calls read_hf_folder)

A Hugging Face XLM-R folder holds config.json, model.safetensors (or pytorch_model.bin) and
sentencepiece.bpe.model. Every trap the conversion must get right is handled in one place here:

- Ids. Hugging Face's XLM-R ids are fairseq's: <s>=0, <pad>=1, </s>=2, <unk>=3, then
  SentencePiece id + 1 for every other piece, and <mask> last. The SentencePiece file itself has
  <unk>=0, <s>=1, </s>=2 and no <pad> or <mask>. `tokenizer_from_hf_spm` rewrites it into a
  SentencePiece model whose ids ARE the fairseq ids (pieces reordered, scores kept, so the
  segmentation is unchanged), which the rest of xlm-jax uses as any other tokenizer.
- Tokenizers trained here put <mask> at id 4, right after the four fairseq specials, and every
  other piece in the same order as Hugging Face would. So the only row to move on export is
  <mask>: to the end, and back on import. The HF config.json records the original position as
  `xlm_jax_mask_id`, which makes xlm-jax -> HF -> xlm-jax bit-identical. A converted XLM-R
  already has <mask> last: nothing moves, and HF -> xlm-jax -> HF is bit-identical too.
- PyTorch Linear weights are (out, in): transposed here. q, k, v are [D, H, Dh] in xlm-jax.
- The decoder is tied to the word embeddings (no `lm_head.decoder.weight` is written; one in a
  file must equal the embeddings); its bias is `lm_head.bias`.
- Positions start at padding_idx + 1 and pad positions use padding_idx in both models
  (models/attention.py), so max_position_embeddings (514 for XLM-R) carries over unchanged.
- token_type_embeddings are kept whole; both models add row 0 (XLM-R has one row).
- The pooler (`roberta.pooler.*`) belongs to XLMRobertaModel, not the masked LM: it is left out
  with a logged message and listed in the export's metadata, never dropped silently.

Weights are streamed tensor by tensor (a safetensors reader with plain reads and a writer that
writes each tensor as it is converted; the `safetensors` package is the reference the tests
check both against), so a conversion holds about one copy of the model.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import struct
from typing import Callable

import numpy as np
from sentencepiece import sentencepiece_model_pb2

from xlm_jax.atomic_files import check_replaceable, write_directory_atomically
from xlm_jax.data.tokenizer import MASK_PIECE, Tokenizer
from xlm_jax.models.encoder import EncoderConfig, convert_params, param_shapes

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
SPM_FILE = "sentencepiece.bpe.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
MODEL_TYPES = ("xlm-roberta",)
# Files every folder written by write_hf_folder has: only such a folder is ever replaced.
HF_MARKERS = (CONFIG_FILE, SAFETENSORS_FILE, SPM_FILE)
# config.json field recording where a tokenizer trained here had <mask> (see the module doc).
MASK_ID_FIELD = "xlm_jax_mask_id"
# fairseq's dictionary starts with these four; a SentencePiece id i >= 3 becomes i + 1.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
_SPM_SPECIALS = ("<unk>", "<s>", "</s>")  # the first three pieces of XLM-R's SentencePiece file
_PIECE = sentencepiece_model_pb2.ModelProto.SentencePiece

# Hugging Face config.json field -> EncoderConfig field.
_CONFIG_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads", "intermediate_size": "mlp_dim",
    "max_position_embeddings": "max_positions", "pad_token_id": "pad_id",
    "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "dropout_rate", "attention_probs_dropout_prob": "attention_dropout_rate",
    "initializer_range": "initializer_range",
}
# The EncoderConfig fields a pretrained model fixes (shapes and numerics of its weights): a run
# started from it (init_from=hf:PATH) takes these from the model and the rest from its config.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
                       "max_positions", "pad_id", "type_vocab_size", "layer_norm_eps",
                       "activation")
# Hugging Face's hidden_act names (transformers' ACT2FN) -> EncoderConfig.activation, and back.
# "silu" and "swish" are the same function there: x * sigmoid(x).
_ACTIVATIONS = {"gelu": "gelu", "silu": "swish", "swish": "swish"}
_HF_ACTIVATION = {"gelu": "gelu", "swish": "silu"}
# Read from the file when present; these are XLMRobertaConfig's own defaults otherwise.
_CONFIG_DEFAULTS = {"type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
                    "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
                    "pad_token_id": 1, "max_position_embeddings": 512}


class ConversionError(ValueError):
  """A folder that cannot be converted; the message names the file and the field."""


# =============================================================================================
# config.json
# =============================================================================================


def read_hf_config(folder) -> tuple[EncoderConfig, dict]:
  """(EncoderConfig, the raw config.json) of a Hugging Face XLM-R folder."""
  folder = pathlib.Path(folder).expanduser()
  path = folder / CONFIG_FILE
  if not folder.is_dir():
    raise FileNotFoundError(f"Hugging Face folder {folder} does not exist")
  if not path.is_file():
    raise ConversionError(f"{path} is missing: {folder} is not a Hugging Face model folder (it "
                          "needs config.json, model.safetensors or pytorch_model.bin, and "
                          f"{SPM_FILE}); save one with model.save_pretrained(folder)")
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ConversionError(f"{path} is not valid JSON: {err}") from err
  if not isinstance(raw, dict):
    raise ConversionError(f"{path} holds a {type(raw).__name__}, not a config object")
  model_type = raw.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ConversionError(f"{path}: model_type {model_type!r} is not XLM-R ({MODEL_TYPES[0]!r}); "
                          "only XLM-R encoders (XLMRobertaForMaskedLM) can be converted")
  act = raw.get("hidden_act", "gelu")
  if act not in _ACTIVATIONS:
    raise ConversionError(f"{path}: hidden_act {act!r} is not supported; xlm-jax computes "
                          f"{sorted(_ACTIVATIONS)} (XLM-R's 'gelu' is the exact erf GELU)")
  position_type = raw.get("position_embedding_type", "absolute")
  if position_type != "absolute":
    raise ConversionError(f"{path}: position_embedding_type {position_type!r} is not supported "
                          "(XLM-R uses 'absolute')")
  if raw.get("is_decoder") or raw.get("add_cross_attention"):
    raise ConversionError(f"{path}: is_decoder/add_cross_attention are set; xlm-jax converts "
                          "bidirectional encoders only")
  fields = {}
  for hf_name, ours in _CONFIG_FIELDS.items():
    if hf_name not in raw and hf_name not in _CONFIG_DEFAULTS:
      raise ConversionError(f"{path} has no field {hf_name!r} (needed for {ours})")
    value = raw.get(hf_name, _CONFIG_DEFAULTS.get(hf_name))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConversionError(f"{path}: field {hf_name!r} must be a number, got {value!r}")
    fields[ours] = value
  # Exports and the HF side have exactly vocab_size rows and one layer per name.
  fields.update(activation=_ACTIVATIONS[act], vocab_multiple=1, scan_layers=False,
                dtype="float32", param_dtype="float32")
  try:
    config = EncoderConfig.from_dict(fields)
  except ValueError as err:
    raise ConversionError(f"{path}: {err}") from err
  return config, raw


def hf_config(config: EncoderConfig, tokenizer: Tokenizer, mask_id: int | None,
              extra: dict | None = None) -> dict:
  """The config.json of an XLMRobertaForMaskedLM with `config`'s architecture."""
  out = {hf_name: getattr(config, ours) for hf_name, ours in _CONFIG_FIELDS.items()}
  out.update({
      "architectures": ["XLMRobertaForMaskedLM"], "model_type": MODEL_TYPES[0],
      "hidden_act": _HF_ACTIVATION[config.activation], "position_embedding_type": "absolute",
      "tie_word_embeddings": True,
      "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "dtype": "float32",
  })
  if mask_id is not None:
    out[MASK_ID_FIELD] = mask_id
  out.update(extra or {})
  return out


# =============================================================================================
# Tokenizer: SentencePiece ids <-> fairseq ids
# =============================================================================================


def _piece(text: str, kind, score: float = 0.0):
  return _PIECE(piece=text, type=kind, score=score)


def tokenizer_from_hf_spm(spm_bytes: bytes, mask_id: int | None = None,
                          source: str = SPM_FILE) -> Tokenizer:
  """A Tokenizer whose ids are Hugging Face's XLM-R ids, from XLM-R's SentencePiece file.

  Pieces are reordered to fairseq's order (<s> <pad> </s> <unk>, then the file's pieces from its
  id 3 on, then <mask>), scores and the normalizer kept, so every text segments exactly as before
  and each piece gets the id Hugging Face gives it. `mask_id` (from `xlm_jax_mask_id`) puts
  <mask> back where a tokenizer trained here had it.
  """
  try:
    proto = sentencepiece_model_pb2.ModelProto.FromString(spm_bytes)
  except Exception as err:  # protobuf's DecodeError has no stable import path
    raise ConversionError(f"{source} is not a SentencePiece model ({type(err).__name__}: {err})"
                          ) from err
  head = tuple(p.piece for p in proto.pieces[:3])
  if head != _SPM_SPECIALS:
    raise ConversionError(f"{source}: the first pieces are {list(head)}, not XLM-R's "
                          f"{list(_SPM_SPECIALS)} (SentencePiece ids 0, 1, 2); it is not an XLM-R "
                          "tokenizer, whose ids Hugging Face derives from that layout")
  rest = list(proto.pieces[3:])
  if any(p.piece in FAIRSEQ_SPECIALS + (MASK_PIECE,) for p in rest):
    raise ConversionError(f"{source} holds <pad> or <mask> as an ordinary piece; Hugging Face's "
                          "XLMRobertaTokenizer adds both itself, so the ids would collide")
  pieces = [_piece("<s>", _PIECE.CONTROL), _piece("<pad>", _PIECE.CONTROL),
            _piece("</s>", _PIECE.CONTROL), _piece("<unk>", _PIECE.UNKNOWN)]
  pieces += rest
  mask = _piece(MASK_PIECE, _PIECE.USER_DEFINED)
  size = len(pieces) + 1
  if mask_id is None or mask_id == size - 1:
    pieces.append(mask)
  elif len(FAIRSEQ_SPECIALS) <= mask_id < size - 1:
    pieces.insert(mask_id, mask)
  else:
    raise ConversionError(f"{MASK_ID_FIELD} {mask_id} is outside [4, {size - 1}]")
  out = sentencepiece_model_pb2.ModelProto()
  out.CopyFrom(proto)
  del out.pieces[:]
  out.pieces.extend(pieces)
  spec = out.trainer_spec
  spec.bos_id, spec.pad_id, spec.eos_id, spec.unk_id = 0, 1, 2, 3
  spec.bos_piece, spec.pad_piece, spec.eos_piece, spec.unk_piece = FAIRSEQ_SPECIALS
  spec.vocab_size = len(pieces)
  return Tokenizer.from_bytes(out.SerializeToString())


def hf_spm_from_tokenizer(tokenizer) -> tuple[bytes, int]:
  """(XLM-R-layout SentencePiece bytes, <mask>'s id in `tokenizer`) for Hugging Face.

  Refuses tokenizers Hugging Face cannot reproduce: a language-tagged vocabulary (one model per
  language), a non-unigram model (XLMRobertaTokenizer reads every file as unigram), or special
  ids other than fairseq's.
  """
  if not hasattr(tokenizer, "serialized"):
    raise ConversionError("this model's tokenizer is language-tagged (data.vocabulary "
                          "'no_anchors': one SentencePiece model per language), which Hugging "
                          "Face's single XLMRobertaTokenizer cannot express; keep the xlm-jax "
                          "export format for it")
  proto = sentencepiece_model_pb2.ModelProto.FromString(tokenizer.serialized())
  if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
    kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
    raise ConversionError(f"the tokenizer is a SentencePiece {kind} model; Hugging Face's "
                          "XLMRobertaTokenizer reads its file as a unigram model, so ids would "
                          "differ. Train the corpus tokenizer with --model-type unigram")
  head = tuple(p.piece for p in proto.pieces[:4])
  if head != FAIRSEQ_SPECIALS:
    raise ConversionError(f"the tokenizer's first ids are {list(head)}, not fairseq's "
                          f"{list(FAIRSEQ_SPECIALS)}; Hugging Face's XLM-R ids assume them")
  mask_id = tokenizer.mask_id
  kept = [p for i, p in enumerate(proto.pieces) if i >= 4 and i != mask_id]
  out = sentencepiece_model_pb2.ModelProto()
  out.CopyFrom(proto)
  del out.pieces[:]
  out.pieces.extend([_piece("<unk>", _PIECE.UNKNOWN), _piece("<s>", _PIECE.CONTROL),
                     _piece("</s>", _PIECE.CONTROL)] + kept)
  spec = out.trainer_spec
  spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
  spec.vocab_size = len(out.pieces)
  del spec.user_defined_symbols[:]  # HF adds <mask> itself (as the last id)
  return out.SerializeToString(), mask_id


def _vocab_order(size: int, mask_id: int) -> np.ndarray:
  """hf_row -> xlm-jax row: <mask> (row mask_id here) is the last row on the Hugging Face side."""
  order = np.arange(size)
  return np.concatenate([order[:mask_id], order[mask_id + 1:], order[mask_id:mask_id + 1]])


def _tokenizer_files(spm_bytes: bytes, tokenizer, max_positions: int) -> dict[str, bytes]:
  specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
              "pad_token": "<pad>", "cls_token": "<s>", "mask_token": MASK_PIECE}
  config = {"tokenizer_class": "XLMRobertaTokenizer",
            # Positions start at pad_id + 1, so pad_id + 1 rows are never a token's position.
            "model_max_length": max_positions - tokenizer.pad_id - 1, **specials}
  return {SPM_FILE: spm_bytes,
          TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode(),
          SPECIAL_TOKENS_FILE: json.dumps(specials, indent=2, sort_keys=True).encode()}


# =============================================================================================
# Parameter names and layouts
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One Hugging Face tensor and the xlm-jax parameter it is."""
  hf_name: str
  path: tuple[str, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  hf_shape: Callable[[tuple], tuple] = tuple  # the Hugging Face shape, from xlm-jax's
  vocab_rows: bool = False  # rows follow the vocabulary (moved with <mask>)


def _same(x):
  return x


def _tensors(config: EncoderConfig) -> list[_Tensor]:
  """Every tensor of an XLMRobertaForMaskedLM with `config`'s shape, in file order."""
  d, h, dh = config.hidden_size, config.num_heads, config.head_dim

  def linear(hf, path):  # torch (out, in) <-> flax (in, out)
    return [_Tensor(f"{hf}.weight", path + ("kernel",), np.transpose, np.transpose,
                    lambda s: s[::-1]),
            _Tensor(f"{hf}.bias", path + ("bias",), _same, _same)]

  def norm(hf, path):
    return [_Tensor(f"{hf}.weight", path + ("scale",), _same, _same),
            _Tensor(f"{hf}.bias", path + ("bias",), _same, _same)]

  def heads_in(hf, path):  # q, k, v: (H*Dh, D) <-> (D, H, Dh)
    return [_Tensor(f"{hf}.weight", path + ("kernel",), lambda w: w.T.reshape(d, h, dh),
                    lambda k: k.reshape(d, h * dh).T, lambda s: (h * dh, d)),
            _Tensor(f"{hf}.bias", path + ("bias",), lambda b: b.reshape(h, dh),
                    lambda b: b.reshape(h * dh), lambda s: (h * dh,))]

  def heads_out(hf, path):  # attention output: (D, H*Dh) <-> (H, Dh, D)
    return [_Tensor(f"{hf}.weight", path + ("kernel",), lambda w: w.T.reshape(h, dh, d),
                    lambda k: k.reshape(h * dh, d).T, lambda s: (d, h * dh)),
            _Tensor(f"{hf}.bias", path + ("bias",), _same, _same)]

  emb = ("encoder", "embeddings")
  out = [_Tensor("roberta.embeddings.word_embeddings.weight", emb + ("word_embeddings", "embedding"),
                 _same, _same, vocab_rows=True),
         _Tensor("roberta.embeddings.position_embeddings.weight",
                 emb + ("position_embeddings", "embedding"), _same, _same),
         _Tensor("roberta.embeddings.token_type_embeddings.weight",
                 emb + ("token_type_embeddings", "embedding"), _same, _same)]
  out += norm("roberta.embeddings.LayerNorm", emb + ("layer_norm",))
  for i in range(config.num_layers):
    hf, ours = f"roberta.encoder.layer.{i}", ("encoder", f"layer_{i}")
    for name in ("query", "key", "value"):
      out += heads_in(f"{hf}.attention.self.{name}", ours + ("attention", name))
    out += heads_out(f"{hf}.attention.output.dense", ours + ("attention", "out"))
    out += norm(f"{hf}.attention.output.LayerNorm", ours + ("attention_layer_norm",))
    out += linear(f"{hf}.intermediate.dense", ours + ("intermediate",))
    out += linear(f"{hf}.output.dense", ours + ("output",))
    out += norm(f"{hf}.output.LayerNorm", ours + ("output_layer_norm",))
  out += linear("lm_head.dense", ("lm_head", "dense"))
  out += norm("lm_head.layer_norm", ("lm_head", "layer_norm"))
  out.append(_Tensor("lm_head.bias", ("lm_head", "bias"), _same, _same, vocab_rows=True))
  return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _language_free(config: EncoderConfig) -> str | None:
  """Why `config` has no Hugging Face equivalent, or None."""
  if config.num_languages:
    parts = ["language embeddings"] + [k for k in ("separate_embeddings", "separate_layers")
                                       if getattr(config, k)]
    return (f"it has {', '.join(parts)} (num_languages={config.num_languages}); XLM-R has no "
            "language inputs, so XLMRobertaForMaskedLM cannot hold or run these parameters")
  return None


# =============================================================================================
# Reading a Hugging Face folder
# =============================================================================================

# Tensors a Hugging Face file may hold that the masked LM does not use: (prefix, why).
_IGNORED = (("roberta.pooler.", "the pooler of XLMRobertaModel; the masked LM has none"),
            ("roberta.embeddings.position_ids", "a buffer (0, 1, 2, ...), not a weight"),
            ("lm_head.decoder.bias", "the same tensor as lm_head.bias"))


# safetensors dtype -> numpy dtype; bfloat16 through ml_dtypes (a jax dependency).
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "bfloat16"}


class _SafetensorsFile:
  """Tensor-by-tensor reader of a .safetensors file with plain reads, not a memory map.

  safetensors' own safe_open maps the file, and every page read stays in the process's
  resident memory until it is closed: a conversion would hold the file once more beside the
  converted params. Format: 8-byte little-endian header length, a JSON header (name -> dtype,
  shape, [begin, end) offsets into the data after the header), then the data.
  """

  def __init__(self, path: pathlib.Path):
    self.path = path
    size = path.stat().st_size
    with open(path, "rb") as f:
      head = f.read(8)
      length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
      if not 0 < length <= size - 8:
        raise ConversionError(f"{path} is not a safetensors file or is cut short (header length "
                              f"{length}, file size {size}); download or save it again")
      try:
        header = json.loads(f.read(length))
      except (ValueError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: its safetensors header is not valid JSON ({err}); the "
                              "file is damaged") from err
    self._data_start = 8 + length
    header.pop("__metadata__", None)
    self._entries = header
    end = max((e["data_offsets"][1] for e in header.values()), default=0)
    if self._data_start + end > size:
      raise ConversionError(f"{path} is cut short: its header describes {self._data_start + end} "
                            f"bytes, the file has {size}; download or save it again")
    self.names = list(header)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    entry = self._entries[name]
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
      raise ConversionError(f"{self.path}: tensor {name!r} has dtype {entry['dtype']}; only "
                            f"{sorted(_SAFETENSORS_DTYPES)} weights can be converted")
    if dtype == "bfloat16":
      import ml_dtypes
      dtype = ml_dtypes.bfloat16
    begin, end = entry["data_offsets"]
    out = np.empty(self.shape(name), dtype)
    if out.nbytes != end - begin:
      raise ConversionError(f"{self.path}: tensor {name!r} has {end - begin} bytes for shape "
                            f"{self.shape(name)} {entry['dtype']}; the file is damaged")
    with open(self.path, "rb") as f:
      f.seek(self._data_start + begin)
      if f.readinto(memoryview(out.reshape(-1)).cast("B")) != out.nbytes:
        raise ConversionError(f"{self.path}: tensor {name!r} is cut short")
    return out.astype(np.float32, copy=False)


class _TorchFile:
  """pytorch_model.bin through torch.load(weights_only=True): a pickle of tensors only."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    try:
      import torch
    except ImportError as err:
      raise ConversionError(f"{path} is a PyTorch file: reading it needs torch (pip install "
                            "-e \".[hf]\"), or save the model as model.safetensors") from err
    try:
      # weights_only: a pickle that is not plain tensors is refused, never executed.
      self._tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError ...
      raise ConversionError(f"{path} cannot be read with torch.load(weights_only=True) "
                            f"({type(err).__name__}: {err})") from err
    self.names = list(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._tensors[name].shape)

  def get(self, name: str) -> np.ndarray:
    return self._tensors[name].detach().float().numpy()


def _weight_file(folder: pathlib.Path):
  if (folder / SAFETENSORS_FILE).is_file():
    return _SafetensorsFile(folder / SAFETENSORS_FILE)
  if (folder / TORCH_FILE).is_file():
    return _TorchFile(folder / TORCH_FILE)
  raise ConversionError(f"{folder} has neither {SAFETENSORS_FILE} nor {TORCH_FILE}; save the "
                        "model with save_pretrained (sharded checkpoints: merge them first)")


def read_hf_tokenizer(folder) -> tuple[EncoderConfig, Tokenizer, dict]:
  """(EncoderConfig, Tokenizer with Hugging Face's ids, raw config.json) of a Hugging Face XLM-R
  folder, without reading its weights; the tokenizer must fit the embedding table."""
  folder = pathlib.Path(folder).expanduser().absolute()
  config, raw = read_hf_config(folder)
  mask_id = raw.get(MASK_ID_FIELD)
  if mask_id is not None and (isinstance(mask_id, bool) or not isinstance(mask_id, int)):
    raise ConversionError(f"{folder / CONFIG_FILE}: {MASK_ID_FIELD} must be an integer id, got "
                          f"{mask_id!r}")
  spm_path = folder / SPM_FILE
  if not spm_path.is_file():
    raise ConversionError(f"{spm_path} is missing; the folder needs XLM-R's SentencePiece model "
                          "(tokenizer.save_pretrained(folder) writes it)")
  tokenizer = tokenizer_from_hf_spm(spm_path.read_bytes(), mask_id, str(spm_path))
  if tokenizer.vocab_size != config.vocab_size:
    raise ConversionError(
        f"{spm_path} gives {tokenizer.vocab_size} ids (its {tokenizer.vocab_size - 2} pieces, "
        f"plus <pad> and <mask>), but {folder / CONFIG_FILE} says vocab_size "
        f"{config.vocab_size}: the tokenizer and the embedding table disagree")
  return config, tokenizer, raw


def read_hf_folder(folder) -> tuple[dict, EncoderConfig, Tokenizer, dict]:
  """(params, EncoderConfig, Tokenizer, info) of a Hugging Face XLMRobertaForMaskedLM folder.

  params is the xlm-jax parameter tree (float32 numpy, unrolled layers, exactly vocab_size rows);
  the tokenizer gives Hugging Face's ids; info says what was left out and why.
  """
  folder = pathlib.Path(folder).expanduser().absolute()
  config, tokenizer, raw = read_hf_tokenizer(folder)
  mask_id = raw.get(MASK_ID_FIELD)
  weights = _weight_file(folder)
  names = set(weights.names)
  # Checkpoints saved from XLMRobertaModel have no "roberta." prefix and no MLM head.
  if not any(n.startswith("lm_head.") for n in names):
    raise ConversionError(f"{weights.path} has no MLM head (lm_head.*): it is not an "
                          "XLMRobertaForMaskedLM checkpoint; xlm-jax needs the head to train MLM")
  order = None if mask_id is None else np.argsort(_vocab_order(config.vocab_size, mask_id))
  params: dict = {}
  expected = _tensors(config)
  want = param_shapes(config)
  for tensor in expected:
    if tensor.hf_name not in names:
      raise ConversionError(f"{weights.path} has no tensor {tensor.hf_name!r}, which "
                            f"{folder / CONFIG_FILE} (num_hidden_layers {config.num_layers}) "
                            "implies")
    # Checked before any reshape, naming the tensor and the fields that set its size.
    hf_shape = tuple(tensor.hf_shape(want[_key(tensor.path)]))
    if weights.shape(tensor.hf_name) != hf_shape:
      raise ConversionError(
          f"{weights.path}: {tensor.hf_name} has shape {weights.shape(tensor.hf_name)}, but "
          f"{folder / CONFIG_FILE} ({_fields_of(config)}) means {hf_shape}")
    value = tensor.to_ours(weights.get(tensor.hf_name))
    if order is not None and tensor.vocab_rows:
      value = value[order]
    _set(params, tensor.path, np.ascontiguousarray(value, np.float32))
  ignored = {}
  for name in sorted(names - {t.hf_name for t in expected}):
    if name == "lm_head.decoder.weight":  # tied: a file may repeat the embeddings
      if not np.array_equal(weights.get(name), weights.get(expected[0].hf_name)):
        raise ConversionError(f"{weights.path}: lm_head.decoder.weight differs from the word "
                              "embeddings; xlm-jax ties the decoder to them as XLM-R does")
      continue
    why = next((why for prefix, why in _IGNORED if name.startswith(prefix)), None)
    if why is None:
      raise ConversionError(f"{weights.path} holds {name!r}, which XLMRobertaForMaskedLM with "
                            f"{folder / CONFIG_FILE} does not have")
    ignored[name] = why
  for name, why in ignored.items():
    if name.startswith("roberta.pooler."):
      logging.warning("%s: %s is not converted (%s)", weights.path, name, why)
  info = {"source": str(folder), "ignored": ignored,
          "weights_file": weights.path.name, "mask_id": int(tokenizer.mask_id)}
  return params, config, tokenizer, info


def _fields_of(config: EncoderConfig) -> str:
  return (f"vocab_size {config.vocab_size}, hidden_size {config.hidden_size}, num_attention_heads "
          f"{config.num_heads}, intermediate_size {config.mlp_dim}, max_position_embeddings "
          f"{config.max_positions}, type_vocab_size {config.type_vocab_size}")


def convert_from_hf(folder, export_dir) -> pathlib.Path:
  """`xlm-jax convert --from hf`: a Hugging Face XLM-R folder -> an xlm-jax export folder."""
  from xlm_jax.export.export import check_export_dir, export_model
  export_dir = check_export_dir(export_dir)  # before reading gigabytes
  params, config, tokenizer, info = read_hf_folder(folder)
  return export_model(export_dir, params, config.to_dict(), tokenizer.serialized(),
                      extra_metadata={"converted_from": {"format": "huggingface", **info}})


def load_hf(folder, mesh=None, rules=None):
  """A Hugging Face XLM-R folder as `Pretrained` (converted in memory; nothing is written), on
  the default device or sharded over `mesh` (Pretrained.shard)."""
  import jax
  from xlm_jax.export.export import Pretrained
  from xlm_jax.models.encoder import Model
  params, config, tokenizer, info = read_hf_folder(folder)
  host = Pretrained(Model(config), params, tokenizer,
                    {"languages": [], "metadata": {"converted_from": info}})
  if mesh is not None:
    return host.shard(mesh, rules)
  return host._replace(params=jax.device_put(params))


def is_hf_folder(folder) -> bool:
  """True when `folder`'s config.json names a Hugging Face model_type (not an xlm-jax export)."""
  path = pathlib.Path(folder).expanduser() / CONFIG_FILE
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  return isinstance(raw, dict) and "model_type" in raw and "encoder" not in raw


# =============================================================================================
# Writing a Hugging Face folder
# =============================================================================================

_DTYPE_NAMES = {np.dtype(np.float32): "F32"}


def _safetensors_writer(tensors: list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                        metadata: dict[str, str]) -> Callable:
  """write(file) for a safetensors file of float32 `tensors` (name, shape, make), each made and
  written one at a time. Format: 8-byte little-endian header length, JSON header (name ->
  dtype, shape, [begin, end) byte offsets after the header), padded to 8 bytes, then the data."""
  header, offset = {"__metadata__": metadata}, 0
  for name, shape, _ in tensors:
    size = 4 * math.prod(shape)
    header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)

  def write(f) -> None:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for name, shape, make in tensors:
      array = np.ascontiguousarray(make(), dtype="<f4")
      if array.shape != tuple(shape):
        raise AssertionError(f"{name}: made {array.shape}, declared {shape}")
      f.write(array.tobytes())
  return write


def check_hf_dir(hf_dir) -> pathlib.Path:
  """The absolute output folder if write_hf_folder may write it (absent, empty, or an earlier
  Hugging Face folder written by xlm-jax); anything else is refused before any work."""
  hf_dir = pathlib.Path(hf_dir).expanduser().absolute()
  check_replaceable(hf_dir, HF_MARKERS, "export in Hugging Face format")
  return hf_dir


def write_hf_folder(hf_dir, params, config: EncoderConfig, tokenizer,
                    extra_config: dict | None = None) -> pathlib.Path:
  """Writes an XLMRobertaForMaskedLM folder (config.json, model.safetensors, tokenizer files)
  from an xlm-jax encoder; atomic, and only over an absent/empty/earlier such folder."""
  hf_dir = check_hf_dir(hf_dir)
  why = _language_free(config)
  if why:
    raise ConversionError(f"this model cannot be exported to Hugging Face: {why}. Keep the "
                          "xlm-jax export format (xlm_jax.load_pretrained reads it)")
  if tokenizer.vocab_size != config.vocab_size:
    raise ConversionError(
        f"the model has {config.vocab_size} vocabulary rows but its tokenizer {tokenizer.vocab_size} "
        "ids (a derived 'trans' language doubles the vocabulary); Hugging Face's tokenizer could "
        "not produce the extra ids, so keep the xlm-jax export format for it")
  spm_bytes, mask_id = hf_spm_from_tokenizer(tokenizer)
  # The converter's layout: exactly vocab_size rows, one tree per layer.
  plain = dataclasses.replace(config, vocab_multiple=1, scan_layers=False)
  params = convert_params(params, config, plain)
  order = _vocab_order(config.vocab_size, mask_id)
  moves = not np.array_equal(order, np.arange(config.vocab_size))

  def make(tensor: _Tensor):
    def build():
      value = tensor.to_hf(np.asarray(_get(params, tensor.path), np.float32))
      return value[order] if moves and tensor.vocab_rows else value
    return build
  shapes = param_shapes(plain)
  tensors = [(t.hf_name, tuple(t.hf_shape(shapes[_key(t.path)])), make(t))
             for t in _tensors(plain)]
  files = {SAFETENSORS_FILE: _safetensors_writer(tensors, {"format": "pt"}),
           CONFIG_FILE: json.dumps(hf_config(plain, tokenizer, mask_id if moves else None,
                                             extra_config), indent=2, sort_keys=True).encode(),
           **_tokenizer_files(spm_bytes, tokenizer, config.max_positions)}
  write_directory_atomically(hf_dir, files, markers=HF_MARKERS,
                             what="export in Hugging Face format")
  return hf_dir


def _key(path: tuple[str, ...]) -> str:
  """The shapes_by_path key of a parameter path."""
  return "".join(f"['{p}']" for p in path)


def convert_to_hf(export_dir, hf_dir) -> pathlib.Path:
  """`xlm-jax convert --from xlm-jax`: an xlm-jax export folder -> a Hugging Face folder."""
  from xlm_jax.export.export import read_export
  hf_dir = check_hf_dir(hf_dir)
  pretrained = read_export(export_dir)  # host arrays: no device copy of a large model
  return write_hf_folder(hf_dir, pretrained.params, pretrained.model.config, pretrained.tokenizer,
                         {"xlm_jax_source": str(pathlib.Path(export_dir).absolute())})

