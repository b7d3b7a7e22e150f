"""The live pieces of a training run, built as `xlm_jax/train/trainer.py` builds them, for benchmarks.

    pieces, state = build_pieces(config)
    fns = jit_group(pieces, group)
    state, metrics = trainer.run_group(fns, state, next_batches(pieces, group))
    close(pieces)

`Pieces` holds what does not change while training; the train state is returned separately and
stays with the caller (the jitted steps donate it). No workdir, checkpointer or evaluator is made:
benchmarks time the update steps and the input pipeline only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from xlm_jax.models.encoder import Model
from xlm_jax import mesh as mesh_lib
from xlm_jax.train import trainer
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state


@dataclasses.dataclass(frozen=True)
class Pieces:
  config: Any
  corpus: Any
  tokenizer: Any
  model: Model
  mesh: Any
  bound: dict          # objective name -> BoundObjective
  stages: list         # trainer.Stage
  tx: Any
  schedule: Any
  shardings: Any
  iterators: dict      # batch kind -> training iterator (empty with with_data=False)


def build_pieces(config, with_data: bool = True) -> tuple[Pieces, Any]:
  """(pieces, initial train state) of `config`; the corpus must be built. `with_data` opens one
  training iterator per batch kind the objectives read."""
  mesh = mesh_lib.make_mesh(config.mesh)
  dp = mesh_lib.data_parallel_size(mesh)
  if config.train.batch_size % dp:
    raise ValueError(f"train.batch_size ({config.train.batch_size}) must be divisible by the "
                     f"data-parallel size data*fsdp = {dp}")
  corpus = trainer.open_corpus(config)
  tokenizer = trainer.open_tokenizer(config, corpus)
  resources = trainer.load_objective_resources(config, corpus, tokenizer)
  model = Model(trainer.model_config(config, tokenizer))
  bound = trainer.bind_objectives(config, model, tokenizer, resources, data_parallel_size=dp)
  stages = trainer.plan_stages(config, bound)
  tx, schedule = make_optimizer(config.optimizer, config.train.total_steps)
  state, shardings, _ = create_train_state(model, tx, bound, config.data.seq_len, mesh,
                                           mesh_lib.logical_rules(config.mesh), config.seed)
  kinds = sorted({kind for b in bound.values() for kind in b.kinds})
  iterators = ({kind: iter(trainer.make_batch_dataset(kind, config, corpus, tokenizer, "train"))
                for kind in kinds} if with_data else {})
  return Pieces(config, corpus, tokenizer, model, mesh, bound, stages, tx, schedule, shardings,
                iterators), state


def jit_group(pieces: Pieces, group) -> list:
  """The jitted update functions of objective group `group` (names), as training compiles them."""
  return trainer.jit_update_steps({n: pieces.bound[n] for n in group}, pieces.tx, pieces.schedule,
                                  pieces.shardings, pieces.mesh,
                                  pieces.config.train.grad_accum_steps)


def next_batches(pieces: Pieces, group) -> dict:
  """One global batch of every kind `group` reads, drawn from the training iterators, on the mesh."""
  return trainer._next_batches(pieces.iterators, trainer.group_kinds(pieces.bound, group),
                               pieces.mesh, pieces.config.train.grad_accum_steps)


def group_for_step(pieces: Pieces, groups, step: int) -> int:
  """The index in `groups` that training trains at `step` (drawn by weight from seed and step)."""
  return trainer.group_for_step(pieces.bound, groups, pieces.config.seed, step)


def close(pieces: Pieces) -> None:
  """Stops the input threads of the training iterators."""
  for it in pieces.iterators.values():
    getattr(it, "close", lambda: None)()
