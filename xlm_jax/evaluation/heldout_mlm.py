"""Held-out MLM loss and accuracy, beside the unigram baseline it must beat.

The evaluation set is fixed: the first `data.eval_sentences` test sentences of every language
(held-out programs of `xlm-jax data build`), packed like training data and masked with a fixed RNG, so
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

  @staticmethod
  def collect(data) -> dict:
    """The fixed held-out batches of every batch kind the objectives read (and "mono", for the
    baseline), as this host's input pipeline cuts them, and the unigram baseline's scores."""
    if data.make_batches is None:
      raise ValueError("the held-out evaluator needs the run's input pipeline (EvalData.make_batches)")
    sets = {"kinds": {}}
    mono_ids = []
    for kind in sorted(set(data.batch_kinds) | {"mono"}):
      batches = _same_count_on_all_hosts(list(data.make_batches(kind)))
      sets["kinds"][kind] = len(batches)
      for i, batch in enumerate(batches):
        for field, value in batch.items():
          sets[f"{kind}/{i}/{field}"] = np.asarray(value)
        if kind == "mono":
          mono_ids.append(np.asarray(batch["input_ids"]).ravel())

    log_p = unigram_log_probs(data.corpus, data.tokenizer, data.languages, data.alpha,
                              data.model_config.vocab_size)
    ids = np.concatenate(mono_ids) if mono_ids else np.zeros(0, np.int64)
    ids = ids[~np.isin(ids, data.tokenizer.special_ids)]
    # Token counts of the whole evaluation set: each host only holds its own shard's batches.
    counts = np.bincount(ids, minlength=log_p.size).astype(np.int32)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      counts = np.asarray(multihost_utils.process_allgather(counts)).sum(axis=0)
    seen = np.flatnonzero(counts)
    total = int(counts.sum())
    sets["baseline"] = {
        "unigram/accuracy": float(counts[int(np.argmax(log_p))] / max(total, 1)),
        "unigram/loss": float(-np.dot(counts[seen], log_p[seen]) / max(total, 1)),
        "eval_tokens": total,
    }
    return sets

  @staticmethod
  def covers(sets: dict, data) -> bool:
    """Stored sets serve a resumed run only if they hold every batch kind its objectives read."""
    return set(data.batch_kinds) <= set(sets["kinds"])

  def __init__(self, sets: dict, eval_config):
    del eval_config  # the sets fix everything this evaluator reads
    self.baseline = dict(sets["baseline"])
    self.batches = {}
    for kind, count in sets["kinds"].items():
      prefix = [f"{kind}/{i}/" for i in range(count)]
      self.batches[kind] = [{k[len(p):]: v for k, v in sets.items() if k.startswith(p)}
                            for p in prefix]

  def __call__(self, model) -> dict:
    out = dict(self.baseline)
    if model.eval_step is None:
      return out  # an exported model has no objectives to score: the baseline only
    sums: dict[str, dict[str, float]] = {}
    for kind, batches in self.batches.items():
      for i, batch in enumerate(batches):
        # Metrics are means over the batch's labelled positions: weight them back into sums,
        # so the held-out number is the mean over all positions, not over batches.
        for name, metrics in model.eval_step(kind, i, batch).items():
          weight = float(metrics.get("weight", 1.0))
          total = sums.setdefault(name, {"weight": 0.0})
          total["weight"] += weight
          for key, value in metrics.items():
            if key != "weight":
              total[key] = total.get(key, 0.0) + weight * float(value)
    for name, total in sums.items():
      weight = max(total["weight"], 1.0)
      out.update({f"{name}/{key}": value / weight for key, value in total.items() if key != "weight"})
      out[f"{name}/predictions"] = int(total["weight"])
    return out
