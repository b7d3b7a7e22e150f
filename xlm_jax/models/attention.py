"""Attention masks, position ids, the explicit attention used with attention dropout, and the
choice of attention implementation (model.attention_impl: XLA, or cuDNN with the masks turned
into key lengths or an additive bias; see the section at the end).

Masks are boolean `[B, 1, L, L]` arrays (query axis, then key axis) where True means "this query
may attend to this key"; the head axis is 1 so one mask broadcasts over all heads. Objectives
that need special attention patterns (CAMLM, BTMLM) build their own mask of this form and pass
it to the model, combining it with these helpers via `combine_masks`.

Position ids follow fairseq/XLM-R: the padding index doubles as the "no position" id, and the
first real token gets `pad_id + 1` (2 for XLM-R), so pretrained XLM-R position tables line up.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp


def padding_mask(input_ids: jax.Array, pad_id: int) -> jax.Array:
  """`[B, 1, L, L]` mask letting every query attend to every non-padding key.

  Padding queries still attend to the real keys (as in fairseq and HF), which keeps their
  outputs finite; nothing reads them.
  """
  batch, length = input_ids.shape
  key_is_real = input_ids != pad_id
  return jnp.broadcast_to(key_is_real[:, None, None, :], (batch, 1, length, length))


def segment_mask(segment_ids: jax.Array) -> jax.Array:
  """`[B, 1, L, L]` mask: query and key are in the same segment, and that segment is not 0.

  Segment 0 marks padding, so padding queries get an all-False row (the model handles such
  rows without NaN) and padding keys are never attended to.
  """
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  real = (segment_ids != 0)[:, :, None]
  return (same & real)[:, None, :, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
  """Logical AND of boolean masks (None entries are skipped; all None -> None).

  Masks broadcast against each other, so `[B, 1, L, L]` combines with `[B, H, L, L]`.
  """
  present = [m for m in masks if m is not None]
  if not present:
    return None
  for m in present:
    if m.dtype != jnp.bool_:
      raise ValueError(f"combine_masks expects boolean masks, got dtype {m.dtype}; "
                       "build masks with comparisons, not 0/1 integers")
  combined = present[0]
  for m in present[1:]:
    combined = jnp.logical_and(combined, m)
  return combined


def normalize_mask(mask: jax.Array, batch: int, num_heads: int, length: int) -> jax.Array:
  """A caller's attention mask, checked, as `[B|1, 1|H, L, L]` (`[B, L, L]` gets a head axis)."""
  if mask.dtype != jnp.bool_:
    raise ValueError(f"attention_mask must be boolean (True = may attend), got dtype {mask.dtype}")
  if mask.ndim == 3:
    mask = mask[:, None]
  if (mask.ndim != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] not in (1, num_heads)
      or mask.shape[2:] != (length, length)):
    raise ValueError(f"attention_mask must have shape [B, L, L] or [B, 1|H, L, L] with B={batch}, "
                     f"H={num_heads}, L={length}; got {mask.shape}")
  return mask


def xlmr_position_ids(input_ids: jax.Array, pad_id: int) -> jax.Array:
  """fairseq `make_positions`: real tokens get pad_id+1, pad_id+2, ...; padding gets pad_id.

  Counting only non-padding tokens means left padding does not shift positions.
  """
  is_real = (input_ids != pad_id).astype(jnp.int32)
  # Multiplying by is_real zeroes the count on padding, which therefore lands on pad_id exactly.
  return jnp.cumsum(is_real, axis=-1) * is_real + pad_id


def segment_position_ids(segment_ids: jax.Array, pad_id: int) -> jax.Array:
  """Positions restarting at pad_id+1 at the start of every segment; pad_id on segment 0.

  Segments are contiguous runs of one id (as the packing pipeline writes them); a new run
  starts wherever the id changes from the previous token.
  """
  batch, length = segment_ids.shape
  index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  # Shifted ids with a -1 in front (no segment uses it): token 0 always starts a run.
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  run_start = jnp.where(segment_ids != previous, index, 0)
  # The latest run start at or before each token is a running maximum: O(L), no [L, L] array.
  start = jax.lax.cummax(run_start, axis=1)
  is_real = segment_ids != 0
  return jnp.where(is_real, index - start + pad_id + 1, pad_id).astype(jnp.int32)


def attention_with_dropout(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array,
                           dropout_rate: float, dropout_rng: jax.Array) -> jax.Array:
  """Softmax attention with dropout on the attention probabilities (training path).

  `jax.nn.dot_product_attention` has no dropout, so the train step with attention dropout uses
  this explicit form; evaluation uses the fused function. Shapes as there: query/key/value
  `[B, L, H, Dh]`, boolean mask `[B, 1|H, L, L]`; returns `[B, L, H, Dh]`.
  """
  scale = 1.0 / jnp.sqrt(jnp.asarray(query.shape[-1], jnp.float32))
  # Scores accumulate in float32 even for bf16 inputs, so the softmax sees full-precision logits.
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32) * scale
  # A large finite negative (not -inf) keeps fully masked rows (padding queries) finite: they
  # become a uniform average instead of 0/0 = NaN, matching jax.nn.dot_product_attention.
  logits = jnp.where(mask, logits, -0.7 * jnp.finfo(jnp.float32).max)
  probs = jax.nn.softmax(logits, axis=-1)
  # Inverted dropout: kept probabilities are scaled by 1 / (1 - rate), so eval needs no rescale.
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


# --- model.attention_impl: who computes attention, and in which form it gets the mask ---------
#
# "xla" is jax.nn.dot_product_attention with the boolean mask (the XLA softmax attention; with
# attention dropout in training, attention_with_dropout above). "cudnn" is cuDNN's fused flash
# attention through the same function, which takes no segment ids and turns a boolean mask into
# a bias itself, so the encoder hands it one of two forms:
#   kv_lengths: the mask is only "keys that are not padding" (no attention_mask, no segment_ids).
#     The rows are reordered so that every row's real tokens come first (real_tokens_first), so
#     the real keys are exactly the first kv_lengths[b]: no [B, 1, L, L] array exists at all.
#   bias: any other mask (packed segments, TLM, CAMLM, BTMLM) as an additive [B, 1|H, L, L]
#     bias (mask_to_bias). Materialised with the full query axis: cuDNN checks bias.shape[-2:]
#     == (T, S), and a [B, 1, 1, K] key mask fails there (jax#28974).
# Everything cuDNN cannot run falls back to the "xla" path, decided from static facts when the
# model is traced (cudnn_fallback_reason) and logged once per reason.
#
# The constraints below are those of jax 0.10.2's cuDNN path, jax/_src/cudnn/
# fused_attention_stablehlo.py: check_layout (q/k/v dtype fp16/bf16/fp8, bias shape),
# check_is_flash_attention (head dim, even lengths with a bias when differentiated),
# check_cudnn_version / check_compute_capability (a CUDA device), and the custom partitioning
# (_check_qkv_bias_mask_spec: no sharding of the sequence or head-dim axes).
#
# Two costs of the bias form, both jax's: the bias is read by every head, and jax 0.10.2 asks
# cuDNN for the bias gradient whatever the bias's shape (should_export_dbias returns True), so
# the backward writes a [B, 1, L, L] dbias that nothing reads (our bias is built from a boolean
# mask and has no gradient). cuDNN versions before dbias support for [B, 1, L, L] biases (only
# [1, H, L, L] at first; jax#30593) would fail there: the GPU test in
# tests/test_attention_impl.py compiles exactly this backward.

# cuDNN's fused attention kernels run on NVIDIA Ampere (sm80) and newer (cuDNN's SDPA support
# matrix; jax's own tests skip below 8.0). The head dim may be up to 256 from Hopper (sm90) on,
# 128 before (check_is_flash_attention).
CUDNN_MIN_CAPABILITY = (8, 0)
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)  # check_layout: fp16/bf16 (fp8 needs scale params)

_cudnn_inputs_on_xla: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "cudnn_inputs_on_xla", default=None)


@contextlib.contextmanager
def cudnn_inputs_on_xla(compute_capability: tuple[int, int] = (9, 0)):
  """Inside it, "cudnn" models are planned as on a CUDA GPU of `compute_capability` (the same
  fallbacks, the same kv_lengths or bias inputs) but those inputs go to jax's XLA
  implementation: the conversion from masks to cuDNN's inputs is checked on any machine.
  Read when the model is traced, as mesh.tracing_context."""
  token = _cudnn_inputs_on_xla.set(tuple(compute_capability))
  try:
    yield
  finally:
    _cudnn_inputs_on_xla.reset(token)


def cuda_compute_capability() -> tuple[int, int] | None:
  """(major, minor) of the first device of JAX's default backend when it is a CUDA GPU, else
  None (a CPU, a TPU, or a ROCm GPU, where cuDNN does not exist)."""
  device = jax.devices()[0]
  # jax's own test for CUDA (check_compute_capability): 'cuda' in the platform version.
  if device.platform != "gpu" or "cuda" not in device.client.platform_version.lower():
    return None
  major, minor = device.compute_capability.split(".")[:2]
  return int(major), int(minor)


def cudnn_fallback_reason(dtype, head_dim: int, length: int, *, uses_bias: bool,
                          attention_dropout: bool, sequence_sharded: bool = False,
                          compute_capability: tuple[int, int] | None) -> str | None:
  """Why cuDNN flash attention cannot run this configuration (None: it can).

  dtype: q/k/v's (the model's compute dtype); uses_bias: the mask goes in as a bias rather than
  as kv lengths; attention_dropout: training with attention dropout; sequence_sharded: the mesh
  rules shard the "length" or "kv" activation axis; compute_capability: the CUDA GPU's, None
  without one (cuda_compute_capability()).
  """
  if attention_dropout:
    # jax.nn.dot_product_attention has no dropout argument; attention_with_dropout does it.
    return ("attention dropout in training: jax.nn.dot_product_attention has no dropout, so "
            "the explicit attention with dropout runs (model.attention_dropout_rate=0 lets cuDNN "
            "run in training too)")
  if compute_capability is None:
    return f"no CUDA GPU (JAX's default backend is {jax.default_backend()}): cuDNN needs one"
  if tuple(compute_capability) < CUDNN_MIN_CAPABILITY:
    return (f"compute capability {compute_capability[0]}.{compute_capability[1]}: cuDNN flash "
            "attention needs 8.0 (Ampere) or newer")
  if jnp.dtype(dtype) not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
    return (f"model.dtype {jnp.dtype(dtype).name}: cuDNN flash attention takes bfloat16 or "
            "float16 inputs only (model.dtype=bfloat16)")
  head_dim_max = 256 if tuple(compute_capability) >= (9, 0) else 128
  if head_dim % 8 or head_dim > head_dim_max:
    return (f"head dim {head_dim}: cuDNN needs a multiple of 8, at most {head_dim_max} on "
            f"compute capability {compute_capability[0]}.{compute_capability[1]}")
  if sequence_sharded:
    return ("mesh.rules shard the length or kv axis: cuDNN attention may be sharded over batch "
            "and heads only")
  if uses_bias and length % 2:
    # Checked only when differentiated, but whether a caller takes gradients is not known here.
    return (f"sequence length {length} is odd: cuDNN needs even lengths for an attention bias "
            "in training (pad rows to an even length)")
  return None


@functools.cache
def _log_fallback(reason: str) -> None:
  # Once per reason and process: the model is traced once per layer stack, step and shape.
  logging.warning("model.attention_impl=cudnn falls back to XLA attention: %s", reason)


@dataclasses.dataclass(frozen=True)
class AttentionPlan:
  """How the encoder's attention runs (static: decided while tracing).

  form: "mask" (boolean mask, the XLA path), "kv_lengths" or "bias" (the cuDNN path's inputs,
  see the section comment). implementation: jax.nn.dot_product_attention's argument (None on
  the mask path, exactly today's call). fallback: why "cudnn" was not used, or None.
  """
  form: str
  implementation: str | None = None
  fallback: str | None = None


def plan_attention(impl: str, *, dtype, head_dim: int, length: int, key_padding_only: bool,
                   attention_dropout: bool, sequence_sharded: bool = False) -> AttentionPlan:
  """The AttentionPlan of model.attention_impl `impl` for these static facts; a fallback from
  "cudnn" is logged (once per reason)."""
  if impl == "xla":
    return AttentionPlan("mask")
  if impl != "cudnn":
    raise ValueError(f"model.attention_impl must be 'xla' or 'cudnn', got {impl!r}")
  checked_on_xla = _cudnn_inputs_on_xla.get()
  capability = checked_on_xla or cuda_compute_capability()
  reason = cudnn_fallback_reason(dtype, head_dim, length, uses_bias=not key_padding_only,
                                 attention_dropout=attention_dropout,
                                 sequence_sharded=sequence_sharded, compute_capability=capability)
  if reason is not None:
    _log_fallback(reason)
    return AttentionPlan("mask", fallback=reason)
  return AttentionPlan("kv_lengths" if key_padding_only else "bias",
                       implementation="xla" if checked_on_xla else "cudnn")


@functools.partial(jax.tree_util.register_dataclass, data_fields=("mask", "bias", "kv_lengths"),
                   meta_fields=("implementation",))
@dataclasses.dataclass(frozen=True)
class AttentionInputs:
  """What every layer's attention reads, built once per forward (Encoder.__call__): exactly one
  of mask (bool [B|1, 1|H, L, L]), bias ([B, 1|H, L, L], compute dtype) and kv_lengths (int32
  [B]) is set. A pytree: the arrays are traced, the implementation is static, so it passes
  through nn.scan and nn.remat like the bare mask did."""
  mask: jax.Array | None = None
  bias: jax.Array | None = None
  kv_lengths: jax.Array | None = None
  implementation: str | None = None


def masked_bias_value(dtype) -> float:
  """The bias of a masked (query, key) pair in `dtype`: large, finite and negative.

  Finite so that a fully masked row (a padding query of segment 0) stays finite, as on the
  XLA path. bf16 and fp16 take jax's own values for cuDNN (get_large_negative_number: -2^41 and
  -2^15, "as cuDNN has a bug for subtraction between two large negative value[s]"); float32
  (the XLA check of the conversion) the mask path's -0.7 * max.
  """
  dtype = jnp.dtype(dtype)
  if dtype == jnp.dtype(jnp.bfloat16):
    return -2.0 ** 41
  if dtype == jnp.dtype(jnp.float16):
    return -2.0 ** 15
  return -0.7 * float(jnp.finfo(dtype).max)


def mask_to_bias(mask: jax.Array, batch: int, dtype) -> jax.Array:
  """Boolean mask [B|1, 1|H, L, L] as an additive bias [B, 1|H, L, L] in `dtype` (the compute
  dtype: a float32 bias beside bf16 q/k/v gives NaN gradients in cuDNN, jax#32242).

  0 where the query may attend, masked_bias_value elsewhere. The batch axis is materialised
  (a batch of 1 is broadcast to B) and the query axis must be whole: cuDNN reads the bias as
  [B, N, T, S] and refuses [B, 1, 1, K].
  """
  if mask.ndim != 4 or mask.shape[2] != mask.shape[3] or mask.shape[0] not in (1, batch):
    raise ValueError(f"mask_to_bias needs a [B|1, 1|H, L, L] mask with B={batch} (the query "
                     f"axis whole, not [B, 1, 1, L]); got {mask.shape}")
  mask = jnp.broadcast_to(mask, (batch,) + mask.shape[1:])
  return jnp.where(mask, jnp.zeros((), dtype), jnp.asarray(masked_bias_value(dtype), dtype))


def real_tokens_first(key_is_real: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(order, inverse, kv_lengths) of rows with key_is_real [B, L].

  `take_along_axis(x, order, 1)` moves each row's real tokens to the front, in their order, and
  `inverse` undoes it. Applied to a row's ids, positions and languages this makes it right-padded
  whatever its padding was: XLM-R positions count real tokens only, so a left-padded row is read
  exactly as its right-padded copy (the encoder is token-wise apart from attention, and
  attention over a set of keys does not depend on their order). A right-padded row keeps its
  order. kv_lengths [B] int32 counts the real tokens, at least 1: an all-padding row (a filler
  row) then attends to one padding key rather than to none, whose result cuDNN leaves
  undefined; nothing reads such a row.
  """
  # A stable sort of 0 (real) before 1 (padding): O(L log L) on [B, L] ints per forward.
  order = jnp.argsort(jnp.where(key_is_real, 0, 1).astype(jnp.int32), axis=1, stable=True)
  inverse = jnp.argsort(order, axis=1)
  kv_lengths = jnp.maximum(jnp.sum(key_is_real, axis=1, dtype=jnp.int32), 1)
  return order.astype(jnp.int32), inverse.astype(jnp.int32), kv_lengths


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          inputs: AttentionInputs) -> jax.Array:
  """Attention without dropout: query/key/value [B, L, H, Dh] -> [B, L, H, Dh], masked by
  `inputs` (one of its mask, bias or kv_lengths)."""
  if inputs.mask is not None:
    return jax.nn.dot_product_attention(query, key, value, mask=inputs.mask)
  if inputs.bias is not None:
    # jax checks this only on a GPU (check_layout); checked here too, so that a CPU test of
    # the conversion fails where the GPU would.
    batch, length = query.shape[:2]
    bias = inputs.bias
    if (bias.ndim != 4 or bias.shape[0] != batch or bias.shape[2:] != (length, key.shape[1])
        or bias.dtype != query.dtype):
      raise ValueError(f"cuDNN attention bias must be [B={batch}, 1|H, {length}, {key.shape[1]}] "
                       f"in {query.dtype}; got {bias.shape} {bias.dtype}")
  # No query lengths: padding queries attend to the real keys, as on the mask path (cuDNN would
  # zero their outputs otherwise); nothing reads them either way.
  return jax.nn.dot_product_attention(query, key, value, bias=inputs.bias,
                                      key_value_seq_lengths=inputs.kv_lengths,
                                      implementation=inputs.implementation)
