"""Ahead-of-time compile of a run's jitted steps for a TPU slice this machine does not have.

    xlm-jax compile --config experiments/xlmr_mlm.py:base --topology v5e-256 [--config.f=v ...]

libtpu (`pip install -e ".[tpu]"`) describes a slice as compile-only devices
(`jax.experimental.topologies`); the run's mesh is built on them from `config.mesh`, and every
jitted step the trainer would run is lowered from abstract state and batches and compiled by the
TPU compiler. No array is allocated and no corpus is read (see `run_vocabulary`). The steps come
from the trainer's own functions, so what compiles here is what training runs:

- each objective group of each stage: `trainer.jit_update_steps` (one train step, or an
  objective's own steps, e.g. EMMA-X's e_step and m_step);
- the held-out evaluation step of each batch kind, when the `mlm` evaluator is configured.

Both are traced, as in training, inside `mesh.tracing_context`: the model's activations are
constrained to rows over the batch axes (models/encoder.py), so memory per chip is that of
`batch_size / (data * fsdp)` rows, not of the whole batch.

Per step it reports the compiler's memory per chip (arguments, outputs, temporaries, peak) next to
the chip's HBM, its FLOPs next to the trainer's analytic count, the collectives in the program,
and a verdict. A program too big for the chip is a verdict with settings to try, not a crash.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time
from typing import Callable

import jax
import jax.numpy as jnp

from xlm_jax import mesh as mesh_lib
from xlm_jax.models.encoder import Model, count_params, flops_per_token
from xlm_jax.objectives.base import predictions_per_token
from xlm_jax.registry import OBJECTIVES
from xlm_jax.train import trainer
from xlm_jax.train import warm_start as warm_start_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.step import make_eval_step

GIB = 1024 ** 3
# Above this share of HBM a step "fits, tight": XLA's own reservations, fragmentation and a
# larger compiled program on a newer libtpu can tip it over.
HBM_MARGIN = 0.8


class LibtpuMissing(ValueError):
  """libtpu (the TPU compiler) is not installed; the message says how to install it."""


def libtpu_installed() -> bool:
  """True when JAX can load the TPU compiler, checked without starting any JAX backend."""
  # JAX looks in the same two places (jax/_src/cloud_tpu_init.py: get_tpu_library_path).
  path = os.environ.get("TPU_LIBRARY_PATH")
  return bool(path and os.path.isfile(path)) or importlib.util.find_spec("libtpu") is not None


def require_libtpu() -> None:
  if not libtpu_installed():
    raise LibtpuMissing(
        'libtpu is not installed; compiling for a TPU needs it, though not a TPU. Run '
        '`pip install -e ".[tpu]"`: it installs jax[tpu] at the pinned jax version, which brings '
        'libtpu, the TPU compiler and runtime (or `pip install "jax[tpu]=='
        f'{jax.__version__}"` to match the installed jax). Best in a venv of its own: with '
        'libtpu installed, every JAX process probes for a TPU when it starts')


# =============================================================================================
# Topologies: Cloud TPU accelerator types -> compile-only devices
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  name: str                # as users write it: v4, v5e, v5p, v6e
  libtpu_name: str         # as libtpu's topology names write it (v5p is "v5")
  hbm_gib: float           # HBM per chip
  cores_per_chip: int      # v4-32 and v5p-128 count TensorCores (2 per chip); v5e/v6e count chips
  torus_dims: int          # 3D torus (v4, v5p) or 2D (v5e, v6e)
  # v4 and v5p run both TensorCores of a chip as one device (megacore): memory is per chip.
  topology_kwargs: tuple = ()


# HBM per chip from the Cloud TPU system-architecture pages (checked 2026-12-07): v4 32 GiB,
# v5e 16 GiB, v5p 95 GB, v6e 32 GB. The compiler's usable limit is a little lower (v5e: 15.75 GiB);
# a program over it fails to compile and the verdict quotes the compiler's figures.
TPU_GENERATIONS = {
    "v4": TpuGeneration("v4", "v4", 32.0, 2, 3, (("chip_config_name", "megacore"),)),
    "v5e": TpuGeneration("v5e", "v5e", 16.0, 1, 2),
    "v5p": TpuGeneration("v5p", "v5", 95.0, 2, 3, (("chip_config_name", "megacore"),)),
    "v6e": TpuGeneration("v6e", "v6e", 32.0, 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                 # as given: v5e-256 or v5e:16x16
  generation: TpuGeneration
  shape: tuple[int, ...]    # chips along each torus axis

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def libtpu_name(self) -> str:
    return f"{self.generation.libtpu_name}:{'x'.join(map(str, self.shape))}"


def _default_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The slice shape Cloud TPU gives a power-of-two chip count (v5e-256 16x16, v5p-128 4x4x4,
  v4-32 2x2x4): from 1x1 (or 2x2x1), double the smallest axis (the last of equal ones)."""
  shape = [1, 1] if dims == 2 else [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    shape[max(i for i, s in enumerate(shape) if s == smallest)] *= 2
  return tuple(sorted(shape)) if dims == 2 else tuple(shape)


def parse_topology(text: str) -> Topology:
  """`v5e-256` (a Cloud TPU accelerator type: chips for v5e/v6e, TensorCores for v4/v5p) or an
  explicit slice shape `v5e:16x16`, `v5p:4x4x12`."""
  known = ", ".join(sorted(TPU_GENERATIONS))
  example = "v5e-256, v5p-128, v4-32, v6e-64 or a shape such as v5p:4x4x12"
  match = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", text.strip().lower())
  if not match:
    raise ValueError(f"--topology {text!r}: write an accelerator type or a slice shape, e.g. "
                     f"{example}")
  family, count, shape_text = match.groups()
  generation = TPU_GENERATIONS.get(_ALIASES.get(family, family))
  if generation is None:
    raise ValueError(f"--topology {text!r}: unknown TPU generation {family!r}; known: {known}")
  if shape_text:
    shape = tuple(int(s) for s in shape_text.split("x"))
    if len(shape) != generation.torus_dims or min(shape) < 1:
      raise ValueError(f"--topology {text!r}: a {generation.name} slice has "
                       f"{generation.torus_dims} axes, e.g. {generation.name}:"
                       f"{'x'.join(['2'] * generation.torus_dims)}")
    return Topology(text, generation, shape)
  units = int(count)
  if units % generation.cores_per_chip:
    raise ValueError(f"--topology {text!r}: {generation.name}-N counts TensorCores, "
                     f"{generation.cores_per_chip} per chip; N must be even")
  chips = units // generation.cores_per_chip
  minimum = 4 if generation.torus_dims == 3 else 1
  if chips < minimum or chips & (chips - 1):
    raise ValueError(f"--topology {text!r}: {chips} chips is not a power-of-two slice of at least "
                     f"{minimum}; give its shape instead, e.g. {generation.name}:"
                     f"{'x'.join(['4'] * generation.torus_dims)}")
  return Topology(text, generation, _default_shape(chips, generation.torus_dims))


def topology_devices(topology: Topology) -> list:
  """The slice's compile-only devices (they compile programs; nothing runs on them)."""
  require_libtpu()
  # libtpu lets one process at a time load it (a lock file), which guards real chips. These
  # devices touch none, so compiles may run beside each other or beside a training run.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  return list(topologies.get_topology_desc(topology.libtpu_name, "tpu",
                                           **dict(topology.generation.topology_kwargs)).devices)


def prepare_compile_process(topology: Topology) -> None:
  """Settings for a process that only compiles (`xlm-jax compile`), made before JAX starts.

  JAX's own arrays (the init key, abstract tracing) stay on the CPU instead of probing for a local
  TPU; libtpu is told it runs as one host of `topology`, or it logs errors about the TPU VM
  metadata it cannot find. Existing settings are kept.
  """
  if not os.environ.get("JAX_PLATFORMS"):
    jax.config.update("jax_platforms", "cpu")
  gen = topology.generation
  accelerator = {"v5e": "v5litepod"}.get(gen.name, gen.name)
  os.environ.setdefault("TPU_ACCELERATOR_TYPE",
                        f"{accelerator}-{topology.chips * gen.cores_per_chip}")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")


# =============================================================================================
# The run's vocabulary and abstract batches (no corpus needed for the usual joint vocabulary)
# =============================================================================================


@dataclasses.dataclass(frozen=True)
class StandInVocabulary:
  """What the trainer reads of a joint SentencePiece tokenizer, without the corpus: its size and
  the special ids every corpus tokenizer has (<s> <pad> </s> <unk> <mask>, tokenizer_training)."""
  vocab_size: int
  bos_id: int = 0
  pad_id: int = 1
  eos_id: int = 2
  unk_id: int = 3
  mask_id: int = 4

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id)


def run_vocabulary(config) -> tuple[object, dict, str]:
  """(tokenizer, objective resources, where the vocabulary came from) for compiling `config`.

  A joint vocabulary is data.vocab_size pieces (the size the corpus build trains), so base and
  large compile without CC-100 at hand. A Hugging Face warm start brings its own tokenizer; the
  per-language vocabularies and objectives with corpus resources (dictionaries) need the built
  corpus, as training does.
  """
  needs_resources = [n for n in config.objectives
                     if OBJECTIVES.get(n).load_resources is not None]
  if warm_start_lib.hf_folder(config.init_from) is not None and not needs_resources:
    return trainer.open_tokenizer(config, None), {}, f"the tokenizer of {config.init_from}"
  if config.data.vocabulary == "joint" and not needs_resources:
    return (StandInVocabulary(config.data.vocab_size), {}, f"data.vocab_size="
            f"{config.data.vocab_size} (a joint vocabulary; the corpus is not read)")
  why = (f"objective {needs_resources[0]!r} reads corpus resources" if needs_resources
         else f"data.vocabulary={config.data.vocabulary!r} is built from the corpus")
  try:
    corpus = trainer.open_corpus(config)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{why}, so compiling needs the corpus: {e}") from e
  tokenizer = trainer.open_tokenizer(config, corpus)
  resources = trainer.load_objective_resources(config, corpus, tokenizer)
  return tokenizer, resources, f"the tokenizer of corpus {corpus.dir} ({why})"


def abstract_batch(kind: str, config, rows: int, mesh, leading_dims: int = 0
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The arrays a global batch of `kind` holds (data/batch_kinds.py) as ShapeDtypeStructs sharded
  as the trainer places them; with a leading micro-batch axis (grad_accum_steps > 1) the `rows`
  are split over config.train.grad_accum_steps micro-batches, as trainer._next_batches does."""
  seq_len = config.data.seq_len
  if kind == "parallel_pairs":
    side = config.data.pair_seq_len or seq_len // 2  # as trainer.make_batch_dataset
    shapes = {"x_input_ids": (side,), "y_input_ids": (side,), "x_lang_ids": (),
              "y_lang_ids": ()}
  else:  # mono, parallel, sentences: four [B, seq_len] arrays
    shapes = {k: (seq_len,) for k in ("input_ids", "segment_ids", "position_ids", "lang_ids")}
  accum = config.train.grad_accum_steps if leading_dims else 1
  sharding = mesh_lib.batch_sharding(mesh, leading_dims)
  return {k: jax.ShapeDtypeStruct((*(accum,) * leading_dims, rows // accum, *shape), jnp.int32,
                                  sharding=sharding) for k, shape in shapes.items()}


# =============================================================================================
# Compiling one step and reading what the compiler says about it
# =============================================================================================


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE_OP = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


def count_collectives(hlo_text: str) -> dict[str, int]:
  """Collective ops in a compiled HLO module (an async pair counts once, through its -start op).
  A loop body counts once, so a scanned layer's collectives count once, not once per layer."""
  counts = dict.fromkeys(COLLECTIVES, 0)
  for match in _COLLECTIVE_OP.finditer(hlo_text):
    counts[match.group(1)] += 1
  return counts


# XLA TPU's out-of-memory message, e.g. "the total memory required for HLO temporaries (57.00G)
# exceeds available HBM (15.75G)" or "Used 46.83G of 15.48G hbm".
_SIZE = r"([\d.]+)([KMGT]?)i?B?"
_OOM_PATTERNS = (re.compile(r"\(" + _SIZE + r"\) exceeds available HBM \(" + _SIZE + r"\)"),
                 re.compile(r"Used " + _SIZE + r" of " + _SIZE + r" hbm"))


def _bytes(number: str, unit: str) -> float:
  return float(number) * 1024 ** "BKMGT".index(unit or "B")


@dataclasses.dataclass
class StepReport:
  name: str
  stages: tuple[str, ...]
  seconds: float = 0.0
  memory: dict[str, int] = dataclasses.field(default_factory=dict)  # per chip, bytes
  flops: float | None = None            # compiler's count, per chip
  analytic_flops: float | None = None   # the trainer's count for the step, per chip
  group_flops: float | None = None      # on a group's last step: the compiler's, all its steps
  collectives: dict[str, int] = dataclasses.field(default_factory=dict)
  out_of_memory: str = ""               # the compiler's message when it did not fit
  required_bytes: float | None = None   # from that message
  usable_bytes: float | None = None
  error: str = ""                       # a failure for any other reason
  suggestions: list[str] = dataclasses.field(default_factory=list)  # settings that need less


def compile_step(name: str, stages, jitted, *args) -> StepReport:
  """Lowers and compiles `jitted(*args)` (abstract args); failures are recorded, not raised."""
  report = StepReport(name, tuple(stages))
  started = time.time()
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except  (every failure is reported by name)
    report.seconds = time.time() - started
    message = str(e).strip()
    if "RESOURCE_EXHAUSTED" in message or "Ran out of memory" in message:
      report.out_of_memory = message.splitlines()[0]
      for pattern in _OOM_PATTERNS:
        found = pattern.search(message)
        if found:
          report.required_bytes = _bytes(*found.groups()[:2])
          report.usable_bytes = _bytes(*found.groups()[2:])
          break
    else:
      report.error = f"{type(e).__name__}: {message.splitlines()[0] if message else ''}"
    return report
  report.seconds = time.time() - started
  stats = compiled.memory_analysis()
  memory = {"arguments": stats.argument_size_in_bytes, "outputs": stats.output_size_in_bytes,
            "aliased": stats.alias_size_in_bytes, "temp": stats.temp_size_in_bytes,
            "code": stats.generated_code_size_in_bytes}
  # The compiler's peak of live buffers; older jaxlibs lack it: then the upper bound of all
  # buffers at once (donated outputs share their arguments' memory).
  memory["peak"] = (getattr(stats, "peak_memory_in_bytes", 0) or
                    memory["arguments"] + memory["outputs"] - memory["aliased"] + memory["temp"])
  report.memory = memory
  costs = compiled.cost_analysis()
  costs = costs[0] if isinstance(costs, (list, tuple)) else costs  # a list in older jaxlibs
  report.flops = float(costs.get("flops", 0.0)) if costs else None
  report.collectives = count_collectives(compiled.as_text())
  return report


# =============================================================================================
# The run: mesh -> model and state -> every step the trainer would jit
# =============================================================================================


@dataclasses.dataclass
class CompileReport:
  config_name: str
  topology: Topology
  device_kind: str
  mesh_shape: dict[str, int]
  vocabulary: str
  model: str
  batch: str
  steps: list[StepReport]
  notes: list[str] = dataclasses.field(default_factory=list)


def _suggestions(config, mesh, evaluation: bool, accumulates: bool) -> list[str]:
  """Settings that lower a step's memory per chip, the cheapest first, skipping those set."""
  out = []
  if mesh.shape["fsdp"] < mesh.size:
    out.append("--config.mesh.fsdp=-1 --config.mesh.data=1 (parameters and optimizer moments "
               "sharded over every chip)")
  if evaluation:
    # trainer.heldout_eval_step scores one global batch of the test split at once.
    out.append("a smaller --config.train.batch_size (the held-out step runs one whole batch; "
               "grad_accum_steps does not split it)")
  else:
    if config.model.remat_policy != "full":
      out.append("--config.model.remat_policy=full (recompute every activation in the backward "
                 "pass)")
    rows_per_chip = config.train.batch_size // mesh_lib.data_parallel_size(mesh)
    accum = config.train.grad_accum_steps
    if accumulates and rows_per_chip // accum >= 2:
      out.append(f"--config.train.grad_accum_steps={2 * accum} (half the rows per micro-batch; "
                 "the batch is unchanged)")
  out.append("a larger slice")
  return out


def _check_hosts_split_batch(mesh, global_batch: int) -> None:
  """mesh_lib.check_hosts_split_batch for every host of the slice at once: on the slice, each
  host's trainer refuses a mesh whose batch rows do not split evenly over the hosts."""
  rows: dict[int, set] = {}
  index_map = mesh_lib.batch_sharding(mesh).devices_indices_map((global_batch,))
  for device, index in index_map.items():
    rows.setdefault(device.process_index, set()).update(range(*index[0].indices(global_batch)))
  hosts = len(rows)
  if hosts > 1 and (global_batch % hosts or
                    any(len(r) != global_batch // hosts for r in rows.values())):
    raise ValueError(f"mesh {dict(mesh.shape)}: the {hosts} hosts of this slice would not each "
                     f"hold batch_size / hosts rows of the {global_batch}, so training refuses "
                     "it there. Make data*fsdp a multiple of the host count and keep mesh.tensor "
                     "within a host")


def _step_names(bound, group, tx, schedule) -> list[str]:
  """Names of the functions `trainer.jit_update_steps` jits for `group`, in its order."""
  first = bound[group[0]]
  if first.objective.make_steps is None:
    return ["+".join(group)]
  # An objective's own steps (EMMA-X): the same list jit_update_steps builds, read for names.
  return [f"{group[0]}/{name}" for name, _ in first.objective.make_steps(first, tx, schedule)]


def compile_run(config, topology: Topology, config_name: str = "",
                progress: Callable[[str], None] | None = None) -> CompileReport:
  """Compiles every jitted step of `config`'s run for `topology`; see the module docstring."""
  progress = progress or (lambda message: None)
  devices = topology_devices(topology)

  # ------------------------------------------------------------------ mesh (as the trainer's)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  rules = mesh_lib.logical_rules(config.mesh)
  data_parallel = mesh_lib.data_parallel_size(mesh)
  global_batch, accum = config.train.batch_size, config.train.grad_accum_steps
  if global_batch % (data_parallel * accum):
    raise ValueError(f"train.batch_size ({global_batch}) must be divisible by the data-parallel "
                     f"size data*fsdp = {data_parallel} times train.grad_accum_steps ({accum})")
  _check_hosts_split_batch(mesh, global_batch)

  # ------------------------------------------------------------------ model and abstract state
  tokenizer, resources, vocabulary = run_vocabulary(config)
  mcfg = trainer.model_config(config, tokenizer)
  model = Model(mcfg)
  bound = trainer.bind_objectives(config, model, tokenizer, resources,
                                  data_parallel_size=data_parallel)
  stages = trainer.plan_stages(config, bound)
  tx, schedule = make_optimizer(config.optimizer, config.train.total_steps)
  _, shardings, state = create_train_state(model, tx, bound, config.data.seq_len, mesh, rules,
                                           config.seed, initialize=False)
  seq_len = config.data.seq_len
  chips = mesh.size

  def batches(kinds, leading):
    return {kind: abstract_batch(kind, config, global_batch, mesh, leading) for kind in kinds}

  def analytic(names, forward_only=False):
    # The trainer's count (train/tflops_per_second's numerator), per chip.
    per_token = flops_per_token(mcfg, seq_len,
                                predictions_per_token({n: bound[n] for n in names}, seq_len))
    return global_batch * seq_len * per_token / (3.0 if forward_only else 1.0) / chips

  # ------------------------------------------------------------------ update steps
  reports = []
  groups: dict[tuple[str, ...], list[str]] = {}  # compiled once, as the trainer caches them
  for stage in stages:
    for group in stage.groups:
      groups.setdefault(group, []).append(stage.name)
  leading = 1 if accum > 1 else 0
  for group, stage_names in groups.items():
    fns = trainer.jit_update_steps({n: bound[n] for n in group}, tx, schedule, shardings, mesh,
                                   accum, rules)
    names = _step_names(bound, group, tx, schedule)
    group_batches = batches(trainer.group_kinds(bound, group), leading)
    for index, (name, fn) in enumerate(zip(names, fns)):
      progress(f"compiling train/{name} ...")
      report = compile_step(f"train/{name}", stage_names, fn, state, group_batches)
      # Objectives with their own steps refuse grad_accum_steps > 1 (jit_update_steps).
      report.suggestions = _suggestions(
          config, mesh, evaluation=False,
          accumulates=bound[group[0]].objective.make_steps is None)
      if index == len(fns) - 1:  # a group's analytic count is for all of its steps together
        report.analytic_flops = analytic(group)
        if len(fns) > 1:
          done = reports[len(reports) - index:] + [report]
          report.group_flops = (sum(s.flops for s in done)
                                if all(s.flops is not None for s in done) else None)
      reports.append(report)

  # ------------------------------------------------------------------ held-out evaluation
  # trainer.heldout_eval_step jits make_eval_step per batch kind and feeds it the training
  # params and extra state, one global batch of the test split and a folded key.
  if "mlm" in config.eval.evaluators:
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    for kind in sorted({b.objective.batch_kind for b in bound.values()}):
      group = {n: b for n, b in bound.items() if b.objective.batch_kind == kind}
      progress(f"compiling eval/{kind} ...")
      eval_step = mesh_lib.jit_in_mesh(make_eval_step(group), mesh, rules)
      report = compile_step(f"eval/{kind}", ("eval",), eval_step, state.params, state.extra,
                            batches([kind], 0), key)
      report.analytic_flops = analytic(tuple(group), forward_only=True)
      report.suggestions = _suggestions(config, mesh, evaluation=True, accumulates=False)
      reports.append(report)

  model_text = (f"{mcfg.num_layers} layers, d={mcfg.hidden_size}, vocab {mcfg.vocab_size}, "
                f"{count_params(state.params) / 1e6:.1f}M parameters (heads included); "
                f"{mcfg.dtype} compute, {mcfg.param_dtype} parameters, remat "
                f"{mcfg.remat_policy}, scan_layers {mcfg.scan_layers}")
  batch_text = (f"{global_batch} x {seq_len} tokens per step, {global_batch / data_parallel:g} "
                f"rows per chip, grad_accum_steps {accum}")
  notes = []
  # XLA's cost analysis counts a while loop's body once, whatever its trip count.
  if mcfg.scan_layers and mcfg.num_layers > 1:
    notes.append(f"scan_layers: the compiler's FLOPs count the scanned layer once, not "
                 f"{mcfg.num_layers} times; compile with --config.model.scan_layers=False for "
                 "the full count (a longer compile; memory differs too)")
  if accum > 1:
    notes.append(f"grad_accum_steps: the compiler's FLOPs of a train step count one of its "
                 f"{accum} micro-batches")
  return CompileReport(config_name, topology, devices[0].device_kind, dict(mesh.shape),
                       vocabulary, model_text, batch_text, reports, notes)


# =============================================================================================
# The printed report
# =============================================================================================


def _size(n: float) -> str:
  return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 1024 ** 2:.1f} MiB"


def verdict(step: StepReport, hbm_bytes: float) -> str:
  try_text = "; try " + " or ".join(step.suggestions)
  if step.error:
    return f"failed to compile: {step.error}"
  if step.out_of_memory:
    if step.required_bytes:
      return (f"does not fit: {step.required_bytes / GIB:.1f} of {step.usable_bytes / GIB:.2f} "
              f"GiB usable per chip (the compiler's figures){try_text}")
    return f"does not fit ({step.out_of_memory}){try_text}"
  peak = step.memory["peak"]
  share = peak / hbm_bytes
  text = f"{peak / GIB:.2f} of {hbm_bytes / GIB:g} GiB per chip ({share:.0%})"
  if share > HBM_MARGIN:
    return (f"fits, tight: {text}, above {HBM_MARGIN:.0%}; for headroom try "
            + " or ".join(step.suggestions))
  return f"fits: {text}"


def format_report(report: CompileReport) -> str:
  gen = report.topology.generation
  hbm = gen.hbm_gib * GIB
  mesh = " ".join(f"{k}={v}" for k, v in report.mesh_shape.items())
  shape = ("" if report.topology.name == report.topology.libtpu_name
           else f"{report.topology.libtpu_name}, ")
  lines = [
      f"xlm-jax compile {report.config_name} for {report.topology.name}: {shape}"
      f"{report.topology.chips} chips ({report.device_kind}), {gen.hbm_gib:g} GiB HBM per chip",
      f"  mesh        {mesh}",
      f"  model       {report.model}",
      f"  vocabulary  {report.vocabulary}",
      f"  batch       {report.batch}",
      "",
      "Per chip. peak: the compiler's peak of live memory (arguments, outputs and temporaries; "
      "the donated state's outputs reuse its arguments), which the verdict reads; temp is the "
      "temporaries' allocation, which can exceed what is live at the peak. FLOPs: the "
      "compiler's cost analysis, next to the trainer's analytic count "
      "(models.encoder.flops_per_token: 3 x forward matmul FLOPs, vocabulary logits only at "
      "predicted positions; the numerator of train/tflops_per_second); remat recomputation is "
      "in the compiler's count only. Collectives: ops in the program, a scanned layer's once.",
      *(f"Note: {note}." for note in report.notes),
  ]
  for step in report.steps:
    lines += ["", f"{step.name}   (stages: {', '.join(step.stages)}; {step.seconds:.1f} s to "
                  "compile)"]
    if step.memory:
      m = step.memory
      lines.append(f"  memory      peak {_size(m['peak'])} of {gen.hbm_gib:g} GiB HBM: arguments "
                   f"{_size(m['arguments'])}, outputs {_size(m['outputs'])} "
                   f"({_size(m['aliased'])} of them aliased to arguments), temp "
                   f"{_size(m['temp'])}, code {_size(m['code'])}")
    if step.flops is not None:
      flops = f"  FLOPs       compiler {step.flops:.3e}"
      if step.analytic_flops and step.group_flops:
        flops += (f"; its group's steps together {step.group_flops:.3e}, analytic "
                  f"{step.analytic_flops:.3e} (compiler / analytic "
                  f"{step.group_flops / step.analytic_flops:.2f})")
      elif step.analytic_flops:
        flops += (f", analytic {step.analytic_flops:.3e} (compiler / analytic "
                  f"{step.flops / step.analytic_flops:.2f})")
      elif step.analytic_flops is None and not step.name.startswith("eval/"):
        flops += " (the group's analytic count is on its last step)"
      lines.append(flops)
    if step.collectives:
      lines.append("  collectives " + ", ".join(f"{k} {v}" for k, v in step.collectives.items()))
    lines.append(f"  verdict     {verdict(step, hbm)}")
  failed = [s.name for s in report.steps if s.error]
  too_big = [s.name for s in report.steps if s.out_of_memory]
  tight = [s.name for s in report.steps
           if s.memory and s.memory["peak"] > HBM_MARGIN * hbm]
  if failed:
    summary = f"{len(failed)} step(s) failed to compile: {', '.join(failed)}"
  elif too_big:
    summary = f"does not fit on {report.topology.name}: {', '.join(too_big)}"
  elif tight:
    summary = (f"fits on {report.topology.name}, above {HBM_MARGIN:.0%} of HBM in "
               f"{', '.join(tight)}")
  else:
    summary = f"every step fits on {report.topology.name} under {HBM_MARGIN:.0%} of HBM"
  lines += ["", f"verdict: {summary}"]
  return "\n".join(lines)


def exit_status(report: CompileReport) -> int:
  """0 when every step compiled and fits, 1 when one does not fit, 2 when one failed."""
  if any(s.error for s in report.steps):
    return 2
  return 1 if any(s.out_of_memory for s in report.steps) else 0
