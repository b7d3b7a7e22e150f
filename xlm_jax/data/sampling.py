"""Language sampling for multilingual pre-training (XLM / XLM-R exponent smoothing).

With p_l the share of sentences in language l, a row comes from language l with probability
q_l = p_l^alpha / sum_k p_k^alpha. alpha < 1 up-samples low-resource languages (XLM-R 0.3, XLM 0.7);
alpha = 1 follows the corpus, alpha = 0 is uniform.
"""
from collections.abc import Mapping

import numpy as np


def language_sampling_probs(counts: Mapping[str, int], alpha: float) -> dict[str, float]:
  """Returns {lang: q_l} with q_l = p_l^alpha / sum p^alpha and p_l = counts[l] / sum(counts).

  Raises ValueError for an empty mapping, a negative alpha or a language without sentences (a language
  with no data cannot be sampled; drop it from `languages` instead).
  """
  if not counts:
    raise ValueError("language_sampling_probs: `counts` is empty; pass at least one language.")
  if alpha < 0:
    raise ValueError(f"language_sampling_probs: alpha must be >= 0, got {alpha}.")
  # A zero count gives log(0) = -inf below, and alpha = 0 would turn it into 0 * -inf = NaN.
  empty = sorted(lang for lang, n in counts.items() if n <= 0)
  if empty:
    raise ValueError(
      f"language_sampling_probs: languages {empty} have no sentences; remove them from `languages` "
      "or rebuild the corpus."
    )
  langs = list(counts)
  p = np.array([counts[lang] for lang in langs], dtype=np.float64)
  p /= p.sum()
  # Work in log space so tiny shares with alpha near 0 do not underflow.
  logits = alpha * np.log(p)
  # Shifted by the max, the usual stable softmax: the largest share becomes exp(0) = 1.
  q = np.exp(logits - logits.max())
  q /= q.sum()
  return {lang: float(v) for lang, v in zip(langs, q)}


def epoch_order(indices: np.ndarray, seed: int, lang_index: int, epoch: int, stream: int = 0) -> np.ndarray:
  """`indices` in the shuffled order of one epoch of one language (a fresh permutation per epoch).

  The generator is seeded with (seed, lang_index, epoch) through numpy's SeedSequence, so languages
  of equal size never share a permutation and nearby run seeds give unrelated orders. `stream` > 0
  tells batch kinds apart that read the same source (mono and sentences of one language, say), so
  they do not walk it in the same order.
  """
  # stream 0 adds no key entry, so mono keeps the permutations it had before streams existed.
  key = [int(seed), int(lang_index), int(epoch)] + ([int(stream)] if stream else [])
  rng = np.random.default_rng(key)
  return indices[rng.permutation(len(indices))]
