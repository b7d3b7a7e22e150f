"""ALIGN-MLM's alignment % of the word-embedding table (objectives.md, "Synthetic derived languages").

For each set of translation pairs (i, j) of token ids, rows of the (tied) word-embedding table E are
normalised and a random 90% of the source ids (seed `config.seed`) are queried: a query is a hit when
its cosine nearest neighbour among the candidates is one of its own translations. A derived language's
candidates are every row of the other table, E[V:2V] (as the reference code searches: princeton-nlp/
align-mlm analysis/alignedmlm_paper_analysis/compute_alignment_without_lang_ids.py, `test_mapping`:
`embeddings[0][validation] @ embeddings[1].T`), so untrained rows (specials, overlap ids) compete too;
a word dictionary's are the target ids of the set (BLI's convention: the reference has no word sets). The
Procrustes variant first maps source rows with the orthogonal W learned on a disjoint 5% of the source
ids (W = U V^T, U S V^T = SVD(X^T Y)); it is reported only where those pairs are at least as many as
the table's dimensions (fewer leave W arbitrary on the rest of the space). Sets:

  <lang>   held-out BLI test pairs of <corpus>/eval/bli/en-<lang>.tsv, words kept where both sides are
           one tokenizer piece (as the training dictionaries); English -> <lang>; any listed
           translation counts
  <lang>_<op>  each derived run language ("en_trans", xlm_jax.data.derived) whose ids fit the model's
           table: its implicit dictionary i <-> i + V, scored by the same dictionary_alignment_accuracy

Metrics (percentages): alignment/<set>/accuracy, alignment/<set>/procrustes_accuracy,
alignment/<set>/pairs, and their means over sets. Sets without data are skipped with a logged note.
"""
from __future__ import annotations

import collections
import logging
import pathlib

import numpy as np

from xlm_jax.data import derived, synthetic
from xlm_jax.data.dictionary import load_dictionary, token_pairs
from xlm_jax.data.tokenizer import needs_language
from xlm_jax.registry import EVALUATORS

EVAL_FRACTION = 0.9
PROCRUSTES_FRACTION = 0.05


def split_source_ids(ids, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(evaluated 90%, Procrustes 5%) of `ids`, disjoint; the split dictionary_alignment_accuracy makes.

  The 5% come right after the 90% in one seeded permutation, so they never overlap and a given seed
  always evaluates the same ids."""
  ids = np.asarray(ids, np.int64)
  shuffled = np.random.default_rng(seed).permutation(ids)
  num_eval = int(round(EVAL_FRACTION * len(ids)))
  num_train = int(round(PROCRUSTES_FRACTION * len(ids)))
  return shuffled[:num_eval], shuffled[num_eval:num_eval + num_train]


def _normalise(rows: np.ndarray) -> np.ndarray:
  rows = np.asarray(rows, np.float64)
  # The floor keeps an all-zero row (an id never trained) at zero instead of NaN.
  return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def dictionary_alignment_accuracy(table, pairs, seed: int, procrustes: bool = False,
                                  candidates=None) -> float:
  """% of a seeded 90% of the source ids (pairs[:, 0]) whose cosine nearest neighbour among
  `candidates` (default: the target ids pairs[:, 1]) is one of their translations; optionally after a
  Procrustes map learned on the pairs of a disjoint 5% of the source ids.

  The one alignment metric of the project: word dictionaries (a source id may have several
  translations) and a derived language's implicit dictionary (i, i + V) with candidates = every id of
  [V, 2V), where it is the nearest neighbour of E[i] among all of E[V:2V] being E[i + V] (Deshpande et
  al. 2022's metric, as their code computes it)."""
  table = _normalise(table)
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  gold = collections.defaultdict(set)
  for source, target in pairs:
    gold[int(source)].add(int(target))
  # Split over unique source ids, not pairs: a word with many translations counts once.
  eval_ids, train_ids = split_source_ids(np.unique(pairs[:, 0]), seed)
  # By default only the set's own target ids compete, not the whole vocabulary (as in BLI).
  candidates = np.unique(pairs[:, 1]) if candidates is None else np.unique(np.asarray(candidates, np.int64))
  queries = table[eval_ids]
  if procrustes:
    if len(train_ids) == 0:
      raise ValueError(f"{len(gold)} source ids leave no 5% to learn the Procrustes map from")
    train = pairs[np.isin(pairs[:, 0], train_ids)]
    # Orthogonal Procrustes: W = U V^T maximises trace(W^T X^T Y), i.e. x W ~ y, keeping cosines intact.
    u, _, vt = np.linalg.svd(table[train[:, 0]].T @ table[train[:, 1]])
    queries = _normalise(queries @ (u @ vt))
  nearest = candidates[np.argmax(queries @ table[candidates].T, axis=1)]
  hits = sum(int(t) in gold[int(s)] for s, t in zip(eval_ids, nearest))
  return 100.0 * hits / max(len(eval_ids), 1)


def bli_token_pairs(path, tokenizer, lang: str | None = None) -> np.ndarray:
  """int32 [N, 2] single-piece (English id, foreign id) pairs of a BLI test TSV; `lang` (the
  foreign language) matters for vocabularies split by language."""
  pairs = load_dictionary(path).pairs
  # A shared vocabulary encodes every language alike; only per-language id ranges need the language.
  split = lang if needs_language(tokenizer) else None
  return token_pairs(pairs, tokenizer, collections.Counter(), lang=split)


def derived_pairs(corpus, name: str, table_rows: int):
  """(implicit pairs [N, 2], source vocabulary V) of a derived run language, or None (logged) when its
  folder is missing or its ids do not fit the model's table."""
  path = derived.derived_dir(corpus, name) / "dictionary.npy"
  if not path.is_file():
    logging.info("alignment: skipping %s: %s not found (`%s`)", name, path,
                 derived.derive_command(corpus, name, 0))
    return None
  pairs, meta = synthetic.read_dictionary(path)
  # vocab_size counts both halves (source V + derived V), so the shift is size // 2.
  size = int(meta.get("vocab_size", 0))
  if size > table_rows:
    logging.info("alignment: skipping %s: its ids reach %d, the model's vocabulary has %d", name, size,
                 table_rows)
    return None
  if not np.array_equal(pairs[:, 1], pairs[:, 0] + size // 2):
    raise ValueError(f"{path} is not an implicit dictionary (i, i + {size // 2}); remake it with "
                     f"`{derived.derive_command(corpus, name, 0)}`")
  return pairs, size // 2


@EVALUATORS.register("alignment")
class Alignment:
  """Alignment % (plain and Procrustes) of dictionary pairs in the word-embedding table."""

  @staticmethod
  def collect(data) -> dict:
    """Token-id pairs per set: held-out BLI words (single pieces on both sides) and the implicit
    dictionaries of derived languages whose ids fit the model's table."""
    model_config = data.model_config
    if getattr(model_config, "separate_embeddings", False):
      raise ValueError("the alignment evaluator compares rows of one shared word-embedding table, but "
                       "model.separate_embeddings is on; drop 'alignment' from eval.evaluators")
    rows = model_config.vocab_size
    corpus = data.corpus
    sets = {"seed": int(data.seed), "word": [], "derived": {}}
    for lang in data.languages:
      if lang == "en":
        continue
      if derived.is_derived(lang):
        found = derived_pairs(corpus, lang, rows)
        if found is not None:
          sets[f"derived/{lang}"] = found[0]
          sets["derived"][lang] = int(found[1])
        continue
      path = pathlib.Path(corpus.dir) / "eval" / "bli" / f"en-{lang}.tsv"
      if not path.is_file():
        logging.info("alignment: skipping %s: no BLI test pairs (%s not found)", lang, path)
        continue
      pairs = bli_token_pairs(path, data.tokenizer, lang)
      # An id beyond the model's table has no embedding row to compare.
      pairs = pairs[(pairs < rows).all(axis=1)]
      if not len(pairs):
        logging.info("alignment: skipping %s: no BLI pair of %s is single-piece on both sides", lang, path)
        continue
      sets[f"word/{lang}"] = pairs
      sets["word"].append(lang)
    return sets

  def __init__(self, sets: dict, eval_config):
    del eval_config  # the sets fix everything this evaluator reads
    self.seed = int(sets["seed"])
    self.word_sets = {lang: np.asarray(sets[f"word/{lang}"]) for lang in sets["word"]}
    self.derived_sets = {lang: (np.asarray(sets[f"derived/{lang}"]), int(size))
                         for lang, size in sets["derived"].items()}

  def __call__(self, model) -> dict:
    table = np.asarray(model.word_embeddings())
    out = {}
    for name, pairs in self.word_sets.items():
      out.update(self._set_scores(table, name, pairs))
    for name, (pairs, size) in self.derived_sets.items():
      out.update(self._set_scores(table, name, pairs, derived_size=size))
    for metric in ("accuracy", "procrustes_accuracy"):
      values = [v for k, v in out.items() if k.endswith("/" + metric)]
      if values:
        out[f"alignment/mean_{metric}"] = float(np.mean(values))
    return out

  def _set_scores(self, table, name: str, pairs, derived_size: int = 0) -> dict:
    """Scores of one set, word dictionary or derived language alike (dictionary_alignment_accuracy).

    derived_size: V of a derived set, whose candidates are then all rows of the other table, [V, 2V)."""
    candidates = np.arange(derived_size, 2 * derived_size) if derived_size else None

    def score(procrustes: bool) -> float:
      return dictionary_alignment_accuracy(table, pairs, self.seed, procrustes, candidates)

    num_source_ids = len(np.unique(pairs[:, 0]))
    scores = {f"alignment/{name}/accuracy": float(score(False)),
              f"alignment/{name}/pairs": float(len(pairs))}
    # The split's sizes depend on the count alone, so any ids and seed give the real 5%'s size.
    num_train = split_source_ids(np.arange(num_source_ids), 0)[1].size
    if num_train >= table.shape[1]:
      scores[f"alignment/{name}/procrustes_accuracy"] = float(score(True))
    else:
      # Fewer pairs than dimensions leave the map arbitrary on the rest of the space (SVD's free
      # null-space basis), which scrambles even a perfectly aligned table: no number beats a wrong one.
      logging.info("alignment: no Procrustes score for %s: 5%% of its %d source ids is %d pairs, fewer "
                   "than the %d dimensions the orthogonal map has to fix", name, num_source_ids,
                   num_train, table.shape[1])
    return scores
