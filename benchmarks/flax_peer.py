"""The Flax peer of benchmarks/train_step.py: Hugging Face `FlaxXLMRobertaForMaskedLM` training.

Runs under its own venv's python (transformers 4.57, the last series with Flax models, plus jax,
flax and optax; benchmarks/README.md has the recipe), never the project's, and imports nothing
from xlm_jax. It builds the model, optimizer and jitted step once, compiles it, prints `ready ...`,
then serves the driver's `run N [PATH]` commands on stdin as torch_peer.py does
(benchmarks/peer_protocol.py):

    JAX_PLATFORMS=cpu /work/flax_peer_venv/bin/python benchmarks/flax_peer.py '{"layers": 6, ...}'

The step is the stock Flax way to train this model (transformers' examples/flax run_mlm_flax.py):
`model(..., params=, dropout_rng=, train=True)` inside one jitted function, logits on every
position, cross-entropy averaged over the labelled ones, optax AdamW with global-norm clipping,
the state donated. The weight-decay mask is the one the driver sends (the parameters ours
decays, by their Hugging Face names), so both sides decay exactly the same tensors.
"""
import json
import sys
import time

import flax
import jax
import jax.numpy as jnp
import optax
import transformers
from flax import traverse_util
from transformers import FlaxXLMRobertaForMaskedLM, XLMRobertaConfig

import peer_protocol  # benchmarks/ is on sys.path[0]
from peer_protocol import IGNORE, peak_rss_bytes

# Flax leaf name -> the PyTorch/safetensors one, which the driver's decay lists use.
_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def torch_name(path: tuple) -> str:
  """The Hugging Face (PyTorch) name of a Flax parameter path: roberta.encoder.layer.0.
  attention.self.query.kernel -> ...query.weight; LayerNorm scales and embeddings likewise."""
  *parents, leaf = path
  return ".".join([*parents, _TORCH_LEAF.get(leaf, leaf)])


def decay_mask(params, spec: dict):
  """True where the driver's `decay` list names the parameter, False where `no_decay` does.

  Every parameter must be named in exactly one list and every name must be a parameter: a
  mismatch would make the two sides regularise different tensors, so it stops the peer.
  """
  decay, no_decay = set(spec["decay"]), set(spec["no_decay"])
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  names = {path: torch_name(path) for path in flat}
  unknown = sorted(n for n in names.values() if n not in decay | no_decay)
  missing = sorted((decay | no_decay) - set(names.values()))
  if unknown or missing or decay & no_decay:
    raise ValueError(f"weight-decay lists do not match FlaxXLMRobertaForMaskedLM's parameters: "
                     f"not in either list {unknown[:5]}, not a parameter {missing[:5]}, in both "
                     f"{sorted(decay & no_decay)[:5]}")
  return traverse_util.unflatten_dict({path: name in decay for path, name in names.items()})


def build_model(spec: dict):
  """The model: from the driver's Hugging Face folder (agreement mode) or from config."""
  dtype = jnp.bfloat16 if spec["dtype"] == "bfloat16" else jnp.float32  # params stay float32
  dropout = {"hidden_dropout_prob": spec["dropout"],
             "attention_probs_dropout_prob": spec["dropout"]}
  if spec.get("init_from"):
    # The folder holds model.safetensors written for PyTorch (format "pt"): transformers converts
    # it to Flax's layout on load, with safetensors' numpy reader (no torch needed).
    model = FlaxXLMRobertaForMaskedLM.from_pretrained(spec["init_from"], dtype=dtype, **dropout)
    config = model.config
    got = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
           config.intermediate_size, config.vocab_size)
    want = (spec["layers"], spec["hidden"], spec["heads"], spec["ffn"], spec["vocab"])
    if got != want:
      raise ValueError(f"{spec['init_from']} holds layers/hidden/heads/ffn/vocab {got}, the "
                       f"driver asked for {want}")
    return model
  config = XLMRobertaConfig(
      vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
      num_attention_heads=spec["heads"], intermediate_size=spec["ffn"],
      max_position_embeddings=spec["max_positions"], type_vocab_size=1, layer_norm_eps=1e-5,
      hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2,
      tie_word_embeddings=True, **dropout)
  return FlaxXLMRobertaForMaskedLM(config, seed=spec["seed"], dtype=dtype)


def make_step(model, tx, dropout_key):
  """step(state, input_ids, labels) -> (state, loss); state = (params, opt_state, count)."""
  def loss_fn(params, input_ids, labels, rng):
    # HF's masked LM: logits at every position; the loss is the mean over labelled ones.
    logits = model(input_ids, attention_mask=jnp.ones_like(input_ids), params=params,
                   dropout_rng=rng, train=True).logits
    labelled = labels != IGNORE
    # float32 cross-entropy whatever the compute dtype, as ours and torch's autocast do.
    per_token = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), jnp.where(labelled, labels, 0))
    return jnp.sum(jnp.where(labelled, per_token, 0.0)) / jnp.maximum(jnp.sum(labelled), 1)

  def step(state, input_ids, labels):
    params, opt_state, count = state
    loss, grads = jax.value_and_grad(loss_fn)(params, input_ids, labels,
                                              jax.random.fold_in(dropout_key, count))
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, count + 1), loss
  return jax.jit(step, donate_argnums=0)


def main(argv) -> int:
  spec = json.loads(argv[1])
  model = build_model(spec)
  params = model.params
  parts = [optax.clip_by_global_norm(spec["clip_norm"])] if spec["clip_norm"] > 0 else []
  parts.append(optax.adamw(spec["learning_rate"], b1=spec["b1"], b2=spec["b2"], eps=spec["eps"],
                           weight_decay=spec["weight_decay"], mask=decay_mask(params, spec)))
  tx = optax.chain(*parts)
  state = (params, tx.init(params), jnp.zeros((), jnp.int32))
  step = make_step(model, tx, jax.random.PRNGKey(spec["seed"]))
  # Compiled before `ready`, so no step the driver times includes compilation.
  shape = jax.ShapeDtypeStruct((spec["batch"], spec["seq_len"]), jnp.int32)
  start = time.perf_counter()
  compiled = step.lower(state, shape, shape).compile()
  compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  compiled_bytes = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
                    if memory is not None else -1)
  num_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"ready transformers={transformers.__version__} jax={jax.__version__} "
        f"flax={flax.__version__} optax={optax.__version__} "
        f"device={jax.devices()[0].platform} init={'pretrained' if spec.get('init_from') else 'config'} "
        f"params={num_params} compile_s={compile_seconds:.1f} compiled_bytes={compiled_bytes} "
        f"rss={peak_rss_bytes()}", flush=True)
  def prepare(ids, labels):
    # On the device before the clock starts, as ours are: the timing is the steps alone.
    return [(jax.device_put(ids[i]), jax.device_put(labels[i])) for i in range(len(ids))]

  def train(inputs):
    nonlocal state
    losses = []
    for input_ids, step_labels in inputs:
      state, loss = compiled(state, input_ids, step_labels)
      losses.append(loss)
    jax.block_until_ready(state)
    return [float(loss) for loss in losses]

  peer_protocol.serve(spec, prepare, train)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
