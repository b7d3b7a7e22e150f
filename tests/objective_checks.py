"""Builders and checks shared by the objective tests."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xlm_jax.models.encoder import Model


def sgd_losses(loss_fn, params, batch, ctx, steps: int = 8, learning_rate: float = 0.5):
  """Trains `loss_fn` (an objective's, returning (loss, metrics, extra_state)) with plain SGD on one
  repeated batch (the same RNG, so the same masks every step); checks every loss and gradient is
  finite; returns (losses, last metrics)."""
  tx = optax.sgd(learning_rate)
  opt_state = tx.init(params)
  rng = jax.random.key(5)

  @jax.jit
  def step(params, opt_state):
    (loss, metrics), grads = jax.value_and_grad(lambda *args: loss_fn(*args)[:2], has_aux=True)(
        params, batch, rng, ctx)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, metrics, grads

  losses = []
  for _ in range(steps):
    params, opt_state, loss, metrics, grads = step(params, opt_state)
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    losses.append(float(loss))
  return losses, metrics


@functools.cache
def init_model_params(config, seed: int = 0):
  """Model params for `config` (an EncoderConfig), jitted (one compilation instead of op-by-op
  dispatch) and cached: tests only read them."""
  ids = jnp.zeros((1, 4), jnp.int32)
  return jax.jit(lambda: nn.meta.unbox(
      Model(config).init(jax.random.key(seed), ids, lang_ids=ids)["params"]))()


def pair_batch(pairs, length: int, pad: int = 1):
  """Pipeline layout `<s> x </s> </s> y </s>` + padding; pairs = [(x, y, x_lang, y_lang)]."""
  keys = ("input_ids", "segment_ids", "position_ids", "lang_ids")
  batch = {k: np.full((len(pairs), length), v, np.int32) for k, v in zip(keys, (pad, 0, pad, 0))}
  for row, (x, y, x_lang, y_lang) in enumerate(pairs):
    side_x, side_y = [0, *x, 2], [2, *y, 2]
    n = len(side_x) + len(side_y)
    batch["input_ids"][row, :n] = side_x + side_y
    batch["segment_ids"][row, :n] = [1] * len(side_x) + [2] * len(side_y)
    batch["position_ids"][row, :n] = np.arange(n) + pad + 1
    batch["lang_ids"][row, :n] = [x_lang] * len(side_x) + [y_lang] * len(side_y)
  return batch


def sentence_batch(sentences, length: int, pad: int = 1):
  """"sentences" rows: `<s> s </s>` + padding; sentences = [(tokens, lang)], None = padding row."""
  keys = ("input_ids", "segment_ids", "position_ids", "lang_ids")
  batch = {k: np.full((len(sentences), length), v, np.int32)
           for k, v in zip(keys, (pad, 0, pad, 0))}
  for row, item in enumerate(sentences):
    if item is None:
      continue
    tokens, lang = item
    n = len(tokens) + 2
    batch["input_ids"][row, :n] = [0, *tokens, 2]
    batch["segment_ids"][row, :n] = 1
    batch["position_ids"][row, :n] = np.arange(n) + pad + 1
    batch["lang_ids"][row, :n] = lang
  return batch
