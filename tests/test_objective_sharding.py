"""Every objective's update on 8 CPU devices, (data, fsdp, tensor) = (2, 2, 2), equals the
single-device update on the same global batches: parameters, extra state and metrics.

Batches are real: the small Debian corpus through the input pipeline of each batch kind. The
dictionary objectives read a dictionary artifact written here from single-piece words of the
corpus tokenizer (the small corpus is built from gettext only, without FreeDict).
"""
import shutil

import jax
import numpy as np
import pytest

from xlm_jax.data.dictionary import save_dictionary
from xlm_jax import config as config_lib
from xlm_jax.data.corpus import Corpus
from xlm_jax.models.encoder import EncoderConfig, Model
from xlm_jax import mesh as mesh_lib
from xlm_jax.train.optimizer import make_optimizer
from xlm_jax.train.state import create_train_state
from xlm_jax.train import trainer
from xlm_jax.train.trainer import jit_update_steps

# fp32; sharded matmuls and reductions sum in another order. Adam's first steps move a weight by
# about lr * sign(g), so a near-zero gradient's rounding shows up at the lr (1e-3) scale x 1e-2.
RTOL, ATOL = 5e-5, 2e-5
LANGUAGES = ("en", "de", "fr")
SEQ_LEN = 32

# name -> (objective sections, model fields)
CASES = {
    "tlm": ({"tlm": {}}, {"num_languages": 3}),
    "camlm_two_pass": ({"camlm": {"camlm_mode": "two_pass"}}, {}),
    "camlm_single_pass": ({"camlm": {"camlm_mode": "single_pass"}}, {}),
    "btmlm": ({"btmlm": {}}, {"num_languages": 3}),
    "dict_mlm_target_swap": ({"dict_mlm": {"variant": "target_swap"}}, {}),
    "dict_mlm_input_swap": ({"dict_mlm": {"variant": "input_swap"}}, {}),
    "align_mlm": ({"align_mlm": {"align_pairs_per_step": 16}}, {}),
    "mlm_code_switch": ({"mlm_code_switch": {}}, {}),
    "mlm_separate_parts": ({"mlm": {}}, {"num_languages": 3, "separate_embeddings": True,
                                         "separate_layers": 1}),
    "ems": ({"ems": {"lang_dim": 16, "proj_dim": 16}}, {}),
    "ems_per_device_negatives": ({"ems": {"lang_dim": 16, "proj_dim": 16,
                                          "global_negatives": False}}, {}),
    "mlm_plus_tlm": ({"mlm": {}, "tlm": {}}, {}),
    "emma_x_itr": ({"emma_x": {"stage": "itr", "queue_size": 32}}, {}),
    # The reference-code switches (tests/test_paper_fidelity.py checks their values).
    "dict_mlm_princeton": ({"dict_mlm": {"variant": "princeton", "whole_words": False}},
                           {"num_languages": 3}),
    "ems_reference": ({"ems": {"lang_dim": 16, "proj_dim": 16, "global_negatives": False,
                               "negatives_group_size": 2, "sentence_specials": False,
                               "l2_weight": 1e-3, "lang_dropout": 0.1}}, {}),
}
# Cases beyond the default suite's time budget: `pytest -m slow`. The default suite keeps one case
# per distinct sharded mechanism (a pair-row layout, per-example attention masks, a dictionary
# table, per-language parts, gathered negatives, two objectives in one step, EMMA-X's queue); the
# slow ones vary an option of a mechanism already covered.
SLOW_CASES = ("tlm", "camlm_single_pass", "dict_mlm_target_swap", "dict_mlm_input_swap",
              "mlm_code_switch", "ems_per_device_negatives", "dict_mlm_princeton", "ems_reference")


@pytest.fixture(scope="module")
def corpus_with_dictionaries(small_corpus, tmp_path_factory):
  """A copy of the small corpus with en-de and en-fr dictionaries of single-piece words."""
  root = tmp_path_factory.mktemp("dict_corpus") / "corpus"
  shutil.copytree(small_corpus.dir, root)
  corpus = Corpus(root)
  tokenizer = corpus.tokenizer()
  words = [tokenizer.decode([i]).strip() for i in range(5, tokenizer.vocab_size)]
  words = [w for w in dict.fromkeys(words) if len(w) > 2 and w.isalpha()]
  assert len(words) > 200
  for k, lang in enumerate(("de", "fr")):
    pairs = list(zip(words[:100], words[100 + 50 * k:200 + 50 * k]))
    save_dictionary(root / "dictionaries" / f"en-{lang}.tsv", pairs, tokenizer)
  return corpus


def _config(sections, batch_size=8):
  c = config_lib.default_config()
  c.data.languages = LANGUAGES
  c.data.seq_len = SEQ_LEN
  c.data.sentence_len = SEQ_LEN // 2
  c.data.prefetch_threads = 1
  c.train.batch_size = batch_size
  c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = 1e-3
  c.objectives = sections
  return config_lib.validate(c, source="test_objective_sharding")


def _train(case, corpus, mesh_shape, batches, steps=2, data_parallel_size=None):
  sections, model_fields = CASES[case]
  config = _config(sections)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  tokenizer = corpus.tokenizer()
  model = Model(EncoderConfig(**{
      "vocab_size": tokenizer.vocab_size, "hidden_size": 32, "num_layers": 1, "num_heads": 4,
      "mlp_dim": 64, "max_positions": SEQ_LEN + 2, "dropout_rate": 0.1,
      "attention_dropout_rate": 0.0, **model_fields}))
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[: int(np.prod(mesh_shape))])
  bound = trainer.bind_objectives(
      config, model, tokenizer, trainer.load_objective_resources(config, corpus, tokenizer),
      data_parallel_size=data_parallel_size or mesh_lib.data_parallel_size(mesh))
  tx, schedule = make_optimizer(config.optimizer, 100)
  state, shardings, _ = create_train_state(model, tx, bound, SEQ_LEN, mesh,
                                           mesh_lib.logical_rules(config.mesh), seed=0)
  fns = jit_update_steps(bound, tx, schedule, shardings, mesh)
  initial = jax.device_get(state.params)
  history = []
  for batch in batches[:steps]:
    device_batch = {k: mesh_lib.to_global_batch(v, mesh) for k, v in batch.items()}
    for fn in fns:
      state, metrics = fn(state, device_batch)
      history.append(jax.device_get(metrics))
  return jax.device_get(state), history, state, initial


def _batches(case, corpus, steps=2):
  sections, _ = CASES[case]
  config = _config(sections)
  tokenizer = corpus.tokenizer()
  bound_kinds = set()
  for name, section in config.objectives.items():
    from xlm_jax.registry import OBJECTIVES
    bound_kinds |= set(OBJECTIVES.get(name).batch_kinds(section.to_dict()))
  iterators = {kind: iter(trainer.make_batch_dataset(kind, config, corpus, tokenizer, "train"))
               for kind in sorted(bound_kinds)}
  return [{kind: next(it) for kind, it in iterators.items()} for _ in range(steps)]


def _assert_close(a, b, what):
  for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=RTOL,
                               atol=ATOL, err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c
                                  for c in sorted(CASES)])
def test_objective_sharded_equals_single_device(case, corpus_with_dictionaries):
  assert jax.device_count() >= 8, "conftest.py must give 8 CPU devices"
  batches = _batches(case, corpus_with_dictionaries)
  # Per-device EMS negatives come in blocks of batch / (data * fsdp) rows: the single device
  # computes the same blocks when told the batch is split four ways.
  split = 4 if case == "ems_per_device_negatives" else None
  single, single_metrics, _, initial = _train(case, corpus_with_dictionaries, (1, 1, 1), batches,
                                              data_parallel_size=split)
  sharded, sharded_metrics, live, _ = _train(case, corpus_with_dictionaries, (2, 2, 2), batches)
  # The state is really split: the word embedding over tensor (vocab) and fsdp (embed).
  emb = live.params["encoder"]["embeddings"]
  table = next(v for k, v in emb.items() if k.startswith("word_embeddings"))["embedding"]
  assert len({s.device for s in table.addressable_shards}) == 8
  assert table.addressable_shards[0].data.size < table.size
  _assert_close(sharded.params, single.params, "params")
  _assert_close(sharded.extra, single.extra, "extra")
  for m1, m8 in zip(single_metrics, sharded_metrics):
    assert set(m1) == set(m8)
    for key in m1:
      np.testing.assert_allclose(m8[key], m1[key], rtol=1e-4, atol=1e-5, err_msg=key)
  # Training moved the parameters: the comparison is not between two untouched inits.
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), single.params,
                                       initial))
  assert max(moved) > 1e-4
