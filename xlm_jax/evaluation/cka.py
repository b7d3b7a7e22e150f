"""Representation analysis per layer: linear CKA between English and each language, and retrieval.

On up to `eval.cka_items` multi-way-parallel items (geometry.multiway_items: <corpus>/eval/
retrieval.jsonl where the corpus has it, else English test sentences translated into every
language), every hidden state i = 0 (embeddings) .. L (last layer) is mean-pooled per sentence
(`encode(texts, lang, pooling="layer", layer=i)`), and for each language xx:

  cka/<xx>-en/layer<i>/cka  linear CKA of the xx and English vectors of the same items (Kornblith
                            et al. 2019): 1 when the languages' spaces match up to rotation and scale
  cka/<xx>-en/layer<i>/p1   retrieval P@1 on the same items, mean of xx->en and en->xx

cka/layer<i>/cka and cka/layer<i>/p1 average over languages; cka/best_layer is the layer of the
highest mean P@1. `layer_table(results, "cka")` arranges them as a languages x layers matrix, the
heat-map and line-plot input.
"""
from __future__ import annotations

import logging
import re

import numpy as np

from xlm_jax.evaluation import metrics
from xlm_jax.evaluation.geometry import multiway_items
from xlm_jax.registry import EVALUATORS


def model_layers(config) -> int:
  """Number of transformer layers of a model config (EncoderConfig.num_layers; a Hugging Face
  config's num_hidden_layers)."""
  for field in ("num_layers", "num_hidden_layers"):
    value = getattr(config, field, None)
    if isinstance(value, int) and value >= 0:
      return value
  raise ValueError(f"the cka evaluator reads every layer, but the model's config "
                   f"({type(config).__name__}) has no 'num_layers' or 'num_hidden_layers'; give "
                   "EvalModel a config that names its layer count")


def layer_table(results: dict, metric: str = "cka") -> tuple[list[str], list[int], np.ndarray]:
  """(languages, layers, values [languages, layers]) of cka/<xx>-en/layer<i>/<metric> in
  `results` (NaN where a cell is missing), for the heat-map (metric "cka") and line plot ("p1")."""
  pattern = re.compile(rf"cka/(.+)-en/layer(\d+)/{re.escape(metric)}$")
  cells = {}
  for key, value in results.items():
    found = pattern.match(key)
    if found:
      cells[(found.group(1), int(found.group(2)))] = float(value)
  languages = sorted({lang for lang, _ in cells})
  layers = sorted({layer for _, layer in cells})
  table = np.full((len(languages), len(layers)), np.nan)
  for (lang, layer), value in cells.items():
    table[languages.index(lang), layers.index(layer)] = value
  return languages, layers, table


@EVALUATORS.register("cka")
class CKA:
  """Linear CKA with English and retrieval P@1, per layer and language."""

  @staticmethod
  def collect(data) -> dict:
    items = multiway_items(data.corpus, data.languages, data.eval_config.cka_items)
    if len(items) < 2:
      logging.warning("cka: only %d multi-way-parallel items in %s; metrics skipped", len(items),
                      data.corpus.dir)
    return {"languages": list(data.languages), "items": items}

  def __init__(self, sets: dict, eval_config):
    del eval_config  # every layer is read with pooling "layer", whatever eval.pooling says
    self.languages = list(sets["languages"])
    self.items = list(sets["items"])

  def __call__(self, model) -> dict:
    foreign = [lang for lang in self.languages if lang != "en"]
    if len(self.items) < 2 or not foreign:
      return {"cka/skipped": f"{len(self.items)} multi-way-parallel items in {self.languages}; CKA "
                             "needs at least 2, in English and another language",
              "cka/items": len(self.items)}
    out = {"cka/items": len(self.items)}
    gold = np.arange(len(self.items))
    layers = range(model_layers(model.config) + 1)
    for layer in layers:
      vectors = {lang: np.asarray(model.encode([item[lang] for item in self.items], lang=lang,
                                               pooling="layer", layer=layer), np.float64)
                 for lang in self.languages}
      for lang in foreign:
        prefix = f"cka/{lang}-en/layer{layer}/"
        out[prefix + "cka"] = metrics.linear_cka(vectors[lang], vectors["en"])
        to_en = metrics.topk_cosine(vectors[lang], vectors["en"], 1)[1][:, 0] == gold
        from_en = metrics.topk_cosine(vectors["en"], vectors[lang], 1)[1][:, 0] == gold
        out[prefix + "p1"] = float((np.mean(to_en) + np.mean(from_en)) / 2)
      for metric in ("cka", "p1"):
        out[f"cka/layer{layer}/{metric}"] = float(np.mean(
            [out[f"cka/{lang}-en/layer{layer}/{metric}"] for lang in foreign]))
    best = max(layers, key=lambda i: out[f"cka/layer{i}/p1"])
    out["cka/best_layer"] = best
    out["cka/best_layer_p1"] = out[f"cka/layer{best}/p1"]
    return out
