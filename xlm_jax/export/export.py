"""Exported encoders: a self-contained folder, and sentence embeddings from it.

    <export_dir>/
      params.msgpack   flax.serialization msgpack of the (unboxed, numpy) parameter tree
      config.json      {"format_version", "xlm_jax_version", "encoder": EncoderConfig fields,
                        "languages", "special_ids", "metadata": extra metadata}
      spm.model        the SentencePiece model the encoder was trained with

    enc = load_pretrained("workdir/export")
    vectors = enc.encode(["Hallo Welt", "Bonjour"], lang="de")     # [2, hidden_size] float32
    enc.fill_mask(["Datei nicht <mask>"], lang="de", top_k=3)      # the top pieces at <mask>

An export has no vocabulary padding: its tables have exactly vocab_size rows and its config.json
says vocab_multiple 1, whatever padding the training mesh needed (models/encoder.py).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import pathlib
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
from jax.sharding import Mesh, NamedSharding

from xlm_jax import mesh as mesh_lib
from xlm_jax.atomic_files import check_replaceable, write_directory_atomically
from xlm_jax.data.tokenizer import (MASK_PIECE, SPM_FILE, TAGGED_DIR, Tokenizer, encode_texts,
                                    has_tokenizer_files, read_tokenizer_files, tokenizer_files)
from xlm_jax.models.encoder import (EncoderConfig, Model, abstract_params, convert_params,
                                    param_shapes, shapes_by_path)
from xlm_jax.models.encoder_config import with_legacy_defaults

FORMAT_VERSION = 1
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = SPM_FILE          # the data layer owns the tokenizer files' layout
TAGGED_TOKENIZER_DIR = TAGGED_DIR  # a "no anchors" vocabulary: one model per language
POOLINGS = ("mean", "cls", "layer")
# Files every export has: an existing folder without them is not an export, and is never replaced.
EXPORT_MARKERS = (CONFIG_FILE, PARAMS_FILE)


def _package_version() -> str:
  try:
    return importlib.metadata.version("xlm-jax")
  except importlib.metadata.PackageNotFoundError:
    return "unknown (xlm-jax is not pip-installed)"


def _to_numpy(params) -> Any:
  """Unboxed parameter tree as host numpy arrays (the caller gathers multi-host arrays)."""
  params = nn.meta.unbox(params)
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]  # accept the variables dict as well as the params collection

  def to_host(x):
    # np.asarray of an array with shards on other hosts would fail; say how to gather it instead.
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      raise ValueError("export_model got a parameter spread over several hosts; gather it first "
                       "(jax.experimental.multihost_utils.process_allgather) on every process")
    return np.asarray(x)
  return jax.tree.map(to_host, params)


def _short_path(key: str) -> str:
  """"['encoder']['layer_0']['output']['kernel']" -> "encoder/layer_0/output/kernel"."""
  return "/".join(part.strip("'\"") for part in key.strip("[]").split("]["))


def _mismatches(want: dict, got: dict, config: EncoderConfig, config_name: str,
                limit: int = 4) -> list[str]:
  """One line per difference between the expected and the given parameter shapes, naming the
  config field that sets the expected size (e.g. "encoder/embeddings/word_embeddings/embedding
  has shape (8000, 128) but config.json says vocab_size 9000")."""
  fields = {k: v for k, v in config.to_dict().items()
            # bool is an int subclass: keep flags such as scan_layers out of the size hints.
            if isinstance(v, int) and not isinstance(v, bool)}
  # head_dim is derived, not a field: name it by the fields that set it.
  fields["hidden_size / num_heads"] = config.head_dim
  if config.padded_vocab_size != config.vocab_size:
    fields["vocab_size rounded up to vocab_multiple"] = config.padded_vocab_size
  lines = []
  for key in sorted(set(want) | set(got)):
    w, g, name = want.get(key), got.get(key), _short_path(key)
    if w == g:
      continue
    if g is None:
      hint = ("num_layers or scan_layers" if "layer" in name else
              "num_languages or separate_embeddings" if "lang" in name else "its encoder fields")
      lines.append(f"{name} is missing, but {config_name}'s encoder builds it (check {hint})")
    elif w is None:
      hint = ("num_layers or scan_layers" if "layer" in name else
              "num_languages or separate_embeddings" if "lang" in name else "its encoder fields")
      lines.append(f"{name} is present, but {config_name}'s encoder does not build it (check {hint})")
    elif len(w) != len(g):
      lines.append(f"{name} has shape {g} but {config_name} builds {w} (scan_layers "
                   f"{config.scan_layers})")
    else:
      says = []
      for want_dim, got_dim in zip(w, g):
        if want_dim != got_dim:
          named = [f"{field} {value}" for field, value in fields.items() if value == want_dim]
          says.append(" / ".join(named) if named else f"size {want_dim}")
      lines.append(f"{name} has shape {g} but {config_name} says {', '.join(says)}")
    if len(lines) == limit:
      break
  return lines


def _check_params_match(params, config: EncoderConfig, what: str = "export_model: params",
                        config_name: str = "encoder_config") -> None:
  """Raises unless `params` has exactly the paths and shapes `config` builds (no compute)."""
  # The models' param_shapes (abstract init, no memory) is also what resume compares.
  want, got = param_shapes(config), shapes_by_path(params)
  if want != got:
    lines = _mismatches(want, got, config, config_name)
    raise ValueError(f"{what} do not match {config_name}: {'; '.join(lines)}")


def check_export_dir(export_dir) -> pathlib.Path:
  """The absolute export folder if export_model may write it: absent, empty, or an earlier
  export (it holds config.json and params.msgpack). Any other existing path is refused with a
  ValueError naming it, so that exporting never deletes a user's files. Writes nothing."""
  export_dir = pathlib.Path(export_dir).expanduser().absolute()
  check_replaceable(export_dir, EXPORT_MARKERS, "xlm-jax export")
  return export_dir


def export_model(export_dir, params, encoder_config: dict, tokenizer_bytes: bytes | dict,
                 extra_metadata: dict | None = None) -> pathlib.Path:
  """Writes params.msgpack, config.json and the tokenizer into export_dir, atomically.

  Args:
    export_dir: target folder; an existing export there is replaced. Any other non-empty folder
      (one without config.json and params.msgpack) is refused, before anything is written.
    params: the model's params collection (boxed or not, device or host arrays on one host).
    encoder_config: EncoderConfig fields (validated; must match the params' shapes). The export
      stores them with vocab_multiple 1 and the params without their padding rows.
    tokenizer_bytes: the serialized SentencePiece model (Tokenizer.serialized()), or the files of
      a language-tagged "no anchors" tokenizer (LanguageTaggedTokenizer.files()), which go to
      tokenizer/ and need the language at encode time.
    extra_metadata: JSON-serializable; its "languages" list (in lang_id order) is stored at the
      top level and is required when the encoder has language embeddings.
  Returns the export folder.
  """
  export_dir = check_export_dir(export_dir)
  config = EncoderConfig.from_dict(encoder_config)
  if isinstance(tokenizer_bytes, dict):
    from xlm_jax.data.tokenizer_variants import LanguageTaggedTokenizer
    tokenizer = LanguageTaggedTokenizer.from_files(tokenizer_bytes)
  else:
    tokenizer = Tokenizer.from_bytes(tokenizer_bytes)
  # The model's vocabulary may be larger (2 V with a derived `trans` language), never smaller.
  if tokenizer.vocab_size > config.vocab_size or tokenizer.pad_id != config.pad_id:
    raise ValueError(f"export_model: tokenizer (vocab {tokenizer.vocab_size}, pad {tokenizer.pad_id}) "
                     f"does not fit encoder_config (vocab_size {config.vocab_size}, pad_id "
                     f"{config.pad_id}); pass the tokenizer the model was trained with")
  metadata = dict(extra_metadata or {})
  languages = [str(lang) for lang in metadata.pop("languages", [])]
  # Without the list, an export could not map `lang=` to the lang ids it was trained with.
  if config.num_languages and len(languages) != config.num_languages:
    raise ValueError(f"export_model: the encoder has {config.num_languages} language embeddings; "
                     f"extra_metadata['languages'] must list them in lang_id order (got {languages})")
  host_params = _to_numpy(params)
  # Checked before anything is written: a mismatched export would only fail when loaded.
  _check_params_match(host_params, config)
  # Written without vocabulary padding: the padding suits the training mesh, not the reader, and
  # external converters then see exactly vocab_size rows.
  unpadded = dataclasses.replace(config, vocab_multiple=1)
  host_params = convert_params(host_params, config, unpadded)
  try:
    config_json = json.dumps({
        "format_version": FORMAT_VERSION,
        "xlm_jax_version": _package_version(),
        "encoder": unpadded.to_dict(),
        "languages": languages,
        "special_ids": {"bos": tokenizer.bos_id, "pad": tokenizer.pad_id, "eos": tokenizer.eos_id,
                        "unk": tokenizer.unk_id, "mask": tokenizer.mask_id,
                        "all": list(tokenizer.special_ids)},
        "metadata": metadata,
    # sort_keys: the same export always writes a byte-identical config.json.
    }, indent=2, sort_keys=True)
  except TypeError as err:
    raise ValueError(f"export_model: extra_metadata must be JSON-serializable: {err}") from err
  # Atomic: an interrupted export leaves the previous one (or nothing), never a mix of files.
  write_directory_atomically(export_dir, {
      PARAMS_FILE: functools.partial(write_params_msgpack, host_params),
      CONFIG_FILE: config_json.encode("utf-8"),
      **tokenizer_files(tokenizer),
  }, markers=EXPORT_MARKERS, what="xlm-jax export")
  return export_dir


def write_params_msgpack(params: dict, f) -> None:
  """Writes flax.serialization.msgpack_serialize(params) to `f`, one array at a time.

  The same bytes (a msgpack map per dict, keys sorted as msgpack_serialize's tree_map leaves
  them; arrays chunked above flax's MAX_CHUNK_SIZE as flax chunks them; each array as flax's
  ndarray extension), but an array's data goes from its own memory straight to the file: flax
  would hold three copies of the largest array (tobytes, its packed tuple, the packed file), a
  2.3 GiB peak for XLM-R base's embedding table. tests/test_hf.py compares the bytes.
  """
  packer = msgpack.Packer(use_bin_type=True, strict_types=True)

  def write(node, sort: bool) -> None:
    if isinstance(node, dict):
      f.write(packer.pack_map_header(len(node)))
      for key, value in (sorted(node.items()) if sort else node.items()):
        f.write(packer.pack(key))
        write(value, sort)
    elif isinstance(node, (np.ndarray, jax.Array, np.generic)):
      array = np.asarray(node)
      chunked = flax.serialization._chunk_array_leaves_in_place(array)
      if isinstance(chunked, dict):  # built in flax's own key order: kept as it is
        write(chunked, False)
      else:
        _write_ndarray(f, packer, array, np.isscalar(node) or isinstance(node, np.generic))
    else:
      f.write(packer.pack(node))
  write(params, True)


def _write_ndarray(f, packer, array: np.ndarray, scalar: bool) -> None:
  """flax's ndarray msgpack extension: ext(type, packb((shape, dtype name, C-order bytes)))."""
  if array.dtype.hasobject or array.dtype.isalignedstruct:
    raise ValueError("object and structured dtypes cannot be exported")
  data = np.ascontiguousarray(array)  # a copy only for a non-contiguous view
  size = data.nbytes
  # packb((shape, name, b"")) ends in an empty bin (c4 00): swap in the real bin header.
  prefix = msgpack.packb((tuple(data.shape), data.dtype.name, b""), use_bin_type=True)[:-2]
  if size < 2**8:
    bin_header = bytes([0xc4, size])
  elif size < 2**16:
    bin_header = b"\xc5" + size.to_bytes(2, "big")
  else:
    bin_header = b"\xc6" + size.to_bytes(4, "big")
  length = len(prefix) + len(bin_header) + size
  kind = int(flax.serialization._MsgpackExtType.npscalar if scalar
             else flax.serialization._MsgpackExtType.ndarray)
  fixed = {1: 0xd4, 2: 0xd5, 4: 0xd6, 8: 0xd7, 16: 0xd8}
  if length in fixed:
    ext_header = bytes([fixed[length], kind])
  elif length < 2**8:
    ext_header = bytes([0xc7, length, kind])
  elif length < 2**16:
    ext_header = b"\xc8" + length.to_bytes(2, "big") + bytes([kind])
  else:
    ext_header = b"\xc9" + length.to_bytes(4, "big") + bytes([kind])
  f.write(ext_header + prefix + bin_header)
  # Viewed as bytes: custom dtypes (ml_dtypes' bfloat16) have no buffer format of their own.
  f.write(memoryview(data.reshape(-1).view(np.uint8)))


@functools.partial(jax.jit, static_argnames=("model", "pooling", "layer"))
def _pooled_forward(model: Model, params, input_ids, lang_ids, pooling: str, layer: int):
  """[B, D] float32 sentence vectors of one padded batch."""
  c = model.config
  encode = functools.partial(model.apply, {"params": params}, input_ids, lang_ids=lang_ids,
                             method=Model.encode)
  if pooling == "layer":
    hidden = encode(return_all_layers=True)[1][layer]
  else:
    hidden = encode()
  # Pool in float32: bf16 sums over a long row would lose precision.
  hidden = hidden.astype(jnp.float32)
  if pooling == "cls":
    return hidden[:, 0]
  # Mean over real tokens only; the floor of 1 keeps the all-padding filler rows at 0, not NaN.
  real = (input_ids != c.pad_id)[..., None].astype(jnp.float32)
  return jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)


def _mlm_logits_at(model: Model, params, input_ids, key_mask, lang_ids, label_positions):
  """Real-vocabulary logits [B, P, vocab_size] (float32) at label_positions [B, P].

  key_mask [B, L] bool: True where a key may be attended to (Hugging Face's attention_mask).
  Positions are the model's XLM-R default, counted over the non-padding ids.
  """
  batch, length = input_ids.shape
  mask = jnp.broadcast_to(key_mask[:, None, None, :], (batch, 1, length, length))
  logits = model.apply({"params": params}, input_ids, label_positions=label_positions,
                       lang_ids=lang_ids, attention_mask=mask)
  # The padding columns (a model still laid out for a training mesh) are not vocabulary.
  return logits[..., :model.config.vocab_size]


@functools.partial(jax.jit, static_argnames=("model",))
def _mlm_logits(model: Model, params, input_ids, key_mask, lang_ids):
  """[B, L, vocab_size] logits at every position."""
  batch, length = input_ids.shape
  everywhere = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return _mlm_logits_at(model, params, input_ids, key_mask, lang_ids, everywhere)


@functools.partial(jax.jit, static_argnames=("model", "top_k"))
def _top_pieces(model: Model, params, input_ids, lang_ids, label_positions, top_k: int):
  """(probabilities, ids) [B, P, top_k] of the most likely pieces at label_positions, best first.

  On the device and at the masked positions only: [B, L, V] logits of a 250k vocabulary would
  be gigabytes on the host.
  """
  logits = _mlm_logits_at(model, params, input_ids, input_ids != model.config.pad_id, lang_ids,
                          label_positions)
  return jax.lax.top_k(jax.nn.softmax(logits, axis=-1), top_k)


def _checked_texts(texts, method: str) -> list[str]:
  """`texts` as a list of str, or a TypeError naming `method` and the item that is not one."""
  # A lone str is iterable too and would be encoded character by character.
  if isinstance(texts, (str, bytes)):
    raise TypeError(f"{method} takes a list of strings, got one {type(texts).__name__}; wrap a "
                    "single text as [text]")
  try:
    texts = list(texts)
  except TypeError:
    raise TypeError(f"{method} takes a list of strings, got {type(texts).__name__} "
                    f"{texts!r:.60}") from None
  for index, text in enumerate(texts):
    if not isinstance(text, str):
      hint = " (decode bytes first: text.decode('utf-8'))" if isinstance(text, bytes) else ""
      raise TypeError(f"{method} takes a list of strings, but texts[{index}] is "
                      f"{type(text).__name__} {text!r:.60}{hint}")
  return texts


def param_shardings(config: EncoderConfig, mesh: Mesh, rules=mesh_lib.DEFAULT_RULES):
  """NamedShardings of the params `config` builds, laid out over `mesh` as training lays them out:
  each parameter's logical axis names mapped to mesh axes by `rules` (the config's mesh.rules)."""
  return mesh_lib.shardings_from_boxed(abstract_params(config), mesh, rules)


def params_mesh(params) -> Mesh | None:
  """The mesh `params` are sharded over, or None when they sit on one device (or on the host)."""
  sharding = getattr(next(iter(jax.tree.leaves(params)), None), "sharding", None)
  if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
    return sharding.mesh
  return None


def _device_batch(arrays, mesh: Mesh | None):
  """Host batch arrays (rows first; None passes through) on the devices.

  With a mesh, rows are split over its batch axes (data, fsdp) as training splits them, so each
  device encodes its own rows against its shards of the params. Every process holds the whole
  host batch here (it encodes the same texts), so each device's rows are cut from it directly,
  on one host or many. Without a mesh: an explicit transfer to the default device, so this also
  runs under jax.transfer_guard("disallow").
  """
  if mesh is None:
    return jax.device_put(arrays)
  sharding = mesh_lib.batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda index: x[index]), arrays)


def _power_of_two(n: int, low: int, high: int) -> int:
  """The power of two >= n, within [low, high]: padded shapes, so few of them are compiled."""
  return min(high, max(low, 1 << (max(n, 1) - 1).bit_length()))


class Pretrained(NamedTuple):
  """A loaded encoder: `model, params, tokenizer, config = load_pretrained(path)`.

  Params on one device encode on that device. Params sharded over a mesh (`shard(mesh)`, or
  `load_pretrained(path, mesh=mesh)`, or a restored workdir) make encode split its batches over
  the same mesh, so a model too big for one chip is evaluated the way it was trained.
  """
  model: Model
  params: Any
  tokenizer: Tokenizer
  config: dict  # the export's config.json (or {} for an in-training encoder)

  def shard(self, mesh: Mesh, rules=None) -> "Pretrained":
    """This encoder with its params laid out over `mesh` by the sharding `rules` (None: the
    training default, mesh.rules of the config).

    From host (numpy) params each device receives only its shards: the whole tree is never
    placed on one device.
    """
    if tuple(mesh.axis_names) != mesh_lib.MESH_AXES:
      raise ValueError(f"shard: the mesh has axes {mesh.axis_names}, not xlm-jax's "
                       f"{mesh_lib.MESH_AXES}; make one with jax.make_mesh(shape, "
                       f"{mesh_lib.MESH_AXES})")
    # Auto axes, as training's meshes have: XLA propagates the params' shardings through the
    # forward pass (jax.make_mesh's Explicit axes would ask for an out_sharding at every gather).
    mesh = Mesh(mesh.devices, mesh.axis_names,
                axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))
    rules = mesh_lib.DEFAULT_RULES if rules is None else rules
    shardings = param_shardings(self.model.config, mesh, rules)
    return self._replace(params=jax.device_put(self.params, shardings))

  @property
  def sentence_specials(self) -> bool:
    """Whether sentences are encoded as `<s> pieces </s>`: False for a model whose sentence
    objective read them without (EMS's reference recipe, objectives.ems.sentence_specials),
    as recorded in the export's metadata."""
    return bool(self.config.get("metadata", {}).get("sentence_specials", True))

  def encode(self, texts: Sequence[str], lang: str | None = None, pooling: str = "mean",
             layer: int = -1, batch_size: int = 64, max_len: int | None = None) -> np.ndarray:
    """Sentence vectors [N, hidden_size] (float32) of `texts`.

    Each text becomes `<s> pieces </s>` (pieces cut to max_len - 2), or the pieces alone (cut to
    max_len) for a model trained without them (`sentence_specials`). Poolings: "mean" = mean of
    the last layer over the sentence's tokens (incl. <s> and </s>), "cls" = the last layer at
    <s>, "layer" = the "mean" pooling of hidden state `layer` (0 = embeddings, -1 = last).
    `lang` is required when the encoder has language embeddings or language-specific parts
    (separate_embeddings / separate_layers): all of `texts` then go through that language's
    embeddings and layers, as its sentences did in training. Batches are padded to
    `batch_size` rows and a power-of-two length, so few shapes are ever compiled.
    """
    c = self.model.config
    texts = _checked_texts(texts, "encode")
    if pooling not in POOLINGS:
      raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling != "layer" and layer != -1:
      raise ValueError(f"layer={layer} is only used with pooling='layer' (got pooling={pooling!r})")
    if not -(c.num_layers + 1) <= layer <= c.num_layers:
      raise ValueError(f"layer must be in [-{c.num_layers + 1}, {c.num_layers}] "
                       f"(0 = embeddings, {c.num_layers} = last), got {layer}")
    longest = c.max_positions - c.pad_id - 1  # positions start at pad_id + 1
    max_len = longest if max_len is None else max_len
    if not 3 <= max_len <= longest:
      raise ValueError(f"max_len must be in [3, {longest}] for max_positions={c.max_positions}, "
                       f"got {max_len}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lang_index = self._language_index(lang)

    mesh = params_mesh(self.params)
    if mesh is not None:
      # Every device of the batch axes gets the same number of rows.
      shards = mesh_lib.data_parallel_size(mesh)
      batch_size = -(-batch_size // shards) * shards

    tok = self.tokenizer
    if self.sentence_specials:
      rows = [[tok.bos_id] + ids[:max_len - 2] + [tok.eos_id]
              for ids in encode_texts(tok, list(texts), lang)]
    elif pooling == "cls":
      raise ValueError("pooling='cls' reads the <s> token, and this model was trained to encode "
                       "sentences without <s> and </s> (metadata sentence_specials false): use "
                       "pooling='mean' or 'layer'")
    else:  # an empty text stays an all-padding row: its mean pools to zeros
      rows = [ids[:max_len] for ids in encode_texts(tok, list(texts), lang)]
    vectors = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      # Power-of-two width (at least 8) and full batch_size rows: each new shape is a jit compile.
      width = min(max_len, max(8, 1 << (max(map(len, chunk)) - 1).bit_length()))
      ids = np.full((batch_size, width), c.pad_id, np.int32)
      for i, row in enumerate(chunk):
        ids[i, :len(row)] = row
      lang_ids = np.full_like(ids, lang_index) if c.num_languages else None
      ids, lang_ids = _device_batch((ids, lang_ids), mesh)
      # Sharded params: traced with the mesh, so the activations stay split by rows as well.
      with mesh_lib.tracing_context(mesh):
        pooled = _pooled_forward(self.model, self.params, ids, lang_ids, pooling, layer)
      # host_copy gathers rows held by other hosts; [:len(chunk)] drops the filler rows.
      vectors.append(np.asarray(mesh_lib.host_copy(pooled))[:len(chunk)])
    if not vectors:
      return np.zeros((0, c.hidden_size), np.float32)
    return np.concatenate(vectors)

  def mlm_logits(self, input_ids, attention_mask=None, lang: str | None = None) -> np.ndarray:
    """Masked-LM logits [B, L, vocab_size] (float32) at every position of input_ids [B, L].

    The whole model, encoder and tied MLM head, as Hugging Face's
    `XLMRobertaForMaskedLM(input_ids, attention_mask).logits`: attention_mask is the [B, L] 0/1
    key mask (default input_ids != the pad id), positions are XLM-R's (counted over the
    non-padding ids), and only the vocab_size real columns come back. `lang` as in encode.
    Each new [B, L] shape is compiled once.

        enc = load_pretrained("workdir/export")
        tok = enc.tokenizer
        ids = [[tok.bos_id, *tok.encode(["Hallo Welt"])[0], tok.eos_id]]
        logits = enc.mlm_logits(np.asarray(ids))            # [1, L, vocab_size]
    """
    c = self.model.config
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"mlm_logits: input_ids must be a non-empty integer array [B, L], got "
                       f"{ids.dtype} of shape {ids.shape}")
    longest = c.max_positions - c.pad_id - 1  # positions start at pad_id + 1
    if ids.shape[1] > longest:
      raise ValueError(f"mlm_logits: input_ids has length {ids.shape[1]}, more than the {longest} "
                       f"positions of this encoder (max_positions={c.max_positions})")
    if ids.min() < 0 or ids.max() >= c.vocab_size:
      raise ValueError(f"mlm_logits: input_ids must be in [0, {c.vocab_size}) (vocab_size), got "
                       f"values in [{ids.min()}, {ids.max()}]")
    if attention_mask is None:
      key_mask = ids != c.pad_id
    else:
      key_mask = np.asarray(attention_mask)
      if key_mask.shape != ids.shape or not np.isin(key_mask, (0, 1)).all():
        raise ValueError(f"mlm_logits: attention_mask must be 0/1 of input_ids' shape {ids.shape} "
                         f"(1 = a token to attend to), got shape {key_mask.shape}")
      key_mask = key_mask.astype(bool)
    lang_index = self._language_index(lang)
    lang_ids = np.full(ids.shape, lang_index, np.int32) if c.num_languages else None
    # Explicit transfers both ways, so this also runs under jax.transfer_guard("disallow").
    inputs = jax.device_put((ids.astype(np.int32), key_mask, lang_ids))
    return np.asarray(jax.device_get(_mlm_logits(self.model, self.params, *inputs)))

  def fill_mask(self, texts: Sequence[str], lang: str | None = None, top_k: int = 5,
                batch_size: int = 64) -> list[list[list[dict]]]:
    """The top_k most likely pieces at each <mask> of each text, to check a model by eye.

    Each text holds one or more literal "<mask>" (the tokenizer's mask piece) and becomes
    `<s> pieces </s>`; a lone "▁" piece before a <mask> is dropped, as XLM-R's mask token
    absorbs the space before it (a masked word was one "▁word" piece in training). Returns, per
    text, one list per <mask> (left to right) of top_k dicts {"token_id", "piece", "score"},
    score being the softmax probability over the real vocabulary, best first. `lang` as in
    encode. A text without <mask> is a ValueError naming its index.

        enc = load_pretrained("workdir/export")
        enc.fill_mask(["File not <mask>"], lang="en", top_k=3)
        # [[[{"token_id": 812, "piece": "▁found", "score": 0.41}, ...]]]
    """
    c, tok = self.model.config, self.tokenizer
    texts = _checked_texts(texts, "fill_mask")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= c.vocab_size:
      raise ValueError(f"fill_mask: top_k must be a whole number in [1, {c.vocab_size}] "
                       f"(vocab_size), got {top_k!r}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lang_index = self._language_index(lang)
    longest = c.max_positions - c.pad_id - 1
    rows = []
    for index, ids in enumerate(encode_texts(tok, texts, lang)):
      if tok.mask_id not in ids:
        raise ValueError(f"fill_mask: texts[{index}] has no {MASK_PIECE} ({texts[index]!r:.60}); "
                         f"write {MASK_PIECE} where a piece is to be predicted")
      ids = [i for j, i in enumerate(ids) if not (
          j + 1 < len(ids) and ids[j + 1] == tok.mask_id and tok.id_to_piece(i) == "▁")]
      if len(ids) + 2 > longest:
        raise ValueError(f"fill_mask: texts[{index}] is {len(ids) + 2} pieces with <s> and </s>, "
                         f"more than the {longest} positions of this encoder; shorten it")
      rows.append([tok.bos_id] + ids + [tok.eos_id])
    results = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start:start + batch_size]
      masks = [[j for j, i in enumerate(row) if i == tok.mask_id] for row in chunk]
      # Padded rows, length and mask count (power-of-two sizes): few shapes are compiled. The
      # filler slots point at <s> and are dropped below.
      ids = np.full((_power_of_two(len(chunk), 1, batch_size),
                     _power_of_two(max(map(len, chunk)), 8, longest)), c.pad_id, np.int32)
      positions = np.zeros((ids.shape[0], _power_of_two(max(map(len, masks)), 1, longest)),
                           np.int32)
      for i, (row, slots) in enumerate(zip(chunk, masks)):
        ids[i, :len(row)] = row
        positions[i, :len(slots)] = slots
      lang_ids = np.full_like(ids, lang_index) if c.num_languages else None
      inputs = jax.device_put((ids, lang_ids, positions))
      scores, top_ids = jax.device_get(_top_pieces(self.model, self.params, *inputs, top_k))
      for i, slots in enumerate(masks):
        results.append([[{"token_id": int(t), "piece": tok.id_to_piece(int(t)), "score": float(s)}
                         for t, s in zip(top_ids[i, m], scores[i, m])]
                        for m in range(len(slots))])
    return results

  def _language_index(self, lang: str | None) -> int:
    languages = list(self.config.get("languages", []))
    if lang is not None and languages and lang not in languages:
      raise ValueError(f"unknown language {lang!r}; this encoder knows {languages}")
    if not self.model.config.num_languages:
      return 0  # no language embeddings (XLM-R): the language does not change the input
    if lang is None:
      raise ValueError(f"this encoder has language embeddings{_language_parts(self.model.config)}"
                       f"; pass lang= one of {languages}")
    if not languages:
      raise ValueError("this encoder has language embeddings but its config lists no languages")
    return languages.index(lang)


def _language_parts(config: EncoderConfig) -> str:
  parts = [k for k in ("separate_embeddings", "separate_layers") if getattr(config, k)]
  return f" and language-specific parts ({', '.join(parts)})" if parts else ""


def load_pretrained(path, mesh: Mesh | None = None, rules=None) -> Pretrained:
  """Loads an export folder written by export_model: onto the default device, or with `mesh`
  sharded over it by `rules` (Pretrained.shard; each device receives only its shards)."""
  pretrained = read_export(path)
  if mesh is not None:
    return pretrained.shard(mesh, rules)
  # Placed on the device once here, not again on every forward call.
  return pretrained._replace(params=jax.device_put(pretrained.params))


def read_export(path) -> Pretrained:
  """An export folder as Pretrained with host (numpy) params: what converters read, without a
  device copy."""
  path = pathlib.Path(path).expanduser()
  if not path.is_dir():
    raise FileNotFoundError(f"export folder {path} does not exist; create one with "
                            "`xlm-jax export --workdir DIR` (or export_model)")
  # A language-tagged vocabulary lives in tokenizer/ and has no spm.model.
  tokenizer_file = () if has_tokenizer_files(path) else (TOKENIZER_FILE,)
  for name in (CONFIG_FILE, PARAMS_FILE, *tokenizer_file):
    if not (path / name).is_file():
      raise FileNotFoundError(f"{path / name} is missing: {path} is not a complete export; "
                              "export again with `xlm-jax export --workdir DIR`")
  try:
    config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
  except json.JSONDecodeError as err:
    raise ValueError(f"{path / CONFIG_FILE} is not valid JSON ({err}); export again") from err
  if config.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path / CONFIG_FILE}: format_version {config.get('format_version')!r} is not "
                     f"{FORMAT_VERSION}; export it again with this version of xlm-jax")
  if not isinstance(config.get("encoder"), dict):
    raise ValueError(f"{path / CONFIG_FILE} has no 'encoder' section (the EncoderConfig fields); "
                     "export again")
  try:
    # Exports written before vocab_multiple existed have no such key, and no padding rows.
    model = Model(EncoderConfig.from_dict(with_legacy_defaults(config["encoder"])))
  except (TypeError, ValueError) as err:
    raise ValueError(f"{path / CONFIG_FILE}: 'encoder' is not a valid encoder config ({err}); "
                     "export again") from err
  data = (path / PARAMS_FILE).read_bytes()
  try:
    params = flax.serialization.msgpack_restore(data)
  except Exception as err:  # msgpack's errors for a cut or damaged file have no common base
    raise ValueError(f"{path / PARAMS_FILE} cannot be read ({type(err).__name__}: {err}); the file "
                     f"({len(data)} bytes) is damaged or cut short: export again") from err
  if not isinstance(params, dict):
    raise ValueError(f"{path / PARAMS_FILE} holds a {type(params).__name__}, not a parameter tree; "
                     "export again")
  _check_params_match(params, model.config, what=f"{path / PARAMS_FILE}: the parameters",
                      config_name=str(path / CONFIG_FILE))
  tokenizer = read_tokenizer_files(path)
  return Pretrained(model, params, tokenizer, config)
