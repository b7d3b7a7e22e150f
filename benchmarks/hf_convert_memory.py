"""Peak memory of `xlm-jax convert` on an XLM-R-large-shaped model, both directions.

    python benchmarks/hf_convert_memory.py                  # large: 24 layers, d 1024, vocab 250002
    python benchmarks/hf_convert_memory.py --size base --json /tmp/convert_memory.json

It writes a Hugging Face folder of random weights with XLM-R's shapes into a temporary folder
(config.json, model.safetensors streamed tensor by tensor, and a synthetic SentencePiece model
with XLM-R's 250000 pieces: made-up pieces, no third-party text), then runs the real command line
in a child process, `xlm-jax convert --from hf` and then `--from xlm-jax` on its output. Each
child reports its own peak RSS (VmHWM in /proc/self/status: a fresh address space after exec,
so the generator's memory does not count) and wall time. The issue's bound is about 2x the
weights' size for the Hugging Face -> xlm-jax direction.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np
from sentencepiece import sentencepiece_model_pb2 as pb

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xlm_jax.export import hf  # noqa: E402
from xlm_jax.models.encoder import EncoderConfig  # noqa: E402

SIZES = {  # (layers, hidden, heads, ffn): XLM-R's published architectures, vocab 250002
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}
VOCAB = 250002

_CHILD = """
import sys, time
from xlm_jax import cli
start = time.time()
code = cli.main(sys.argv[1:])
status = open("/proc/self/status").read()
peak_kb = int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])
print("RESULT", code, peak_kb, time.time() - start)
"""


def synthetic_spm(pieces: int) -> bytes:
  """An XLM-R-layout unigram SentencePiece model with `pieces` pieces (<unk>, <s>, </s>, then
  made-up pieces)."""
  model = pb.ModelProto()
  kinds = pb.ModelProto.SentencePiece
  model.pieces.add(piece="<unk>", type=kinds.UNKNOWN)
  model.pieces.add(piece="<s>", type=kinds.CONTROL)
  model.pieces.add(piece="</s>", type=kinds.CONTROL)
  for i in range(pieces - 3):
    model.pieces.add(piece=f"\u2581p{i}", type=kinds.NORMAL, score=-float(i) / pieces - 1.0)
  model.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
  model.trainer_spec.unk_id, model.trainer_spec.bos_id, model.trainer_spec.eos_id = 0, 1, 2
  model.trainer_spec.pad_id = -1
  model.normalizer_spec.name = "identity"
  model.normalizer_spec.add_dummy_prefix = True
  return model.SerializeToString()


def write_random_hf_folder(folder: pathlib.Path, size: str) -> int:
  """The Hugging Face folder; returns the weights' size in bytes."""
  layers, hidden, heads, ffn = SIZES[size]
  config = EncoderConfig(vocab_size=VOCAB, hidden_size=hidden, num_layers=layers, num_heads=heads,
                         mlp_dim=ffn, vocab_multiple=1)
  folder.mkdir(parents=True)
  rng = np.random.default_rng(0)
  shapes = hf.param_shapes(config)

  def entry(tensor):
    shape = tuple(tensor.hf_shape(shapes[hf._key(tensor.path)]))
    # Made when written: one tensor in memory at a time.
    return tensor.hf_name, shape, lambda: rng.standard_normal(shape, dtype=np.float32) * 0.02
  entries = [entry(t) for t in hf._tensors(config)]
  with open(folder / hf.SAFETENSORS_FILE, "wb") as f:
    hf._safetensors_writer(entries, {"format": "pt"})(f)
  hf_config = {hf_name: getattr(config, ours) for hf_name, ours in hf._CONFIG_FIELDS.items()}
  hf_config.update(model_type="xlm-roberta", architectures=["XLMRobertaForMaskedLM"],
                   hidden_act="gelu", bos_token_id=0, eos_token_id=2)
  (folder / hf.CONFIG_FILE).write_text(json.dumps(hf_config))
  (folder / hf.SPM_FILE).write_bytes(synthetic_spm(VOCAB - 2))
  return (folder / hf.SAFETENSORS_FILE).stat().st_size


def run_child(args: list[str]) -> dict:
  out = subprocess.run([sys.executable, "-c", _CHILD, *args], cwd=REPO, capture_output=True,
                       text=True, check=False)
  line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
  if line is None:
    raise RuntimeError(f"convert failed:\n{out.stdout}\n{out.stderr}")
  _, code, peak_kb, seconds = line.split()
  if int(code) != 0:
    raise RuntimeError(f"convert exited {code}:\n{out.stderr}")
  return {"peak_rss_gib": int(peak_kb) / 2**20, "seconds": float(seconds)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="large")
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="hf_convert_") as tmp:
    tmp = pathlib.Path(tmp)
    start = time.time()
    weights = write_random_hf_folder(tmp / "hf", args.size)
    print(f"wrote a random XLM-R {args.size} folder: {weights / 2**30:.2f} GiB of weights "
          f"({time.time() - start:.0f} s)")
    results = {"size": args.size, "weights_gib": weights / 2**30}
    results["hf_to_xlm_jax"] = run_child(["convert", "--from", "hf", str(tmp / "hf"),
                                          "--out", str(tmp / "export")])
    results["xlm_jax_to_hf"] = run_child(["convert", "--from", "xlm-jax", str(tmp / "export"),
                                          "--out", str(tmp / "back")])
  print("| direction | peak RSS (GiB) | x weights | seconds |\n|---|---|---|---|")
  for key in ("hf_to_xlm_jax", "xlm_jax_to_hf"):
    r = results[key]
    print(f"| {key} | {r['peak_rss_gib']:.2f} | {r['peak_rss_gib'] / results['weights_gib']:.2f} | "
          f"{r['seconds']:.0f} |")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  main()
