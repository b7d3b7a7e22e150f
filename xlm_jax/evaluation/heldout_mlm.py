"""Held-out MLM loss and accuracy, beside the unigram baseline it must beat.

The evaluation set is fixed: the first `data.eval_sentences` test sentences of every language
(held-out programs, see data_prep), packed like training data and masked with a fixed RNG, so
numbers are comparable across steps and runs.

Unigram baseline: always predict the most frequent training piece, and score with the training
unigram distribution. Masked positions are a uniform draw of the non-special tokens, so the
baseline's expected accuracy and loss over masked positions equal their averages over all
non-special eval tokens; we compute those exactly instead of sampling.
"""
from __future__ import annotations

import jax
import numpy as np

from xlm_jax.data import derived
from xlm_jax.data.tokenizer import encode_texts
from xlm_jax.data.sampling import language_sampling_probs
from xlm_jax.registry import EVALUATORS
from xlm_jax.train import mesh as mesh_lib
from xlm_jax.train.step import make_eval_step

_UNIGRAM_SENTENCES = 5000  # training sentences per language used for the unigram estimate


def _training_ids(corpus, tokenizer, lang: str) -> np.ndarray:
  """Token ids of the first training sentences of `lang` (a derived language: its stored ids)."""
  if derived.is_derived(lang):
    source = derived.derived_source(corpus, lang, "train")
    rows = [source[i]["ids"] for i in range(min(len(source), _UNIGRAM_SENTENCES))]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
  texts = corpus.mono_texts(lang, "train")[:_UNIGRAM_SENTENCES]
  rows = encode_texts(tokenizer, texts, lang)
  return np.fromiter((i for row in rows for i in row), np.int64)


def unigram_log_probs(corpus, tokenizer, languages, alpha: float, vocab_size: int) -> np.ndarray:
  """log p(piece) under the training mixture (languages weighted as the sampler weights them)."""
  counts = {lang: derived.num_examples(corpus, lang, "train") for lang in languages}
  weights = language_sampling_probs(counts, alpha)
  mixture = np.zeros(vocab_size, np.float64)
  for lang in languages:
    ids = _training_ids(corpus, tokenizer, lang)
    per_lang = 1.0 + np.bincount(ids, minlength=vocab_size).astype(np.float64)  # add-one
    per_lang[list(tokenizer.special_ids)] = 0.0
    mixture += weights[lang] * per_lang / per_lang.sum()
  with np.errstate(divide="ignore"):
    return np.log(mixture)


def _same_count_on_all_hosts(batches: list) -> list:
  if jax.process_count() > 1:  # every host must run the same number of steps
    from jax.experimental import multihost_utils
    n = multihost_utils.process_allgather(np.asarray(len(batches)))
    batches = batches[: int(np.min(n))]
  return batches


@EVALUATORS.register("mlm")
class HeldoutMLM:
  """Held-out loss and accuracy of every trained objective, on the test split of its batch kind,
  and the unigram baseline of the monolingual test text."""

  def __init__(self, run):
    from xlm_jax.train.experiment import make_batch_dataset  # avoid an import cycle
    config = run.config
    self.mesh = run.mesh
    self.rng = jax.random.PRNGKey(config.seed + 1_000_003)
    self.kinds = {}
    for kind in sorted({b.objective.batch_kind for b in run.bound.values()} | {"mono"}):
      bound = {n: b for n, b in run.bound.items() if b.objective.batch_kind == kind}
      dataset = make_batch_dataset(kind, config, run.corpus, run.tokenizer, "test", num_epochs=1,
                                   shuffle=False, max_sentences=config.data.eval_sentences)
      batches = _same_count_on_all_hosts(list(iter(dataset)))
      step = jax.jit(make_eval_step(bound)) if bound else None
      self.kinds[kind] = (bound, batches, step)

    log_p = unigram_log_probs(run.corpus, run.tokenizer, config.data.languages, config.data.alpha,
                              run.model_config.vocab_size)
    ids = np.concatenate([b["input_ids"].ravel() for b in self.kinds["mono"][1]])
    ids = ids[~np.isin(ids, run.tokenizer.special_ids)]
    # Token counts of the whole evaluation set: each host only holds its own shard's batches.
    counts = np.bincount(ids, minlength=log_p.size).astype(np.int32)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
    seen = np.flatnonzero(counts)
    total = int(counts.sum())
    self.baseline = {
        "unigram/accuracy": float(counts[int(np.argmax(log_p))] / max(total, 1)),
        "unigram/loss": float(-np.dot(counts[seen], log_p[seen]) / max(total, 1)),
        "eval_tokens": total,
    }

  def __call__(self, state) -> dict:
    out = dict(self.baseline)
    for kind, (bound, batches, step) in self.kinds.items():
      if not bound:
        continue
      sums: dict[str, float] = {}
      for i, batch in enumerate(batches):
        device_batch = {kind: mesh_lib.to_global_batch(batch, self.mesh)}
        metrics = jax.device_get(step(state.params, state.extra, device_batch,
                                      jax.random.fold_in(self.rng, i)))
        for name, b in bound.items():
          weight = float(metrics.get(f"{name}/weight", 1.0))
          for key in b.objective.eval_metrics:
            if f"{name}/{key}" in metrics:
              sums[f"{name}/{key}"] = sums.get(f"{name}/{key}", 0.0) + weight * float(
                  metrics[f"{name}/{key}"])
          sums[f"{name}/weight"] = sums.get(f"{name}/weight", 0.0) + weight
      for name, b in bound.items():
        total = max(sums.get(f"{name}/weight", 0.0), 1.0)
        for key in b.objective.eval_metrics:
          if f"{name}/{key}" in sums:
            out[f"{name}/{key}"] = sums[f"{name}/{key}"] / total
        out[f"{name}/predictions"] = int(sums.get(f"{name}/weight", 0.0))
    return out
