"""The PyTorch peer of benchmarks/train_step.py: Hugging Face `XLMRobertaForMaskedLM` training.

Runs under the peer venv's python (torch + transformers), never the project's, and imports nothing
from xlm_jax. It builds the model and optimizer once, warms up, prints `ready ...`, then serves
commands on stdin, one per line, so the driver can alternate it with our step:

    run N   ->  N train steps; answers `elapsed <wall seconds> <cpu seconds> <last loss>`
    quit    ->  exits

    /work/peer_venv/bin/python benchmarks/torch_peer.py '{"layers": 6, "hidden": 512, ...}'

Between commands it blocks on stdin and computes nothing, so the two sides never overlap.
"""
import json
import os
import sys
import time

import torch
import transformers


def build(spec: dict):
  """Model, AdamW (decay only on matrices, like ours) and one fixed batch, as `spec` says."""
  torch.manual_seed(spec["seed"])
  config = transformers.XLMRobertaConfig(
      vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
      num_attention_heads=spec["heads"], intermediate_size=spec["ffn"],
      max_position_embeddings=spec["max_positions"], type_vocab_size=1, layer_norm_eps=1e-5,
      hidden_dropout_prob=spec["dropout"], attention_probs_dropout_prob=spec["dropout"],
      hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
      tie_word_embeddings=True)
  model = transformers.XLMRobertaForMaskedLM(config)
  model.train()  # dropout on, as in our train step
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": spec["weight_decay"]},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=spec["learning_rate"], betas=(spec["b1"], spec["b2"]), eps=spec["eps"])

  generator = torch.Generator().manual_seed(spec["seed"])
  batch, length = spec["batch"], spec["seq_len"]
  # Ordinary ids above the special ones (0..4), `<s>` first, no padding: a "stream" row.
  ids = torch.randint(5, spec["vocab"], (batch, length), generator=generator)
  ids[:, 0] = 0
  # The same number of labelled positions per row as our masking produces (15% of the 127
  # non-special tokens, rounded); every other position is ignored (-100).
  labels = torch.full_like(ids, -100)
  num_labels = max(1, round(spec["mask_rate"] * (length - 1)))
  for row in range(batch):
    chosen = 1 + torch.randperm(length - 1, generator=generator)[:num_labels]
    labels[row, chosen] = ids[row, chosen]
    ids[row, chosen] = 4  # <mask>
  inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
  return model, optimizer, inputs


def train_steps(model, optimizer, inputs, steps: int, clip_norm: float, autocast: bool) -> float:
  loss = None
  for _ in range(steps):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
  return float("nan") if loss is None else float(loss.detach())


def main(argv) -> int:
  spec = json.loads(argv[1])
  torch.set_num_threads(spec.get("threads") or os.cpu_count())
  autocast = spec["dtype"] == "bfloat16"  # fp32 master weights, bf16 matmuls: mixed precision
  model, optimizer, inputs = build(spec)
  loss = train_steps(model, optimizer, inputs, spec["warmup_steps"], spec["clip_norm"], autocast)
  attention = getattr(model.config, "_attn_implementation", "default")
  wait_policy = os.environ.get("OMP_WAIT_POLICY", "-")
  print(f"ready torch={torch.__version__} transformers={transformers.__version__} "
        f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={wait_policy} "
        f"attention={attention} warmup_loss={loss:.4f}",
        flush=True)
  for line in sys.stdin:
    command = line.split()
    if command == ["quit"]:
      break
    if len(command) != 2 or command[0] != "run":
      print(f"error unknown command {line.strip()!r}; expected 'run N' or 'quit'", flush=True)
      continue
    start, cpu_start = time.perf_counter(), time.process_time()
    loss = train_steps(model, optimizer, inputs, int(command[1]), spec["clip_norm"], autocast)
    print(f"elapsed {time.perf_counter() - start:.6f} {time.process_time() - cpu_start:.6f} "
          f"{loss:.6f}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
