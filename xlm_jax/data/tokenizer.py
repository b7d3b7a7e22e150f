"""The tokenizers training uses: the shared SentencePiece model and the per-language vocabulary modes.

Special ids follow XLM-R/fairseq: <s>=0 (cls), <pad>=1, </s>=2 (sep), <unk>=3, <mask>=4;
xlm_jax.data.tokenizer_training trains every model with exactly this layout. `encode` adds no <s>/</s>: packing decides where they go.

Vocabulary modes (Conneau, Wu et al. 2020, "Emerging cross-lingual structure"), `load_tokenizer`:
  joint       the corpus's SentencePiece model, trained on all languages at once (spm/spm.model)
  union       per-language models merged into one vocabulary; pieces several languages learned are shared
  no_anchors  per-language models in disjoint id ranges: nothing shared but 0..4; encoding needs the language
All share one call, `encode(texts, lang=None)`; `encode_texts` is how the pipelines call it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
import logging
import pathlib
import threading

import numpy as np

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
    # piece_to_id answers unk_id for a piece the model lacks, rather than raising.
    mask_id = processor.piece_to_id(MASK_PIECE)
    if mask_id == processor.unk_id():
      raise ValueError(f"{source} has no {MASK_PIECE} piece; train it with user_defined_symbols=['<mask>'] "
                       "(xlm_jax.data.tokenizer_training.train_sentencepiece does)")
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

  def encode(self, texts: list[str], lang: str | None = None) -> list[list[int]]:
    """Token ids of each text (no <s>/</s> added). `lang` is accepted and ignored: one vocabulary for all."""
    # A bare string would pass as a list of one-character texts and encode without error.
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


# --- Vocabulary modes --------------------------------------------------------------------------------------

VOCABULARIES = ("joint", "union", "no_anchors")
TOKENIZERS_DIR = "tokenizers"
# As `xlm-jax data tokenizers`: per language, not in all (8 languages' union is ~15-25k ids).
DEFAULT_VOCAB_SIZE_PER_LANG = 4000
_BUILD_LOCK = threading.Lock()


def needs_language(tokenizer) -> bool:
  """True when ids depend on the language: the tokenizer keeps per-language id ranges (no_anchors)."""
  return isinstance(getattr(tokenizer, "language_ranges", None), Mapping)


def encode_texts(tokenizer, texts: Sequence[str], lang: str) -> list[list[int]]:
  """`tokenizer.encode(texts, lang)` for per-language vocabularies, else `tokenizer.encode(texts)`.

  The pipelines call this, so any object with `encode(texts)` works for a shared vocabulary.
  """
  if needs_language(tokenizer):
    return tokenizer.encode(list(texts), lang)
  return tokenizer.encode(list(texts))


def _plain_languages(languages) -> list[str]:
  from xlm_jax.data.derived import is_derived
  return [lang for lang in languages if not is_derived(lang)]


def load_tokenizer(corpus, vocabulary: str = "joint", seed: int = 0,
                   vocab_size_per_lang: int = DEFAULT_VOCAB_SIZE_PER_LANG, languages=None,
                   model_type: str = "unigram"):
  """The tokenizer of a vocabulary mode for a built corpus (a Corpus).

  joint: <corpus>/spm/spm.model. union / no_anchors: <corpus>/tokenizers/<mode>/, the folder
  `xlm-jax data tokenizers --kind <mode>` writes; when missing it is built here first, over all the corpus's
  languages with `seed`, `vocab_size_per_lang` and `model_type` (written atomically, so a crash or a
  concurrent reader never sees half a folder). An existing folder is used as it is.
  languages: languages the tokenizer must cover (derived "<lang>_<op>" names are ignored here); ValueError
  naming the folder when a prebuilt one lacks some.
  """
  if vocabulary not in VOCABULARIES:
    raise ValueError(f"unknown vocabulary {vocabulary!r}; use one of {VOCABULARIES}")
  if vocabulary == "joint":
    return Tokenizer(corpus.tokenizer_path)
  # Deferred: only the union / no_anchors modes need the per-language training and tagged tokenizer code.
  from xlm_jax.data import tokenizer_variants
  folder = pathlib.Path(corpus.dir) / TOKENIZERS_DIR / vocabulary
  marker = folder / ("spm.model" if vocabulary == "union" else "tokenizer.json")
  # Threads of one process asking at once build the folder once; the others then load it.
  with _BUILD_LOCK:
    if not marker.is_file():
      # All the corpus's languages, not the run's: one folder serves every run on this corpus.
      build_languages = list(corpus.languages)
      corpus.check_languages(build_languages)
      texts = {lang: corpus.mono_texts(lang, "train") for lang in build_languages}
      logging.info("building the %s tokenizer of %s (%d pieces per language) in %s", vocabulary,
                   build_languages, vocab_size_per_lang, folder)
      build = (tokenizer_variants.build_union_tokenizer if vocabulary == "union"
               else tokenizer_variants.build_no_anchors_tokenizer)
      try:
        build(texts, folder, vocab_size_per_lang, model_type=model_type, seed=seed)
      except ValueError as err:
        raise ValueError(f"building the {vocabulary} tokenizer in {folder} failed: {err}. Choose another "
                         f"vocab_size_per_lang (now {vocab_size_per_lang}) or build the folder with "
                         f"`xlm-jax data tokenizers --corpus-dir {corpus.dir} --kind {vocabulary}`") from err
  if vocabulary == "union":
    tokenizer = Tokenizer(marker)
    built = _union_languages(folder)
  else:
    tokenizer = tokenizer_variants.LanguageTaggedTokenizer.load(folder)
    built = list(tokenizer.languages)
  missing = [lang for lang in _plain_languages(languages or ()) if lang not in built]
  if missing:
    raise ValueError(f"{folder} was built for languages {built}, not {missing}; rebuild it with "
                     f"`xlm-jax data tokenizers --corpus-dir {corpus.dir} --kind {vocabulary}` "
                     "(all the corpus's languages by default)")
  return tokenizer


def _union_languages(folder: pathlib.Path) -> list[str]:
  path = folder / "anchors.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found beside {folder / 'spm.model'}; rebuild the folder with "
                            "`xlm-jax data tokenizers --kind union`")
  summary = json.loads(path.read_text(encoding="utf-8"))
  if not isinstance(summary.get("languages"), list):
    raise ValueError(f"{path}: field 'languages' must list the languages the union was built from; rebuild it")
  return summary["languages"]


def language_ranges(tokenizer, languages) -> np.ndarray | None:
  """int32 [len(languages), 2]: the [low, high) ids MLM may draw a random replacement from, per language.

  no_anchors: each language's own id range. A shared vocabulary (joint, union) gives None (the whole
  vocabulary, specials excluded) unless a derived `trans` language ("en_trans") is listed: its ids live in
  [V, 2V), so then source languages get [first non-special id, V) and `trans` languages [V + that, 2V).
  """
  from xlm_jax.data.derived import is_derived, shifts_ids
  languages = list(languages)
  if needs_language(tokenizer):
    derived = [lang for lang in languages if is_derived(lang)]
    if derived:
      raise ValueError(f"derived languages {derived} hold ids of the joint vocabulary; they cannot be used with "
                       "the no_anchors vocabulary (use data.vocabulary 'joint')")
    return tokenizer.ranges_for(languages)
  if not any(shifts_ids(lang) for lang in languages):
    return None
  # trans moves only non-special ids, so [V, V + low) never occurs in its text: excluded as well.
  size, low = tokenizer.vocab_size, max(tokenizer.special_ids) + 1
  return np.array([[size + low, 2 * size] if shifts_ids(lang) else [low, size] for lang in languages],
                  np.int32).reshape(-1, 2)


def effective_vocab_size(tokenizer, languages) -> int:
  """The model's vocabulary: 2 V when a derived `trans` language is listed (its ids are i + V), else V."""
  from xlm_jax.data.derived import shifts_ids
  return 2 * tokenizer.vocab_size if any(shifts_ids(lang) for lang in languages) else tokenizer.vocab_size


# The files that store a tokenizer inside a folder (an export folder, a workdir's tokenizer/):
# spm.model for a shared SentencePiece vocabulary, or tokenizer/ holding a language-tagged
# ("no anchors") vocabulary's per-language models and tokenizer.json.
SPM_FILE = "spm.model"
TAGGED_DIR = "tokenizer"


def tokenizer_files(tokenizer) -> dict[str, bytes]:
  """{relative path: bytes} that `read_tokenizer_files` turns back into `tokenizer`."""
  files = getattr(tokenizer, "files", None)  # a language-tagged vocabulary is several models
  if files is not None:
    return {f"{TAGGED_DIR}/{name}": bytes(data) for name, data in files().items()}
  return {SPM_FILE: tokenizer.serialized()}


def has_tokenizer_files(folder) -> bool:
  folder = pathlib.Path(folder)
  return (folder / TAGGED_DIR / "tokenizer.json").is_file() or (folder / SPM_FILE).is_file()


def read_tokenizer_files(folder):
  """The tokenizer stored in `folder` by `tokenizer_files` (FileNotFoundError naming it)."""
  folder = pathlib.Path(folder)
  if (folder / TAGGED_DIR / "tokenizer.json").is_file():
    from xlm_jax.data.tokenizer_variants import LanguageTaggedTokenizer
    return LanguageTaggedTokenizer.load(folder / TAGGED_DIR)
  if not (folder / SPM_FILE).is_file():
    raise FileNotFoundError(f"{folder / SPM_FILE} not found: {folder} holds no tokenizer")
  return Tokenizer(folder / SPM_FILE)
