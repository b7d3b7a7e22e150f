"""The CPU speed benchmarks' own logic: the peers get our step's masks, and the profile's
wall-time accounting (benchmarks/train_step.py, benchmarks/profile_step.py).

The timings themselves are not tested (benchmarks print numbers; see benchmarks/README.md).
"""
import pathlib
import sys

import jax
import numpy as np
import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))   # the scripts import their siblings by name
import profile_step  # noqa: E402
import train_step  # noqa: E402

TINY = ["--layers", "2", "--hidden", "32", "--heads", "2", "--ffn", "64", "--vocab", "300",
        "--seq-len", "32", "--batch", "4", "--batches", "3"]


@pytest.fixture(scope="module")
def ours():
  args = train_step.parse_args(TINY)
  return train_step.OurSide(args, jax.devices("cpu")[0])


def test_the_peers_get_the_masks_our_step_draws(ours):
  # The loss of our real step equals the loss recomputed from the arrays sent to the peers, and
  # the next step's masks (the control) give a loss the check tells apart.
  check = train_step.check_masks(ours)
  assert check["relative_difference"] <= check["tolerance"]
  assert check["control_distinguishable"], check
  ids, labels = ours.peer_arrays(ours.next_step, 2)
  assert ids.shape == labels.shape == (2, 4, 32)
  # Hugging Face's convention: -100 where nothing is predicted, about 15% labelled per row.
  labelled = (labels != train_step.IGNORE).sum(axis=-1)
  assert labelled.min() >= 1 and labelled.max() <= train_step.max_predictions(32, 0.15)
  # Step s and step s + 1 get different masks; the same step always the same.
  assert not np.array_equal(labels[0], labels[1])
  again_ids, again_labels = ours.peer_arrays(ours.next_step, 2)
  np.testing.assert_array_equal(again_labels, labels)
  np.testing.assert_array_equal(again_ids, ids)


def test_a_wrong_key_path_fails_the_mask_check(ours, monkeypatch):
  # check_masks must catch masks drawn along another key path (here: one step ahead).
  drawn = train_step.OurSide.masks_at
  monkeypatch.setattr(train_step.OurSide, "masks_at",
                      lambda self, step: drawn(self, step + 1))
  with pytest.raises(RuntimeError, match="mask check failed"):
    train_step.check_masks(ours)


def test_wall_time_is_split_among_concurrent_thunks_and_queued_dots():
  # (start, end, part, is a plain dot): two parts share [0, 10); a dot ends its event at 12 and
  # its queued work fills the idle stretch to 20; a fusion runs [20, 25), then idles to 30.
  spans = [(0, 10, "ffn", False), (0, 10, "head", False), (10, 12, "ffn", True),
           (20, 25, "layernorm", False), (30, 31, "head", False)]
  shares = profile_step.wall_shares(spans)
  assert shares == {"ffn": 5 + 2 + 8, "head": 5 + 1, "layernorm": 5, "idle between thunks": 5}
  assert sum(shares.values()) == 31


def test_dot_flops_and_parts_read_the_hlo():
  hlo = """
%fused_computation.1 (param_0.1: f32[2048,512], param_1.1: f32[512,2048]) -> f32[2048,2048] {
  %param_0.1 = f32[2048,512]{1,0} parameter(0)
  %param_1.1 = f32[512,2048]{1,0} parameter(1)
  ROOT %dot.1 = f32[2048,2048]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[2048,512], b: f32[512,2048], s: f32[16,8,128,64]) -> f32[2048,2048] {
  %a = f32[2048,512]{1,0} parameter(0)
  %b = f32[512,2048]{1,0} parameter(1)
  %s = f32[16,8,128,64]{3,2,1,0} parameter(2)
  %scores = f32[16,8,128,128]{3,2,1,0} dot(%s, %s), lhs_batch_dims={0,1}, lhs_contracting_dims={3}, rhs_batch_dims={0,1}, rhs_contracting_dims={3}, metadata={op_name="jit(step)/jvp(Model)/encoder/layer_0/attention/bqhd,bkhd->bhqk/dot_general"}
  ROOT %ynn_fusion.1 = f32[2048,2048]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1, metadata={op_name="jit(step)/transpose(jvp(Model))/encoder/layer_0/intermediate/dot_general"}
}
"""
  instructions = profile_step.hlo_instructions(hlo)
  op_name, flops, opcode = instructions["ynn_fusion.1"]
  assert flops == 2 * 2048 * 2048 * 512 and opcode == "fusion"
  assert profile_step.part_of(op_name) == "ffn"
  op_name, flops, opcode = instructions["scores"]
  assert flops == 2 * 16 * 8 * 128 * 128 * 64 and opcode == "dot"
  assert profile_step.part_of(op_name) == "attention core"
  assert profile_step.part_of("jit(step)/jvp(Model)/encoder/layer_1/attention/query/dot_general") \
      == "attention projections"
  assert profile_step.part_of("jit(step)/jvp()/jit(_threefry_split)/mlm_mask/select_n") == "masking"
  assert profile_step.part_of("jit(step)/jvp(Model)/lm_head/encoder.attend/dot_general") == "head"
  assert profile_step.part_of("jit(step)/add") == "optimizer and rest"
