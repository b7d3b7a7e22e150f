"""Train the shared ("joint") SentencePiece model on language-balanced text (XLM-R recipe, small scale).

Lives beside the tokenizer readers because every vocabulary kind is trained from here: the corpus build
(`xlm-jax data build`) trains the joint model, and tokenizer_variants trains the per-language models of the
union / no-anchors vocabularies, which `load_tokenizer` may do on first use.

Sentences are sampled per language with q_l ∝ p_l^alpha (alpha < 1 gives small languages more of the
vocabulary than their raw share), with a fixed seed, then sorted so that the trainer sees the same input in
the same order every time. The special ids follow the contract: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib

import numpy as np
import sentencepiece as spm

from xlm_jax.data.sampling import language_sampling_probs

DEFAULT_ALPHA = 0.5
DEFAULT_MAX_SENTENCES = 300_000
MODEL_TYPES = ("unigram", "bpe", "char", "word")


def alpha_sample_plan(counts: dict[str, int], alpha: float, max_sentences: int,
                      seed: int = 0) -> dict[str, tuple[int, np.ndarray]]:
  """Which sentences the alpha sample takes: {lang: (whole repeats, sorted extra line indices)}.

  Separate from reading the text so that lists (alpha_sample) and streamed files
  (alpha_sample_files, the corpus build's reader of users' text files) draw exactly the same sample.
  """
  probs = language_sampling_probs(counts, alpha)
  total = min(max_sentences, sum(counts.values()))
  plan = {}
  for index, lang in enumerate(sorted(counts)):
    want = int(round(probs[lang] * total))
    # One generator per language (seeded from the run seed and the language's position in sorted order), so
    # adding a language does not change what the others draw.
    rng = np.random.default_rng([seed, index])
    repeats, rest = divmod(want, counts[lang])
    plan[lang] = (repeats, np.sort(rng.choice(counts[lang], size=rest, replace=False)))
  return plan


def alpha_sample(texts_by_lang: dict[str, list[str]], alpha: float = DEFAULT_ALPHA,
                 max_sentences: int = DEFAULT_MAX_SENTENCES, seed: int = 0) -> list[str]:
  """Samples about min(max_sentences, total) sentences, language l getting a share q_l ∝ p_l^alpha.

  A language whose share exceeds its size is repeated whole, then topped up without replacement, so no
  sentence of a small language is dropped while another is repeated three times. Returns a sorted list.
  """
  plan = alpha_sample_plan({lang: len(texts) for lang, texts in texts_by_lang.items()}, alpha,
                           max_sentences, seed)
  sampled = []
  for lang, (repeats, chosen) in plan.items():
    texts = texts_by_lang[lang]
    sampled.extend(texts * repeats)
    sampled.extend(texts[i] for i in chosen)
  return sorted(sampled)


DEFAULT_CHARACTER_COVERAGE = 0.9995


def train_sentencepiece(sentences: list[str], vocab_size: int, model_type: str = "unigram", seed: int = 0,
                        num_threads: int | None = None, verbose: bool = False,
                        character_coverage: float = DEFAULT_CHARACTER_COVERAGE) -> bytes:
  """Trains SentencePiece on `sentences` and returns the serialized model (bytes).

  Raises ValueError when `vocab_size` does not fit the text (SentencePiece's own reason is kept).
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"tokenizer model_type {model_type!r} is not one of {MODEL_TYPES}")
  if not sentences:
    raise ValueError("cannot train SentencePiece on no sentences; the corpus text is empty")
  # The trainer's own sampling/shuffling draws from this global generator; we pass every sentence
  # (input_sentence_size = len) so nothing is subsampled, and fix the seed for whatever remains random.
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model,
        model_type=model_type, vocab_size=vocab_size,
        bos_id=0, pad_id=1, eos_id=2, unk_id=3, user_defined_symbols=["<mask>"],
        character_coverage=character_coverage,
        input_sentence_size=len(sentences), shuffle_input_sentence=True,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=0 if verbose else 2)
  except RuntimeError as err:
    raise ValueError(f"SentencePiece training failed (vocab_size={vocab_size}, {len(sentences)} sentences): "
                     f"{err} (change --vocab-size as it says, or build from more packages)") from err
  return model.getvalue()


def write_tokenizer(model_bytes: bytes, spm_dir: pathlib.Path) -> str:
  """Writes spm.model and a human-readable spm.vocab ("piece<TAB>score") into spm_dir; returns the sha256."""
  spm_dir = pathlib.Path(spm_dir)
  spm_dir.mkdir(parents=True, exist_ok=True)
  (spm_dir / "spm.model").write_bytes(model_bytes)
  processor = spm.SentencePieceProcessor(model_proto=model_bytes)
  lines = [f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}"
           for i in range(processor.get_piece_size())]
  (spm_dir / "spm.vocab").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return hashlib.sha256(model_bytes).hexdigest()
