"""Device mesh, logical-axis sharding and multi-host start-up.

Sharding is data in the config: `config.mesh` gives the (data, fsdp, tensor) sizes and the rules
that map the model's logical axis names to mesh axes. Nothing in the model names a mesh axis.
Parameters get their shardings from the rules through jit's in/out shardings; activations through
the model's logical constraints, which every jitted step that runs the model applies by being
traced in `tracing_context` (`jit_in_mesh`).
It sits beside config.py, below every layer that places arrays: training, fine-tuning,
evaluation and export all shard the same way through it.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # batch rows are split over both data-like axes

# Logical parameter/activation axes -> mesh axes. FSDP shards the embedding dimension of every
# weight; tensor parallelism shards heads, MLP and vocabulary. Batch uses both data and fsdp.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("positions", None),
    ("languages", None),
    ("layers", None),
    ("length", None),
)


# distributed.initialize: "auto" (from the environment), "yes" (always), "no" (single process).
INITIALIZE_MODES = ("auto", "yes", "no")


def maybe_initialize_distributed(cfg) -> None:
  """Calls `jax.distributed.initialize` for multi-process runs (TPU pods, multi-node GPU).

  "auto" initializes when the usual environment says we are one of several processes
  (JAX_COORDINATOR_ADDRESS, or a Cloud TPU pod whose metadata JAX reads itself).
  """
  mode = cfg.initialize
  explicit = bool(cfg.coordinator_address) or cfg.num_processes > 0
  env = "JAX_COORDINATOR_ADDRESS" in os.environ or "TPU_WORKER_HOSTNAMES" in os.environ
  if mode == "no" or (mode == "auto" and not (explicit or env)):
    return
  # A second initialize() raises; the caller (a test, a notebook) may have run it already.
  if jax.distributed.is_initialized():
    return
  kwargs = {}
  if cfg.coordinator_address:
    kwargs["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes > 0:
    kwargs["num_processes"] = cfg.num_processes
  if cfg.process_id >= 0:
    kwargs["process_id"] = cfg.process_id
  # A dead host (kill -9, a lost VM) never joins the next collective: the others would wait in it
  # forever. The coordination service declares a host dead when its heartbeats stop for this long
  # and then terminates every other process (SIGABRT; its fatal log line names the lost task,
  # "tasks are unhealthy (stopped sending heartbeats): <id>"). A survivor whose collective fails
  # first (gloo sees the closed socket) exits by the same route: jax.distributed's shutdown at exit
  # waits for the dead host up to this timeout too. Bounded either way: about this many seconds
  # after the death (measured on loopback, tests/test_dead_host.py: 6.7-9.3 s for 10 s,
  # 97 s for JAX's default 100 s). A dead process 0 (it hosts the service) ends the others at once.
  heartbeat = int(cfg.get("heartbeat_timeout_seconds", 100))
  jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=heartbeat)
  logging.info("jax.distributed: process %d of %d, %d global devices", jax.process_index(),
               jax.process_count(), jax.device_count())
  logging.info("jax.distributed: a host silent for %d s (distributed.heartbeat_timeout_seconds) "
               "is declared lost and every other host exits with an error naming it; rerun every "
               "host to resume from the newest checkpoint", heartbeat)


def mesh_shape(cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves the one -1 entry of (data, fsdp, tensor) so the product is the device count."""
  sizes = [int(cfg.data), int(cfg.fsdp), int(cfg.tensor)]
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one of data/fsdp/tensor may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices cannot be split as data/fsdp/tensor={sizes}")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"mesh: data*fsdp*tensor = {sizes} must equal the {num_devices} devices "
                     f"(set mesh.data=-1 to use all of them)")
  return tuple(sizes)


def make_mesh(cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(cfg, len(devices))
  # jax.make_mesh orders devices for the physical topology (ICI rings on TPU). Auto axes: XLA
  # propagates shardings from the annotated params and inputs (GSPMD), as pjit always did.
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_rules(cfg) -> tuple[tuple[str, object], ...]:
  # Configs read from files hold multi-axis targets as lists; flax's rules expect tuples.
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in cfg.rules)


# The rules the model's activation constraints read while a step is traced (tracing_context).
_ACTIVATION_RULES: contextvars.ContextVar[tuple] = contextvars.ContextVar("activation_rules",
                                                                          default=())


@contextlib.contextmanager
def tracing_context(mesh: Mesh | None, rules=DEFAULT_RULES):
  """The mesh and rules under which a step that runs the model must be traced (and called).

  The model names the axes of its activations (models/encoder.py `_constrain`: hidden states
  ("batch", "length", "embed"), logits ("batch", "length", "vocab"), ...). Inside this context
  those names become sharding constraints over `mesh`; outside it they are no-ops, as on one
  device, in the HF conversion and in tests that apply the model directly. Without them XLA's
  sharding propagation follows the FSDP-gathered weights and every chip computes the
  activations and logits of the whole global batch (XLM-R base at 8192 x 512: 926 GiB per v5e
  chip). mesh None: nothing is set.

  The mesh is set with `jax.set_mesh`, so jit's cache tells a trace inside from one outside.
  The rules reach the model through `activation_rules()`, not flax's global
  `nn.logical_axis_rules`: with a mesh and global rules set, flax 0.12.8 also constrains every
  boxed parameter initializer, and DenseGeneral's [D, H, Dh] kernels, initialised flat as [D,
  H * Dh] when nn.scan traces its body (also in apply), then fail ("only valid for values of
  rank at least 3").
  """
  if mesh is None:
    yield
    return
  token = _ACTIVATION_RULES.set(tuple(rules))
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _ACTIVATION_RULES.reset(token)


def activation_rules() -> tuple:
  """The logical-axis rules of the enclosing `tracing_context`; () outside one."""
  return _ACTIVATION_RULES.get()


@dataclasses.dataclass(frozen=True)
class MeshJitted:
  """A `jax.jit` function that is traced, lowered and called inside `tracing_context`.

  jit traces on the first call (or `lower`) and keys its cache by the mesh in context, so every
  call enters the context: a call outside it would trace again, without the constraints.
  """
  jitted: Any
  mesh: Mesh | None
  rules: tuple

  def __call__(self, *args, **kwargs):
    with tracing_context(self.mesh, self.rules):
      return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with tracing_context(self.mesh, self.rules):
      return self.jitted.lower(*args, **kwargs)


def jit_in_mesh(fn: Callable, mesh: Mesh | None, rules=None, **jit_kwargs) -> MeshJitted:
  """`jax.jit(fn, **jit_kwargs)` traced and run inside `tracing_context(mesh, rules)` (rules
  None: DEFAULT_RULES). Every jitted step that runs the encoder is built with it."""
  return MeshJitted(jax.jit(fn, **jit_kwargs), mesh, DEFAULT_RULES if rules is None else rules)


def shardings_from_boxed(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree whose leaves may be `nn.Partitioned` boxes (others replicated)."""
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, leading_dims: int = 0) -> NamedSharding:
  """Sharding of a [*(leading), batch, ...] input array: rows over (data, fsdp)."""
  # FSDP is data parallelism for activations: rows split over fsdp as well as data.
  return NamedSharding(mesh, P(*([None] * leading_dims), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_hosts_split_batch(mesh: Mesh, global_batch: int) -> None:
  """Raises unless every process feeds its own batch_size / process_count rows of the batch.

  The input pipeline gives each host its own shard of the sentences and batch_size / hosts rows,
  which is only right when the batch axes (data, fsdp) split the rows evenly over the hosts. A
  mesh that replicates rows over hosts (batch axes smaller than the host count, or laid out
  across the tensor axis) would assemble a global batch from hosts that disagree on its rows.
  """
  hosts = jax.process_count()
  if hosts == 1:
    return
  # Rows held by this process's devices; hosts that replicate rows would overlap here.
  indices = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  rows = {i for index in indices.values() for i in range(*index[0].indices(global_batch))}
  if len(rows) != global_batch // hosts or global_batch % hosts:
    raise ValueError(
        f"mesh {dict(mesh.shape)}: process {jax.process_index()} holds {len(rows)} of the "
        f"{global_batch} batch rows, but each of the {hosts} hosts must hold batch_size / hosts "
        f"= {global_batch / hosts:g} of its own. Make data*fsdp a multiple of the host count and "
        "keep mesh.tensor within a host (tensor <= devices per host).")


def host_copy(tree):
  """Numpy copy of a tree of jax.Arrays, also when they are sharded over several hosts.

  Multi-host: a collective (every process must call it), after which every process holds the
  whole tree.
  """
  if jax.process_count() == 1:
    # One process addresses every shard: a plain device_get suffices.
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def to_global_batch(host_batch, mesh: Mesh, leading_dims: int = 0):
  """Host-local numpy batch -> global jax.Arrays sharded over the batch axes (multi-host safe)."""
  sharding = batch_sharding(mesh, leading_dims)
  # Each host hands over only its own rows, which go to its own devices: no host needs the global
  # batch, as a device_put of the whole array would.
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), host_batch)
