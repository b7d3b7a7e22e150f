"""BUCC-style bitext mining: held-out translation pairs hidden among held-out distractor sentences.

For each language xx, `eval.mining_items` unambiguous en-xx test pairs (seeded sample) are mixed
into pools of held-out sentences that have no translation on the other side: `eval.mining_distractors`
per side, drawn from the test text of each language (mono test split). Everything is cut in two
halves, dev and test, each its own mining problem. Pairs are mined by ratio margin over k =
`eval.mining_k` neighbourhoods in both directions (Artetxe & Schwenk 2019; metrics.margin_scores
and mine_pairs, blockwise); the margin threshold maximising F1 on dev is applied to test, which
reports precision, recall and F1. The character n-gram TF-IDF baseline mines the same items.

A distractor must not be an unlabelled translation, or every right answer would count as a false
positive. From the corpus's known test pairs: no gold item is a known translation of another's
other side, no distractor is a known translation of a gold sentence, no two distractors are known
translations of each other (one of them is dropped, by a seeded coin), and no foreign distractor
is a string that also stands on the English side (untranslated names, "%s").
"""
from __future__ import annotations

import collections
import logging

import numpy as np

from xlm_jax.evaluation import metrics
from xlm_jax.evaluation.retrieval import char_ngram_tfidf, encode_options, unique_pairs
from xlm_jax.registry import EVALUATORS

PARTS = ("dev", "test")


def _translations(pairs) -> tuple[dict, dict]:
  en_to_xx, xx_to_en = collections.defaultdict(set), collections.defaultdict(set)
  for en, xx in pairs:
    en_to_xx[en].add(xx)
    xx_to_en[xx].add(en)
  return en_to_xx, xx_to_en


def choose_gold(pairs, items: int, rng: np.random.Generator) -> list[tuple[str, str]]:
  """Up to `items` pairs, a seeded sample of the unambiguous ones (unique_pairs), none of whose
  sides is a known translation of another chosen pair's other side."""
  candidates = unique_pairs(pairs, len(pairs))
  en_to_xx, xx_to_en = _translations(pairs)
  gold, gold_en, gold_xx = [], set(), set()
  for index in rng.permutation(len(candidates)):
    en, xx = candidates[index]
    # Two gold items linked by a third known pair would make a right answer count as wrong.
    if en_to_xx[en] & gold_xx or xx_to_en[xx] & gold_en:
      continue
    gold.append((en, xx))
    gold_en.add(en)
    gold_xx.add(xx)
    if len(gold) == items:
      break
  return gold


def distractor_pools(pairs, gold, en_texts, xx_texts, rng: np.random.Generator):
  """(English, foreign) distractor candidates, sorted: test sentences that are no gold side and
  have no known translation on the other side (gold or distractor)."""
  gold_en, gold_xx = {en for en, _ in gold}, {xx for _, xx in gold}
  gold_pairs = set(gold)
  # An English distractor equal to a gold foreign sentence (an untranslated string) is a
  # translation of it by identity; the foreign side gets the same treatment below.
  en_pool, xx_pool = set(en_texts) - gold_en - gold_xx, set(xx_texts) - gold_xx
  coins = rng.random(len(pairs)) < 0.5
  for (en, xx), drop_english in zip(pairs, coins):
    if (en, xx) in gold_pairs:
      continue
    if en in gold_en:
      xx_pool.discard(xx)
    elif xx in gold_xx:
      en_pool.discard(en)
    elif en in en_pool and xx in xx_pool:
      # A seeded coin keeps half of such pairs' English sides and half of their foreign sides.
      (en_pool if drop_english else xx_pool).discard(en if drop_english else xx)
  # An identical string on both sides would be mined as a pair no gold list holds.
  xx_pool -= en_pool | gold_en
  return sorted(en_pool), sorted(xx_pool)


def mining_parts(pairs, en_texts, xx_texts, items: int, distractors: int, seed: int) -> dict:
  """{"dev" | "test": {"src": foreign texts, "tgt": English texts, "gold": [[src, tgt], ...]}}."""
  rng = np.random.default_rng(seed)
  gold = choose_gold(pairs, items, rng)
  en_pool, xx_pool = distractor_pools(pairs, gold, en_texts, xx_texts, rng)
  en_pool = [en_pool[i] for i in rng.permutation(len(en_pool))[:distractors]]
  xx_pool = [xx_pool[i] for i in rng.permutation(len(xx_pool))[:distractors]]
  parts = {}
  for index, part in enumerate(PARTS):
    # Every other item goes to dev, the rest to test: two halves of the same distribution.
    part_gold = gold[index::2]
    src = [xx for _, xx in part_gold] + xx_pool[index::2]
    tgt = [en for en, _ in part_gold] + en_pool[index::2]
    # Shuffled, so a sentence's position says nothing about whether it has a partner.
    src_order, tgt_order = rng.permutation(len(src)), rng.permutation(len(tgt))
    src_at, tgt_at = np.argsort(src_order), np.argsort(tgt_order)
    parts[part] = {"src": [src[i] for i in src_order], "tgt": [tgt[i] for i in tgt_order],
                   "gold": [[int(src_at[i]), int(tgt_at[i])] for i in range(len(part_gold))]}
  return parts


def mine(src_vectors, tgt_vectors, k: int):
  """(pairs, margins) of one mining problem, best first (metrics.mine_pairs)."""
  return metrics.mine_pairs(metrics.margin_scores(src_vectors, tgt_vectors, k))


def mining_metrics(prefix: str, mined: dict, parts: dict) -> dict:
  """precision / recall / F1 / threshold of the test part at dev's best threshold."""
  scores = metrics.mine_f1(*mined["dev"], parts["dev"]["gold"], *mined["test"], parts["test"]["gold"])
  return {f"{prefix}{name}": float(value) for name, value in scores.items()}


@EVALUATORS.register("mining")
class Mining:
  """Margin-based mining F1 of xx->en per non-English language, model and TF-IDF baseline."""

  @staticmethod
  def collect(data) -> dict:
    """Per language: dev and test mining problems (texts and gold index pairs)."""
    cfg = data.eval_config
    english = data.corpus.mono_texts("en", "test")
    sets = {"languages": []}
    for lang in data.languages:
      if lang == "en":
        continue
      parts = mining_parts(data.corpus.parallel_pairs(lang, "test"), english,
                           data.corpus.mono_texts(lang, "test"), cfg.mining_items,
                           cfg.mining_distractors, data.seed)
      if any(len(parts[p]["gold"]) == 0 for p in PARTS):
        logging.warning("mining: skipping %s: fewer than 2 usable en-%s test pairs in %s", lang, lang,
                        data.corpus.dir)
        continue
      sets["languages"].append(lang)
      sets[lang] = parts
    return sets

  def __init__(self, sets: dict, eval_config):
    self.encode_options = encode_options(eval_config)
    self.k = int(eval_config.mining_k)
    self.parts = {lang: sets[lang] for lang in sets["languages"]}
    # The surface baseline does not depend on the model: mined once, reported every time.
    self.baseline = {}
    for lang, parts in self.parts.items():
      mined = {}
      for part in PARTS:
        src, tgt = parts[part]["src"], parts[part]["tgt"]
        vectors = char_ngram_tfidf(src + tgt)
        mined[part] = mine(vectors[:len(src)], vectors[len(src):], self.k)
      self.baseline.update(mining_metrics(f"mining/{lang}-en/tfidf_", mined, parts))

  def __call__(self, model) -> dict:
    out = dict(self.baseline)
    for lang, parts in self.parts.items():
      mined = {}
      for part in PARTS:
        src = model.encode(parts[part]["src"], lang=lang, **self.encode_options)
        tgt = model.encode(parts[part]["tgt"], lang="en", **self.encode_options)
        mined[part] = mine(src, tgt, self.k)
      out.update(mining_metrics(f"mining/{lang}-en/", mined, parts))
      test = parts["test"]
      out[f"mining/{lang}-en/items"] = len(test["gold"])
      out[f"mining/{lang}-en/distractors"] = len(test["src"]) + len(test["tgt"]) - 2 * len(test["gold"])
    for suffix in ("f1", "tfidf_f1"):
      values = [v for k, v in out.items() if k.endswith("/" + suffix)]
      if values:
        out[f"mining/mean_{suffix}"] = float(np.mean(values))
    return out
