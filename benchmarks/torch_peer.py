"""The PyTorch peer of benchmarks/train_step.py: Hugging Face `XLMRobertaForMaskedLM` training.

Runs under the peer venv's python (torch + transformers), never the project's, and imports nothing
from xlm_jax. It builds the model and optimizer once, prints `ready ...`, then serves the driver's
`run N [PATH]` commands on stdin (benchmarks/peer_protocol.py, which flax_peer.py speaks too), so
the driver can alternate it with our step:

    /work/peer_venv/bin/python benchmarks/torch_peer.py '{"layers": 6, "hidden": 512, ...}'
"""
import json
import os
import sys

import numpy as np
import torch
import transformers

import peer_protocol  # benchmarks/ is on sys.path[0]
from peer_protocol import peak_rss_bytes


def build_model(spec: dict):
  """The model: from the driver's Hugging Face folder (agreement mode) or from config."""
  dropout = {"hidden_dropout_prob": spec["dropout"],
             "attention_probs_dropout_prob": spec["dropout"]}
  if spec.get("init_from"):
    # float32 master weights whatever the folder's config says; bf16 runs use autocast.
    model = transformers.XLMRobertaForMaskedLM.from_pretrained(
        spec["init_from"], dtype=torch.float32, **dropout)
    config = model.config
    got = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
           config.intermediate_size, config.vocab_size)
    want = (spec["layers"], spec["hidden"], spec["heads"], spec["ffn"], spec["vocab"])
    if got != want:
      raise ValueError(f"{spec['init_from']} holds layers/hidden/heads/ffn/vocab {got}, the "
                       f"driver asked for {want}")
    return model
  torch.manual_seed(spec["seed"])
  config = transformers.XLMRobertaConfig(
      vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
      num_attention_heads=spec["heads"], intermediate_size=spec["ffn"],
      max_position_embeddings=spec["max_positions"], type_vocab_size=1, layer_norm_eps=1e-5,
      hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
      tie_word_embeddings=True, **dropout)
  return transformers.XLMRobertaForMaskedLM(config)


def parameter_groups(model, spec: dict) -> tuple[list, list]:
  """(decayed, not decayed) parameters, as the driver's `decay` / `no_decay` name lists say.

  The lists are the parameters ours decays, by their Hugging Face names; a tied tensor has
  several names here (the word embeddings are also lm_head.decoder.weight, lm_head.bias is also
  lm_head.decoder.bias), so each parameter is matched by any of its names. A parameter in no
  list, or a name that is no parameter, stops the peer: both sides must decay the same tensors.
  """
  decay, no_decay = set(spec["decay"]), set(spec["no_decay"])
  names: dict[int, list[str]] = {}
  params: dict[int, torch.nn.Parameter] = {}
  for name, param in model.named_parameters(remove_duplicate=False):
    names.setdefault(id(param), []).append(name)
    params[id(param)] = param
  groups: tuple[list, list] = ([], [])
  seen = set()
  for key, aliases in names.items():
    listed = [(n, n in decay) for n in aliases if n in decay | no_decay]
    if len({d for _, d in listed}) != 1:
      raise ValueError(f"weight-decay lists: parameter {aliases} is "
                       f"{'in neither' if not listed else 'in both'} list(s)")
    seen.update(n for n, _ in listed)
    groups[0 if listed[0][1] else 1].append(params[key])
  missing = sorted((decay | no_decay) - seen)
  if missing:
    raise ValueError(f"weight-decay lists name tensors this model lacks: {missing[:5]}")
  return groups


def train_steps(model, optimizer, inputs, clip_norm: float, autocast: bool) -> list[float]:
  losses = []
  for ids, labels in inputs:
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    loss.backward()
    if clip_norm > 0:
      # clip_grad_norm_ divides by (norm + 1e-6) where optax divides by the norm: a 1e-6
      # relative difference in the clipped update, far below what the agreement mode resolves.
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    losses.append(loss.detach())
  return [float(loss) for loss in losses]


def main(argv) -> int:
  spec = json.loads(argv[1])
  torch.set_num_threads(spec.get("threads") or os.cpu_count())
  autocast = spec["dtype"] == "bfloat16"  # fp32 master weights, bf16 matmuls: mixed precision
  model = build_model(spec)
  model.train()  # dropout as configured (0 in agreement mode)
  decay, no_decay = parameter_groups(model, spec)
  # torch's AdamW is optax.adamw's update: m / (sqrt(v) + eps) with bias correction, and the
  # decay lr * wd * p taken from the parameter before the step in both.
  optimizer = torch.optim.AdamW(
      [{"params": decay, "weight_decay": spec["weight_decay"]},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=spec["learning_rate"], betas=(spec["b1"], spec["b2"]), eps=spec["eps"])
  attention = getattr(model.config, "_attn_implementation", "default")
  wait_policy = os.environ.get("OMP_WAIT_POLICY", "-")
  num_params = sum(p.numel() for p in model.parameters())
  print(f"ready torch={torch.__version__} transformers={transformers.__version__} "
        f"threads={torch.get_num_threads()} OMP_WAIT_POLICY={wait_policy} "
        f"attention={attention} init={'pretrained' if spec.get('init_from') else 'config'} "
        f"params={num_params} rss={peak_rss_bytes()}", flush=True)
  def prepare(ids, labels):
    # int64 tensors before the clock starts: the timing is the steps alone.
    ids, labels = (torch.from_numpy(a.astype(np.int64)) for a in (ids, labels))
    return [(ids[i], labels[i]) for i in range(len(ids))]

  peer_protocol.serve(spec, prepare, lambda inputs: train_steps(
      model, optimizer, inputs, spec["clip_norm"], autocast))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
