"""Our MLM train step against Hugging Face's XLM-R doing the same work, and its MFU on a GPU.

    python benchmarks/train_step.py --peer-python /work/peer_venv/bin/python \
      --flax-peer-python /work/flax_peer_venv/bin/python --json /tmp/train_step.json

Four modes (benchmarks/README.md, "Train step against the Hugging Face peers"):

  timing (default)  ours, then each peer, R rounds of N steps, alternating: PyTorch
                    `XLMRobertaForMaskedLM` (benchmarks/torch_peer.py under --peer-python) and
                    Flax `FlaxXLMRobertaForMaskedLM` (benchmarks/flax_peer.py under
                    --flax-peer-python), each a long-lived process that idles on stdin between
                    its turns, so only one side computes at a time.
  --agreement K     dropout 0, fp32, every peer starting from OUR initial parameters (exported
                    with xlm_jax/export/hf.py, loaded with from_pretrained): K steps on each side,
                    the loss curves side by side and their largest difference.
  --scaling         tokens/s and peak memory at several sequence lengths and two model sizes,
                    one child run of this script per configuration, as a markdown table.
  --device gpu      our step alone on the GPU, bf16, XLM-R base at seq 512 by default, and its
                    MFU against the chip's dense bf16 peak.

The same work on every side. Ours is the real train step: `trainer.jit_update_steps` (the
trainer's own jit of make_train_step: donated state, non-finite guard, activation sharding
rules), masking on device from fold_in(state.rng, step), the vocabulary head only on the gathered
masked slots. Each step reads one batch of a pool of `--batches` token batches (step s: batch
s mod pool). The driver reproduces the masked input ids and labels our step draws at every step
(the same functions and keys, `step_masks`) and sends them to the peers, so a peer's step s sees
exactly our step s's tokens and masks; `check_masks` proves it at the first step by recomputing
our step's loss from the very arrays the peers receive. Both peers compute logits on every
position (their stock behaviour) and the loss over the labelled ones.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from machine_load import machine_busy_seconds  # benchmarks/ is on sys.path[0]
from peer_protocol import IGNORE, peak_rss_bytes

from xlm_jax import config as config_lib
from xlm_jax import mesh as mesh_lib
from xlm_jax.export import hf as hf_export
from xlm_jax.models.encoder import EncoderConfig, Model, count_params, flops_per_token
from xlm_jax.models.encoder_config import ATTENTION_IMPLS
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import MaskedTokens, max_predictions
from xlm_jax.objectives.mlm_core import mask_mono_batch, mono_masked_loss
from xlm_jax.registry import OBJECTIVES
from xlm_jax.train import optimizer as optimizer_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.step import BoundObjective
from xlm_jax.train.trainer import jit_update_steps

HERE = pathlib.Path(__file__).parent
PEERS = ("torch", "flax")
PEER_SCRIPTS = {"torch": HERE / "torch_peer.py", "flax": HERE / "flax_peer.py"}
PEER_IMPORTS = {"torch": "import torch, transformers",
                "flax": "import jax, optax; from transformers import FlaxXLMRobertaForMaskedLM"}
PEER_INSTALL = {
    "torch": "python3 -m venv peer && peer/bin/pip install torch==2.13.0 'transformers>=5,<6'",
    "flax": ("python3 -m venv flax_peer && flax_peer/bin/pip install 'transformers>=4.57,<4.58' "
             "jax==0.10.2 flax==0.12.8 optax==0.2.8"),
}
PEER_FLAGS = {"torch": "--peer-python", "flax": "--flax-peer-python"}
PEER_ENV = {"torch": "XLM_JAX_PEER_PYTHON", "flax": "XLM_JAX_FLAX_PEER_PYTHON"}
SPECIAL_IDS = (0, 1, 2, 3, 4)  # <s> <pad> </s> <unk> <mask>
MASK_ID, PAD_ID = 4, 1

# Defaults by device; the GPU's are XLM-R base at seq 512 in bf16, batch fitted to the memory.
DEFAULTS = {
    "cpu": dict(layers=6, hidden=512, heads=8, ffn=2048, vocab=32000, seq_len=128, batch=16,
                dtype="float32", rounds=12, steps_per_round=1, warmup_steps=2),
    "gpu": dict(layers=12, hidden=768, heads=12, ffn=3072, vocab=250002, seq_len=512, batch=None,
                dtype="bfloat16", rounds=5, steps_per_round=10, warmup_steps=3),
}
# Dense (not 2:4 sparse) bf16 tensor-core peaks from the vendor's data sheets, TFLOP/s, matched
# in order on jax.devices()[0].device_kind; NVL variants have other peaks and are not listed.
GPU_PEAKS = (
    (r"h100.*pcie", "H100 PCIe", 756.0),
    (r"h100(?!.*(pcie|nvl))", "H100 SXM", 989.0),
    (r"h200(?!.*nvl)", "H200", 989.0),
    (r"a100", "A100", 312.0),
    (r"\bl4\b", "L4", 121.0),
)
# Relative difference below which a recomputed loss is "the same" (check_masks): float32
# programs that fuse differently agree to ~1e-7 (measured: 0 to 7e-8); bf16 ones may round
# intermediates differently (measured: 0). Another step's masks move the loss by ~1e-2 even at
# initialisation, so both tolerances still tell masks apart.
CHECK_TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-3}
AGREEMENT_EARLY_STEPS = 5  # the "early on" of the agreement tolerance


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="cpu: ours against the peers; gpu: ours alone, with MFU")
  sizes = parser.add_argument_group("model and batch (defaults depend on --device)")
  for flag in ("layers", "hidden", "heads", "ffn", "vocab", "seq-len", "batch"):
    sizes.add_argument(f"--{flag}", type=int, default=None)
  sizes.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                     help="activation/matmul dtype; parameters and optimizer stay float32")
  sizes.add_argument("--dropout", type=float, default=None,
                     help="hidden and attention dropout (default 0.1; 0 with --agreement)")
  sizes.add_argument("--attention-impl", default=None, choices=ATTENTION_IMPLS,
                     help="model.attention_impl (default: the model's, xla); cudnn needs "
                          "--dropout 0 to run in training (benchmarks/README.md)")
  sizes.add_argument("--batches", type=int, default=16,
                     help="distinct token batches, step s reads batch s mod this (all sides)")
  timing = parser.add_argument_group("timing")
  timing.add_argument("--steps-per-round", type=int, default=None)
  timing.add_argument("--rounds", type=int, default=None)
  timing.add_argument("--warmup-steps", type=int, default=None,
                      help="untimed steps on each side; on cpu the first is the mask check")
  timing.add_argument("--quiet-share", type=float, default=0.1,
                      help="a round is quiet when other processes took less than this share of "
                           "the machine's CPU during all of its parts")
  peers = parser.add_argument_group("peers (cpu)")
  for name in PEERS:
    peers.add_argument(PEER_FLAGS[name], dest=f"{name}_python",
                       default=os.environ.get(PEER_ENV[name], ""),
                       help=f"python of a venv for the {name} peer (default: ${PEER_ENV[name]}); "
                            "without it that peer is left out")
  peers.add_argument("--peer-omp-wait-policy", default="",
                     help="OMP_WAIT_POLICY of the torch peer (default: inherit). Torch's OpenMP "
                          "threads spin at barriers, which makes it several times slower on a "
                          "busy machine; PASSIVE avoids that but costs ~5-8%% on a quiet one")
  modes = parser.add_argument_group("modes")
  modes.add_argument("--agreement", type=int, default=0, metavar="K",
                     help="K steps per side from the same initial parameters, dropout 0, fp32: "
                          "the loss curves and their largest difference")
  modes.add_argument("--agreement-tolerance", type=float, default=1e-3,
                     help=f"largest relative loss difference allowed over the first "
                          f"{AGREEMENT_EARLY_STEPS} steps of --agreement")
  modes.add_argument("--scaling", action="store_true",
                     help="tokens/s and peak memory for every --scaling-models x "
                          "--scaling-seq-lens, ours and the peers")
  modes.add_argument("--scaling-models", nargs="+", default=["6x512x8x2048", "12x768x12x3072"],
                     metavar="LxDxHxF", help="layers x hidden x heads x ffn of each model size")
  modes.add_argument("--scaling-seq-lens", nargs="+", type=int, default=[128, 256, 512])
  modes.add_argument("--scaling-tokens", type=int, default=2048,
                     help="tokens per step in every --scaling configuration: batch = this / seq")
  modes.add_argument("--peak-tflops", type=float, default=None,
                     help="the GPU's dense bf16 peak, for a device kind not in the table")
  parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the numbers here")
  parser.add_argument("--markdown", type=pathlib.Path, default=None,
                      help="--scaling: also write the table here")
  args = parser.parse_args(argv)

  for name, value in DEFAULTS[args.device].items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.dropout is None:
    args.dropout = 0.0 if args.agreement else 0.1
  if args.agreement:
    # Dropout masks cannot be the same across frameworks, and bf16 rounding would hide a
    # real mismatch: the curves are compared without either.
    if args.dropout != 0 or args.dtype != "float32":
      parser.error("--agreement compares fp32 curves without dropout: drop --dropout and "
                   "--dtype bfloat16")
    args.warmup_steps = 0
  sized = [args.layers, args.hidden, args.heads, args.ffn, args.vocab, args.seq_len,
           args.steps_per_round, args.rounds, args.batches]
  if min(sized + ([args.batch] if args.batch is not None else [])) < 1:
    parser.error("sizes, --batch, --batches, --steps-per-round and --rounds must be >= 1")
  if args.vocab <= len(SPECIAL_IDS) + 1:
    parser.error(f"--vocab must exceed the {len(SPECIAL_IDS)} special ids")
  if args.warmup_steps < 0 or not 0 < args.quiet_share <= 1 or args.agreement < 0:
    parser.error("--warmup-steps and --agreement must be >= 0 and --quiet-share in (0, 1]")
  if args.device == "cpu" and not args.agreement and args.warmup_steps < 1:
    parser.error("--warmup-steps must be >= 1 on cpu: the first warm-up step is the mask check")
  if sum(map(bool, (args.agreement, args.scaling, args.device == "gpu"))) > 1:
    parser.error("--agreement, --scaling and --device gpu are separate modes; pick one")
  if args.scaling and any(args.scaling_tokens % seq for seq in args.scaling_seq_lens):
    parser.error(f"--scaling-tokens {args.scaling_tokens} must be a multiple of every "
                 f"--scaling-seq-lens (batch = tokens / seq)")
  return args


# ---------------------------------------------------------------------------------------------
# Our step, built from the project's own pieces exactly as the trainer builds it.
# ---------------------------------------------------------------------------------------------


def experiment_config():
  """Project defaults with a constant learning rate, so every side uses the same lr every step."""
  config = config_lib.default_config()
  config.optimizer.warmup_steps = 0
  config.optimizer.schedule = "constant"
  return config


def model_config(args) -> EncoderConfig:
  fields = dict(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                num_heads=args.heads, mlp_dim=args.ffn, max_positions=args.seq_len + 2,
                pad_id=PAD_ID, dropout_rate=args.dropout, attention_dropout_rate=args.dropout,
                dtype=args.dtype)
  if args.attention_impl is not None:
    fields["attention_impl"] = args.attention_impl
  return EncoderConfig(**fields)


def stream_batch(args, seed: int) -> dict[str, np.ndarray]:
  """A "mono" batch as stream packing writes it: `<s>` then ordinary ids, one segment, no pad."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(len(SPECIAL_IDS), args.vocab, (args.batch, args.seq_len)).astype(np.int32)
  ids[:, 0] = 0
  positions = np.tile(np.arange(PAD_ID + 1, PAD_ID + 1 + args.seq_len, dtype=np.int32),
                      (args.batch, 1))
  return {"input_ids": ids, "segment_ids": np.ones_like(ids), "position_ids": positions,
          "lang_ids": np.zeros_like(ids)}


def step_masks(bound: dict, name: str, rng, step, batch) -> tuple[MaskedTokens, jax.Array]:
  """(masked tokens, dropout key) that our train step draws at `step` for objective `name`.

  The same keys along the same path as the step itself: make_train_step folds the step into
  state.rng, _objectives_loss folds in the objective's position, masked_lm_loss splits that
  into (mask key, dropout key) and masks with mask_mono_batch. check_masks proves it.
  """
  step_rng = jax.random.fold_in(rng, step)
  objective_rng = jax.random.fold_in(step_rng, list(bound).index(name))
  mask_rng, dropout_rng = jax.random.split(objective_rng)
  ctx = bound[name].context
  return mask_mono_batch(mask_rng, batch["input_ids"], batch, ctx), dropout_rng


def hf_style(masked: MaskedTokens) -> tuple[np.ndarray, np.ndarray]:
  """(input_ids, labels) [B, L] as Hugging Face's masked LM takes them: the corrupted ids, and
  the original id at each predicted position, IGNORE elsewhere (our unused slots included)."""
  ids = np.asarray(masked.input_ids, np.int32)
  positions, labels, weights = (np.asarray(x) for x in masked[1:])
  out = np.full_like(ids, IGNORE)
  rows, slots = np.nonzero(weights > 0)
  out[rows, positions[rows, slots]] = labels[rows, slots]
  return ids, out


def masked_from_hf_style(ids: np.ndarray, labels: np.ndarray, num_slots: int) -> MaskedTokens:
  """The inverse of hf_style: the labelled positions in slots (weight 1), padded to num_slots."""
  batch = ids.shape[0]
  positions = np.zeros((batch, num_slots), np.int32)
  slot_labels = np.zeros((batch, num_slots), np.int32)
  weights = np.zeros((batch, num_slots), np.float32)
  for row in range(batch):
    where = np.nonzero(labels[row] != IGNORE)[0]
    if len(where) > num_slots:
      raise ValueError(f"row {row} has {len(where)} labels, more than the {num_slots} slots")
    positions[row, :len(where)] = where
    slot_labels[row, :len(where)] = labels[row, where]
    weights[row, :len(where)] = 1.0
  return MaskedTokens(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(slot_labels),
                      jnp.asarray(weights))


def memory_stats(compiled) -> dict:
  """The compiled program's own account of its device memory, bytes (None where unknown)."""
  stats = compiled.memory_analysis()
  fields = ("argument", "output", "alias", "temp", "generated_code")
  return {f: (getattr(stats, f"{f}_size_in_bytes", None) if stats is not None else None)
          for f in fields}


@dataclasses.dataclass
class Pieces:
  """Our step's parts, built as xlm_jax/train/trainer.py builds them."""
  config: object
  encoder_config: EncoderConfig
  context: ObjectiveContext
  bound: dict
  mesh: object
  rules: tuple
  jitted: object           # trainer.jit_update_steps' function, not yet compiled
  state: object            # the initial TrainState, or its abstract shapes (initialize=False)


def build_pieces(args, device, initialize: bool = True) -> Pieces:
  config = experiment_config()
  encoder_config = model_config(args)
  model = Model(encoder_config)
  objective = OBJECTIVES.get("mlm")
  context = ObjectiveContext(model=model, config=config.objectives.mlm.to_dict(),
                             vocab_size=args.vocab, mask_id=MASK_ID, pad_id=PAD_ID,
                             special_ids=SPECIAL_IDS, languages=("en",))
  bound = {"mlm": BoundObjective(objective, 1.0, context)}
  tx, schedule = make_optimizer(config.optimizer, total_steps=10_000)
  mesh = mesh_lib.make_mesh(config.mesh, [device])
  rules = mesh_lib.logical_rules(config.mesh)
  state, shardings, abstract = create_train_state(model, tx, {"mlm": objective}, args.seq_len,
                                                  mesh, rules, seed=0, initialize=initialize)
  # The trainer's own jit: donated state, non-finite guard, activation rules (one function for
  # a plain objective group).
  (jitted,) = jit_update_steps(bound, tx, schedule, shardings, mesh, rules=rules)
  return Pieces(config, encoder_config, context, bound, mesh, rules, jitted,
                state if initialize else abstract)


class OurSide:
  """Our state, compiled step and batch pool on one device; `run(n)` times n steps."""
  name = "ours"

  def __init__(self, args, device):
    self.args, self.device = args, device
    pieces = build_pieces(args, device)
    self.config, self.encoder_config = pieces.config, pieces.encoder_config
    self.context, self.bound, self.mesh, self.rules = (pieces.context, pieces.bound, pieces.mesh,
                                                       pieces.rules)
    state = pieces.state
    self.pool = [{"mono": mesh_lib.to_global_batch(stream_batch(args, seed), self.mesh)}
                 for seed in range(args.batches)]
    start = time.perf_counter()
    self.step = pieces.jitted.lower(state, self.pool[0]).compile()
    self.compile_seconds = time.perf_counter() - start
    self.memory = memory_stats(self.step)
    self.state = state
    self.num_params = count_params(state.params)
    # state.rng never changes, but the state is donated at every step: keep a copy.
    self.rng = np.asarray(jax.device_get(state.rng))
    self.next_step = 0  # == state.step, kept on the host
    self.draw = jax.jit(lambda rng, step, batch: step_masks(self.bound, "mlm", rng, step, batch))
    self.losses: list[float] = []

  def batch_at(self, step: int) -> dict:
    return self.pool[step % len(self.pool)]

  def run(self, steps: int) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of this process, loss of each step) of `steps` steps."""
    start, cpu_start = time.perf_counter(), time.process_time()
    losses, metrics = [], None
    for _ in range(steps):
      # As in the trainer: a hidden host<->device copy inside the step would be an error.
      with jax.transfer_guard("disallow"):
        self.state, metrics = self.step(self.state, self.batch_at(self.next_step))
      losses.append(metrics["loss"])
      self.next_step += 1
    jax.block_until_ready(metrics)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    losses = [float(loss) for loss in losses]
    self.losses += losses
    return wall, cpu, losses

  def masks_at(self, step: int) -> tuple[MaskedTokens, jax.Array]:
    return self.draw(self.rng, step, self.batch_at(step)["mono"])

  def peer_arrays(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and labels [count, B, L] (our ids) of our steps first .. first + count - 1."""
    pairs = [hf_style(self.masks_at(step)[0]) for step in range(first, first + count)]
    shape = (count, self.args.batch, self.args.seq_len)
    if not pairs:
      return np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

  def export_hf(self, folder: pathlib.Path) -> pathlib.Path:
    """Our current (initial) parameters as a Hugging Face XLMRobertaForMaskedLM folder."""
    params = mesh_lib.host_copy(self.state.params)
    return hf_export.write_hf_folder(folder, params, self.encoder_config,
                                     synthetic_tokenizer(self.args.vocab))

  def decay_lists(self) -> tuple[list[str], list[str]]:
    """(decayed, not decayed) Hugging Face tensor names: the mask our optimizer applies.

    Ours decays kernels and embedding tables (optimizer.decay_mask); the peers take the mask
    tensor by tensor from ours rather than re-deriving it from Hugging Face's names and ranks.
    """
    mask = optimizer_lib.decay_mask(self.state.params)
    plain = dataclasses.replace(self.encoder_config, vocab_multiple=1, scan_layers=False)
    decay, no_decay = [], []
    for tensor in hf_export._tensors(plain):
      leaf = mask
      for key in tensor.path:
        leaf = leaf[key]
      (decay if leaf else no_decay).append(tensor.hf_name)
    return decay, no_decay


def synthetic_tokenizer(vocab: int):
  """A SentencePiece unigram tokenizer with `vocab` ids in our layout (<s> <pad> </s> <unk>
  <mask>, then pieces), which write_hf_folder needs beside the weights. The benchmark's batches
  are random ids, not text, so the pieces are names only."""
  from sentencepiece import sentencepiece_model_pb2 as spm_pb
  from xlm_jax.data.tokenizer import MASK_PIECE, Tokenizer
  proto = spm_pb.ModelProto()
  kind = spm_pb.ModelProto.SentencePiece
  for piece, piece_kind in zip(("<s>", "<pad>", "</s>", "<unk>", MASK_PIECE),
                               (kind.CONTROL, kind.CONTROL, kind.CONTROL, kind.UNKNOWN,
                                kind.USER_DEFINED)):
    proto.pieces.add(piece=piece, score=0.0, type=piece_kind)
  for i in range(vocab - len(SPECIAL_IDS)):
    proto.pieces.add(piece=f"\u2581t{i}", score=-1.0 - i, type=kind.NORMAL)
  spec = proto.trainer_spec
  spec.model_type = spm_pb.TrainerSpec.UNIGRAM
  spec.vocab_size = vocab
  spec.bos_id, spec.pad_id, spec.eos_id, spec.unk_id = 0, 1, 2, 3
  return Tokenizer.from_bytes(proto.SerializeToString())


def check_masks(ours: OurSide) -> dict:
  """Runs our first step and proves the peers get its masks: its loss, recomputed from the
  (input_ids, labels) arrays a peer receives for that step (our model, the step's parameters
  and dropout key), must equal the loss the real step reports. As a control, the same
  recomputation with the next step's masks on the same batch must differ.
  """
  step = ours.next_step
  batch = ours.batch_at(step)
  _, dropout_rng = ours.masks_at(step)
  num_slots = max_predictions(ours.args.seq_len, ours.context.config["mask_rate"])
  ctx = dataclasses.replace(ours.context, train=True)
  loss_fn = mesh_lib.jit_in_mesh(
      lambda params, masked, batch, rng: mono_masked_loss(params, masked, batch, rng, ctx)[0],
      ours.mesh, ours.rules)

  def recompute(arrays):
    ids, labels = arrays
    return float(loss_fn(ours.state.params, masked_from_hf_style(ids[0], labels[0], num_slots),
                         batch["mono"], dropout_rng))
  recomputed = recompute(ours.peer_arrays(step, 1))
  other, _ = ours.draw(ours.rng, step + 1, batch["mono"])  # the next step's key, same batch
  control = recompute(tuple(a[None] for a in hf_style(other)))
  _, _, (step_loss,) = ours.run(1)  # the real step, after the recomputations: it donates state
  tolerance = CHECK_TOLERANCE[ours.args.dtype]
  rel = abs(recomputed - step_loss) / abs(step_loss)
  control_rel = abs(control - step_loss) / abs(step_loss)
  result = {"step": step, "step_loss": step_loss, "recomputed_loss": recomputed,
            "relative_difference": rel, "control_loss": control,
            "control_relative_difference": control_rel, "tolerance": tolerance,
            "control_distinguishable": control_rel > tolerance}
  if rel > tolerance:
    raise RuntimeError(f"mask check failed at step {step}: our step's loss {step_loss:.7g}, "
                       f"recomputed from the arrays sent to the peers {recomputed:.7g} (relative "
                       f"difference {rel:.2e} > {tolerance:g}); step_masks no longer follows "
                       "the keys of xlm_jax/train/step.py and objectives/mlm_core.py")
  return result


# ---------------------------------------------------------------------------------------------
# The peers: long-lived subprocesses under their own venvs' python.
# ---------------------------------------------------------------------------------------------


def find_peer_python(name: str, path: str) -> str | None:
  """The peer's interpreter, or None (with a message saying how to get one) when unusable."""
  flag, env = PEER_FLAGS[name], PEER_ENV[name]
  if not path:
    print(f"{name} peer: skipped (no {flag} and no ${env}); create one with\n"
          f"  {PEER_INSTALL[name]}\nand pass {flag} <venv>/bin/python", file=sys.stderr)
    return None
  resolved = shutil.which(path)
  if resolved is None:
    print(f"{name} peer: skipped ({path} is not an executable python)", file=sys.stderr)
    return None
  check = subprocess.run([resolved, "-c", PEER_IMPORTS[name]], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if check.returncode != 0:
    print(f"{name} peer: skipped ({resolved} cannot run `{PEER_IMPORTS[name]}`: "
          f"{check.stderr.strip().splitlines()[-1:]}); make the venv with\n  {PEER_INSTALL[name]}",
          file=sys.stderr)
    return None
  return resolved


class PeerSide:
  """Drives torch_peer.py or flax_peer.py over its stdin/stdout."""

  def __init__(self, name: str, python: str, args, spec: dict):
    self.name, self.script = name, PEER_SCRIPTS[name]
    env = dict(os.environ)
    if name == "torch" and args.peer_omp_wait_policy:
      env["OMP_WAIT_POLICY"] = args.peer_omp_wait_policy
    if name == "flax":
      env["JAX_PLATFORMS"] = "cpu"  # the peer's work is on the CPU, as ours is in this mode
    self.process = subprocess.Popen([python, str(self.script), json.dumps(spec)], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.banner = self._read("ready")
    self.info = dict(item.split("=", 1) for item in self.banner.split()[1:] if "=" in item)
    self.peak_rss = int(self.info.get("rss", 0))
    self.steps_path: pathlib.Path | None = None
    self.losses: list[float] = []

  def _read(self, expected: str) -> str:
    line = self.process.stdout.readline()
    if not line.startswith(expected):
      self.close()
      raise RuntimeError(f"{self.name} peer ({self.script}) answered {line.strip()!r} instead "
                         f"of {expected!r}; its traceback is above")
    return line.strip()

  def run(self, steps: int) -> tuple[float, float, list[float]]:
    """(wall seconds, CPU seconds of the peer process, loss of each step) of `steps` peer
    steps on the arrays in self.steps_path (set by the driver before each turn)."""
    self.process.stdin.write(f"run {steps} {self.steps_path}\n")
    self.process.stdin.flush()
    _, wall, cpu, rss, *losses = self._read("elapsed").split()
    if len(losses) != steps:
      raise RuntimeError(f"{self.name} peer reported {len(losses)} losses for {steps} steps")
    self.peak_rss = max(self.peak_rss, int(rss))
    losses = [float(x) for x in losses]
    self.losses += losses
    return float(wall), float(cpu), losses

  def close(self) -> None:
    if self.process.poll() is None:
      try:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
      except BrokenPipeError:
        pass
      self.process.wait(timeout=60)


def peer_spec(args, ours: OurSide, init_from: pathlib.Path | None) -> dict:
  optimizer = ours.config.optimizer
  decay, no_decay = ours.decay_lists()
  return {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn,
          "vocab": args.vocab, "seq_len": args.seq_len, "batch": args.batch,
          "max_positions": args.seq_len + 2, "dropout": args.dropout, "dtype": args.dtype,
          "learning_rate": optimizer.learning_rate, "b1": optimizer.b1, "b2": optimizer.b2,
          "eps": optimizer.eps, "weight_decay": optimizer.weight_decay,
          "clip_norm": optimizer.clip_norm, "mask_rate": ours.context.config["mask_rate"],
          "decay": decay, "no_decay": no_decay, "seed": 0,
          "init_from": str(init_from) if init_from else None,
          "threads": len(os.sched_getaffinity(0))}  # torch threads = cores we may use


class PeerFeed:
  """Writes the arrays of the peers' next steps: our masked ids and labels for the same step
  indices, in Hugging Face's ids (the export puts <mask> last; a peer from config is
  indifferent to the order, so every peer gets the same ids)."""

  def __init__(self, ours: OurSide, folder: pathlib.Path):
    self.ours, self.folder, self.next_step = ours, folder, 0
    # hf_export._vocab_order maps a Hugging Face row to ours; its inverse maps our ids.
    self.to_hf = np.argsort(hf_export._vocab_order(ours.args.vocab, MASK_ID)).astype(np.int32)

  def next(self, count: int) -> pathlib.Path:
    ids, labels = self.ours.peer_arrays(self.next_step, count)
    labels = np.where(labels == IGNORE, IGNORE, self.to_hf[np.maximum(labels, 0)])
    path = self.folder / f"steps_{self.next_step}_{count}.npz"
    np.savez(path, input_ids=self.to_hf[ids], labels=labels.astype(np.int32))
    self.next_step += count
    return path


# ---------------------------------------------------------------------------------------------
# Measurement and report.
# ---------------------------------------------------------------------------------------------


def timed_round(side, steps: int) -> tuple[dict, list[float]]:
  """Runs one side for `steps` steps; per-step wall and CPU seconds, and the share of the
  machine's CPU that *other* processes took meanwhile (what makes a round unrepresentative)."""
  busy, driver_cpu = machine_busy_seconds(), time.process_time()
  wall, cpu, losses = side.run(steps)
  driver_cpu = time.process_time() - driver_cpu
  others = None
  if busy is not None:
    # Our own CPU: the side's process, plus this driver while it waited for a peer.
    own = cpu + driver_cpu if isinstance(side, PeerSide) else cpu
    others = max(0.0, machine_busy_seconds() - busy - own) / (wall * os.cpu_count())
  return {"wall": wall / steps, "cpu": cpu / steps, "others": others}, losses


def summarize(rounds: list[dict], tokens_per_step: int, useful_flops_per_token: float,
              actual_flops_per_token: float) -> dict:
  """Median per-step numbers of one side over all rounds."""
  wall = [r["wall"] for r in rounds]
  median = statistics.median(wall)
  others = [r["others"] for r in rounds if r["others"] is not None]
  return {"median_step_seconds": median, "min_step_seconds": min(wall),
          "max_step_seconds": max(wall),
          "median_cpu_seconds_per_step": statistics.median(r["cpu"] for r in rounds),
          "median_others_cpu_share": statistics.median(others) if others else None,
          "tokens_per_second": tokens_per_step / median,
          "useful_tflops": useful_flops_per_token * tokens_per_step / median / 1e12,
          "actual_tflops": actual_flops_per_token * tokens_per_step / median / 1e12,
          "rounds": rounds}


def compare(ours_rounds: list[dict], peer_rounds: list[dict], quiet_share: float) -> dict:
  """Ratios ours/peer: of median tokens/s, median of per-round ratios, and over quiet rounds."""
  per_round = [p["wall"] / o["wall"] for o, p in zip(ours_rounds, peer_rounds)]
  quiet = [ratio for ratio, o, p in zip(per_round, ours_rounds, peer_rounds)
           if o["others"] is not None and max(o["others"], p["others"]) < quiet_share]
  return {"ratio": (statistics.median(p["wall"] for p in peer_rounds)
                    / statistics.median(o["wall"] for o in ours_rounds)),
          "median_round_ratio": statistics.median(per_round),
          "quiet_rounds": len(quiet), "quiet_share": quiet_share,
          "quiet_round_ratio": statistics.median(quiet) if quiet else None}


def print_table(results: dict) -> None:
  sides = [("ours (jax)", results["ours"])]
  sides += [(f"{name} peer", peer) for name, peer in results["peers"].items()]
  share = lambda s: ("-" if s["median_others_cpu_share"] is None
                     else f"{100 * s['median_others_cpu_share']:.0f}%")
  lines = (("median s/step", lambda s: f"{s['median_step_seconds']:.4f}"),
           ("min..max s/step",
            lambda s: f"{s['min_step_seconds']:.3f}..{s['max_step_seconds']:.3f}"),
           ("CPU s/step", lambda s: f"{s['median_cpu_seconds_per_step']:.3f}"),
           ("other jobs' CPU", share),
           ("tokens/s", lambda s: f"{s['tokens_per_second']:,.0f}"),
           ("useful TFLOP/s", lambda s: f"{s['useful_tflops']:.4f}"),
           ("actual TFLOP/s", lambda s: f"{s['actual_tflops']:.4f}"),
           ("peak RSS MiB", lambda s: f"{s['peak_rss_bytes'] / 2**20:,.0f}"))
  rows = [("",) + tuple(label for label, _ in sides)]
  rows += [(label,) + tuple(show(s) for _, s in sides) for label, show in lines]
  width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  for r in rows:
    print(f"{r[0]:<{width[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], width[1:])))
  memory = results["ours"]["compiled_memory"]
  if memory["temp"] is not None:
    print(f"ours, compiled step: arguments {memory['argument'] / 2**20:,.0f} MiB + temporaries "
          f"{memory['temp'] / 2**20:,.0f} MiB")
  for name, c in results["comparisons"].items():
    quiet = "-" if c["quiet_round_ratio"] is None else f"{c['quiet_round_ratio']:.3f}x"
    print(f"ratio ours/{name}: tokens/s {c['ratio']:.3f}x, median of rounds "
          f"{c['median_round_ratio']:.3f}x, quiet rounds {quiet} ({c['quiet_rounds']} rounds "
          f"where other jobs took < {100 * c['quiet_share']:.0f}% of the CPU)")
  torch_peer = results["peers"].get("torch")
  if (torch_peer and results["comparisons"]["torch"]["quiet_round_ratio"] is None
      and "OMP_WAIT_POLICY=PASSIVE" not in torch_peer["banner"]):
    print("warning: no quiet round. Other jobs make torch's spinning OpenMP threads several "
          "times slower, which inflates its ratio; rerun on a quiet machine, or pass "
          "--peer-omp-wait-policy PASSIVE for a closer estimate")
  if results["peers"]:
    print(f"actual FLOPs/token: ours {results['ours_actual_flops_per_token'] / 1e6:.1f} M, "
          f"peers {results['peer_actual_flops_per_token'] / 1e6:.1f} M "
          f"(useful {results['useful_flops_per_token'] / 1e6:.1f} M)")


def alternate(ours: OurSide, peers: list[PeerSide], feed: PeerFeed | None, rounds: int,
              steps: int) -> tuple[list[dict], dict[str, list[dict]]]:
  """R rounds of (N of our steps, then N steps of each peer on the same step indices)."""
  ours_rounds, peer_rounds = [], {p.name: [] for p in peers}
  def show(record, losses):
    others = "" if record["others"] is None else f", others {100 * record['others']:.0f}%"
    return f"{record['wall']:.3f} s/step (loss {losses[-1]:.3f}{others})"
  for r in range(rounds):
    record, losses = timed_round(ours, steps)
    ours_rounds.append(record)
    line = f"round {r + 1}: ours {show(record, losses)}"
    if peers:
      path = feed.next(steps)  # written before any clock starts
      for peer in peers:
        peer.steps_path = path
        record, losses = timed_round(peer, steps)
        peer_rounds[peer.name].append(record)
        line += (f"; {peer.name} {show(record, losses)}, "
                 f"{record['wall'] / ours_rounds[-1]['wall']:.2f}x")
    print(line, flush=True)
  return ours_rounds, peer_rounds


def start_peers(args, ours: OurSide, init_from: pathlib.Path | None) -> list[PeerSide]:
  peers = []
  try:
    for name in PEERS:
      python = find_peer_python(name, getattr(args, f"{name}_python"))
      if python:
        peers.append(PeerSide(name, python, args, peer_spec(args, ours, init_from)))
  except BaseException:
    for peer in peers:
      peer.close()
    raise
  return peers


def describe(args, ours: OurSide, peers: list[PeerSide]) -> None:
  optimizer = ours.config.optimizer
  print(f"config: layers={args.layers} hidden={args.hidden} heads={args.heads} ffn={args.ffn} "
        f"vocab={args.vocab} seq_len={args.seq_len} batch={args.batch} dtype={args.dtype} "
        f"dropout={args.dropout} params={ours.num_params:,} batches={args.batches}")
  print(f"optimizer: AdamW lr={optimizer.learning_rate} (constant) b1={optimizer.b1} "
        f"b2={optimizer.b2} eps={optimizer.eps} weight_decay={optimizer.weight_decay} "
        f"clip_norm={optimizer.clip_norm}")
  print(f"ours: jax {jax.__version__} on {ours.device.device_kind} x1, "
        f"compile {ours.compile_seconds:.1f} s")
  for peer in peers:
    print(f"{peer.name} peer: {peer.banner[len('ready '):]}")


def print_mask_check(check: dict) -> None:
  control = ("" if check["control_distinguishable"]
             else " (not distinguishable at this precision)")
  print(f"mask check, step {check['step']}: our step's loss {check['step_loss']:.7g}, "
        f"recomputed from the arrays the peers get {check['recomputed_loss']:.7g} (relative "
        f"difference {check['relative_difference']:.1e}); with the next step's masks "
        f"{check['control_loss']:.7g} ({check['control_relative_difference']:.1e}){control}",
        flush=True)


def cpu_results(args, ours: OurSide, peers: list[PeerSide], ours_rounds, peer_rounds,
                mask_check: dict, load: dict) -> dict:
  tokens_per_step = args.batch * args.seq_len
  mask_rate = ours.context.config["mask_rate"]
  # Useful work, the same numerator for every side: the encoder on every token, the head on 15%.
  useful = flops_per_token(ours.encoder_config, args.seq_len, mask_rate)
  # Ours actually runs the head on every (static) prediction slot, unused ones included.
  ours_actual = flops_per_token(ours.encoder_config, args.seq_len,
                                max_predictions(args.seq_len, mask_rate) / args.seq_len)
  results = {"config": config_record(args), "tokens_per_step": tokens_per_step,
             "useful_flops_per_token": useful, "ours_actual_flops_per_token": ours_actual,
             "load_average": load, "mask_check": mask_check,
             "ours": summarize(ours_rounds, tokens_per_step, useful, ours_actual),
             "peers": {}, "comparisons": {}}
  results["ours"].update(compiled_memory=ours.memory, peak_rss_bytes=peak_rss_bytes(),
                         losses=ours.losses, compile_seconds=ours.compile_seconds)
  # The peers' head (dense + full-vocabulary decoder) runs on every position.
  results["peer_actual_flops_per_token"] = flops_per_token(ours.encoder_config, args.seq_len, 1.0)
  for peer in peers:
    summary = summarize(peer_rounds[peer.name], tokens_per_step, useful,
                        results["peer_actual_flops_per_token"])
    summary.update(banner=peer.banner, info=peer.info, peak_rss_bytes=peer.peak_rss,
                   losses=peer.losses)
    results["peers"][peer.name] = summary
    results["comparisons"][peer.name] = compare(ours_rounds, peer_rounds[peer.name],
                                                args.quiet_share)
  return results


def config_record(args) -> dict:
  skip = {"json", "markdown", "torch_python", "flax_python"}
  return {k: v for k, v in vars(args).items() if k not in skip}


def run_timing(args) -> dict:
  ours = OurSide(args, jax.devices("cpu")[0])
  peers = start_peers(args, ours, None)  # they build, then idle while we warm up
  try:
    with tempfile.TemporaryDirectory(prefix="train_step_") as folder:
      feed = PeerFeed(ours, pathlib.Path(folder))
      describe(args, ours, peers)
      mask_check = check_masks(ours)  # our first warm-up step
      print_mask_check(mask_check)
      ours.run(args.warmup_steps - 1)
      if peers:
        path = feed.next(args.warmup_steps)  # the same steps 0 .. W-1, untimed
        for peer in peers:
          peer.steps_path = path
          peer.run(args.warmup_steps)
      ours.losses, load_before = [], os.getloadavg()[0]
      for peer in peers:
        peer.losses = []
      # Other jobs slow every side, and not equally (see README): say how busy the machine was.
      print(f"{args.rounds} rounds x {args.steps_per_round} steps each side, after "
            f"{args.warmup_steps} warm-up steps; load average {load_before:.2f} on "
            f"{os.cpu_count()} cores", flush=True)
      ours_rounds, peer_rounds = alternate(ours, peers, feed, args.rounds, args.steps_per_round)
      load_after = os.getloadavg()[0]
  finally:
    for peer in peers:
      peer.close()
  results = cpu_results(args, ours, peers, ours_rounds, peer_rounds, mask_check,
                        {"before": load_before, "after": load_after})
  print(f"\nload average after: {load_after:.2f}")
  print_table(results)
  return results


# ---------------------------------------------------------------------------------------------
# --agreement: the same initial parameters, batches and masks; the loss curves side by side.
# ---------------------------------------------------------------------------------------------


def run_agreement(args) -> dict:
  """K steps on every side from our initial parameters (dropout 0, fp32, same AdamW, clipping,
  decay mask and lr); the curves should agree to ~1e-3 relative early on, then drift apart as
  float rounding differences grow through the training dynamics."""
  if not any(getattr(args, f"{name}_python") for name in PEERS):
    raise SystemExit("train_step.py --agreement compares against a peer: pass --peer-python "
                     "and/or --flax-peer-python")
  ours = OurSide(args, jax.devices("cpu")[0])
  with tempfile.TemporaryDirectory(prefix="train_step_agreement_") as folder:
    folder = pathlib.Path(folder)
    hf_folder = ours.export_hf(folder / "hf")  # before our first step donates the parameters
    peers = start_peers(args, ours, hf_folder)
    if not peers:
      raise SystemExit("train_step.py --agreement: no peer could start (see above)")
    try:
      describe(args, ours, peers)
      mask_check = check_masks(ours)  # step 0 of our curve
      print_mask_check(mask_check)
      ours.run(args.agreement - 1)
      path = PeerFeed(ours, folder).next(args.agreement)
      for peer in peers:
        peer.steps_path = path
        peer.run(args.agreement)
    finally:
      for peer in peers:
        peer.close()
  curves = {"ours": ours.losses, **{p.name: p.losses for p in peers}}
  early = min(AGREEMENT_EARLY_STEPS, args.agreement)
  summary = {}
  header = f"{'step':>4}  {'ours':>10}" + "".join(f"  {p.name:>10}  {'|diff|':>9}" for p in peers)
  print("\n" + header)
  for step in range(args.agreement):
    line = f"{step:>4}  {curves['ours'][step]:>10.6f}"
    for p in peers:
      line += f"  {p.losses[step]:>10.6f}  {abs(p.losses[step] - curves['ours'][step]):>9.2e}"
    print(line)
  ok = True
  for p in peers:
    abs_diff = [abs(a - b) for a, b in zip(curves["ours"], p.losses)]
    rel_diff = [d / abs(a) for d, a in zip(abs_diff, curves["ours"])]
    summary[p.name] = {"max_abs_diff": max(abs_diff), "max_rel_diff": max(rel_diff),
                       "early_max_rel_diff": max(rel_diff[:early]),
                       "first": (curves["ours"][0], p.losses[0]),
                       "last": (curves["ours"][-1], p.losses[-1])}
    agree = summary[p.name]["early_max_rel_diff"] <= args.agreement_tolerance
    ok &= agree
    print(f"ours vs {p.name}: first {curves['ours'][0]:.6f} / {p.losses[0]:.6f}, last "
          f"{curves['ours'][-1]:.6f} / {p.losses[-1]:.6f}; max |diff| {max(abs_diff):.2e}, max "
          f"relative {max(rel_diff):.2e}, over the first {early} steps {max(rel_diff[:early]):.2e}"
          f" ({'agree' if agree else 'DISAGREE'} at {args.agreement_tolerance:g})")
  return {"config": config_record(args), "mask_check": mask_check,
          "peers": {p.name: p.banner for p in peers},
          "agreement": {"steps": args.agreement, "curves": curves, "summary": summary,
                        "early_steps": early, "tolerance": args.agreement_tolerance,
                        "agree": ok}}


# ---------------------------------------------------------------------------------------------
# --scaling: one child run of this script per (model size, sequence length).
# ---------------------------------------------------------------------------------------------


def parse_model(text: str) -> dict:
  match = re.fullmatch(r"(\d+)x(\d+)x(\d+)x(\d+)", text)
  if not match:
    raise SystemExit(f"train_step.py: --scaling-models {text!r} is not LAYERSxHIDDENxHEADSxFFN "
                     "(e.g. 12x768x12x3072)")
  return dict(zip(("layers", "hidden", "heads", "ffn"), map(int, match.groups())))


def run_scaling(args) -> dict:
  """Each configuration runs in a fresh child process, so each peak RSS is that configuration's
  own (ru_maxrss never goes down within a process); the peers are fresh processes anyway."""
  rows = []
  with tempfile.TemporaryDirectory(prefix="train_step_scaling_") as folder:
    for model in map(parse_model, args.scaling_models):
      for seq_len in args.scaling_seq_lens:
        batch = args.scaling_tokens // seq_len
        out = pathlib.Path(folder) / f"{len(rows)}.json"
        command = [sys.executable, __file__, "--device", "cpu", "--vocab", str(args.vocab),
                   "--seq-len", str(seq_len), "--batch", str(batch), "--dtype", args.dtype,
                   "--dropout", str(args.dropout), "--batches", str(args.batches),
                   "--rounds", str(args.rounds), "--steps-per-round", str(args.steps_per_round),
                   "--warmup-steps", str(args.warmup_steps), "--quiet-share",
                   str(args.quiet_share), "--json", str(out)]
        for key, value in model.items():
          command += [f"--{key}", str(value)]
        for name in PEERS:
          command += [PEER_FLAGS[name], getattr(args, f"{name}_python")]
        if args.peer_omp_wait_policy:
          command += ["--peer-omp-wait-policy", args.peer_omp_wait_policy]
        if args.attention_impl:
          command += ["--attention-impl", args.attention_impl]
        label = f"{model['layers']}L/{model['hidden']} seq {seq_len} batch {batch}"
        print(f"\n=== scaling: {label} ===", flush=True)
        subprocess.run(command, check=True)
        child = json.loads(out.read_text())
        row = {**model, "vocab": args.vocab, "seq_len": seq_len, "batch": batch,
               "ours": {"tokens_per_second": child["ours"]["tokens_per_second"],
                        "compiled_bytes": child["ours"]["compiled_memory"],
                        "peak_rss_bytes": child["ours"]["peak_rss_bytes"]},
               "peers": {name: {"tokens_per_second": peer["tokens_per_second"],
                                "peak_rss_bytes": peer["peak_rss_bytes"],
                                "compiled_bytes": int(peer["info"].get("compiled_bytes", -1))}
                         for name, peer in child["peers"].items()},
               "ratios": {name: c["ratio"] for name, c in child["comparisons"].items()},
               "quiet_ratios": {name: c["quiet_round_ratio"]
                                for name, c in child["comparisons"].items()}}
        rows.append(row)
  table = scaling_table(rows)
  print("\n" + table)
  if args.markdown:
    args.markdown.write_text(table + "\n")
  return {"config": config_record(args), "rows": rows, "markdown": table}


def scaling_table(rows: list[dict]) -> str:
  """Markdown: one row per configuration, tokens/s and memory of every side."""
  names = sorted({name for row in rows for name in row["peers"]}, key=PEERS.index)
  mib = lambda b: "-" if b is None or b < 0 else f"{b / 2**20:,.0f}"
  head = ["model", "seq x batch", "ours tok/s"]
  head += [f"{n} tok/s" for n in names] + [f"ours/{n}" for n in names]
  head += ["ours step MiB", "ours RSS MiB"] + [f"{n} RSS MiB" for n in names]
  if "flax" in names:
    head.append("flax step MiB")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    memory = row["ours"]["compiled_bytes"]
    step_bytes = (None if memory["temp"] is None else memory["argument"] + memory["temp"])
    cells = [f"{row['layers']}L/{row['hidden']}/{row['heads']}h/{row['ffn']} V{row['vocab']}",
             f"{row['seq_len']} x {row['batch']}", f"{row['ours']['tokens_per_second']:,.0f}"]
    cells += [f"{row['peers'][n]['tokens_per_second']:,.0f}" if n in row["peers"] else "-"
              for n in names]
    cells += [f"{row['ratios'][n]:.2f}x" if n in row["ratios"] else "-" for n in names]
    cells += [mib(step_bytes), mib(row["ours"]["peak_rss_bytes"])]
    cells += [mib(row["peers"][n]["peak_rss_bytes"]) if n in row["peers"] else "-"
              for n in names]
    if "flax" in names:
      cells.append(mib(row["peers"]["flax"]["compiled_bytes"]) if "flax" in row["peers"] else "-")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --device gpu: our step alone, bf16, and its MFU.
# ---------------------------------------------------------------------------------------------


def gpu_peak_tflops(device_kind: str, override: float | None) -> tuple[str, float]:
  if override is not None:
    return f"--peak-tflops for {device_kind}", override
  for pattern, name, tflops in GPU_PEAKS:
    if re.search(pattern, device_kind.lower()):
      return name, tflops
  known = ", ".join(f"{name} {tflops:g}" for _, name, tflops in GPU_PEAKS)
  raise SystemExit(f"train_step.py: no dense bf16 peak known for GPU {device_kind!r} (known: "
                   f"{known} TFLOP/s); pass --peak-tflops from its data sheet")


def fit_batch(args, device) -> int:
  """The largest batch (a multiple of 8) whose compiled step fits in the GPU's memory.

  One compile at batch 8, from abstract shapes (nothing allocated): the arguments (state and
  batch) are fixed and the temporaries grow with the batch. temp / 8 bounds the per-sequence
  cost from above (it also holds the batch-independent gradient buffers), so the estimate errs
  on the small side; run_gpu checks the real compile against the limit again.
  """
  limit = (device.memory_stats() or {}).get("bytes_limit")
  if not limit:
    print("gpu: the device reports no memory limit; batch 32 (override with --batch)")
    return 32
  probe = argparse.Namespace(**{**vars(args), "batch": 8, "batches": 1})
  memory = compiled_memory(probe, device)
  fixed = memory["argument"] + memory["output"] - memory["alias"]
  per_sequence = memory["temp"] / 8
  batch = int((0.9 * limit - fixed) // per_sequence) // 8 * 8
  print(f"gpu: batch 8 compiles to {fixed / 2**30:.2f} GiB of state and batch + "
        f"{memory['temp'] / 2**30:.2f} GiB of temporaries; 90% of the device's "
        f"{limit / 2**30:.1f} GiB fits batch {max(batch, 8)}", flush=True)
  return max(batch, 8)


def compiled_memory(args, device) -> dict:
  """memory_stats of our step compiled for `args` on `device`, from abstract shapes only."""
  pieces = build_pieces(args, device, initialize=False)
  sharding = mesh_lib.batch_sharding(pieces.mesh)
  batch = {"mono": {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
                    for k, v in stream_batch(args, 0).items()}}
  return memory_stats(pieces.jitted.lower(pieces.state, batch).compile())


def run_gpu(args) -> dict:
  try:
    device = jax.devices("gpu")[0]
  except RuntimeError as err:
    platforms = os.environ.get("JAX_PLATFORMS")
    hint = f" (JAX_PLATFORMS={platforms})" if platforms else ""
    raise SystemExit(f"train_step.py --device gpu: no GPU is visible to JAX{hint}: "
                     f"{str(err).splitlines()[0]}")
  name, peak = gpu_peak_tflops(device.device_kind, args.peak_tflops)
  if args.batch is None:
    args.batch = fit_batch(args, device)
  ours = OurSide(args, device)
  limit = (device.memory_stats() or {}).get("bytes_limit")
  memory = ours.memory
  if limit and memory["temp"] is not None and memory["argument"] + memory["temp"] > limit:
    raise SystemExit(f"train_step.py --device gpu: batch {args.batch} needs "
                     f"{(memory['argument'] + memory['temp']) / 2**30:.1f} GiB, the GPU has "
                     f"{limit / 2**30:.1f} GiB; pass a smaller --batch")
  print(f"config: layers={args.layers} hidden={args.hidden} heads={args.heads} ffn={args.ffn} "
        f"vocab={args.vocab} seq_len={args.seq_len} batch={args.batch} dtype={args.dtype} "
        f"dropout={args.dropout} params={ours.num_params:,} attention_impl="
        f"{getattr(ours.encoder_config, 'attention_impl', '-')}")
  print(f"ours: jax {jax.__version__} on {device.device_kind} ({name}, dense bf16 peak "
        f"{peak:g} TFLOP/s), compile {ours.compile_seconds:.1f} s, step memory arguments "
        f"{memory['argument'] / 2**30:.2f} GiB + temporaries {memory['temp'] / 2**30:.2f} GiB"
        + (f" of {limit / 2**30:.1f} GiB" if limit else ""), flush=True)
  ours.run(args.warmup_steps)
  first = ours.next_step
  ours.losses = []
  rounds = []
  for r in range(args.rounds):
    wall, _, losses = ours.run(args.steps_per_round)
    rounds.append(wall / args.steps_per_round)
    print(f"round {r + 1}: {rounds[-1] * 1e3:.1f} ms/step (loss {losses[-1]:.3f})", flush=True)
  # The real share of positions with a prediction in the timed steps (15% of the 511 tokens
  # after <s>, rounded per row): only those positions' logits are useful work.
  predicted = sum(float(jnp.sum(ours.masks_at(s)[0].weights))
                  for s in range(first, ours.next_step))
  tokens_per_step = args.batch * args.seq_len
  fraction = predicted / (tokens_per_step * (ours.next_step - first))
  useful = flops_per_token(ours.encoder_config, args.seq_len, fraction)
  executed = flops_per_token(ours.encoder_config, args.seq_len,
                             max_predictions(args.seq_len, ours.context.config["mask_rate"])
                             / args.seq_len)
  median = statistics.median(rounds)
  tokens_per_second = tokens_per_step / median
  mfu = useful * tokens_per_second / (peak * 1e12)
  print(f"\nmedian {median * 1e3:.1f} ms/step, {tokens_per_second:,.0f} tokens/s; predicted "
        f"share {fraction:.4f}; useful {useful / 1e9:.3f} GFLOP/token "
        f"-> {useful * tokens_per_second / 1e12:.1f} TFLOP/s")
  print(f"MFU {100 * mfu:.1f}% of {peak:g} TFLOP/s ({name}); counting the unused prediction "
        f"slots too (executed work): {100 * executed * tokens_per_second / (peak * 1e12):.1f}%")
  return {"config": config_record(args), "device_kind": device.device_kind, "peak_name": name,
          "peak_tflops": peak, "compile_seconds": ours.compile_seconds,
          "compiled_memory": memory, "bytes_limit": limit, "step_seconds": rounds,
          "median_step_seconds": median, "tokens_per_second": tokens_per_second,
          "predicted_fraction": fraction, "useful_flops_per_token": useful,
          "executed_flops_per_token": executed, "mfu": mfu,
          "executed_utilisation": executed * tokens_per_second / (peak * 1e12),
          "losses": ours.losses}


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.device == "gpu":
    results = run_gpu(args)
  elif args.agreement:
    results = run_agreement(args)
  elif args.scaling:
    results = run_scaling(args)
  else:
    results = run_timing(args)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
