"""Experiment files against their papers: depths, separations, batches and queues (configs only)."""
import pathlib

import pytest

from xlm_jax import config as config_lib
from xlm_jax import presets

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
EMERGING = str(EXPERIMENTS / "emerging_structure.py")
EMMA_X = str(EXPERIMENTS / "emma_x.py")


@pytest.mark.parametrize("size", presets.CPU_SIZES + ("base",))
def test_emerging_structure_keeps_shared_layers_on_top(size):
  # The paper (sec. 3.1): 8 layers; Sep L1-3 and Sep L1-6 separate the bottom 3 and 6 of them.
  for variant in ("sep_l1_3", "sep_l1_6", "sep_emb_l1_3", "sep_emb_l1_6"):
    model = config_lib.load_config(f"{EMERGING}:{variant},size={size}").model
    assert model.num_layers == 8
    assert model.separate_layers == int(variant[-1])
    assert model.num_layers - model.separate_layers >= 1, variant   # a shared layer on top
    assert model.separate_embeddings == variant.startswith("sep_emb")
  default = config_lib.load_config(f"{EMERGING}:default,size={size}").model
  assert default.separate_layers == 0 and not default.separate_embeddings


def test_emerging_structure_base_is_the_papers_recipe():
  c = config_lib.load_config(f"{EMERGING}:sep_l1_3,size=base")
  assert (c.model.hidden_size, c.model.num_heads, c.model.mlp_dim) == (768, 12, 3072)
  assert (c.data.seq_len, c.train.batch_size, c.data.alpha) == (256, 768, 0.7)
  assert (c.optimizer.learning_rate, c.optimizer.schedule, c.optimizer.warmup_steps,
          c.optimizer.weight_decay) == (1e-4, "inverse_sqrt", 30_000, 0.0)


def test_emma_x_base_starts_and_takes_the_reference_recipe():
  c = config_lib.load_config(f"{EMMA_X}:itr,size=base")
  emma = c.objectives.emma_x
  assert emma.queue_size >= 2 * c.train.batch_size           # one step's keys fit the queue
  assert emma.mask_rate == 0.1 and emma.em_update == "joint"
  assert (c.optimizer.learning_rate, c.optimizer.eps, c.optimizer.weight_decay,
          c.optimizer.clip_norm, c.optimizer.warmup_steps) == (4e-5, 1e-6, 0.0, 0.0, 8000)
  # The reference train.py defaults (-b 6 sentences = 3 pairs, --K 768) as variant arguments.
  c = config_lib.load_config(f"{EMMA_X}:itr,size=base,batch=3,queue=768")
  assert (c.train.batch_size, c.objectives.emma_x.queue_size) == (3, 768)
  with pytest.raises(ValueError, match=r"objectives\.emma_x\.queue_size \(1024\) is smaller than "
                                       r"the keys EMMA-X enqueues per step: 2 x train\.batch_size "
                                       r"\(8192\) \+ mono_candidates \(0\) = 16384"):
    config_lib.load_config(f"{EMMA_X}:itr,size=base,queue=1024")
