"""model.attention_impl: cuDNN's inputs (key lengths, additive bias) mean the same attention as
the boolean masks, for every objective's mask, and every fallback names its reason.

On any machine, `attention.cudnn_inputs_on_xla` plans "cudnn" models as on a CUDA GPU and hands
the very inputs cuDNN would get to jax's XLA implementation: the conversion is checked here.
The tests at the end run cuDNN itself and are skipped without a GPU.
"""
import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xlm_jax import config as config_lib
from xlm_jax.models import attention
from xlm_jax.models.encoder import EncoderConfig, Model, convert_params
from xlm_jax.models.encoder_config import with_legacy_defaults
from xlm_jax.objectives import btmlm, camlm, mlm, tlm
from xlm_jax.objectives import attention_patterns as patterns
from xlm_jax.objectives.base import ObjectiveContext
import objective_checks as checks

PAD, MASK = 1, 4
SPECIALS = (0, 1, 2, 3, 4)
LANGS = ("en", "de", "fr")
L = 16  # even: cuDNN needs even lengths with a bias
# bf16 (cuDNN takes no float32), head dim 16 (a multiple of 8). Large initial weights, so that a
# token attending where it must not moves losses and gradients far above the tolerance. One
# layer: every layer gets the same attention inputs (test_scanned_layers_... checks a stack).
XLA = EncoderConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64,
                    max_positions=40, num_languages=3, dropout_rate=0.0,
                    attention_dropout_rate=0.0, initializer_range=0.5, dtype="bfloat16")
CUDNN = dataclasses.replace(XLA, attention_impl="cudnn")
QUICKSTART = "experiments/quickstart.py"


def _packed_mono_batch():
  """Packed "mono" rows: several sentences per row (segments 1, 2, 3), padding as segment 0,
  positions restarting per sentence; one full row and one all-padding row."""
  rows = [[[10, 11, 12], [13, 14], [15, 16, 17]], [[20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
                                                     32, 33]], [], [[40, 41], [42, 43, 44, 45]]]
  keys = ("input_ids", "segment_ids", "position_ids", "lang_ids")
  batch = {k: np.full((len(rows), L), v, np.int32) for k, v in zip(keys, (PAD, 0, PAD, 0))}
  for row, sentences in enumerate(rows):
    start = 0
    for segment, tokens in enumerate(sentences, start=1):
      piece = [0, *tokens, 2]
      end = start + len(piece)
      batch["input_ids"][row, start:end] = piece
      batch["segment_ids"][row, start:end] = segment
      batch["position_ids"][row, start:end] = np.arange(len(piece)) + PAD + 1
      batch["lang_ids"][row, start:end] = row % 3
      start = end
  return batch


def _pair_batch():
  # Short pairs: about half of each row is padding, so attending to it would show.
  batch = checks.pair_batch([([10, 11, 12], [30, 31], 1, 0), ([20, 21], [40, 41, 42], 2, 0),
                             ([50, 51, 52, 53], [15, 16], 0, 1), ([], [], 0, 0)], L, pad=PAD)
  batch["input_ids"][3], batch["segment_ids"][3], batch["position_ids"][3] = PAD, 0, PAD
  return batch


def _sentence_batch():
  """"sentences" rows `<s> x </s>` + padding (BTMLM writes its placeholders there)."""
  return checks.sentence_batch([([10, 11, 12, 13], 1), ([30, 31, 32], 0), None,
                                ([50, 51, 52, 53, 54], 2)], L, pad=PAD)


# name -> (loss function, default config, batch); CAMLM in its default, exact two_pass mode.
OBJECTIVES = {
    "mlm": (mlm.mlm_loss, mlm.default_config, _packed_mono_batch()),
    "tlm": (tlm.tlm_loss, tlm.default_config, _pair_batch()),
    "camlm": (camlm.camlm_loss, camlm.default_config, _pair_batch()),
    "btmlm": (btmlm.btmlm_loss, btmlm.default_config, _sentence_batch()),
}
assert camlm.default_config()["camlm_mode"] == "two_pass"


def _context(config, name):
  _, defaults, _ = OBJECTIVES[name]
  # A high mask rate: several labels per row, on every side and segment.
  return ObjectiveContext(model=Model(config), config={**defaults(), "mask_rate": 0.4},
                          vocab_size=64, mask_id=MASK, pad_id=PAD, special_ids=SPECIALS,
                          languages=LANGS, train=False, name=name)


def _loss(config, name):
  """The objective's loss on its batch, a function of (params, batch) to trace."""
  loss_fn, _, _ = OBJECTIVES[name]
  ctx = _context(config, name)
  return lambda p, b: loss_fn(p, b, jax.random.key(7), ctx)[0]


def _relative_error(got, want) -> float:
  """||got - want|| / ||want|| over all leaves of two trees of arrays."""
  pairs = [(np.asarray(g, np.float64), np.asarray(w, np.float64))
           for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want))]
  diff = sum(float(np.sum((g - w) ** 2)) for g, w in pairs)
  return (diff / max(sum(float(np.sum(w ** 2)) for _, w in pairs), 1e-30)) ** 0.5


@pytest.fixture
def attention_calls(monkeypatch):
  """Records what each layer's attention received, as the model is traced: (form, shape,
  implementation)."""
  calls = []
  inner = attention.dot_product_attention

  def recording(query, key, value, inputs):
    form = next(f for f in ("mask", "bias", "kv_lengths") if getattr(inputs, f) is not None)
    calls.append((form, getattr(inputs, form).shape, inputs.implementation))
    return inner(query, key, value, inputs)

  monkeypatch.setattr(attention, "dot_product_attention", recording)
  return calls


# --- The field: choices, experiment configs, saved configs without it -----------------------------

def test_attention_impl_is_a_checked_model_field():
  assert XLA.attention_impl == EncoderConfig(vocab_size=10).attention_impl == "xla"
  with pytest.raises(ValueError, match=r"EncoderConfig: attention_impl must be one of "
                                       r"\('xla', 'cudnn'\), got 'flash'"):
    EncoderConfig(vocab_size=10, attention_impl="flash")
  with pytest.raises(ValueError, match=r"--config\.model\.attention_impl='flash': "
                                       r"model\.attention_impl must be one of \('xla', 'cudnn'\)"):
    config_lib.load_config(QUICKSTART, ["model.attention_impl='flash'"])
  config = config_lib.load_config(QUICKSTART, ["model.attention_impl=cudnn"])
  assert EncoderConfig.from_dict({**config.model.to_dict(), "vocab_size": 10}).attention_impl == \
      "cudnn"


def test_saved_configs_without_the_field_load_as_xla():
  """An export's config.json or a checkpoint's meta written before the field: read as "xla"."""
  saved = {k: v for k, v in CUDNN.to_dict().items() if k != "attention_impl"}
  assert EncoderConfig.from_dict(with_legacy_defaults(saved)).attention_impl == "xla"


# --- Fallbacks: decided from static facts, each with its reason ----------------------------------

@pytest.mark.parametrize("facts, reason", [
    (dict(), None),
    (dict(uses_bias=False, length=15), None),                  # key lengths: any length
    (dict(dtype=jnp.float16), None),
    (dict(head_dim=256), None),                                 # Hopper: up to 256
    (dict(dtype=jnp.float32), "model.dtype float32: cuDNN flash attention takes bfloat16 or "
                              "float16"),
    (dict(attention_dropout=True), "attention dropout in training"),
    (dict(compute_capability=None), "no CUDA GPU"),
    (dict(compute_capability=(7, 5)), "compute capability 7.5"),
    (dict(head_dim=12), "head dim 12: cuDNN needs a multiple of 8, at most 256"),
    (dict(head_dim=256, compute_capability=(8, 0)), "head dim 256: .* at most 128"),
    (dict(length=15), "sequence length 15 is odd"),
    (dict(sequence_sharded=True), "mesh.rules shard the length or kv axis"),
])
def test_cudnn_fallback_reasons(facts, reason):
  args = dict(dtype=jnp.bfloat16, head_dim=64, length=128, uses_bias=True,
              attention_dropout=False, compute_capability=(9, 0))
  args.update(facts)
  got = attention.cudnn_fallback_reason(args.pop("dtype"), args.pop("head_dim"),
                                        args.pop("length"), **args)
  if reason is None:
    assert got is None
  else:
    assert got is not None and re.search(reason, got), got


def test_fallback_plans_the_mask_path_and_logs_its_reason_once(caplog):
  plan = lambda impl, **facts: attention.plan_attention(
      impl, **{**dict(dtype=jnp.bfloat16, head_dim=40, length=16, key_padding_only=False,
                      attention_dropout=False), **facts})
  with attention.cudnn_inputs_on_xla((9, 0)):
    assert plan("xla") == attention.AttentionPlan("mask")
    assert plan("cudnn") == attention.AttentionPlan("bias", implementation="xla")
    assert plan("cudnn", key_padding_only=True) == attention.AttentionPlan(
        "kv_lengths", implementation="xla")
    with caplog.at_level(logging.WARNING):
      # head dim 44 appears in no other test, so its reason is logged here for the first time.
      first, second = plan("cudnn", head_dim=44), plan("cudnn", head_dim=44)
  assert first == second and first.form == "mask" and first.implementation is None
  assert first.fallback.startswith("head dim 44")
  logged = [r.getMessage() for r in caplog.records if "head dim 44" in r.getMessage()]
  assert logged == ["model.attention_impl=cudnn falls back to XLA attention: " + first.fallback]
  # Without the test switch and without a GPU, "cudnn" runs the mask path: CPU or TPU runs of a
  # cudnn config still work.
  if attention.cuda_compute_capability() is None:
    assert plan("cudnn").fallback.startswith("no CUDA GPU")


def test_float32_and_attention_dropout_run_the_xla_path(attention_calls):
  """Fallbacks reach the model: float32, and training with attention dropout, run the boolean
  mask path (one jit for both: each trace is recorded in turn)."""
  ids, params = _packed_mono_batch()["input_ids"], checks.init_model_params(XLA)
  apply = lambda config, p, **kw: Model(config).apply({"params": p}, ids,
                                                      lang_ids=np.zeros_like(ids), **kw)
  traced = {}

  def both(p):
    attention_calls.clear()
    f32 = apply(dataclasses.replace(CUDNN, dtype="float32"), p)
    traced["float32"] = list(attention_calls)
    dropout = apply(dataclasses.replace(CUDNN, attention_dropout_rate=0.2), p,
                    deterministic=False, rngs={"dropout": jax.random.key(1)})
    traced["dropout"] = attention_calls[len(traced["float32"]):]
    return f32, dropout

  with attention.cudnn_inputs_on_xla():
    f32, dropout = jax.jit(both)(params)
  assert traced["float32"] and all(c == ("mask", (4, 1, L, L), None) for c in traced["float32"])
  assert not traced["dropout"]   # attention_with_dropout ran, with the boolean mask
  assert np.isfinite(np.asarray(f32)).all() and np.isfinite(np.asarray(dropout, np.float32)).all()


# --- The conversion: bias and key lengths equal the boolean masks ---------------------------------

def test_mask_to_bias_materialises_the_query_axis():
  mask = jnp.asarray(patterns.camlm_two_pass_mask(_pair_batch()["segment_ids"], 1))
  bias = attention.mask_to_bias(mask, 4, jnp.bfloat16)
  assert bias.shape == (4, 1, L, L) and bias.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(bias) == 0, np.asarray(mask))
  assert np.isfinite(np.asarray(bias, np.float32)).all()
  assert float(bias.min()) == -2.0 ** 41                       # jax's own value for cuDNN
  assert attention.mask_to_bias(mask[:1], 4, jnp.float16).shape == (4, 1, L, L)
  with pytest.raises(ValueError, match=r"not \[B, 1, 1, L\]"):
    attention.mask_to_bias(mask[:, :, :1, :], 4, jnp.bfloat16)
  # A key-only bias (MaxText's [B, 1, 1, K]) is refused where cuDNN would refuse it.
  q = jnp.zeros((4, L, 2, 16), jnp.bfloat16)
  key_only = attention.AttentionInputs(bias=bias[:, :, :1, :], implementation="xla")
  with pytest.raises(ValueError, match=r"cuDNN attention bias must be \[B=4, 1\|H, 16, 16\]"):
    attention.dot_product_attention(q, q, q, key_only)


def test_real_tokens_first_hand_checked():
  real = np.array([[1, 1, 1, 0, 0],      # right padding: order kept
                   [0, 0, 1, 1, 1],      # left padding
                   [1, 0, 1, 0, 1],      # padding anywhere
                   [0, 0, 0, 0, 0]], bool)
  order, inverse, lengths = map(np.asarray, attention.real_tokens_first(jnp.asarray(real)))
  np.testing.assert_array_equal(order, [[0, 1, 2, 3, 4], [2, 3, 4, 0, 1], [0, 2, 4, 1, 3],
                                        [0, 1, 2, 3, 4]])
  np.testing.assert_array_equal(np.take_along_axis(order, inverse, 1),
                                np.tile(np.arange(5), (4, 1)))
  np.testing.assert_array_equal(lengths, [3, 3, 3, 1])   # an all-padding row: 1, never 0


def _padded_ids():
  ids = np.full((4, L), PAD, np.int32)
  ids[0, :9] = [0, *range(10, 17), 2]                             # right padding
  ids[1, 5:] = [0, *range(20, 29), 2]                              # left padding
  ids[2, [0, 1, 2, 6, 7, 12, 13]] = [0, 30, 31, 32, 33, 34, 2]     # padding in the middle
  ids[3, :] = [0, *range(40, 54), 2]                               # no padding
  return ids


def test_key_lengths_equal_the_padding_mask_for_any_padding(attention_calls, monkeypatch):
  """No attention_mask, no segment_ids: cuDNN gets key lengths; right-, left- and
  middle-padded rows give the XLA model's hidden states, at every position and layer. The
  comparison can fail: key lengths over rows left in their order (the right-padding assumption)
  give other states for the left- and middle-padded rows."""
  ids = _padded_ids()
  encode = lambda config, p: Model(config).apply(
      {"params": p}, ids, lang_ids=np.ones_like(ids), method=Model.encode, return_all_layers=True)
  keep_order = lambda real: (jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), real.shape),) * 2 + (
      jnp.sum(real, axis=1, dtype=jnp.int32),)
  traced = {}

  def three(p):
    want = encode(XLA, p)
    with attention.cudnn_inputs_on_xla():
      attention_calls.clear()
      got = encode(CUDNN, p)
      traced["got"] = list(attention_calls)
      with monkeypatch.context() as patch:
        patch.setattr(attention, "real_tokens_first", keep_order)
        wrong = encode(CUDNN, p)
    return want, got, wrong

  want, got, wrong = jax.jit(three)(checks.init_model_params(XLA))
  assert traced["got"] and all(c == ("kv_lengths", (4,), "xla") for c in traced["got"])
  assert _relative_error(got, want) < 5e-3
  real = ids != PAD
  last = lambda states, r: np.asarray(states[0], np.float32)[r][real[r]]
  errors = [_relative_error(last(wrong, r), last(want, r)) for r in range(4)]
  assert errors[0] < 5e-3 and errors[3] < 5e-3          # right-padded and full rows: fine
  assert min(errors[1], errors[2]) > 20 * 5e-3, errors  # the others: caught


def test_scanned_rematerialised_layers_take_the_cudnn_inputs(attention_calls):
  """The inputs pass through nn.scan and nn.remat as the bare mask did: a scanned, remat'd
  stack of two layers gives the unrolled XLA stack's hidden states, with key lengths and with a
  bias (packed segments)."""
  two = dataclasses.replace(XLA, num_layers=2)
  scanned = dataclasses.replace(two, attention_impl="cudnn", scan_layers=True, remat_policy="dots")
  params = checks.init_model_params(two)
  stacked = convert_params(params, two, dataclasses.replace(two, scan_layers=True))
  ids, segments = _padded_ids(), _packed_mono_batch()["segment_ids"]
  encode = lambda config, p: jax.jit(lambda p: [Model(config).apply(
      {"params": p}, ids, lang_ids=np.ones_like(ids), method=Model.encode, **inputs)
      for inputs in ({}, {"segment_ids": segments})])(p)
  want = encode(two, params)
  attention_calls.clear()
  with attention.cudnn_inputs_on_xla():
    got = encode(scanned, stacked)
  assert {c[0] for c in attention_calls} == {"kv_lengths", "bias"}
  assert _relative_error(got, want) < 5e-3


def _key_only_bias(mask, batch, dtype):
  """A wrong conversion: each key kept if any query may see it (segments and sides dropped)."""
  seen = jnp.broadcast_to(jnp.any(mask, axis=2, keepdims=True), mask.shape)
  return attention.masked_bias_value(dtype) * (~seen).astype(dtype) + jnp.zeros(
      (batch,) + mask.shape[1:], dtype)


def _no_mask_bias(mask, batch, dtype):
  """A wrong conversion: the mask dropped altogether (padding keys attended)."""
  return jnp.zeros((batch,) + mask.shape[1:], dtype)


def _transposed_bias(mask, batch, dtype, mask_to_bias=attention.mask_to_bias):
  """A wrong conversion: queries and keys swapped."""
  return mask_to_bias(jnp.swapaxes(mask, 2, 3), batch, dtype)


# A plausible wrong conversion per objective, one its mask tells apart: packed MLM and CAMLM
# lose their segments and sides; BTMLM's step-1 mask is one-sided (placeholders read x, x never
# reads them), so a transposed bias shows; TLM's mask is padding only, so only dropping it does.
WRONG_BIASES = {"mlm": _key_only_bias, "tlm": _no_mask_bias, "camlm": _key_only_bias,
                "btmlm": _transposed_bias}
LOSS_RTOL = 5e-4  # the conversion is exact up to summation order; bf16 leaves this much


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_losses_equal_with_cudnn_inputs(name, attention_calls, monkeypatch):
  """Each objective's mask (packed MLM segments, TLM pairs, CAMLM two_pass, BTMLM's two steps)
  as cuDNN's [B, 1, L, L] bias gives the XLA model's loss, and a wrong bias (WRONG_BIASES)
  moves it far past the tolerance. Forward only: on CPU the bias goes through XLA's own
  autodiff; the GPU test compares gradients, where cuDNN's backward kernel runs."""
  traced = {}

  def three(p, b):
    want = _loss(XLA, name)(p, b)
    with attention.cudnn_inputs_on_xla():
      attention_calls.clear()
      got = _loss(CUDNN, name)(p, b)
      traced["got"] = list(attention_calls)
      with monkeypatch.context() as patch:
        patch.setattr(attention, "mask_to_bias", WRONG_BIASES[name])
        wrong = _loss(CUDNN, name)(p, b)
    return want, got, wrong

  want, got, wrong = map(float, jax.jit(three)(checks.init_model_params(XLA), OBJECTIVES[name][2]))
  assert traced["got"] and all(c == ("bias", (4, 1, L, L), "xla") for c in traced["got"]), \
      traced["got"]
  np.testing.assert_allclose(got, want, rtol=LOSS_RTOL)
  assert abs(wrong - want) > 5 * LOSS_RTOL * abs(want), (wrong, want)


# --- cuDNN itself (a GPU with cuDNN; skipped elsewhere) ------------------------------------------

needs_gpu = pytest.mark.skipif(jax.devices()[0].platform != "gpu", reason="needs a GPU with cuDNN")


def _fused_attention_calls(jitted, *args) -> list[str]:
  """The cuDNN fused-attention custom calls in the compiled HLO of `jitted(*args)`."""
  text = jitted.lower(*args).compile().as_text()
  return [line for line in text.splitlines() if 'custom_call_target="__cudnn$fmha' in line]


def _gpu_loss(config, name, generation=None):
  """The objective's loss as a function of params; BTMLM's step 2 alone given `generation`."""
  loss_fn, _, batch = OBJECTIVES[name]
  ctx, rng = _context(config, name), jax.random.key(7)
  batch = jax.tree.map(jnp.asarray, batch)
  if generation is not None:
    return lambda p: btmlm.btmlm_step2(p, batch, generation, jax.random.split(rng)[1], ctx)[0]
  return lambda p: loss_fn(p, batch, rng, ctx)[0]


# cuDNN against XLA, both bf16. Sized on CPU from the bf16 model against the same model in
# float32, a larger difference than two bf16 kernels should show: losses 0.03-0.2%, gradients
# 1.4-3.6%, BTMLM step-1 states 1%. A wrong bias (WRONG_BIASES; step 2 of BTMLM, whose mask is
# padding only: none) moves the gradients by 12-137% and step-1 states by 65%.
GPU_LOSS_RTOL, GPU_RTOL = 1e-2, 5e-2


@needs_gpu
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_cudnn_matches_xla_on_the_gpu(name, monkeypatch):
  """Loss and gradients of each objective with cuDNN (bf16) against XLA (bf16); the compiled
  step holds cuDNN's forward and backward kernels with a bias, so a silent fallback fails; and
  cuDNN given a wrong bias lands outside the tolerance, so the comparison can fail."""
  params = checks.init_model_params(XLA)
  full = {impl: jax.jit(jax.value_and_grad(_gpu_loss(config, name)))
          for impl, config in (("xla", XLA), ("cudnn", CUDNN))}
  fused = _fused_attention_calls(full["cudnn"], params)
  assert any("Bias" in line and "Backward" not in line for line in fused), "no cuDNN forward"
  assert any("BiasSoftmaxBackward" in line for line in fused), "no cuDNN backward"
  assert not _fused_attention_calls(full["xla"], params)
  generation, wrong_bias = None, WRONG_BIASES[name]
  if name == "btmlm":
    # Step 1 draws pseudo tokens by argmax, which one bf16 rounding may flip: both runs of step 2
    # read the XLA model's pseudo tokens, and step 1's hidden states are compared on their own.
    batch = jax.tree.map(jnp.asarray, OBJECTIVES[name][2])
    generation = jax.jit(lambda p: btmlm.generate_pseudo_tokens(
        p, batch, jax.random.split(jax.random.key(7))[0], _context(XLA, name)))(params)
    step_one = lambda config: np.asarray(jax.jit(lambda p: Model(config).apply(
        {"params": p}, generation.input_ids, position_ids=generation.position_ids,
        lang_ids=generation.lang_ids, method=Model.encode,
        attention_mask=patterns.btmlm_generation_mask(generation.is_source,
                                                      generation.is_placeholder)))(params),
        np.float32)[np.asarray(generation.is_source | generation.is_placeholder)]
    want_states = step_one(XLA)
    assert _relative_error(step_one(CUDNN), want_states) < GPU_RTOL
    with monkeypatch.context() as patch:
      patch.setattr(attention, "mask_to_bias", _transposed_bias)
      assert _relative_error(step_one(CUDNN), want_states) > GPU_RTOL
    wrong_bias = _no_mask_bias
  compared = {impl: jax.jit(jax.value_and_grad(_gpu_loss(config, name, generation)))
              for impl, config in (("xla", XLA), ("cudnn", CUDNN))}
  (want_loss, want_grads), (got_loss, got_grads) = (compared[i](params) for i in ("xla", "cudnn"))
  assert abs(float(got_loss) - float(want_loss)) < GPU_LOSS_RTOL * abs(float(want_loss)), (
      got_loss, want_loss)
  assert _relative_error(got_grads, want_grads) < GPU_RTOL
  monkeypatch.setattr(attention, "mask_to_bias", wrong_bias)
  _, wrong_grads = jax.jit(jax.value_and_grad(_gpu_loss(CUDNN, name, generation)))(params)
  assert _relative_error(wrong_grads, want_grads) > GPU_RTOL


@needs_gpu
def test_cudnn_key_lengths_on_the_gpu():
  """Rows padded on the right, the left and in the middle, no mask given: cuDNN runs with key
  lengths and no bias at all, and matches XLA at the real tokens."""
  ids = _padded_ids()
  params = checks.init_model_params(XLA)
  encode = {impl: jax.jit(lambda p, config=config: Model(config).apply(
      {"params": p}, ids, lang_ids=np.ones_like(ids), method=Model.encode))
      for impl, config in (("xla", XLA), ("cudnn", CUDNN))}
  fused = _fused_attention_calls(encode["cudnn"], params)
  assert fused and not [line for line in fused if "Bias" in line], fused
  real = ids != PAD
  got, want = (np.asarray(encode[i](params), np.float32)[real] for i in ("cudnn", "xla"))
  assert _relative_error(got, want) < GPU_RTOL
