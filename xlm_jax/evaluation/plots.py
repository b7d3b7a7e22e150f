"""PNG plots of the evaluation suite and of a training run (matplotlib, Agg backend: no display).

    cka_heatmap(languages, layers, values)    linear CKA with English, languages x layers
    layer_lines(languages, layers, values)    retrieval P@1 per layer, one line per language
    training_curves(metrics_jsonl)            loss, accuracy, lr, grad norm, tokens/s per step

Each returns the PNG's bytes (the caller writes them, atomically, beside its other files), or
None for training_curves when the log holds nothing to draw.
"""
from __future__ import annotations

import collections
import io
import json
import math
import pathlib
import re

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120


def _png(figure) -> bytes:
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
  plt.close(figure)  # pyplot keeps every open figure alive otherwise
  return buffer.getvalue()


def _layer_labels(layers) -> list[str]:
  return ["emb" if layer == 0 else str(layer) for layer in layers]


def cka_heatmap(languages, layers, values, title: str = "") -> bytes:
  """Heat-map of values [languages, layers] in [0, 1], each cell written out (NaN left blank)."""
  values = np.asarray(values, np.float64)
  width = max(4.5, 1.1 + 0.62 * len(layers))
  height = max(2.4, 0.9 + 0.42 * len(languages))
  figure, axes = plt.subplots(figsize=(width, height))
  image = axes.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
  axes.set_xticks(range(len(layers)), _layer_labels(layers))
  axes.set_yticks(range(len(languages)), [f"{lang}-en" for lang in languages])
  axes.set_xlabel("layer (emb = embeddings)")
  for i in range(len(languages)):
    for j in range(len(layers)):
      if math.isfinite(values[i, j]):
        # Dark text on the light (high) end of viridis, light text on the dark end.
        axes.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=9,
                  color="black" if values[i, j] > 0.6 else "white")
  figure.colorbar(image, ax=axes, label="linear CKA", fraction=0.05, pad=0.03)
  axes.set_title(title, fontsize=9)
  return _png(figure)


def layer_lines(languages, layers, values, title: str = "", ylabel: str = "P@1") -> bytes:
  """One line per language of values [languages, layers], and their mean in black."""
  values = np.asarray(values, np.float64)
  figure, axes = plt.subplots(figsize=(6.4, 3.8))
  colours = plt.get_cmap("tab10")
  for i, lang in enumerate(languages):
    axes.plot(layers, values[i], marker="o", markersize=3, linewidth=1.2, color=colours(i % 10),
              label=f"{lang}-en")
  if len(languages) > 1:
    axes.plot(layers, np.nanmean(values, axis=0), color="black", linewidth=2.4, label="mean")
  axes.set_xticks(list(layers), _layer_labels(layers))
  axes.set_xlabel("layer (emb = embeddings)")
  axes.set_ylabel(ylabel)
  top = np.nanmax(values) if np.isfinite(values).any() else 1.0
  # Low scores (an untrained model) would sit flat on the axis of a fixed [0, 1] range.
  axes.set_ylim(0.0, min(1.0, max(0.05, top * 1.15)))
  axes.grid(alpha=0.3)
  axes.legend(fontsize=7, ncol=2 if len(languages) > 5 else 1, loc="best")
  axes.set_title(title, fontsize=9)
  return _png(figure)


def read_metrics(path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{key: (steps, values)} of every numeric key in a metrics.jsonl (MetricWriter's format:
  one JSON object per log step with "step", "time" and prefixed scalars); a resumed run that
  logged a step twice keeps the later value."""
  series = collections.defaultdict(dict)
  path = pathlib.Path(path)
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as err:
        # A run killed mid-write leaves a cut last line: the lines before it are still good.
        raise ValueError(f"{path}:{number}: not valid JSON ({err}); remove the damaged "
                         "line") from err
      step = row.get("step")
      if not isinstance(step, int):
        continue
      for key, value in row.items():
        if key not in ("step", "time") and isinstance(value, (int, float)):
          series[key][step] = float(value)
  return {key: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
          for key, points in series.items()}


# Panels of the training figure: title, y label, the keys drawn (a regex over metrics.jsonl
# keys), log scale. Keys are written by the trainer as train/<metric>, train/<objective>/<metric>
# and eval/<objective>/<metric> (xlm_jax/train/trainer.py, metrics.py).
_PANELS = (
    ("loss", "loss (nats)", r"(train|eval)/(loss|[^/]+/loss)", False),
    ("accuracy", "accuracy", r"(train|eval)/[^/]+/accuracy", False),
    ("learning rate", "learning rate", r"train/learning_rate", False),
    ("gradient norm", "global L2 norm (before clipping)", r"train/grad_norm", False),
    ("throughput", "tokens/s", r"train/tokens_per_second", False),
)


def _curve_label(key: str) -> str:
  split, _, name = key.partition("/")
  name = name.rsplit("/", 1)[0] if "/" in name else "total"
  return f"{name} ({'held-out' if split == 'eval' else split})"


def training_curves(metrics_path, title: str = "") -> bytes | None:
  """The training run of a metrics.jsonl as one figure: a panel per quantity that was logged
  (loss per objective, accuracy, learning rate, gradient norm, tokens/s); held-out curves are
  dashed. None when the file has no training metrics."""
  series = read_metrics(metrics_path)
  panels = []
  for name, ylabel, pattern, log_scale in _PANELS:
    keys = sorted(k for k in series if re.fullmatch(pattern, k))
    # The unigram baseline is logged under eval/ too, but is a constant, not a curve.
    keys = [k for k in keys if "/unigram/" not in k]
    if sum(re.fullmatch(r"train/[^/]+/loss", k) is not None for k in keys) == 1:
      # One objective: the total is the same curve and would hide under it.
      keys = [k for k in keys if k != "train/loss"]
    if keys:
      panels.append((name, ylabel, keys, log_scale))
  if not panels:
    return None
  columns = 2 if len(panels) > 1 else 1
  rows = math.ceil(len(panels) / columns)
  figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.0 * rows), squeeze=False)
  colours = plt.get_cmap("tab10")
  for index, (name, ylabel, keys, log_scale) in enumerate(panels):
    ax = axes[index // columns][index % columns]
    # An objective keeps its colour in every panel; its held-out curve is the dashed one.
    objectives = sorted({_curve_label(k).split(" (")[0] for k in keys})
    for key in keys:
      steps, values = series[key]
      objective = _curve_label(key).split(" (")[0]
      held_out = key.startswith("eval/")
      # The total of several objectives is black: it is their weighted sum, not one of them.
      colour = "black" if objective == "total" else colours(objectives.index(objective) % 10)
      ax.plot(steps, values, linestyle="--" if held_out else "-",
              marker="o" if held_out or len(steps) < 3 else None, markersize=3, linewidth=1.3,
              color=colour, label=_curve_label(key))
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_scale:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(keys) > 1:
      ax.legend(fontsize=7)
  for index in range(len(panels), rows * columns):
    axes[index // columns][index % columns].axis("off")
  if title:
    figure.suptitle(title, fontsize=11)
  figure.tight_layout()
  return _png(figure)
