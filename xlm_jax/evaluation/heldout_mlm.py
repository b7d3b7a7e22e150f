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

from xlm_jax.data.sampling import language_sampling_probs
from xlm_jax.registry import EVALUATORS
from xlm_jax.train import mesh as mesh_lib
from xlm_jax.train.step import make_eval_step

_UNIGRAM_SENTENCES = 5000  # training sentences per language used for the unigram estimate


def unigram_log_probs(corpus, tokenizer, languages, alpha: float) -> np.ndarray:
  """log p(piece) under the training mixture (languages weighted as the sampler weights them)."""
  counts = {lang: corpus.num_examples(lang, "train") for lang in languages}
  weights = language_sampling_probs(counts, alpha)
  mixture = np.zeros(tokenizer.vocab_size, np.float64)
  for lang in languages:
    texts = corpus.mono_texts(lang, "train")[:_UNIGRAM_SENTENCES]
    ids = np.fromiter((i for row in tokenizer.encode(texts) for i in row), np.int64)
    per_lang = 1.0 + np.bincount(ids, minlength=tokenizer.vocab_size).astype(np.float64)  # add-one
    per_lang[list(tokenizer.special_ids)] = 0.0
    mixture += weights[lang] * per_lang / per_lang.sum()
  with np.errstate(divide="ignore"):
    return np.log(mixture)


@EVALUATORS.register("mlm")
class HeldoutMLM:
  """Evaluates every objective that reads the "mono" batch kind on held-out text."""

  def __init__(self, run):
    from xlm_jax.train.experiment import make_batch_dataset  # avoid an import cycle
    config = run.config
    self.mesh = run.mesh
    self.bound = {n: b for n, b in run.bound.items() if b.objective.batch_kind == "mono"}
    dataset = make_batch_dataset("mono", config, run.corpus, run.tokenizer, "test", num_epochs=1,
                                 shuffle=False, max_sentences=config.data.eval_sentences)
    self.batches = list(iter(dataset))
    if jax.process_count() > 1:  # every host must run the same number of steps
      from jax.experimental import multihost_utils
      n = multihost_utils.process_allgather(np.asarray(len(self.batches)))
      self.batches = self.batches[: int(np.min(n))]
    self.rng = jax.random.PRNGKey(config.seed + 1_000_003)
    self.step = jax.jit(make_eval_step(self.bound))

    log_p = unigram_log_probs(run.corpus, run.tokenizer, config.data.languages, config.data.alpha)
    ids = np.concatenate([b["input_ids"].ravel() for b in self.batches])
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
    sums: dict[str, float] = {}
    for i, batch in enumerate(self.batches):
      device_batch = {"mono": mesh_lib.to_global_batch(batch, self.mesh)}
      metrics = jax.device_get(self.step(state.params, state.extra, device_batch,
                                         jax.random.fold_in(self.rng, i)))
      for name in self.bound:
        weight = float(metrics[f"{name}/weight"])
        for key in ("loss", "accuracy"):
          sums[f"{name}/{key}"] = sums.get(f"{name}/{key}", 0.0) + weight * float(metrics[f"{name}/{key}"])
        sums[f"{name}/weight"] = sums.get(f"{name}/weight", 0.0) + weight
    out = dict(self.baseline)
    for name in self.bound:
      total = max(sums.get(f"{name}/weight", 0.0), 1.0)
      out[f"{name}/loss"] = sums.get(f"{name}/loss", 0.0) / total
      out[f"{name}/accuracy"] = sums.get(f"{name}/accuracy", 0.0) / total
      out[f"{name}/predictions"] = int(sums.get(f"{name}/weight", 0.0))
    return out
