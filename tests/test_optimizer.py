"""The optimizer's weight-decay mask: matrices decay; biases and LayerNorm scales never do."""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax.train import optimizer as optimizer_lib
from xlm_jax import config as config_lib


def _params(**overrides):
  config = EncoderConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32,
                         max_positions=20, **overrides)
  ids = np.full((1, 8), 5, np.int32)
  kwargs = {"lang_ids": np.zeros_like(ids)} if config.num_languages else {}
  boxed = Model(config).init(jax.random.PRNGKey(0), ids, **kwargs)["params"]
  return nn.meta.unbox(boxed)   # as the train state holds them


@pytest.mark.parametrize("overrides", [
    {}, {"scan_layers": True},
    {"num_languages": 2, "separate_layers": 1, "separate_embeddings": True, "scan_layers": True}])
def test_only_kernels_and_embedding_tables_decay(overrides):
  # q/k/v biases are [heads, head_dim], and scan_layers / language-specific layers stack every
  # bias and LayerNorm scale on a leading axis: a rank rule ("ndim > 1") decayed all of them.
  params = _params(**overrides)
  mask = optimizer_lib.decay_mask(params)
  flat = {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_leaves_with_path(mask)}
  assert set(flat.values()) == {True, False}
  for path, decayed in flat.items():
    assert decayed == path.endswith(("['kernel']", "['embedding']")), path
  stacked_biases = [p for p, leaf in jax.tree_util.tree_leaves_with_path(params)
                    if jax.tree_util.keystr(p).endswith(("['bias']", "['scale']")) and leaf.ndim > 1]
  assert stacked_biases   # the case the rank rule got wrong is in every variant


def test_adamw_leaves_biases_and_scales_alone_without_gradient():
  # With a zero gradient AdamW's update is -lr * wd * p on decayed leaves and 0 elsewhere.
  params = _params(scan_layers=True)
  config = config_lib.default_config().optimizer
  config.warmup_steps, config.schedule, config.weight_decay = 0, "constant", 0.1
  tx, _ = optimizer_lib.make_optimizer(config, total_steps=10)
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
  for path, update in jax.tree_util.tree_leaves_with_path(updates):
    name = jax.tree_util.keystr(path)
    moved = bool(np.any(np.asarray(update) != 0))
    assert moved == name.endswith(("['kernel']", "['embedding']")), name
