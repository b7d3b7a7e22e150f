"""The training story, top to bottom, in banner sections:

    mesh -> data -> model and state -> jitted steps -> checkpoint/resume -> loop with metrics and
    evaluation -> export

    summary = train_and_evaluate(config, workdir)

Running it again on the same workdir resumes from the latest checkpoint, including the exact
position of every data iterator. State is explicit: every function takes what it reads and
returns what it changes; the loop owns `state` and nothing else writes it.

The corpus must exist (the `xlm-jax train` command builds the Debian recipes on first use,
before it calls this). `xlm-jax eval` and `xlm-jax export` (workdir_jobs.py) reuse these
functions on the workdir alone: no corpus, no optimizer.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
import tqdm

from xlm_jax import config as config_lib
from xlm_jax.atomic_files import write_json_atomically
from xlm_jax.data import batch_kinds, derived, input_shards
from xlm_jax.data.corpus import Corpus, build_command, resolve_corpus_dir
from xlm_jax.data.tokenizer import Tokenizer, load_tokenizer
from xlm_jax.evaluation import base as eval_lib
from xlm_jax.models.encoder import EncoderConfig, Model, flops_per_token
from xlm_jax.objectives.base import ObjectiveContext, predictions_per_token
from xlm_jax.registry import OBJECTIVES
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax import mesh as mesh_lib
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train import warm_start as warm_start_lib
from xlm_jax.train import workdir as workdir_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.nonfinite import NonFiniteWatch, nonfinite_error, skip_nonfinite
from xlm_jax.train.step import BoundObjective, make_eval_step, make_train_step

# Held-out batches are masked with this fixed key (offset from the run's seed), so held-out
# numbers are comparable across steps and runs.
_EVAL_SEED_OFFSET = 1_000_003


# =============================================================================================
# Data: the corpus, its tokenizer and the grain pipelines of each batch kind
# =============================================================================================


def open_corpus(config) -> Corpus:
  """The configured corpus; it must be built (`xlm-jax train` builds the Debian recipes first)."""
  path = resolve_corpus_dir(config.data.corpus_dir, config.data.corpus)
  if not (path / "manifest.json").is_file():
    raise FileNotFoundError(
        f"corpus {path} is not built. Build it with `{build_command(path, config.data.corpus)}` "
        "(the Debian recipes gettext8 and debian8), or point --config.data.corpus_dir at a corpus "
        "you built from your own text (`xlm-jax data build --corpus-dir DIR --mono-dir ...`)")
  corpus = Corpus(path)
  batch_kinds.check_languages(corpus, tuple(config.data.languages))  # derived ones too
  return corpus


def open_tokenizer(config, corpus: Corpus):
  """The run's tokenizer: the pretrained model's (init_from=hf:PATH: the corpus is then
  tokenized with it, as continued pre-training does), else the corpus's vocabulary mode."""
  pretrained = warm_start_lib.hf_folder(config.init_from)
  if pretrained is not None:
    if config.data.vocabulary != "joint":
      raise ValueError(f"init_from={config.init_from!r} brings its own tokenizer; "
                       f"data.vocabulary={config.data.vocabulary!r} would build another one. "
                       "Leave data.vocabulary at 'joint'")
    from xlm_jax.export import hf
    return hf.read_hf_tokenizer(pretrained)[1]
  return load_tokenizer(corpus, config.data.vocabulary, seed=config.seed,
                        vocab_size_per_lang=config.data.vocab_size_per_lang,
                        languages=[l for l in config.data.languages if not derived.is_derived(l)])


def make_batch_dataset(kind: str, config, corpus: Corpus, tokenizer, split: str,
                       num_epochs=None, shuffle=True, max_sentences: int | None = None,
                       shards: input_shards.Plan | None = None):
  """The grain dataset of one batch kind (per-host batches), as the config describes it.

  `max_sentences` keeps the first n sentences (or pairs) of each language: fixed evaluation sets.
  `shards` (training): read the global batch as `shards.count` input shards, this process's run
  of them stacked (input_shards.StackedShards); None: one shard per process.
  """
  data = config.data

  def one(shard_index=None, shard_count=None, batch_size=None, seed=config.seed):
    return batch_kinds.make_dataset(
        kind, corpus, tokenizer, split=split, languages=tuple(data.languages),
        seq_len=data.seq_len, batch_size=batch_size or config.train.batch_size // jax.process_count(),
        alpha=data.alpha, seed=seed, packing=data.packing,
        pair_seq_len=data.pair_seq_len or data.seq_len // 2,
        sentence_len=data.sentence_len or data.seq_len, num_epochs=num_epochs, shuffle=shuffle,
        max_examples=max_sentences, read_threads=data.prefetch_threads,
        foreign_first_rate=data.foreign_first_rate, shard_index=shard_index,
        shard_count=shard_count)
  if shards is None:
    return one()
  return input_shards.StackedShards(
      lambda index, count: one(index, count, config.train.batch_size // count, shards.seed),
      shards.count, input_shards.local_shards(shards.count, jax.process_index(),
                                              jax.process_count()))


def _next_batches(iterators: dict, kinds, mesh, grad_accum_steps: int) -> dict[str, Any]:
  """Draws one global batch of every kind in `kinds` and places it on the mesh."""
  out = {}
  for kind in kinds:
    host = next(iterators[kind])
    if grad_accum_steps > 1:  # a leading micro-batch axis, scanned over inside the step
      host = {k: v.reshape(grad_accum_steps, v.shape[0] // grad_accum_steps, *v.shape[1:])
              for k, v in host.items()}
    out[kind] = mesh_lib.to_global_batch(host, mesh, leading_dims=1 if grad_accum_steps > 1 else 0)
  return out


# =============================================================================================
# Model and objectives
# =============================================================================================


def model_config(config, tokenizer: Tokenizer) -> EncoderConfig:
  """The EncoderConfig of `config.model`, with the vocabulary the tokenizer needs.

  With init_from=hf:PATH the pretrained model fixes the architecture (hf.ARCHITECTURE_FIELDS:
  sizes, vocabulary, positions, LayerNorm eps); dropout, dtypes, remat, scan and vocabulary
  padding stay the run's own.
  """
  fields = config.model.to_dict()
  pretrained = warm_start_lib.hf_folder(config.init_from)
  if pretrained is not None:
    from xlm_jax.export import hf
    architecture = hf.read_hf_config(pretrained)[0]
    changed = {f: getattr(architecture, f) for f in hf.ARCHITECTURE_FIELDS
               if fields[f] != getattr(architecture, f)}
    if changed:
      logging.info("init_from %s sets model fields %s", config.init_from, changed)
    fields.update({f: getattr(architecture, f) for f in hf.ARCHITECTURE_FIELDS})
    # Language embeddings (XLM, ERNIE-M's placeholders) are added to XLM-R's input and start at
    # zero (warm_start): per-language copies of XLM-R's own tables or layers would not.
    parts = [k for k in ("separate_embeddings", "separate_layers") if fields[k]]
    if parts:
      raise ValueError(f"init_from={config.init_from!r}: XLM-R has no language-specific copies, "
                       f"so model.{parts[0]}={fields[parts[0]]!r} would replace its shared "
                       "weights with untrained ones; set it to False/0, or train from scratch")
    needed = batch_kinds.effective_vocab_size(tokenizer, tuple(config.data.languages))
    if needed > fields["vocab_size"]:
      raise ValueError(f"init_from={config.init_from!r}: data.languages "
                       f"{list(config.data.languages)} need {needed} ids (a derived 'trans' "
                       f"language doubles the vocabulary), the pretrained model has "
                       f"{fields['vocab_size']}; drop the derived language")
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


def load_objective_resources(config, corpus, tokenizer) -> dict[str, dict]:
  """Host-side constants of each configured objective (dictionary pairs), read once."""
  languages = tuple(config.data.languages)
  resources = {}
  for name, section in config.objectives.items():
    objective = OBJECTIVES.get(name)
    if objective.load_resources is not None:
      resources[name] = dict(objective.load_resources(section.to_dict(), corpus, tokenizer,
                                                      languages))
  return resources


def bind_objectives(config, model, tokenizer, resources: dict | None = None,
                    data_parallel_size: int = 1, names=None) -> dict[str, BoundObjective]:
  """Each configured objective (or those in `names`) with its config, weight and static context.

  `resources` ({objective: {name: array}}, from `load_objective_resources` or the workdir) are
  baked into the jitted steps as `ctx.resources`.
  """
  languages = tuple(config.data.languages)
  ranges = batch_kinds.language_ranges(tokenizer, languages)
  bound = {}
  for name, section in config.objectives.items():
    if names is not None and name not in names:
      continue
    objective = OBJECTIVES.get(name)
    cfg = section.to_dict()
    if objective.load_resources is not None and name not in (resources or {}):
      raise ValueError(f"objective {name!r} reads corpus resources; load them first "
                       "(load_objective_resources)")
    context = ObjectiveContext(
        model=model, config=cfg, vocab_size=model.config.vocab_size, mask_id=tokenizer.mask_id,
        pad_id=tokenizer.pad_id, special_ids=tuple(tokenizer.special_ids), languages=languages,
        data_parallel_size=data_parallel_size, random_ranges=ranges,
        resources=dict((resources or {}).get(name, {})), name=name)
    bound[name] = BoundObjective(objective, float(cfg.get("weight", 1.0)), context)
  return bound


def model_params(params):
  """The encoder + MLM head parameters, without the objectives' own heads (what export keeps)."""
  return {k: v for k, v in params.items() if k != "heads"}


# =============================================================================================
# Stages and jitted update steps
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class Stage:
  """Steps [start, end) train `groups`: one group per step, all objectives of a group summed."""
  name: str
  start: int
  end: int
  groups: tuple[tuple[str, ...], ...]


def plan_stages(config, bound) -> list[Stage]:
  """The run's stages; without `config.stages`, one stage with every objective.

  Mixing "sum" trains all of a stage's objectives every step; "alternate" one per step, drawn
  by weight (`group_for_step`).
  """
  specs = config.stages or (dict(name="train", steps=config.train.total_steps,
                                  objectives=tuple(bound), mixing=config.objective_mixing),)
  lengths = (config_lib.stage_lengths(config) if config.stages
             else [config.train.total_steps])
  stages, start = [], 0
  for spec, length in zip(specs, lengths):
    names = tuple(spec["objectives"])
    mixing = spec.get("mixing", config.objective_mixing)
    groups = (names,) if mixing == "sum" else tuple((n,) for n in names)
    for group in groups:
      custom = [n for n in group if bound[n].objective.make_steps is not None]
      if custom and len(group) > 1:
        raise ValueError(f"stage {spec.get('name', '?')!r}: objective {custom[0]!r} runs its own "
                         f"update steps, so it cannot be summed with {list(group)}; give it a "
                         "stage of its own or use mixing='alternate'")
    stages.append(Stage(str(spec.get("name", f"stage{len(stages)}")), start, start + length,
                        groups))
    start += length
  return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
  for stage in stages:
    if stage.start <= step < stage.end:
      return stage
  return stages[-1]


def group_for_step(bound, groups, seed: int, step: int) -> int:
  """The group trained at `step`: drawn by weight from (seed, step), so a resume redraws it."""
  if len(groups) == 1:
    return 0
  weights = np.asarray([bound[g[0]].weight for g in groups], np.float64)
  rng = np.random.default_rng([seed, step])
  return int(rng.choice(len(groups), p=weights / weights.sum()))


def group_kinds(bound, group) -> list[str]:
  return sorted({kind for name in group for kind in bound[name].kinds})


def jit_update_steps(bound, tx, schedule, shardings, mesh, grad_accum_steps=1, rules=None) -> list:
  """The jitted update functions of one objective group (`bound`: name -> BoundObjective), run
  in order every step.

  A plain group is one `make_train_step` (gradient of the summed losses); an objective with its
  own `make_steps` (EMMA-X's E-step, M-step) gives several, each jitted on its own. The state is
  donated: parameters and optimizer moments are updated in place. Each drops an update with a
  non-finite loss or gradient inside the step (`nonfinite.skip_nonfinite`), and is traced in
  `mesh.tracing_context(mesh, rules)`, which shards the activations (rules None: the default).
  """
  leading = 1 if grad_accum_steps > 1 else 0
  kinds = sorted({kind for b in bound.values() for kind in b.kinds})
  in_shardings = (shardings, {k: mesh_lib.batch_sharding(mesh, leading) for k in kinds})
  out_shardings = (shardings, mesh_lib.replicated(mesh))  # metrics: small, on every device
  first_name, first = next(iter(bound.items()))
  if first.objective.make_steps is not None:
    if grad_accum_steps > 1:
      raise ValueError(f"objective {first_name!r} runs its own steps, which do not support "
                       "train.grad_accum_steps > 1; set it to 1")
    fns = [fn for _, fn in first.objective.make_steps(first, tx, schedule)]
  else:
    fns = [make_train_step(dict(bound), tx, schedule, grad_accum_steps)]
  jit = functools.partial(mesh_lib.jit_in_mesh, mesh=mesh, rules=rules, donate_argnums=0,
                          in_shardings=in_shardings, out_shardings=out_shardings)
  return [jit(skip_nonfinite(fn)) for fn in fns]


def run_group(fns, state, batches):
  """Applies a group's update functions in order; returns the new state and merged metrics."""
  metrics, skipped = {}, []
  for fn in fns:
    state, step_metrics = fn(state, batches)
    skipped.append(step_metrics.get("nonfinite_skipped"))
    metrics.update(step_metrics)
  skipped = [s for s in skipped if s is not None]
  if len(skipped) > 1:  # one skipped part (EMMA-X's E-step) marks the whole step; stays on device
    metrics["nonfinite_skipped"] = functools.reduce(jax.numpy.maximum, skipped)
  return state, metrics


# =============================================================================================
# Evaluation: the model as functions (evaluators never see the training state)
# =============================================================================================


def heldout_eval_step(bound, seed: int, put_batch=None, mesh=None, rules=None):
  """`(params, extra) -> eval_step(kind, index, host_batch)` for the held-out evaluator, traced in
  `mesh.tracing_context`: each objective reading `kind`, dropout off, a fixed masking key."""
  rng = jax.random.PRNGKey(seed + _EVAL_SEED_OFFSET)
  by_kind = {}
  for kind in sorted({b.objective.batch_kind for b in bound.values()}):
    group = {n: b for n, b in bound.items() if b.objective.batch_kind == kind}
    by_kind[kind] = (group, mesh_lib.jit_in_mesh(make_eval_step(group), mesh, rules))
  put_batch = put_batch or jax.device_put

  def with_state(params, extra):
    def eval_step(kind, index, batch):
      if kind not in by_kind:
        return {}
      group, step = by_kind[kind]
      metrics = jax.device_get(step(params, extra, {kind: put_batch(batch)},
                                    jax.random.fold_in(rng, index)))
      return {name: {key: metrics[f"{name}/{key}"]
                     for key in (*b.objective.eval_metrics, "weight") if f"{name}/{key}" in metrics}
              for name, b in group.items()}
    return eval_step
  return with_state


def sentence_specials(config) -> bool:
  """Whether the run's sentence objectives read `<s> s </s>`: False when one strips them (EMS's
  reference recipe, objectives.ems.sentence_specials). Evaluation and the export then encode
  sentences without them too (export.Pretrained.sentence_specials)."""
  return all(section.get("sentence_specials", True) for section in config.objectives.values())


def eval_model(model: Model, params, tokenizer, languages, eval_step=None,
               specials: bool = True) -> eval_lib.EvalModel:
  """An EvalModel of encoder params that live on this host (one device). `specials`: see
  `sentence_specials`.

  `params` may be a function returning them: it is called once, on the first encode or table
  read, so an evaluation of held-out losses alone never gathers FSDP shards across hosts.
  """
  from xlm_jax.export.export import Pretrained
  from xlm_jax.objectives.align_mlm import word_embedding_table
  host_params = functools.cache(params if callable(params) else lambda: params)
  encoder = functools.cache(lambda: Pretrained(model, host_params(), tokenizer, {
      "languages": list(languages), "metadata": {"sentence_specials": specials}}))
  return eval_lib.EvalModel(
      encode=lambda *args, **kwargs: encoder().encode(*args, **kwargs), config=model.config,
      eval_step=eval_step,
      word_embeddings=lambda: np.asarray(jax.device_get(
          word_embedding_table(host_params(), model.config))))


def _on_this_host(params):
  """Params for host-local work (encoding): on multi-host runs FSDP shards live on several
  hosts, so gather them (a collective every host joins) onto this host's first device."""
  if jax.process_count() == 1:
    return params
  return jax.device_put(mesh_lib.host_copy(params), jax.local_devices()[0])


def eval_data(config, corpus, tokenizer, mcfg, bound) -> eval_lib.EvalData:
  return eval_lib.EvalData(
      corpus=corpus, tokenizer=tokenizer, languages=tuple(config.data.languages),
      seed=config.seed, alpha=config.data.alpha, model_config=mcfg, eval_config=config.eval,
      make_batches=lambda kind: list(iter(make_batch_dataset(
          kind, config, corpus, tokenizer, "test", num_epochs=1, shuffle=False,
          max_sentences=config.data.eval_sentences))),
      batch_kinds=tuple(sorted({b.objective.batch_kind for b in bound.values()})))


def evaluation_sets(config, workdir,
                    data: eval_lib.EvalData | None) -> tuple[dict[str, dict], list[str]]:
  """Every configured evaluator's sets: from the workdir where stored, else read from `data`.
  Returns (sets, names of those read from `data` now)."""
  folder = eval_lib.sets_folder(workdir / workdir_lib.EVAL_SETS_DIR, jax.process_index(),
                                jax.process_count())
  names = list(config.eval.evaluators)
  stored = [n for n in names if (folder / f"{n}.json").is_file()]
  sets = eval_lib.load_sets(folder, stored) if stored else {}
  if data is not None:  # a resume may add what the stored sets lack (another batch kind)
    sets = {n: v for n, v in sets.items() if eval_lib.covers(n, v, data)}
  missing = [n for n in names if n not in sets]
  if missing:
    if data is None:
      eval_lib.load_sets(folder, missing)  # raises, naming the first missing file
    sets.update(eval_lib.collect_sets(missing, data))
  return {n: sets[n] for n in names}, missing


# =============================================================================================
# Export
# =============================================================================================


def export(target, params, mcfg: EncoderConfig, tokenizer, languages, step: int,
           corpus_packages=(), specials: bool = True) -> pathlib.Path:
  """Writes the export folder (params without the objectives' heads) from process 0.
  `specials`: see `sentence_specials`."""
  from xlm_jax.export.export import export_model
  if jax.process_index() == 0:
    files = getattr(tokenizer, "files", None)  # a language-tagged vocabulary: several models
    export_model(target, model_params(params), mcfg.to_dict(),
                 files() if files is not None else tokenizer.serialized(),
                 extra_metadata={"languages": list(languages), "step": int(step),
                                 "corpus_manifest": list(corpus_packages),
                                 "sentence_specials": bool(specials)})
  return pathlib.Path(target)


# =============================================================================================
# Preemption: SIGTERM (what TPU VMs, Kubernetes and Slurm send) asks the loop to checkpoint and
# leave at the next step boundary, never in the middle of a write.
# =============================================================================================


class _StopRequest:
  def __init__(self):
    self.requested = False
    self._previous = None

  def install(self) -> None:
    def handler(signum, frame):
      logging.warning("signal %d received: checkpointing at the next step boundary", signum)
      self.requested = True
    self._previous = signal.signal(signal.SIGTERM, handler)

  def uninstall(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      # All hosts must agree, or some would block in a collective the others never join.
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.asarray(self.requested))
      return bool(np.any(flags)) or multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def _any_host(flag: bool) -> bool:
  """True on every host when `flag` is True on any: hosts must all leave the loop at one step."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


# =============================================================================================
# The story
# =============================================================================================


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
  """Trains `config` in `workdir` (resuming if possible), evaluates, exports; returns a summary.

  Every check runs before anything is written to the workdir: a refused run leaves it as it was.
  """
  workdir = workdir_lib.check_path(workdir)
  total = config.train.total_steps

  # ------------------------------------------------------------------ mesh
  mesh_lib.maybe_initialize_distributed(config.distributed)
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.logical_rules(config.mesh)
  global_batch = config.train.batch_size
  if global_batch % mesh_lib.data_parallel_size(mesh):
    raise ValueError(f"train.batch_size ({global_batch}) must be divisible by the data-parallel "
                     f"size data*fsdp = {mesh_lib.data_parallel_size(mesh)}")
  mesh_lib.check_hosts_split_batch(mesh, global_batch)

  # ------------------------------------------------------------------ data
  corpus = open_corpus(config)
  tokenizer = open_tokenizer(config, corpus)
  resources = load_objective_resources(config, corpus, tokenizer)

  # ------------------------------------------------------------------ model and state
  mcfg = model_config(config, tokenizer)
  model = Model(mcfg)
  bound = bind_objectives(config, model, tokenizer, resources,
                          data_parallel_size=mesh_lib.data_parallel_size(mesh))
  stages = plan_stages(config, bound)
  tx, schedule = make_optimizer(config.optimizer, total)
  kinds = sorted({kind for b in bound.values() for kind in b.kinds})
  # Orbax creates its folder when opened: open an existing one now (to check it), a new one
  # only once every check has passed.
  def open_checkpointer():
    return ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                 async_save=config.train.async_checkpointing,
                                 data_kinds=tuple(kinds))
  checkpointer = open_checkpointer() if (workdir / ckpt_lib.CHECKPOINT_DIR).is_dir() else None
  start_step, saved_meta = 0, {}
  try:
    if checkpointer is not None:
      # The newest step whose files and metadata are intact. Damaged newer ones are logged now
      # and set aside only once every check has passed.
      start_step, saved_meta = checkpointer.newest_intact()
      if checkpointer.damaged and not start_step:
        raise _no_intact_checkpoint(checkpointer)
    if start_step:
      # Refuse another model before the state is built: nothing is written on a refusal.
      ckpt_lib.check_same_model(saved_meta["model"], mcfg.to_dict(), checkpointer.directory)
      # A run killed after its last checkpoint but before summary.json (while it evaluated or
      # exported) is not finished: it restores that step and evaluates and exports.
      if start_step > total or (start_step == total and workdir_lib.read_summary(workdir)):
        checkpointer.close()
        return _already_trained(workdir, start_step, total)
    state, shardings, abstract_state = create_train_state(
        model, tx, bound, config.data.seq_len, mesh, rules, config.seed, initialize=not start_step)
    # The input shards the global batch is read as: the checkpoint's, so that a resume on
    # another number of processes reads the same batches (data/input_shards.py).
    shards = input_shards.plan(
        config.data.input_shards,
        (saved_meta.get("input_shards") or checkpointer.input_layout(start_step)[1])
        if start_step else None,
        jax.process_count(), config.seed, start_step, saved_meta.get("data_seed"))
    if global_batch % shards.count:
      raise ValueError(f"train.batch_size ({global_batch}) must be divisible by the "
                       f"{shards.count} input shards (data.input_shards)")
    iterators = {kind: iter(make_batch_dataset(kind, config, corpus, tokenizer, "train",
                                               shards=shards))
                 for kind in kinds}

    # ------------------------------------------------------------------ checkpoint / resume
    if start_step:
      if not shards.keeps_order:
        logging.warning("%s", shards.why)
      state, start_step = _restore_newest(checkpointer, start_step, abstract_state,
                                          iterators if shards.keeps_order else None, mcfg)
      logging.info("resumed from %s/%d", checkpointer.directory, start_step)
    elif config.init_from:
      state, _ = warm_start_lib.warm_start(state, shardings, bound, config.seed, config.init_from)

    sets, collected = evaluation_sets(config, workdir,
                                      eval_data(config, corpus, tokenizer, mcfg, bound))
    evaluators = eval_lib.build_evaluators(sets, config.eval)
  except BaseException:
    if checkpointer is not None:
      checkpointer.close()  # stop Orbax's threads on a refusal: nothing was written
    raise

  # Every check has passed: from here on the workdir is written.
  _write_workdir(config, workdir, tokenizer, resources, sets if collected else None)
  checkpointer = checkpointer or open_checkpointer()
  damaged = []
  for err in checkpointer.damaged:  # all newer than start_step: out of the rotation
    moved = checkpointer.set_aside(err.step)
    damaged.append({"step": err.step, "problem": err.problem, "moved_to": str(moved)})
    logging.warning("damaged checkpoint step %d moved to %s; training resumes from step %d",
                    err.step, moved, start_step)
  run_meta = {"model": mcfg.to_dict(), "languages": list(config.data.languages),
          "input_shards": shards.count, "data_seed": shards.seed,
          "corpus": str(corpus.dir), "corpus_packages": corpus.manifest.get("packages", []),
          "tokenizer_sha256": (
              hashlib.sha256(tokenizer.serialized()).hexdigest()
              if warm_start_lib.hf_folder(config.init_from) is not None  # the model's, not the corpus's
              else corpus.manifest.get("tokenizer", {}).get("sha256", ""))}
  heldout_step = heldout_eval_step(bound, config.seed, functools.partial(
      mesh_lib.to_global_batch, mesh=mesh), mesh, rules)

  def evaluate(state, names=None) -> dict:
    model_fns = eval_model(model, lambda: _on_this_host(model_params(state.params)), tokenizer,
                           config.data.languages, heldout_step(state.params, state.extra),
                           sentence_specials(config))
    chosen = {n: e for n, e in evaluators.items() if names is None or n in names}
    return eval_lib.evaluate(chosen, model_fns)

  # ------------------------------------------------------------------ loop
  tokens_per_step = global_batch * config.data.seq_len
  flops_per_step = tokens_per_step * flops_per_token(
      mcfg, config.data.seq_len, predictions_per_token(bound, config.data.seq_len))
  compiled: dict[tuple[str, ...], list] = {}  # compiled on first use: later stages cost nothing now
  writer = metrics_lib.MetricWriter(workdir)
  throughput = metrics_lib.Throughput(tokens_per_step, flops_per_step, jax.device_count())
  stop = _StopRequest()
  stop.install()
  watch = NonFiniteWatch(config.train.nonfinite, config.train.max_consecutive_nonfinite)
  # Steps' metrics stay on device until a log or checkpoint step reads them: (step, group,
  # metrics) not yet read, then host metrics not yet logged.
  unread, window, last_train = [], [], {}
  started = time.time()
  bar = tqdm.tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                  disable=not (config.train.progress_bar and jax.process_index() == 0))

  def log_train(step: int) -> None:
    nonlocal window, last_train
    # Skipped steps' losses are NaN: the means are over applied steps; skips are counted.
    last_train = metrics_lib.mean_metrics([m for m in window if not m.get("nonfinite_skipped")])
    last_train["nonfinite_skipped"] = float(sum(m.get("nonfinite_skipped", 0.0) for m in window))
    last_train.update(throughput.measure())
    window = []
    writer.write(step, last_train, prefix="train/")
    if "loss" in last_train:
      bar.set_postfix(loss=f"{last_train['loss']:.3f}",
                      tok_s=f"{last_train.get('tokens_per_second', 0):.0f}")

  def read_metrics(step: int) -> None:
    """Brings the unread steps' metrics to the host, in step order; on a reason to stop, logs
    what was trained and raises. Called before every save: nothing after a bad step is saved."""
    nonlocal unread
    if not unread:
      return
    host, reason = jax.device_get([m for _, _, m in unread]), None
    for (at, group, _), metrics in zip(unread, host):
      window.append(metrics)
      reason = reason or watch.observe(at, group, metrics)
    unread = []
    if reason:
      log_train(step)
      raise nonfinite_error(reason, checkpointer)

  step, preempted, stopped_early = start_step, False, False
  try:
    while step < total:
      stage = stage_at(stages, step)
      group = stage.groups[group_for_step(bound, stage.groups, config.seed, step)]
      if group not in compiled:
        compiled[group] = jit_update_steps({n: bound[n] for n in group}, tx, schedule, shardings,
                                           mesh, config.train.grad_accum_steps, rules)
      batches = _next_batches(iterators, group_kinds(bound, group), mesh,
                              config.train.grad_accum_steps)
      with jax.transfer_guard("disallow"):  # hidden host<->device copies fail loudly
        state, metrics = run_group(compiled[group], state, batches)
      step += 1
      throughput.tick()
      unread.append((step, group, metrics))
      bar.update(1)
      if step % config.train.log_every == 0 or step == total:
        read_metrics(step)
        log_train(step)
      if config.train.eval_every and step % config.train.eval_every == 0 and step < total:
        if "mlm" in evaluators:  # the cheap periodic evaluation: held-out objective losses
          writer.write(step, evaluate(state, ("mlm",)), prefix="eval/")
      # Host clocks differ: agree, or one host would evaluate while the others keep training.
      out_of_time = bool(config.train.max_wall_seconds) and _any_host(
          time.time() - started > config.train.max_wall_seconds)
      if stop.should_stop(step):
        preempted = True
        read_metrics(step)
        checkpointer.save(step, state, iterators, {"step": step, **run_meta}, force=True)
        logging.warning("preempted at step %d: checkpoint saved, rerun to resume", step)
        break
      if out_of_time:
        # A time budget ends training early but still evaluates and exports what was trained.
        stopped_early = True
        read_metrics(step)
        checkpointer.save(step, state, iterators, {"step": step, **run_meta}, force=True)
        logging.warning("train.max_wall_seconds reached at step %d of %d: evaluating now; "
                        "rerun with a larger budget to continue", step, total)
        break
      if step % config.train.checkpoint_every == 0 or step == total:
        read_metrics(step)
        checkpointer.save(step, state, iterators, {"step": step, **run_meta})
  except jax.errors.JaxRuntimeError as err:
    if jax.process_count() > 1:  # most often a host that died: say what happens next
      logging.error(
          "a collective failed after step %d (%s): another host has probably died. This process "
          "exits within distributed.heartbeat_timeout_seconds=%d s; rerun every host to resume "
          "from checkpoint %s", step, (str(err).splitlines() or [""])[0][:200],
          config.distributed.heartbeat_timeout_seconds, checkpointer.latest_step())
    raise
  finally:
    bar.close()
    stop.uninstall()
    checkpointer.wait()

  summary = {"workdir": str(workdir), "start_step": start_step, "step": step,
             "total_steps": total, "train_seconds": time.time() - started,
             "preempted": preempted, "stopped_early": stopped_early, "train": last_train,
             "nonfinite_skipped": watch.total, "damaged_checkpoints": damaged}
  if not preempted:
    # ---------------------------------------------------------------- evaluate and export
    summary["eval"] = evaluate(state)
    writer.write(step, {k: v for k, v in summary["eval"].items() if isinstance(v, (int, float))},
                 prefix="eval/")
    if config.export.enabled:
      # Gathered on every host (a collective: FSDP shards live on several), written by one.
      host_params = mesh_lib.host_copy(state.params)
      target = config.export.dir or workdir / "export"
      summary["export_dir"] = str(export(target, host_params, mcfg, tokenizer,
                                         config.data.languages, step, run_meta["corpus_packages"],
                                         sentence_specials(config)))
  checkpointer.close()
  for it in iterators.values():  # stop the input threads
    getattr(it, "close", lambda: None)()
  writer.close()
  if jax.process_index() == 0 and not preempted:  # hosts share the workdir: one writes
    write_json_atomically(workdir / workdir_lib.SUMMARY_FILE, summary)
  return summary


def _restore_newest(checkpointer, step: int, abstract_state, iterators, mcfg):
  """(state, step) restored from `step` or, where its arrays turn out damaged, from the newest
  intact step before it. Hosts agree on each outcome: one host's failed read fails all."""
  while True:
    failure, state = None, None
    try:
      state = checkpointer.restore(step, abstract_state, iterators)
    except ckpt_lib.DamagedCheckpoint as err:
      failure = err
    if not _any_host(failure is not None):
      return state, step
    checkpointer.note_damaged(failure or checkpointer.damaged_error(
        step, "another host could not restore its part"))
    step, meta = checkpointer.newest_intact(below=step)
    if not step:
      raise _no_intact_checkpoint(checkpointer)
    ckpt_lib.check_same_model(meta["model"], mcfg.to_dict(), checkpointer.directory)


def _no_intact_checkpoint(checkpointer) -> ValueError:
  listed = "; ".join(f"step {err.step}: {err.problem}" for err in checkpointer.damaged)
  return ValueError(
      f"no checkpoint in {checkpointer.directory} can be restored ({listed}). Nothing was "
      f"changed. To start over, move {checkpointer.directory} aside or use a fresh --workdir "
      "(training in place would let keep_checkpoints rotation delete the damaged steps)")


def _write_workdir(config, workdir, tokenizer, resources, sets=None) -> None:
  """config.json, the tokenizer, the objectives' resources and (when given: some were read from
  the corpus now) the evaluation sets."""
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:  # hosts share the workdir: concurrent tmp+rename writes collide
    workdir_lib.write_config(workdir, config)
    workdir_lib.save_tokenizer(workdir, tokenizer)
    workdir_lib.save_resources(workdir, resources)
  # Held-out batches differ per host, so every host stores its own sets (its own folder).
  folder = eval_lib.sets_folder(workdir / workdir_lib.EVAL_SETS_DIR, jax.process_index(),
                                jax.process_count())
  if sets:
    eval_lib.save_sets(folder, sets)


def _already_trained(workdir: pathlib.Path, step: int, total: int) -> dict:
  """A finished run asked for fewer steps than it has: say so, and change nothing."""
  logging.warning("%s is already trained to step %d, not below train.total_steps=%d: nothing to "
                  "train, and its config.json and summary.json are left as they are. To train "
                  "further, raise --config.train.total_steps above %d; to evaluate, run "
                  "`xlm-jax eval --workdir %s`", workdir, step, total, step, workdir)
  summary = workdir_lib.read_summary(workdir) or {"workdir": str(workdir), "step": step,
                                                  "total_steps": step, "train_seconds": 0.0}
  return {**summary, "already_trained": True, "requested_total_steps": total}
