"""The shared SentencePiece tokenizer, as training and export use it.

Special ids follow XLM-R/fairseq: <s>=0 (cls), <pad>=1, </s>=2 (sep), <unk>=3, <mask>=4; data_prep trains the
model with exactly this layout. `encode` adds no <s>/</s>: packing decides where they go.
"""
from __future__ import annotations

import pathlib

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

MASK_PIECE = "<mask>"


class Tokenizer:
  """A thin, picklable wrapper around sentencepiece.SentencePieceProcessor."""

  def __init__(self, model_path):
    path = pathlib.Path(model_path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"SentencePiece model {path} not found; build the corpus with "
                              "`xlm-jax data build --corpus-dir DIR` (it writes DIR/spm/spm.model)")
    self._load(path.read_bytes(), source=str(path))

  @classmethod
  def from_bytes(cls, serialized_model_proto: bytes) -> Tokenizer:
    """A tokenizer from a serialized model (as stored in checkpoints and exports)."""
    tokenizer = cls.__new__(cls)
    tokenizer._load(bytes(serialized_model_proto), source="serialized model")
    return tokenizer

  def _load(self, model_bytes: bytes, source: str) -> None:
    processor = spm.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(model_bytes)
    except (RuntimeError, OSError) as err:
      raise ValueError(f"{source} is not a valid SentencePiece model: {err}") from err
    mask_id = processor.piece_to_id(MASK_PIECE)
    if mask_id == processor.unk_id():
      raise ValueError(f"{source} has no {MASK_PIECE} piece; train it with user_defined_symbols=['<mask>'] "
                       "(data_prep does)")
    self._model_bytes = model_bytes
    self._processor = processor
    self.mask_id = mask_id
    # The processor cannot tell user-defined pieces apart, the model proto can.
    proto = sentencepiece_model_pb2.ModelProto.FromString(model_bytes)
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    self._special_ids = tuple(i for i, piece in enumerate(proto.pieces)
                              if piece.type in (kinds.CONTROL, kinds.UNKNOWN, kinds.USER_DEFINED))

  # SentencePieceProcessor is a C++ object; grain workers and checkpoints get the model bytes instead.
  def __getstate__(self):
    return {"model_bytes": self._model_bytes}

  def __setstate__(self, state):
    self._load(state["model_bytes"], source="pickled tokenizer")

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def bos_id(self) -> int:
    return self._processor.bos_id()

  @property
  def pad_id(self) -> int:
    return self._processor.pad_id()

  @property
  def eos_id(self) -> int:
    return self._processor.eos_id()

  @property
  def unk_id(self) -> int:
    return self._processor.unk_id()

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids of control, unknown and user-defined pieces (<s> <pad> </s> <unk> <mask>), sorted."""
    return self._special_ids

  def encode(self, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no <s>/</s> added)."""
    if isinstance(texts, str):
      raise TypeError("Tokenizer.encode takes a list of strings; wrap a single text as [text]")
    return self._processor.encode(list(texts), out_type=int)

  def decode(self, ids) -> str:
    """Text of a sequence of ids; control ids (<s>, <pad>, </s>) decode to nothing."""
    return self._processor.decode([int(i) for i in ids])

  def id_to_piece(self, token_id: int) -> str:
    return self._processor.id_to_piece(int(token_id))

  def serialized(self) -> bytes:
    """The model as bytes, enough to rebuild this tokenizer with `from_bytes`."""
    return self._model_bytes
