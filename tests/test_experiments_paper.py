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


ERNIE_M = str(EXPERIMENTS / "ernie_m.py")


@pytest.mark.parametrize("size,model,lr,steps,accum", [
    ("base", (768, 12, 12, 3072), 3e-4, 500_000, 2),
    ("large", (1024, 24, 16, 4096), 1e-4, 1_500_000, 4),
])
def test_ernie_m_paper_sizes_keep_the_documented_recipe(size, model, lr, steps, accum):
  # The released models' shapes (PaddleNLP ernie_m configuration, FFN 4 x hidden); the training
  # recipe is the preset's, since ERNIE-M's could not be read (experiments/ernie_m.py's table).
  c = config_lib.load_config(f"{ERNIE_M}:{size},xlmr=/models/xlm-roberta-{size}")
  assert c.init_from == f"hf:/models/xlm-roberta-{size}"
  m = c.model
  assert (m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim) == model
  assert (m.max_positions, m.dropout_rate, m.attention_dropout_rate) == (514, 0.1, 0.1)
  assert m.num_languages == len(c.data.languages)
  assert (c.data.seq_len, c.data.sentence_len) == (512, 256)
  # Accumulation doubled for stage 2's five gradient passes, at an unchanged 8192-row batch.
  assert (c.train.batch_size, c.train.grad_accum_steps, c.train.total_steps) == (8192, accum, steps)
  o = c.optimizer
  assert (o.name, o.learning_rate, o.schedule, o.warmup_steps, o.end_lr_ratio) == (
      "adamw", lr, "linear", 10_000, 0.0)
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == (0.9, 0.98, 1e-6, 0.01, 1.0)
  assert [(s["name"], s["fraction"], tuple(s["objectives"]), s["mixing"]) for s in c.stages] == [
      ("stage1", 0.5, ("mlm", "tlm", "camlm"), "sum"),
      ("stage2", 0.5, ("mlm", "tlm", "camlm", "btmlm"), "sum")]
  assert config_lib.stage_lengths(c) == [steps // 2, steps // 2]
  for name, section in c.objectives.items():
    assert (section.weight, section.mask_rate, section.mask_token_rate,
            section.random_token_rate) == (1.0, 0.15, 0.8, 0.1), name
  assert (c.objectives.btmlm.placeholder_ratio, c.objectives.btmlm.sample_temperature) == (1.0, 0.0)
  # Without xlmr= it trains from scratch (the ahead-of-time compiles run so).
  assert config_lib.load_config(f"{ERNIE_M}:{size}").init_from == ""


@pytest.mark.parametrize("variant,lengths,objectives", [
    ("", [600, 600], (("mlm", "tlm", "camlm"), ("mlm", "tlm", "camlm", "btmlm"))),
    ("mlm", [1200], (("mlm",),)),
    ("camlm", [1200], (("mlm", "camlm"),)),
    ("camlm_btmlm", [600, 600], (("mlm", "camlm"), ("mlm", "camlm", "btmlm"))),
])
def test_ernie_m_cpu_variants_keep_the_cpu_recipe(variant, lengths, objectives):
  # experiments/repro.py's ablation runs these at tiny size: the CPU recipe, not the paper's.
  c = config_lib.load_config(f"{ERNIE_M}:{variant}" if variant else ERNIE_M)
  assert (c.data.seq_len, c.train.batch_size, c.train.grad_accum_steps) == (128, 32, 1)
  assert (c.optimizer.learning_rate, c.optimizer.warmup_steps, c.train.total_steps) == (2e-3, 100, 1200)
  assert c.init_from == "" and c.model.hidden_size == 128
  assert config_lib.stage_lengths(c) == lengths
  assert tuple(tuple(s["objectives"]) for s in c.stages) == objectives


def test_ems_best30_is_the_tiny_model_for_a_fixed_number_of_steps():
  # The 30-minute encoder (README): the same model and recipe as the tiny default, more steps,
  # and no wall-clock stop, so a loaded machine trains the same model, only later.
  ems = str(EXPERIMENTS / "ems.py")
  best, tiny = config_lib.load_config(f"{ems}:best30"), config_lib.load_config(ems)
  assert (best.train.total_steps, best.train.max_wall_seconds) == (7_500, 0.0)
  assert tiny.train.max_wall_seconds > 0
  assert best.model.to_dict() == tiny.model.to_dict()
  assert best.objectives.to_dict() == tiny.objectives.to_dict()
  assert best.optimizer.to_dict() == tiny.optimizer.to_dict()
  for size in ("paper", "small"):
    with pytest.raises(ValueError, match="best30"):
      config_lib.load_config(f"{ems}:best30,{size}")
