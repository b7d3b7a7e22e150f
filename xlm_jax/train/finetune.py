"""Fine-tuned cross-lingual transfer, top to bottom, in banner sections:

    config -> encoder -> task data -> mesh, model and state -> jitted steps -> checkpoint/resume
    -> the loop (English dev selection each epoch) -> every test language -> results

    results = finetune(config, workdir)          # `xlm-jax finetune --model PATH --task ...`

The encoder (an xlm-jax export, a Hugging Face XLM-R folder or a pretraining workdir) and a task
head (models/task_heads.py) are trained on English with the pre-training engine: the same mesh
and logical-axis rules, a state initialised directly sharded, `step.make_train_step` jitted with
donation, AdamW from optimizer.py and Orbax checkpoints (checkpoint.py). After each epoch the
English dev score is measured and the best parameters are kept (XTREME's
`--save_only_best_checkpoint`, here per epoch rather than every 100 steps); the best ones score
every test language.

Resume is exact: the checkpoint holds the step, parameters, optimizer moments, the best
parameters so far and the dev curve, and the data order is a pure function of (seed, epoch), so
no iterator state is needed. Rerunning a finished workdir prints its results and trains nothing.

Defaults are XTREME's (Hu et al. 2020, scripts/train_{xnli,pawsx,panx,udpos}.sh and
third_party/run_{classify,tag}.py): lr 2e-5, batch 32, max length 128, 5 epochs for sentence
classification and 10 for tagging, AdamW with eps 1e-8, no weight decay and no warm-up, linear
decay to 0, gradient clipping at 1.0.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from xlm_jax import config as config_lib
from xlm_jax.atomic_files import write_json_atomically
from xlm_jax.data import tasks as tasks_lib
from xlm_jax.models.encoder import convert_params
from xlm_jax.models.encoder_config import EncoderConfig, describe_range, in_range
from xlm_jax.models.task_heads import TaskModel
from xlm_jax.objectives.base import Objective, ObjectiveContext, weighted_cross_entropy
from xlm_jax.train import checkpoint as ckpt_lib
from xlm_jax import mesh as mesh_lib
from xlm_jax.train import state as state_lib
from xlm_jax.train import metrics as metrics_lib
from xlm_jax.train import workdir as workdir_lib
from xlm_jax.train.optimizer import OPTIMIZERS, SCHEDULES, make_optimizer
from xlm_jax.train.state import TrainState
from xlm_jax.train.step import BoundObjective, make_train_step
from xlm_jax.train.trainer import _StopRequest

RESULTS_FILE = "results.json"
RESULTS_MD = "results.md"
# Batches are padded to a power-of-two length of at least this: few shapes, few compilations.
MIN_BATCH_LENGTH = 16
# Hugging Face's LengthGroupedSampler groups 50 batches into a "megabatch" sorted by length.
MEGABATCH_BATCHES = 50


# =============================================================================================
# Config: XTREME's defaults, overridable with --config.<field>=<value>
# =============================================================================================


def finetune_config(task: str = "classify") -> ml_collections.ConfigDict:
  """Every field of a fine-tuning run; `task` sets the epochs (5 classify, 10 tag: XTREME)."""
  c = ml_collections.ConfigDict()
  c.task = task                       # "classify" | "tag"
  c.model = ""                        # export, Hugging Face folder or pretraining workdir
  c.seed = 0
  c.head_dropout = 0.1                # RobertaClassificationHead / token classifier dropout

  c.data = ml_collections.ConfigDict()
  c.data.source = "corpus"            # "corpus" | "tfds:NAME" | a folder (xlm_jax/data/tasks.py)
  c.data.tfds_data_dir = ""           # "" = TFDS's default ($TFDS_DATA_DIR, ~/tensorflow_datasets)
  c.data.languages = ()               # test languages; () = every language of data and model
  c.data.dev_fraction = 0.1           # English dev carved from train where the data has none
  c.data.max_len = 128                # pieces with <s> and </s> (XTREME's MAXL)
  # Batches of similar lengths (HF Trainer's group_by_length): less padding, the same examples
  # per step and epoch. The order stays a pure function of (seed, epoch).
  c.data.group_by_length = True
  # At most this many training examples, and dev / per-language test examples (0 = all; HF's
  # max_train_samples, max_eval_samples), chosen by a stable hash of their ids: quick runs.
  c.data.max_train_examples = 0
  c.data.max_eval_examples = 0

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.learning_rate = 2e-5    # XTREME (XLM-R base; 3e-5 for large)
  c.optimizer.warmup_fraction = 0.0   # run_classify.py / run_tag.py: --warmup_steps 0
  c.optimizer.schedule = "linear"     # get_linear_schedule_with_warmup: linear decay to 0
  c.optimizer.end_lr_ratio = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999              # torch AdamW's default
  c.optimizer.eps = 1e-8              # --adam_epsilon 1e-8
  c.optimizer.weight_decay = 0.0      # --weight_decay 0.0
  c.optimizer.clip_norm = 1.0         # --max_grad_norm 1.0

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 5 if task == "classify" else 10
  c.train.batch_size = 32             # XTREME: 8 per GPU x 4 accumulation steps
  c.train.grad_accum_steps = 1
  c.train.eval_batch_size = 64
  c.train.log_every = 25
  c.train.checkpoint_every = 500      # and at the end of every epoch
  c.train.keep_checkpoints = 2
  c.train.async_checkpointing = True
  c.train.stop_at_step = 0            # > 0: checkpoint and leave after this step (0 = never)
  c.train.progress_bar = True

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.rules = config_lib.DEFAULT_RULES
  return c


# Numeric fields: (low, high, low_inclusive, high_inclusive), None = unbounded.
_RANGES = {
    "seed": None,
    "head_dropout": (0.0, 1.0, True, False),
    "data.dev_fraction": (0.0, 1.0, False, False),
    "data.max_len": (8, None, True, None),   # <s> A </s></s> B </s> needs room for text
    "data.max_train_examples": (0, None, True, None),
    "data.max_eval_examples": (0, None, True, None),
    "optimizer.learning_rate": (0.0, None, False, None),
    "optimizer.warmup_fraction": (0.0, 1.0, True, True),
    "optimizer.end_lr_ratio": (0.0, 1.0, True, True),
    "optimizer.b1": (0.0, 1.0, True, False),
    "optimizer.b2": (0.0, 1.0, True, False),
    "optimizer.eps": (0.0, None, False, None),
    "optimizer.weight_decay": (0.0, None, True, None),
    "optimizer.clip_norm": (0.0, None, True, None),
    "train.epochs": (1, None, True, None),
    "train.batch_size": (1, None, True, None),
    "train.grad_accum_steps": (1, None, True, None),
    "train.eval_batch_size": (1, None, True, None),
    "train.log_every": (1, None, True, None),
    "train.checkpoint_every": (1, None, True, None),
    "train.keep_checkpoints": (1, None, True, None),
    "train.stop_at_step": (0, None, True, None),
}
_CHOICES = {"task": tasks_lib.KINDS, "optimizer.name": OPTIMIZERS,
            "optimizer.schedule": SCHEDULES}


def _get(config, path: str):
  node = config
  for key in path.split("."):
    node = node[key]
  return node


def check_config(config, origins: dict[str, str] | None = None) -> None:
  """ValueError naming the field (and the override that set it) for any bad value."""
  origins = origins or {}

  def fail(path, message):
    raise ValueError(f"{origins.get(path, 'finetune config')}: {message}")

  for path, choices in _CHOICES.items():
    if _get(config, path) not in choices:
      fail(path, f"config field {path!r} must be one of {choices}, got {_get(config, path)!r}")
  for path, bounds in _RANGES.items():
    value = _get(config, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      fail(path, f"config field {path!r} must be a number, got {value!r}")
    if bounds is not None and not in_range(value, *bounds):
      fail(path, f"config field {path!r} must be {describe_range(*bounds)}, got {value!r}")
  for axis in ("data", "fsdp", "tensor"):
    value = config.mesh[axis]
    if isinstance(value, bool) or not isinstance(value, int) or not (value == -1 or value >= 1):
      fail(f"mesh.{axis}", f"config field 'mesh.{axis}' must be -1 (the devices left) or >= 1, "
                           f"got {value!r}")
  if config.train.batch_size % config.train.grad_accum_steps:
    fail("train.grad_accum_steps", f"train.batch_size ({config.train.batch_size}) must be "
                                   f"divisible by train.grad_accum_steps "
                                   f"({config.train.grad_accum_steps})")
  languages = list(config.data.languages)
  if any(not isinstance(l, str) or not l.strip() for l in languages) or \
      len(set(languages)) != len(languages):
    fail("data.languages", f"data.languages must list distinct language codes, got {languages}")


def make_config(task: str, overrides: Sequence[str] = (),
                fields: dict[str, tuple[Any, str]] | None = None) -> ml_collections.ConfigDict:
  """finetune_config(task) with `fields` ({path: (value, the flag that set it)}, from the
  command's own flags) and `a.b=value` overrides applied, then checked: a bad value names the
  flag or override that set it. Overrides win over flags."""
  config = finetune_config(task)
  origins = {}
  for path, (value, origin) in (fields or {}).items():
    # Through apply_override, so a flag's value is type-checked as an override's is.
    config_lib.apply_override(config, f"{path}={value if isinstance(value, str) else repr(value)}",
                              check=False)
    origins[path] = origin
  for item in overrides:
    config_lib.apply_override(config, item, check=False)
    origins[item.split("=", 1)[0]] = f"--config.{item}"
  check_config(config, origins)
  return config


# =============================================================================================
# The encoder: an export, a Hugging Face folder, or a pretraining workdir's latest checkpoint
# =============================================================================================


def load_encoder(path):
  """`Pretrained(model, params, tokenizer, config)` of `path` (workdir_jobs.load_model: an
  export, a Hugging Face folder or a pretraining workdir)."""
  from xlm_jax.train.workdir_jobs import load_model
  return load_model(path)[1]


def model_languages(pretrained) -> list[str]:
  """The languages the encoder was trained on ([] when it does not say: a Hugging Face XLM-R)."""
  return [str(l) for l in (pretrained.config or {}).get("languages", [])]


def choose_languages(data: tasks_lib.TaskData, known: list[str], requested: Sequence[str],
                     model_path: str) -> tuple[tasks_lib.TaskData, dict[str, str]]:
  """The task restricted to the languages scored, and {language: why skipped}.

  A requested language the model does not know is an error; by default the data's languages
  the model does not know are skipped (and listed in results.json).
  """
  if known and tasks_lib.TRAIN_LANGUAGE not in known:
    raise ValueError(f"the model at {model_path} was trained on {known}, without English "
                     f"({tasks_lib.TRAIN_LANGUAGE!r}), the language fine-tuning trains on")
  if requested:
    unknown = [l for l in requested if known and l not in known]
    if unknown:
      raise ValueError(f"--languages {unknown}: the model at {model_path} does not know "
                       f"{'this language' if len(unknown) == 1 else 'these languages'}; it was "
                       f"trained on {known}. Drop {unknown} from --languages")
    return data.select_languages(list(requested)), {}
  skipped = {l: f"the model knows {known}" for l in data.test if known and l not in known}
  kept = [l for l in data.test if l not in skipped]
  if not kept:
    raise ValueError(f"none of the task's test languages {sorted(data.test)} is one the model at "
                     f"{model_path} knows ({known})")
  if skipped:
    logging.warning("finetune: not scoring %s: the model at %s was trained on %s", sorted(skipped),
                    model_path, known)
  return data.select_languages(kept), skipped


# =============================================================================================
# Data: encoded splits, the epoch order and host batches
# =============================================================================================


def _bucket_length(longest: int, max_len: int) -> int:
  return min(max_len, max(MIN_BATCH_LENGTH, 1 << (max(longest, 1) - 1).bit_length()))


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool) -> list[np.ndarray]:
  """The example indices of each batch of `epoch`, a pure function of (seed, epoch).

  Every example once; the last batch may be short (it is padded with rows of weight 0). With
  group_by_length, megabatches of MEGABATCH_BATCHES batches are sorted by length and cut into
  batches, whose order is shuffled again.
  """
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(lengths))
  if not group_by_length:
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  size = batch_size * MEGABATCH_BATCHES
  batches = []
  for start in range(0, len(order), size):
    mega = order[start:start + size]
    # stable sort: equal lengths keep the shuffled order, so ties do not depend on the index.
    mega = mega[np.argsort(-lengths[mega], kind="stable")]
    batches.extend(mega[i:i + batch_size] for i in range(0, len(mega), batch_size))
  # The short batch (if any) stays last: a step is only ever short at the end of an epoch.
  full, short = batches[:len(order) // batch_size], batches[len(order) // batch_size:]
  return [full[i] for i in rng.permutation(len(full))] + short


def host_batch(encoded: tasks_lib.EncodedSplit, indices: np.ndarray, rows: int, kind: str,
               pad_id: int, max_len: int, lang_index: int | None) -> dict[str, np.ndarray]:
  """A padded batch of `rows` rows (filler rows have no label: weight 0)."""
  width = _bucket_length(max(len(encoded.rows[i]) for i in indices), max_len)
  input_ids = np.full((rows, width), pad_id, np.int32)
  labels = np.full((rows,) if kind == "classify" else (rows, width), tasks_lib.IGNORED_LABEL,
                   np.int32)
  for slot, i in enumerate(indices):
    row = encoded.rows[i]
    input_ids[slot, :len(row)] = row
    if kind == "classify":
      labels[slot] = encoded.labels[i]
    else:
      labels[slot, :len(row)] = encoded.labels[i]
  batch = {"input_ids": input_ids, "labels": labels}
  if lang_index is not None:  # an encoder with language embeddings
    batch["lang_ids"] = np.full_like(input_ids, lang_index)
  return batch


def _this_host(batch: dict, leading: int = 0) -> dict:
  """This process's rows of a global batch (every host builds the same one)."""
  hosts = jax.process_count()
  if hosts == 1:
    return batch
  index = jax.process_index()
  def rows(x):
    n = x.shape[leading] // hosts
    return x[(slice(None),) * leading + (slice(index * n, (index + 1) * n),)]
  return {k: rows(v) for k, v in batch.items()}


# =============================================================================================
# Model and state
# =============================================================================================


def task_objective(model: TaskModel, tokenizer, languages) -> BoundObjective:
  """The task loss as an objective of the pre-training step (`step.make_train_step`): mean
  cross-entropy over labelled rows (classify) or first pieces (tag)."""
  def loss_fn(params, batch, rng, ctx):
    logits = model.apply({"params": params}, batch["input_ids"], lang_ids=batch.get("lang_ids"),
                         deterministic=not ctx.train, rngs={"dropout": rng})
    labels = batch["labels"]
    weights = (labels >= 0).astype(jnp.float32)  # filler rows and non-first pieces: -100
    loss, metrics = weighted_cross_entropy(logits, jnp.maximum(labels, 0), weights)
    return loss, metrics, ctx.extra
  objective = Objective(name="task", batch_kind="task", loss_fn=loss_fn, default_config=dict,
                        eval_metrics=("loss", "accuracy"))
  context = ObjectiveContext(model=model, config={}, vocab_size=model.config.vocab_size,
                             mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                             special_ids=tuple(tokenizer.special_ids), languages=tuple(languages),
                             name="task")
  return BoundObjective(objective, 1.0, context)


def _init_fn(model: TaskModel, tx, with_languages: bool):
  """rng (, encoder params) -> {"train": TrainState, "best": params}; the encoder's random init
  is replaced by the pretrained one (XLA drops the unused random arrays)."""
  def init(rng, encoder=None):
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    ids = jnp.zeros((1, MIN_BATCH_LENGTH), jnp.int32)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, ids,
                           lang_ids=ids if with_languages else None)
    params = dict(variables["params"])
    if encoder is not None:
      params = {**nn.meta.unbox(params), "encoder": encoder}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=state_rng, extra={})
    # The best parameters so far (dev selection): the initial ones until the first epoch ends.
    return {"train": state, "best": params}
  return init


def create_state(model: TaskModel, tx, encoder_params, mesh, rules, seed: int,
                 initialize: bool = True):
  """(state, shardings, abstract) as state.create_train_state, from pretrained encoder params
  (host arrays). `state` is {"train": TrainState, "best": params}; None without `initialize`."""
  init = _init_fn(model, tx, bool(model.config.num_languages))
  rng = jax.random.PRNGKey(seed)
  shardings, abstract = state_lib.sharded_layout(init, rng, mesh, rules)
  if not initialize:
    return None, shardings, abstract
  state = jax.jit(init, out_shardings=shardings)(rng, encoder_params)
  return state, shardings, abstract


def encoder_for_mesh(pretrained, mesh) -> tuple[EncoderConfig, Any]:
  """The encoder config and host params, with vocabulary rows padded when the tensor axis
  (which shards the vocabulary) does not divide them."""
  config = pretrained.model.config
  params = jax.device_get(pretrained.params["encoder"])
  tensor = mesh.shape["tensor"]
  if config.padded_vocab_size % tensor:
    target = dataclasses.replace(config, vocab_multiple=math.lcm(config.vocab_multiple, 128,
                                                                 tensor))
    params = convert_params({"encoder": params}, config, target)["encoder"]
    config = target
  return config, params


# =============================================================================================
# Jitted steps
# =============================================================================================


def jit_train_step(bound, tx, schedule, shardings, mesh, grad_accum_steps: int, rules=None):
  """The pre-training engine's update step, jitted with the state donated (in the mesh's
  tracing context, as training: mesh.jit_in_mesh)."""
  leading = 1 if grad_accum_steps > 1 else 0
  step = make_train_step({"task": bound}, tx, schedule, grad_accum_steps)
  batch = {"task": mesh_lib.batch_sharding(mesh, leading)}
  return mesh_lib.jit_in_mesh(step, mesh, rules, donate_argnums=0,
                              in_shardings=(shardings["train"], batch),
                              out_shardings=(shardings["train"], mesh_lib.replicated(mesh)))


def jit_predict(model: TaskModel, param_shardings, mesh, rules=None):
  """params, batch -> argmax labels [B] (classify) or [B, L] (tag), on every host."""
  def predict(params, batch):
    logits = model.apply({"params": params}, batch["input_ids"], lang_ids=batch.get("lang_ids"),
                         deterministic=True)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return mesh_lib.jit_in_mesh(predict, mesh, rules,
                              in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh)),
                              out_shardings=mesh_lib.replicated(mesh))


def _copy_params(param_shardings):
  # A real copy (not a forwarded input): the state's buffers are donated to the next step.
  return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=param_shardings)


def predict_split(predict, params, encoded: tasks_lib.EncodedSplit, kind: str, rows: int,
                  pad_id: int, max_len: int, lang_index: int | None, mesh) -> list:
  """Predicted labels of every example: an int (classify) or one per word (tag; -1 for a word
  that max_len cut off)."""
  order = np.argsort(encoded.lengths, kind="stable")  # similar lengths together: less padding
  predictions: list = [None] * len(order)
  for start in range(0, len(order), rows):
    chunk = order[start:start + rows]
    batch = host_batch(encoded, chunk, rows, kind, pad_id, max_len, lang_index)
    batch.pop("labels")
    placed = mesh_lib.to_global_batch(_this_host(batch), mesh)
    out = np.asarray(jax.device_get(predict(params, placed)))
    for slot, i in enumerate(chunk):
      if kind == "classify":
        predictions[i] = int(out[slot])
      else:
        positions = encoded.word_positions[i]
        predictions[i] = [int(out[slot, p]) if p >= 0 else -1 for p in positions]
  return predictions


# =============================================================================================
# Scores: accuracy (classify, tag), entity F1 of BIO chunks (tag), the transfer gap
# =============================================================================================


def bio_chunks(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """(type, start, end) chunks of a BIO tag sequence, as conlleval and seqeval's default mode
  read it: a chunk starts at B-X, or at I-X after a tag that is not of type X; any tag that is
  not I-X of the same type ends it. Tags other than B-*/I-* count as O."""
  chunks, start, current = set(), 0, None
  for i, tag in enumerate([*tags, "O"]):
    prefix, label = (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("O", None)
    if current is not None and (prefix != "I" or label != current):
      chunks.add((current, start, i))
      current = None
    if prefix == "B" or (prefix == "I" and current is None):
      start, current = i, label
  return chunks


def entity_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
  """Micro precision, recall and F1 of BIO chunks over all sentences (XTREME's NER metric)."""
  tp = n_gold = n_pred = 0
  for g, p in zip(gold, predicted):
    gold_chunks, pred_chunks = bio_chunks(g), bio_chunks(p)
    tp += len(gold_chunks & pred_chunks)
    n_gold += len(gold_chunks)
    n_pred += len(pred_chunks)
  precision = tp / n_pred if n_pred else 0.0
  recall = tp / n_gold if n_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1}


def score_split(data: tasks_lib.TaskData, split: tasks_lib.TaskSplit, predictions: list) -> dict:
  """accuracy (classify: of texts; tag: of words) and, for BIO tags, entity precision/recall/F1."""
  if data.kind == "classify":
    correct = np.asarray(predictions) == np.asarray(split.labels)
    return {"accuracy": float(np.mean(correct)), "items": len(split)}
  gold = [list(tags) for tags in split.labels]
  words = sum(len(g) for g in gold)
  correct = sum(int(p == g) for pred, tags in zip(predictions, gold) for p, g in zip(pred, tags))
  out = {"accuracy": correct / max(words, 1), "items": len(split), "words": words,
         "words_cut_by_max_len": sum(p == -1 for pred in predictions for p in pred)}
  if data.is_bio:
    names = data.label_names
    # A word max_len cut off (-1) is predicted as no entity.
    as_tags = lambda ids: [names[i] if i >= 0 else "O" for i in ids]
    out.update(entity_f1([as_tags(g) for g in gold], [as_tags(p) for p in predictions]))
  return out


def selection_metric(data: tasks_lib.TaskData) -> str:
  """The dev score that selects the epoch: entity F1 for BIO tags (XTREME's NER), else accuracy."""
  return "f1" if data.is_bio else "accuracy"


def transfer_scores(data: tasks_lib.TaskData, predictions: dict[str, list]) -> dict[str, dict]:
  """Where test items are translations of each other: English accuracy on each language's items
  and the gap (what crossing the language loses; evaluation.md, zero-shot classification)."""
  if data.kind != "classify" or not data.parallel_ids or "en" not in data.test:
    return {}
  english = data.test["en"]
  right = {i: p == label for i, p, label in zip(english.ids, predictions["en"], english.labels)}
  out = {}
  for lang, split in data.test.items():
    if lang == "en":
      continue
    pairs = [(right[i], p == label) for i, p, label in zip(split.ids, predictions[lang],
                                                           split.labels) if i in right]
    if pairs:
      en_acc = float(np.mean([a for a, _ in pairs]))
      acc = float(np.mean([b for _, b in pairs]))
      out[lang] = {"en_accuracy_same_items": en_acc, "transfer_gap": en_acc - acc,
                   "items_with_english": len(pairs)}
  return out


def majority_accuracy(data: tasks_lib.TaskData, split: tasks_lib.TaskSplit) -> float | None:
  """Always the most frequent training label (classify): the floor a classifier must beat."""
  if data.kind != "classify":
    return None
  majority = int(np.bincount(np.asarray(data.train.labels)).argmax())
  return float(np.mean(np.asarray(split.labels) == majority))


# =============================================================================================
# Results
# =============================================================================================


def write_results(workdir: pathlib.Path, results: dict) -> None:
  """results.json and a Markdown table, results.md (process 0)."""
  if jax.process_index() != 0:
    return
  write_json_atomically(workdir / RESULTS_FILE, results)
  metric_names = [m for m in ("accuracy", "f1", "precision", "recall", "transfer_gap",
                              "majority_accuracy") if any(m in v for v in results["test"].values())]
  lines = [f"### xlm-jax finetune: {results['task']} on {results['data']['name']}", "",
           f"model `{results['model']}`; best English dev {results['selection_metric']} "
           f"{results['best_dev_score']:.4f} at epoch {results['best_epoch']} of "
           f"{results['epochs']} ({results['steps']} steps, {results['train_seconds']:.0f} s "
           "training)", "",
           "| language | items | " + " | ".join(metric_names) + " |",
           "|---|---|" + "---|" * len(metric_names)]
  for lang, scores in results["test"].items():
    cells = [f"{scores[m]:.4f}" if isinstance(scores.get(m), float) else "" for m in metric_names]
    lines.append(f"| {lang} | {scores['items']} | " + " | ".join(cells) + " |")
  for name, value in results.get("mean_test_excluding_en", {}).items():
    lines.append(f"\nmean {name} over the languages other than English: {value:.4f}")
  if results.get("skipped_languages"):
    lines.append(f"\nnot scored: {results['skipped_languages']}")
  path = workdir / RESULTS_MD
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def _run_key(config, data: tasks_lib.TaskData, model_config: EncoderConfig) -> dict:
  """What a resumed run must share with the checkpoint for the resume to be exact."""
  return {"task": config.task, "labels": list(data.label_names), "train_examples": len(data.train),
          "seed": config.seed, "epochs": config.train.epochs,
          "batch_size": config.train.batch_size, "max_len": config.data.max_len,
          "group_by_length": config.data.group_by_length,
          "grad_accum_steps": config.train.grad_accum_steps,
          "model": model_config.to_dict()}


def _check_resumable(saved: dict, key: dict, directory: pathlib.Path) -> None:
  if "finetune" not in saved:
    raise ValueError(f"{directory} holds checkpoints of another kind of run (pre-training?); "
                     "use a new --workdir for fine-tuning")
  diffs = [f"{k}: checkpoint {saved['finetune'].get(k)!r:.80}, now {v!r:.80}"
           for k, v in key.items() if saved["finetune"].get(k) != v]
  if diffs:
    raise ValueError(f"workdir checkpoint {directory} was fine-tuned with other settings, so it "
                     "cannot be resumed exactly:\n  " + "\n  ".join(diffs) +
                     "\nUse a new --workdir, or set these back.")


# =============================================================================================
# The story
# =============================================================================================


def finetune(config, workdir, pretrained=None, data: tasks_lib.TaskData | None = None,
             builder_names: dict[str, str] | None = None) -> dict:
  """Fine-tunes `config.model` (or `pretrained`, a Pretrained the caller already loaded) on
  `config.data.source` (or `data`) in `workdir`, resuming if possible; returns the results.

  Every check runs before anything is written: a refused run leaves the workdir as it was.
  """
  workdir = workdir_lib.check_path(workdir)
  check_config(config)

  # ------------------------------------------------------------------ encoder and task data
  if pretrained is None:
    if not config.model:
      raise ValueError("no model: pass --model PATH (an xlm-jax export, a Hugging Face XLM-R "
                       "folder or a pretraining workdir)")
    pretrained = load_encoder(config.model)
  model_path = config.model or "(given in memory)"
  if data is None:
    data = tasks_lib.load_task(config.data.source, config.task, seed=config.seed,
                               dev_fraction=config.data.dev_fraction,
                               tfds_data_dir=config.data.tfds_data_dir or None,
                               languages=list(config.data.languages) or None,
                               builder_names=builder_names)
  elif data.kind != config.task:
    raise ValueError(f"task data {data.name} is a {data.kind} task, but task is {config.task!r}")
  known = model_languages(pretrained)
  # A model of derived languages ("en_trans+inv") is also scored on them (ALIGN-MLM's transfer).
  data = tasks_lib.add_derived_tests(data, known)
  data, skipped = choose_languages(data, known, list(config.data.languages), model_path)
  data = data.subsample(config.data.max_train_examples, config.data.max_eval_examples, config.seed)
  longest = pretrained.model.config.max_positions - pretrained.model.config.pad_id - 1
  if config.data.max_len > longest:
    raise ValueError(f"data.max_len ({config.data.max_len}) is longer than the {longest} "
                     f"positions of the model at {model_path} (max_positions "
                     f"{pretrained.model.config.max_positions})")
  tokenizer, max_len, kind = pretrained.tokenizer, config.data.max_len, config.task
  lang_of = ({lang: known.index(lang) for lang in [tasks_lib.TRAIN_LANGUAGE, *data.test]}
             if pretrained.model.config.num_languages else None)
  encode = lambda split: tasks_lib.encode_split(split, kind, tokenizer, max_len)
  train_set, dev_set = encode(data.train), encode(data.dev)
  test_sets = {lang: encode(split) for lang, split in data.test.items()}

  # ------------------------------------------------------------------ mesh, model and state
  mesh = mesh_lib.make_mesh(config.mesh)
  rules = mesh_lib.logical_rules(config.mesh)
  dp = mesh_lib.data_parallel_size(mesh)
  batch_size, accum = config.train.batch_size, config.train.grad_accum_steps
  if (batch_size // accum) % dp:
    raise ValueError(f"train.batch_size ({batch_size}) / train.grad_accum_steps ({accum}) must be "
                     f"divisible by the data-parallel size data*fsdp = {dp}")
  eval_rows = -(-config.train.eval_batch_size // dp) * dp  # rounded up to shard evenly
  encoder_config, encoder_params = encoder_for_mesh(pretrained, mesh)
  model = TaskModel(encoder_config, len(data.label_names), kind, config.head_dropout)
  steps_per_epoch = -(-len(data.train) // batch_size)
  total = steps_per_epoch * config.train.epochs
  optimizer_config = ml_collections.ConfigDict({
      **{k: v for k, v in config.optimizer.items() if k != "warmup_fraction"},
      "warmup_steps": int(round(config.optimizer.warmup_fraction * total))})
  tx, schedule = make_optimizer(optimizer_config, total)
  key = _run_key(config, data, encoder_config)
  metric = selection_metric(data)

  # ------------------------------------------------------------------ checkpoint / resume
  def open_checkpointer():
    return ckpt_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints,
                                 async_save=config.train.async_checkpointing, data_kinds=())
  checkpointer = open_checkpointer() if (workdir / ckpt_lib.CHECKPOINT_DIR).is_dir() else None
  if checkpointer is None and (workdir / workdir_lib.CONFIG_FILE).is_file():
    raise ValueError(f"{workdir} already holds {workdir_lib.CONFIG_FILE} but no fine-tuning "
                     "checkpoint (a pre-training workdir?); use a new --workdir")
  start_step, meta = 0, {}
  try:
    if checkpointer is not None:
      start_step = checkpointer.latest_step() or 0
      if start_step:
        meta = checkpointer.read_meta(start_step)
        _check_resumable(meta, key, checkpointer.directory)
    if start_step >= total and (workdir / RESULTS_FILE).is_file():
      checkpointer.close()
      logging.warning("%s is already fine-tuned (%d steps); its results are left as they are. "
                      "Use a new --workdir to fine-tune again", workdir, start_step)
      return {**json.loads((workdir / RESULTS_FILE).read_text(encoding="utf-8")),
              "already_finished": True}
    state, shardings, abstract = create_state(model, tx, encoder_params, mesh, rules, config.seed,
                                              initialize=not start_step)
    if start_step:
      state = checkpointer.restore(start_step, abstract)
      logging.info("resumed from %s/%d", checkpointer.directory, start_step)
  except BaseException:
    if checkpointer is not None:
      checkpointer.close()
    raise

  # Every check has passed: from here on the workdir is written.
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0 and not (workdir / workdir_lib.CONFIG_FILE).is_file():
    write_json_atomically(workdir / workdir_lib.CONFIG_FILE, config.to_dict())
  checkpointer = checkpointer or open_checkpointer()
  train_step = jit_train_step(task_objective(model, tokenizer, known or ["en"]), tx, schedule,
                              shardings, mesh, accum, rules)
  predict = jit_predict(model, shardings["best"], mesh, rules)
  copy_params = _copy_params(shardings["best"])
  pad_id = tokenizer.pad_id

  def score(params, lang: str, encoded, split) -> tuple[dict, list]:
    predictions = predict_split(predict, params, encoded, kind, eval_rows, pad_id, max_len,
                                None if lang_of is None else lang_of[lang], mesh)
    return score_split(data, split, predictions), predictions

  # ------------------------------------------------------------------ loop
  writer = metrics_lib.MetricWriter(workdir)
  dev_curve = list(meta.get("dev_curve", []))
  best_score = float(meta.get("best_dev_score", -1.0))
  best_epoch = int(meta.get("best_epoch", 0))
  seconds_before = float(meta.get("train_seconds", 0.0))  # of the runs this one resumes
  run_meta = lambda step: {"step": step, "finetune": key, "dev_curve": dev_curve,
                           "best_dev_score": best_score, "best_epoch": best_epoch,
                           "model_path": model_path,
                           "train_seconds": seconds_before + time.time() - started}
  leading = 1 if accum > 1 else 0
  train_lang = None if lang_of is None else lang_of[tasks_lib.TRAIN_LANGUAGE]
  stop = _StopRequest()
  stop.install()
  history, last_train, batches, batches_epoch = [], {}, None, -1
  started = last_log = time.time()
  bar = tqdm.tqdm(total=total, initial=start_step, desc=f"finetune {kind}", unit="step",
                  dynamic_ncols=True,
                  disable=not (config.train.progress_bar and jax.process_index() == 0))
  step, preempted = start_step, False
  try:
    while step < total:
      epoch, index = divmod(step, steps_per_epoch)
      if batches_epoch != epoch:
        batches, batches_epoch = epoch_batches(train_set.lengths, batch_size, config.seed, epoch,
                                               config.data.group_by_length), epoch
      host = host_batch(train_set, batches[index], batch_size, kind, pad_id, max_len, train_lang)
      if accum > 1:  # a leading micro-batch axis, scanned over inside the step
        host = {k: v.reshape(accum, batch_size // accum, *v.shape[1:]) for k, v in host.items()}
      placed = mesh_lib.to_global_batch(_this_host(host, leading), mesh, leading_dims=leading)
      with jax.transfer_guard("disallow"):  # hidden host<->device copies fail loudly
        train_state, metrics = train_step(state["train"], {"task": placed})
      state = {"train": train_state, "best": state["best"]}
      step += 1
      history.append(metrics)
      bar.update(1)
      if step % config.train.log_every == 0 or step == total:
        last_train = metrics_lib.mean_metrics(jax.device_get(history))
        last_train["steps_per_second"] = len(history) / max(time.time() - last_log, 1e-9)
        history, last_log = [], time.time()
        writer.write(step, last_train, prefix="train/")
        bar.set_postfix(loss=f"{last_train['loss']:.3f}", epoch=epoch + 1,
                        dev=f"{best_score:.3f}" if dev_curve else "-")
      end_of_epoch = step % steps_per_epoch == 0
      if end_of_epoch:
        # Select on English dev (XTREME): keep the best epoch's parameters.
        dev_scores, _ = score(state["train"].params, tasks_lib.TRAIN_LANGUAGE, dev_set, data.dev)
        dev_curve.append({"epoch": epoch + 1, "step": step, **dev_scores})
        writer.write(step, {k: v for k, v in dev_scores.items() if isinstance(v, float)},
                     prefix="dev/")
        if dev_scores[metric] > best_score:
          best_score, best_epoch = dev_scores[metric], epoch + 1
          state = {"train": state["train"], "best": copy_params(state["train"].params)}
        bar.set_postfix(loss=f"{last_train.get('loss', float('nan')):.3f}", epoch=epoch + 1,
                        dev=f"{best_score:.3f}")
      stop_here = (config.train.stop_at_step and step == config.train.stop_at_step
                   and step < total)
      if stop.should_stop(step) or stop_here:
        preempted = True
        checkpointer.save(step, state, {}, run_meta(step), force=True)
        logging.warning("stopped at step %d of %d: checkpoint saved, rerun to resume", step, total)
        break
      if end_of_epoch or step % config.train.checkpoint_every == 0:
        checkpointer.save(step, state, {}, run_meta(step), force=end_of_epoch)
  finally:
    bar.close()
    stop.uninstall()
    checkpointer.wait()
  train_seconds = seconds_before + time.time() - started

  results = {"task": kind, "model": model_path, "workdir": str(workdir), "step": step,
             "steps": total, "epochs": config.train.epochs, "steps_per_epoch": steps_per_epoch,
             "preempted": preempted, "train_seconds": train_seconds,
             "config": config.to_dict(), "label_names": list(data.label_names),
             "data": {"name": data.name, **data.source, "train_examples": len(data.train),
                      "dev_examples": len(data.dev)},
             "selection_metric": metric, "dev_curve": dev_curve, "best_epoch": best_epoch,
             "best_dev_score": best_score, "skipped_languages": skipped, "train": last_train}
  if not preempted:
    # ---------------------------------------------------------------- every test language
    started_test = time.time()
    predictions, test = {}, {}
    for lang, split in data.test.items():
      test[lang], predictions[lang] = score(state["best"], lang, test_sets[lang], split)
      majority = majority_accuracy(data, split)
      if majority is not None:
        test[lang]["majority_accuracy"] = majority
    for lang, extra in transfer_scores(data, predictions).items():
      test[lang].update(extra)
    results["test"] = test
    results["test_seconds"] = time.time() - started_test
    others = [v for lang, v in test.items() if lang != tasks_lib.TRAIN_LANGUAGE]
    results["mean_test_excluding_en"] = {
        m: float(np.mean([v[m] for v in others])) for m in ("accuracy", "f1", "transfer_gap")
        if others and all(m in v for v in others)}
    writer.write(step, {f"{lang}/{m}": v for lang, scores in test.items()
                        for m, v in scores.items() if isinstance(v, float)}, prefix="test/")
    write_results(workdir, results)
  checkpointer.close()
  writer.close()
  results["best_params"] = state["best"]
  return results
