"""ALIGN-MLM (Tang, Deshpande, Narasimhan 2022): MLM plus a pull between dictionary translations.

    L = L_MLM + align_weight * L_align,   L_align = -mean_{(i, j) in D} cos(E[i], E[j])

E is the word-embedding table, which the MLM head also uses as its output layer (tied), and D the
token pairs of the run's dictionaries (word dictionaries, and a derived language's i <-> i + V, e.g.
"en_trans" in data.languages; xlm_jax.data.dictionary). L_align
does not look at the text batch: every step it covers the whole dictionary, or, with
`align_pairs_per_step` = k > 0, k pairs drawn uniformly with replacement (an unbiased estimate of the
full term). No negatives, no projection. L_MLM is the MLM's loss unchanged (mlm_core.masked_lm_loss).

`bilingual_rate` r: a derived language's dictionary holds only the pairs of a fixed random share r of
the vocabulary, drawn once with a fixed seed (`dictionary.bilingual_subset`), as the
reference code does (princeton-nlp/align-mlm, modeling_roberta.py RobertaForAlignedMLM: `randperm(V)`,
first int(V r) ids, specials dropped; the paper's runs use r = 0.25, 0.5 and 1). The default 0.25 is the
reference's (`bilingual_rate` default in run_alignedmlm_synthetic_transitive.py); r = 1 aligns every id,
which is what this objective did before the field existed. Word dictionaries are always used whole: the
reference has none, and their size is already a property of the data.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xlm_jax.data import dictionary as dict_data
from xlm_jax.objectives.base import Objective, ObjectiveContext
from xlm_jax.objectives.masking import masked_predictions_per_token, masking_config
from xlm_jax.objectives.mlm_core import masked_lm_loss
from xlm_jax.registry import OBJECTIVES

WORD_EMBEDDINGS_PATH = ("encoder", "embeddings", "word_embeddings", "embedding")
# Floor of each norm in the cosine: an all-zero row (an id never trained) gives cos 0, not NaN.
_EPS = 1e-8


def default_config() -> dict:
  return masking_config(
      align_weight=10.0,           # lambda
      align_pairs_per_step=0,      # 0 = the whole dictionary every step; k > 0 = k sampled pairs
      dictionary_languages=(),     # () = every run language but English; "en_trans"-style derived too
      bilingual_rate=0.25,         # share of the vocabulary in a derived language's dictionary (1 = all)
  )


def load_pair_resources(config, corpus, tokenizer, languages) -> dict:
  """The dictionary token pairs [N, 2] (numpy) of the configured languages."""
  names = dict_data.dictionary_names(languages, config.get("dictionary_languages", ()))
  arrays = dict_data.load_dictionaries(
      corpus, names, tokenizer, bilingual_rate=float(config.get("bilingual_rate", 1.0)),
      bilingual_seed=dict_data.BILINGUAL_SEED)
  return {"pairs": arrays.pairs}


def word_embedding_table(params, model_config) -> jax.Array:
  """The shared (input and tied output) word-embedding table [V, D] inside a Model's params:
  its vocab_size real rows, without the padding rows the model keeps for sharding."""
  if getattr(model_config, "separate_embeddings", False):
    raise ValueError("ALIGN-MLM aligns rows of the one shared word-embedding table, but "
                     "model.separate_embeddings is on (one table per language); turn it off")
  node = params
  for key in WORD_EMBEDDINGS_PATH:
    if not hasattr(node, "keys") or key not in node:
      raise ValueError(f"params hold no word-embedding table at {'/'.join(WORD_EMBEDDINGS_PATH)} "
                       f"(missing {key!r}); pass the params of xlm_jax.models.encoder.Model")
    node = node[key]
  # A static slice: the rows past vocab_size are padding (models/encoder.py), and a dictionary
  # id or a nearest-neighbour search must never land on one.
  return nn.meta.unbox(node)[:model_config.vocab_size]


def sample_pair_indices(rng: jax.Array, num_pairs: int, count: int) -> jax.Array:
  """`count` indices drawn uniformly, with replacement, from [0, num_pairs)."""
  return jax.random.randint(rng, (count,), 0, num_pairs)


def alignment_loss(table: jax.Array, pairs: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(-mean cos, mean cos) over the pairs' rows of `table` (float32)."""
  # float32 even for a bf16 table: dot products and norms sum D products, too coarse in bf16.
  table = table.astype(jnp.float32)
  a, b = table[pairs[:, 0]], table[pairs[:, 1]]
  norms = (jnp.maximum(jnp.linalg.norm(a, axis=-1), _EPS) * jnp.maximum(jnp.linalg.norm(b, axis=-1), _EPS))
  mean_cos = jnp.mean(jnp.sum(a * b, axis=-1) / norms)
  return -mean_cos, mean_cos


def align_mlm_loss(params, batch, rng, ctx: ObjectiveContext):
  """L_MLM + align_weight * L_align; no extra state. `rng` splits into (MLM key, pair-sampling key)."""
  cfg = ctx.config
  mlm_rng, pair_rng = jax.random.split(rng)
  # The pairs are host constants (ctx.resources), so this check runs once, at trace time.
  host_pairs = np.asarray(ctx.resources["pairs"])
  table = word_embedding_table(params, ctx.model.config)
  if host_pairs.size and host_pairs.max() >= table.shape[0]:
    raise ValueError(f"align_mlm: dictionary ids reach {host_pairs.max()} but the word-embedding "
                     f"table has {table.shape[0]} rows; a derived language needs model.vocab_size = 2 V")
  pairs = jnp.asarray(host_pairs, jnp.int32)
  mlm_value, metrics = masked_lm_loss(params, batch, mlm_rng, ctx)
  if cfg["align_pairs_per_step"] > 0:
    pairs = pairs[sample_pair_indices(pair_rng, pairs.shape[0], int(cfg["align_pairs_per_step"]))]
  align, mean_cos = alignment_loss(table, pairs)
  total = mlm_value + cfg["align_weight"] * align
  metrics = dict(metrics, loss=total, mlm_loss=mlm_value, align_loss=align, mean_cos=mean_cos)
  return total, metrics, ctx.extra


# L_align reads embedding rows, not vocabulary logits: only the MLM's slots count.
OBJECTIVES.register("align_mlm")(Objective(
    name="align_mlm", batch_kind="mono", loss_fn=align_mlm_loss, default_config=default_config,
    load_resources=load_pair_resources, eval_metrics=("loss", "mlm_loss", "accuracy", "align_loss"),
    predictions_per_token=masked_predictions_per_token))
