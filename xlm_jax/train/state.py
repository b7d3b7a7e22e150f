"""The train state (everything a checkpoint holds besides the data iterator) and its sharded init."""
from __future__ import annotations

from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xlm_jax.objectives.base import Objective
from xlm_jax import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  # int32 scalar: steps taken, i.e. batches drawn. A non-finite step that was skipped
  # (nonfinite.skip_nonfinite) counts, though its update was not applied.
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array             # uint32[2] raw key; the per-step key is fold_in(rng, step)
  extra: Mapping[str, Any]   # objective name -> its extra state (queues, EMA buffers, ...)


def _split(entry) -> tuple[Objective, Any]:
  """(objective, context) of a BoundObjective, or (objective, None) for a bare Objective."""
  if isinstance(entry, Objective):
    return entry, None
  return entry.objective, entry.context


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, objectives: Mapping[str, Any],
             seq_len: int):
  """Returns rng -> TrainState with logical-axis boxes still on the parameters.

  `objectives` maps names to BoundObjectives (or bare Objectives without init hooks). Heads of
  objectives with `init_params` go to params["heads"][name]; `init_extra_state` sees the full
  initial params (a momentum encoder starts as a copy of them).
  """
  def init(rng):
    params_rng, dropout_rng, extra_rng, state_rng = jax.random.split(rng, 4)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    # One label position is enough to create the MLM head's parameters.
    positions = jnp.zeros((1, 1), jnp.int32)
    init_args = {}
    # An encoder with languages refuses to run without lang_ids (_checked_lang_ids).
    if model.config.num_languages:
      init_args["lang_ids"] = ids
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, ids,
                           label_positions=positions, deterministic=True, **init_args)
    params = dict(variables["params"])
    heads = {}
    for i, (name, entry) in enumerate(objectives.items()):
      objective, context = _split(entry)
      if objective.init_params is not None:
        # Folded from params_rng, not split off it: adding a head keeps the encoder's init.
        heads[name] = objective.init_params(jax.random.fold_in(params_rng, 1000 + i), context)
    if heads:
      params["heads"] = heads
    extra = {}
    for i, (name, entry) in enumerate(objectives.items()):
      objective, context = _split(entry)
      if objective.init_extra_state is not None:
        extra[name] = objective.init_extra_state(jax.random.fold_in(extra_rng, i), params, context)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_rng, extra=extra)
  return init


def sharded_layout(init, rng, mesh, rules):
  """(shardings, abstract state) of `init(rng)`, traced abstractly (no memory): shapes and
  logical-axis boxes, from which each array's mesh sharding is derived."""
  boxed = jax.eval_shape(init, rng)
  shardings = mesh_lib.shardings_from_boxed(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return shardings, abstract


def create_train_state(model, tx, objectives, seq_len: int, mesh, rules, seed: int,
                       initialize: bool = True):
  """Initialises the state directly sharded over the mesh (never materialised on one device).

  Returns (state, shardings, abstract_state); `abstract_state` holds ShapeDtypeStructs with
  shardings, which is what a checkpoint restore needs. With `initialize=False` no array is
  allocated and `state` is None (jobs that restore a checkpoint anyway: eval, export).
  """
  init = _init_fn(model, tx, objectives, seq_len)
  rng = jax.random.PRNGKey(seed)
  shardings, abstract = sharded_layout(init, rng, mesh, rules)
  if not initialize:
    return None, shardings, abstract
  # With out_shardings every device creates only its own shards: no device holds the full state.
  state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings, abstract
