"""Turns a validated config into the live pieces of a run: corpus, tokenizer, mesh, model,
objectives, optimizer, sharded state, data iterators, checkpointer, evaluators and export.

`train_and_evaluate`, `xlm-jax eval` and `xlm-jax export` all start here, so they agree on how a
workdir's model is built.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

import jax
import ml_collections

from data_prep import build as corpus_build
from data_prep.debian8 import RECIPES
from xlm_jax.data import batch_kinds, derived
from xlm_jax.data.corpus import Corpus
from xlm_jax.data.tokenizer import Tokenizer, load_tokenizer
from xlm_jax.models.encoder import EncoderConfig, Model, flops_per_token
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import max_predictions
from xlm_jax.registry import EVALUATORS, OBJECTIVES
from xlm_jax.atomic_files import write_json_atomically
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax.train import mesh as mesh_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.step import BoundObjective


def corpus_dir(config) -> pathlib.Path:
  """`data.corpus_dir`, else `$XLM_JAX_DATA_DIR/<data.corpus>`, else ~/.cache/xlm_jax/data/<corpus>."""
  if config.data.corpus_dir:
    return pathlib.Path(config.data.corpus_dir).expanduser()
  root = os.environ.get("XLM_JAX_DATA_DIR", "~/.cache/xlm_jax/data")
  return pathlib.Path(root).expanduser() / config.data.corpus


def load_corpus(config) -> Corpus:
  """Opens the configured corpus, building it from Debian packages if allowed.

  Only the Debian recipes (`data.corpus` = gettext8 | debian8) can be built on the fly; any other
  corpus must exist (`xlm-jax data build ...` with your own text).
  """
  path = corpus_dir(config)
  recipe = config.data.corpus
  can_build = config.data.build_if_missing and recipe in RECIPES
  if can_build and jax.process_index() == 0:
    # Derived languages ("en_trans") are made from a built language on first use, not built here.
    base_languages = tuple(dict.fromkeys(
        derived.split_derived(l)[0] if derived.is_derived(l) else l for l in config.data.languages))
    corpus_build.ensure_corpus(path, languages=base_languages,
                               build_if_missing=True, vocab_size=config.data.vocab_size,
                               seed=config.seed, recipe=recipe)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("corpus ready")  # other hosts wait for host 0's build
  corpus = Corpus(path)
  batch_kinds.check_languages(corpus, tuple(config.data.languages))  # derived ones too
  return corpus


def model_config(config, tokenizer: Tokenizer) -> EncoderConfig:
  fields = config.model.to_dict()
  # A derived "trans" language (ALIGN-MLM) shifts ids by V: its script doubles the vocabulary.
  needed = batch_kinds.effective_vocab_size(tokenizer, tuple(config.data.languages))
  if not fields["vocab_size"]:
    fields["vocab_size"] = needed
  elif fields["vocab_size"] < needed:
    raise ValueError(f"model.vocab_size ({fields['vocab_size']}) is smaller than the {needed} ids "
                     "the tokenizer (and derived languages) use; set it to 0 to follow them")
  if fields["num_languages"] and fields["num_languages"] < len(config.data.languages):
    raise ValueError(f"model.num_languages ({fields['num_languages']}) must be 0 (no language "
                     f"embeddings) or >= len(data.languages) ({len(config.data.languages)})")
  if fields["pad_id"] != tokenizer.pad_id:
    raise ValueError(f"model.pad_id ({fields['pad_id']}) differs from the tokenizer's pad id "
                     f"{tokenizer.pad_id}")
  return EncoderConfig.from_dict(fields)


def bind_objectives(config, model, tokenizer, corpus=None, data_parallel_size: int = 1,
                    names=None) -> dict[str, BoundObjective]:
  """Each configured objective (or those in `names`) with its config, weight and static context.

  Host-side resources (dictionaries) are loaded here, once, and baked into the jitted steps.
  """
  languages = tuple(config.data.languages)
  ranges = batch_kinds.language_ranges(tokenizer, languages)
  bound = {}
  for name, section in config.objectives.items():
    if names is not None and name not in names:
      continue
    objective = OBJECTIVES.get(name)
    cfg = section.to_dict()
    resources = {}
    if objective.load_resources is not None:
      if corpus is None:
        raise ValueError(f"objective {name!r} reads corpus resources; pass the corpus")
      resources = dict(objective.load_resources(cfg, corpus, tokenizer, languages))
    context = ObjectiveContext(
        model=model, config=cfg, vocab_size=model.config.vocab_size, mask_id=tokenizer.mask_id,
        pad_id=tokenizer.pad_id, special_ids=tuple(tokenizer.special_ids), languages=languages,
        data_parallel_size=data_parallel_size, random_ranges=ranges, resources=resources,
        name=name)
    bound[name] = BoundObjective(objective, float(cfg.get("weight", 1.0)), context)
  return bound


def model_params(params):
  """The encoder + MLM head parameters, without the objectives' own heads (what export keeps)."""
  return {k: v for k, v in params.items() if k != "heads"}


@dataclasses.dataclass
class Run:
  """Everything a training, evaluation or export job needs, built once."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  corpus: Corpus
  tokenizer: Tokenizer
  model_config: EncoderConfig
  model: Model
  mesh: Any
  bound: dict
  tx: Any
  schedule: Any
  state: Any
  shardings: Any
  abstract_state: Any
  iterators: dict
  checkpointer: ckpt_lib.Checkpointer
  tokens_per_step: int
  flops_per_step: float
  _evaluators: dict = dataclasses.field(default_factory=dict)

  def evaluator(self, name: str):
    if name not in self._evaluators:
      self._evaluators[name] = EVALUATORS.get(name)(self)
    return self._evaluators[name]

  def evaluate_heldout(self, state) -> dict:
    """The cheap periodic evaluation: held-out losses/accuracies of the trained objectives."""
    return self.evaluator("mlm")(state)

  def evaluate_all(self, state) -> dict:
    results = {}
    for name in self.config.eval.evaluators:
      results.update(self.evaluator(name)(state))
    return results

  def encoder(self, state):
    """The in-training model as a `Pretrained` (same `encode` API as an exported checkpoint)."""
    from xlm_jax.export.export import Pretrained
    params = model_params(state.params)
    if jax.process_count() > 1:
      # `encode` runs on this host's devices; the mesh's params may live partly on other hosts.
      params = jax.device_put(mesh_lib.host_copy(params), jax.local_devices()[0])
    return Pretrained(self.model, params, self.tokenizer,
                      {"languages": list(self.config.data.languages)})

  def close(self) -> None:
    """Waits for pending checkpoint writes and stops the input threads."""
    self.checkpointer.close()
    for it in self.iterators.values():
      close = getattr(it, "close", None)
      if close is not None:
        close()

  def export(self, state, export_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    from xlm_jax.export.export import export_model
    target = pathlib.Path(export_dir or self.config.export.dir or self.workdir / "export")
    # Gathered on every host (a collective: FSDP shards live on several), written by one.
    params, step = mesh_lib.host_copy((model_params(state.params), state.step))
    if jax.process_index() == 0:
      # A language-tagged ("no anchors") vocabulary is a folder of per-language models.
      files = getattr(self.tokenizer, "files", None)
      export_model(target, params, self.model_config.to_dict(),
                   files() if files is not None else self.tokenizer.serialized(),
                   extra_metadata={"languages": list(self.config.data.languages),
                                   "step": int(step),
                                   "corpus_manifest": self.corpus.manifest.get("packages", [])})
    return target


def build_run(config, workdir: pathlib.Path, with_data: bool = True) -> Run:
  """Builds a Run. `with_data=False` (eval/export jobs) skips the training iterators and the
  state's initialisation: the caller restores `run.state` from a checkpoint."""
  mesh_lib.maybe_initialize_distributed(config.distributed)
  workdir.mkdir(parents=True, exist_ok=True)
  corpus = load_corpus(config)
  tokenizer = load_tokenizer(corpus, config.data.vocabulary, seed=config.seed,
                             vocab_size_per_lang=config.data.vocab_size_per_lang,
                             languages=[l for l in config.data.languages
                                        if not derived.is_derived(l)])
  mcfg = model_config(config, tokenizer)
  model = Model(mcfg)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.logical_rules(config.mesh)
  bound = bind_objectives(config, model, tokenizer, corpus,
                          data_parallel_size=mesh_lib.data_parallel_size(mesh))

  total = config.train.total_steps
  tx, schedule = make_optimizer(config.optimizer, total)
  # Eval/export jobs restore a checkpoint into `abstract`: no random init to throw away.
  state, shardings, abstract = create_train_state(
      model, tx, bound, config.data.seq_len, mesh, rules, config.seed, initialize=with_data)

  global_batch = config.train.batch_size
  if global_batch % mesh_lib.data_parallel_size(mesh):
    raise ValueError(f"train.batch_size ({global_batch}) must be divisible by the data-parallel "
                     f"size data*fsdp = {mesh_lib.data_parallel_size(mesh)}")
  mesh_lib.check_hosts_split_batch(mesh, global_batch)
  iterators = {}
  kinds = {kind for b in bound.values() for kind in b.kinds}
  if with_data:
    for kind in sorted(kinds):
      iterators[kind] = iter(make_batch_dataset(kind, config, corpus, tokenizer, "train"))

  seq_len = config.data.seq_len
  tokens_per_step = global_batch * seq_len
  mask_rate = max((b.context.config.get("mask_rate", 0.15) for b in bound.values()), default=0.15)
  predictions = max_predictions(seq_len, mask_rate) / seq_len
  flops = flops_per_token(mcfg, seq_len, predictions) * tokens_per_step

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                       async_save=config.train.async_checkpointing,
                                       data_kinds=tuple(sorted(kinds)))
  if jax.process_index() == 0:
    write_json_atomically(workdir / "config.json", config.to_dict())
  logging.info("model: %s; mesh %s", mcfg, dict(mesh.shape))
  return Run(config=config, workdir=workdir, corpus=corpus, tokenizer=tokenizer, model_config=mcfg,
             model=model, mesh=mesh, bound=bound, tx=tx, schedule=schedule, state=state,
             shardings=shardings, abstract_state=abstract, iterators=iterators,
             checkpointer=checkpointer, tokens_per_step=tokens_per_step, flops_per_step=flops)


def make_batch_dataset(kind: str, config, corpus: Corpus, tokenizer, split: str,
                       num_epochs=None, shuffle=True, max_sentences: int | None = None):
  """The grain dataset of one batch kind (per-host batches), as the config describes it.

  `max_sentences` keeps the first n sentences (or pairs) of each language: fixed evaluation sets.
  """
  data = config.data
  return batch_kinds.make_dataset(
      kind, corpus, tokenizer, split=split, languages=tuple(data.languages), seq_len=data.seq_len,
      batch_size=config.train.batch_size // jax.process_count(), alpha=data.alpha,
      seed=config.seed, packing=data.packing, pair_seq_len=data.pair_seq_len or data.seq_len // 2,
      sentence_len=data.sentence_len or data.seq_len, num_epochs=num_epochs, shuffle=shuffle,
      max_examples=max_sentences, read_threads=data.prefetch_threads,
      foreign_first_rate=data.foreign_first_rate)
