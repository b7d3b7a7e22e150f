"""Speed of our MLM train step against Hugging Face's PyTorch `XLMRobertaForMaskedLM`, same config.

    python benchmarks/train_step.py --peer-python /work/peer_venv/bin/python \
      --layers 6 --hidden 512 --heads 8 --ffn 2048 --vocab 32000 --seq-len 128 --batch 16 \
      --steps-per-round 1 --rounds 12 --json /tmp/train_step.json

One run, two processes that take turns: the peer (benchmarks/torch_peer.py, under the peer venv's
python) builds its model once and waits on stdin; the driver times N of our steps, then asks the
peer for N of its steps, R times over, so both see the same machine conditions and never compute
at the same time. Both train in fp32 with dropout 0.1, AdamW with the same lr/betas/eps/weight
decay (none on biases and LayerNorms) and global-norm clipping at 1.0.

Ours is the real train step: masking on device, gather of the masked positions before the
vocabulary projection, donated state, jitted as xlm_jax/train/trainer.py does. Useful TFLOP/s
count the same analytic work for both (`flops_per_token` with 15% predictions); the peer also
runs the head on every position, which is reported separately as its actual FLOPs.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

from machine_load import machine_busy_seconds  # benchmarks/ is on sys.path[0]

from xlm_jax import config as config_lib
from xlm_jax.models.encoder import EncoderConfig, Model, count_params, flops_per_token
from xlm_jax.objectives.base import ObjectiveContext
from xlm_jax.objectives.masking import max_predictions
from xlm_jax.registry import OBJECTIVES
from xlm_jax import mesh as mesh_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train.step import BoundObjective, make_train_step

PEER_SCRIPT = pathlib.Path(__file__).with_name("torch_peer.py")
SPECIAL_IDS = (0, 1, 2, 3, 4)  # <s> <pad> </s> <unk> <mask>
MASK_ID, PAD_ID = 4, 1


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--layers", type=int, default=6)
  parser.add_argument("--hidden", type=int, default=512)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--ffn", type=int, default=2048)
  parser.add_argument("--vocab", type=int, default=32000)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="activation/matmul dtype; parameters and optimizer stay float32")
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument("--steps-per-round", type=int, default=1)
  parser.add_argument("--rounds", type=int, default=12)
  parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps on each side")
  parser.add_argument("--peer-python", default=os.environ.get("XLM_JAX_PEER_PYTHON", ""),
                      help="python of a venv with torch and transformers (default: "
                           "$XLM_JAX_PEER_PYTHON); without it only our step is timed")
  parser.add_argument("--peer-omp-wait-policy", default="",
                      help="OMP_WAIT_POLICY of the peer (default: inherit). Torch's OpenMP "
                           "threads spin at barriers, which makes it several times slower on a "
                           "busy machine; PASSIVE avoids that but costs ~5-8%% on a quiet one")
  parser.add_argument("--quiet-share", type=float, default=0.1,
                      help="a round is quiet when other processes took less than this share of "
                           "the machine's CPU during both of its halves")
  parser.add_argument("--json", type=pathlib.Path, default=None, help="also write the numbers here")
  args = parser.parse_args(argv)
  if min(args.layers, args.hidden, args.heads, args.ffn, args.vocab, args.seq_len, args.batch,
         args.steps_per_round, args.rounds) < 1:
    parser.error("sizes, --steps-per-round and --rounds must be >= 1")
  if args.warmup_steps < 0 or not 0 < args.quiet_share <= 1:
    parser.error("--warmup-steps must be >= 0 and --quiet-share in (0, 1]")
  return args


# ---------------------------------------------------------------------------------------------
# Our step, built from the project's own pieces exactly as the trainer builds it.
# ---------------------------------------------------------------------------------------------


def experiment_config():
  """Project defaults with a constant learning rate, so both sides use the same lr every step."""
  config = config_lib.default_config()
  config.optimizer.warmup_steps = 0
  config.optimizer.schedule = "constant"
  return config


def model_config(args) -> EncoderConfig:
  return EncoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                       num_heads=args.heads, mlp_dim=args.ffn, max_positions=args.seq_len + 2,
                       pad_id=PAD_ID, dropout_rate=args.dropout,
                       attention_dropout_rate=args.dropout, dtype=args.dtype)


def stream_batch(args, seed: int = 0) -> dict[str, np.ndarray]:
  """A "mono" batch as stream packing writes it: `<s>` then ordinary ids, one segment, no pad."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(len(SPECIAL_IDS), args.vocab, (args.batch, args.seq_len)).astype(np.int32)
  ids[:, 0] = 0
  positions = np.tile(np.arange(PAD_ID + 1, PAD_ID + 1 + args.seq_len, dtype=np.int32),
                      (args.batch, 1))
  return {"input_ids": ids, "segment_ids": np.ones_like(ids), "position_ids": positions,
          "lang_ids": np.zeros_like(ids)}


def build_our_step(args):
  """(jitted step, state, device batch, EncoderConfig, experiment config) on one CPU device."""
  config = experiment_config()
  encoder_config = model_config(args)
  model = Model(encoder_config)
  objective = OBJECTIVES.get("mlm")
  context = ObjectiveContext(model=model, config=config.objectives.mlm.to_dict(),
                             vocab_size=args.vocab, mask_id=MASK_ID, pad_id=PAD_ID,
                             special_ids=SPECIAL_IDS, languages=("en",))
  bound = {"mlm": BoundObjective(objective, 1.0, context)}
  tx, schedule = make_optimizer(config.optimizer, total_steps=10_000)
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  state, shardings, _ = create_train_state(model, tx, {"mlm": objective}, args.seq_len, mesh,
                                           mesh_lib.logical_rules(config.mesh), seed=0)
  step = jax.jit(make_train_step(bound, tx, schedule, grad_accum_steps=1), donate_argnums=0,
                 in_shardings=(shardings, {"mono": mesh_lib.batch_sharding(mesh)}),
                 out_shardings=(shardings, mesh_lib.replicated(mesh)))
  batches = {"mono": mesh_lib.to_global_batch(stream_batch(args), mesh)}
  return step, state, batches, encoder_config, config


class OurSide:
  """Holds our state between rounds; `run(n)` times n steps."""

  def __init__(self, args):
    self.step, self.state, self.batches, self.encoder_config, self.config = build_our_step(args)
    start = time.perf_counter()
    self.step = self.step.lower(self.state, self.batches).compile()
    self.compile_seconds = time.perf_counter() - start
    self.num_params = count_params(self.state.params)
    self.run(args.warmup_steps)

  def run(self, steps: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, last loss) of `steps` train steps."""
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = None
    for _ in range(steps):
      # As in the trainer: a hidden host<->device copy inside the step would be an error.
      with jax.transfer_guard("disallow"):
        self.state, metrics = self.step(self.state, self.batches)
    jax.block_until_ready(metrics)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return wall, cpu, float(metrics["loss"]) if metrics else float("nan")


# ---------------------------------------------------------------------------------------------
# The peer: a long-lived subprocess under the peer venv's python.
# ---------------------------------------------------------------------------------------------


def find_peer_python(path: str) -> str | None:
  """The peer interpreter, or None (with a message saying how to get one) when unusable."""
  if not path:
    print("peer: skipped (no --peer-python and no $XLM_JAX_PEER_PYTHON); create one with\n"
          "  python3 -m venv peer && peer/bin/pip install torch==2.13.0 'transformers>=5,<6'\n"
          "and pass --peer-python peer/bin/python", file=sys.stderr)
    return None
  resolved = shutil.which(path)
  if resolved is None:
    print(f"peer: skipped ({path} is not an executable python)", file=sys.stderr)
    return None
  check = subprocess.run([resolved, "-c", "import torch, transformers"], capture_output=True,
                         text=True)
  if check.returncode != 0:
    print(f"peer: skipped ({resolved} cannot import torch and transformers: "
          f"{check.stderr.strip().splitlines()[-1:]}); install them with "
          f"`{resolved} -m pip install torch==2.13.0 'transformers>=5,<6'`", file=sys.stderr)
    return None
  return resolved


class PeerSide:
  """Drives benchmarks/torch_peer.py over its stdin/stdout."""

  def __init__(self, python: str, args, optimizer_cfg, mask_rate: float):
    spec = {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "ffn": args.ffn,
            "vocab": args.vocab, "seq_len": args.seq_len, "batch": args.batch,
            "max_positions": args.seq_len + 2, "dropout": args.dropout, "dtype": args.dtype,
            "learning_rate": optimizer_cfg.learning_rate, "b1": optimizer_cfg.b1,
            "b2": optimizer_cfg.b2, "eps": optimizer_cfg.eps,
            "weight_decay": optimizer_cfg.weight_decay, "clip_norm": optimizer_cfg.clip_norm,
            "mask_rate": mask_rate, "warmup_steps": args.warmup_steps, "seed": 0,
            "threads": len(os.sched_getaffinity(0))}  # torch threads = cores we may use
    env = dict(os.environ)
    if args.peer_omp_wait_policy:
      env["OMP_WAIT_POLICY"] = args.peer_omp_wait_policy
    self.process = subprocess.Popen([python, str(PEER_SCRIPT), json.dumps(spec)], env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.banner = self._read("ready")

  def _read(self, expected: str) -> str:
    line = self.process.stdout.readline()
    if not line.startswith(expected):
      self.close()
      raise RuntimeError(f"peer ({PEER_SCRIPT}) answered {line!r} instead of {expected!r}; "
                         "its traceback is above")
    return line.strip()

  def run(self, steps: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of the peer process, last loss) of `steps` peer steps."""
    self.process.stdin.write(f"run {steps}\n")
    self.process.stdin.flush()
    _, wall, cpu, loss = self._read("elapsed").split()
    return float(wall), float(cpu), float(loss)

  def close(self) -> None:
    if self.process.poll() is None:
      try:
        self.process.stdin.write("quit\n")
        self.process.stdin.close()
      except BrokenPipeError:
        pass
      self.process.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# Measurement and report.
# ---------------------------------------------------------------------------------------------


def timed_round(side, steps: int) -> tuple[dict, float]:
  """Runs one side for `steps` steps; per-step wall and CPU seconds, and the share of the
  machine's CPU that *other* processes took meanwhile (what makes a round unrepresentative)."""
  busy, driver_cpu = machine_busy_seconds(), time.process_time()
  wall, cpu, loss = side.run(steps)
  driver_cpu = time.process_time() - driver_cpu
  others = None
  if busy is not None:
    # Our own CPU: the side's process, plus this driver while it waited for the peer.
    own = cpu + driver_cpu if isinstance(side, PeerSide) else cpu
    others = max(0.0, machine_busy_seconds() - busy - own) / (wall * os.cpu_count())
  return {"wall": wall / steps, "cpu": cpu / steps, "others": others}, loss


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
  ours, peer = results["ours"], results.get("peer")
  share = lambda s: ("-" if s["median_others_cpu_share"] is None
                     else f"{100 * s['median_others_cpu_share']:.0f}%")
  lines = (("median s/step", lambda s: f"{s['median_step_seconds']:.4f}"),
           ("min..max s/step",
            lambda s: f"{s['min_step_seconds']:.3f}..{s['max_step_seconds']:.3f}"),
           ("CPU s/step", lambda s: f"{s['median_cpu_seconds_per_step']:.3f}"),
           ("other jobs' CPU", share),
           ("tokens/s", lambda s: f"{s['tokens_per_second']:,.0f}"),
           ("useful TFLOP/s", lambda s: f"{s['useful_tflops']:.4f}"),
           ("actual TFLOP/s", lambda s: f"{s['actual_tflops']:.4f}"))
  rows = [("", "ours (jax)", "peer (torch)")]
  rows += [(label, show(ours), show(peer) if peer else "-") for label, show in lines]
  width = [max(len(r[i]) for r in rows) for i in range(3)]
  for r in rows:
    print(f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}")
  if peer:
    c = results["comparison"]
    print(f"ratio ours/peer, tokens/s:          {c['ratio']:.3f}x")
    print(f"ratio ours/peer, median of rounds:  {c['median_round_ratio']:.3f}x")
    quiet = "-" if c["quiet_round_ratio"] is None else f"{c['quiet_round_ratio']:.3f}x"
    print(f"ratio ours/peer, quiet rounds:      {quiet} ({c['quiet_rounds']} rounds where other "
          f"jobs took < {100 * c['quiet_share']:.0f}% of the CPU on both sides)")
    if c["quiet_round_ratio"] is None and "OMP_WAIT_POLICY=PASSIVE" not in peer["banner"]:
      print("warning: no quiet round. Other jobs make torch's spinning OpenMP threads several "
            "times slower, which inflates the ratio; rerun on a quiet machine, or pass "
            "--peer-omp-wait-policy PASSIVE for a closer estimate")
    print(f"actual FLOPs/token: ours {results['ours_actual_flops_per_token'] / 1e6:.1f} M, "
          f"peer {results['peer_actual_flops_per_token'] / 1e6:.1f} M "
          f"(useful {results['useful_flops_per_token'] / 1e6:.1f} M)")


def alternate(ours: OurSide, peer: PeerSide | None, rounds: int, steps: int):
  """R rounds of (N of our steps, then N peer steps); per-step records of each side."""
  ours_rounds, peer_rounds = [], []
  def show(record, loss):
    others = "" if record["others"] is None else f", others {100 * record['others']:.0f}%"
    return f"{record['wall']:.3f} s/step (loss {loss:.3f}{others})"
  for r in range(rounds):
    record, loss = timed_round(ours, steps)
    ours_rounds.append(record)
    line = f"round {r + 1}: ours {show(record, loss)}"
    if peer:
      record, loss = timed_round(peer, steps)
      peer_rounds.append(record)
      line += f", peer {show(record, loss)}, ratio {record['wall'] / ours_rounds[-1]['wall']:.2f}x"
    print(line, flush=True)
  return ours_rounds, peer_rounds


def main(argv=None) -> int:
  args = parse_args(argv)
  config = experiment_config()
  mask_rate = config.objectives.mlm.mask_rate
  peer_python = find_peer_python(args.peer_python)
  # The peer starts first and then idles on stdin while we compile: never two computing at once.
  peer = PeerSide(peer_python, args, config.optimizer, mask_rate) if peer_python else None
  try:
    ours = OurSide(args)
    print(f"config: layers={args.layers} hidden={args.hidden} heads={args.heads} ffn={args.ffn} "
          f"vocab={args.vocab} seq_len={args.seq_len} batch={args.batch} dtype={args.dtype} "
          f"dropout={args.dropout} params={ours.num_params:,}")
    print(f"optimizer: AdamW lr={config.optimizer.learning_rate} b1={config.optimizer.b1} "
          f"b2={config.optimizer.b2} eps={config.optimizer.eps} "
          f"weight_decay={config.optimizer.weight_decay} clip_norm={config.optimizer.clip_norm}")
    print(f"ours: jax {jax.__version__} on {jax.devices()[0].device_kind} x1, "
          f"compile {ours.compile_seconds:.1f} s")
    if peer:
      print(f"peer: {peer.banner}")
    # Other jobs slow both sides, and not equally (see README): say how busy the machine was.
    load_before = os.getloadavg()[0]
    print(f"{args.rounds} rounds x {args.steps_per_round} steps each side, after "
          f"{args.warmup_steps} warm-up steps; load average {load_before:.2f} on "
          f"{os.cpu_count()} cores", flush=True)
    ours_rounds, peer_rounds = alternate(ours, peer, args.rounds, args.steps_per_round)
    load_after = os.getloadavg()[0]
  finally:
    if peer:
      peer.close()

  tokens_per_step = args.batch * args.seq_len
  # Useful work, the same numerator for both: the encoder on every token, the head on 15%.
  useful = flops_per_token(ours.encoder_config, args.seq_len, mask_rate)
  # Ours actually runs the head on every (static) prediction slot, unused ones included.
  ours_actual = flops_per_token(ours.encoder_config, args.seq_len,
                                max_predictions(args.seq_len, mask_rate) / args.seq_len)
  results = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "peer_python")},
             "tokens_per_step": tokens_per_step, "useful_flops_per_token": useful,
             "ours_actual_flops_per_token": ours_actual,
             "load_average": {"before": load_before, "after": load_after},
             "ours": summarize(ours_rounds, tokens_per_step, useful, ours_actual)}
  if peer:
    # The peer's head (dense + full-vocabulary decoder) runs on every position.
    results["peer_actual_flops_per_token"] = flops_per_token(ours.encoder_config, args.seq_len, 1.0)
    results["peer"] = summarize(peer_rounds, tokens_per_step, useful,
                                results["peer_actual_flops_per_token"])
    results["peer"]["banner"] = peer.banner
    results["comparison"] = compare(ours_rounds, peer_rounds, args.quiet_share)
  print(f"\nload average after: {load_after:.2f}")
  print_table(results)
  if args.json:
    args.json.write_text(json.dumps(results, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
