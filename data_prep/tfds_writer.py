"""Write the split text as TFDS datasets (array_record files, random access), streamed, without TensorFlow.

One dataset config per language: xlmj_mono/<lang> with {"text", "lang"} and xlmj_parallel/en_<lang> with
{"en", "xx", "lang"}, each with train and test splits. Readers use
`tfds.builder_from_directory(<tfds_dir>/xlmj_mono/<lang>/1.0.0).as_data_source(split)`.

write_mono / write_parallel take any re-iterable texts or pairs (lists, or the file views of
data_prep.user_corpora) and hold only a bounded buffer of them: each example is serialized as TFDS would
(a tf.train.Example), ordered as TFDS orders a split (md5 of split name + index; hashed_order.py, sorted on
disk), cut into TFDS's number of shards and written with the array_record writer TFDS uses. The dataset's
metadata (dataset_info.json, features.json) comes from the TFDS builder classes below, so the folder is the
one `download_and_prepare` would write, record for record. That path (write_with_tfds) holds up to 1 GB of
examples in TFDS's shuffle buffer, and every example passes through Python feature encoders (~20 us each);
it is kept as the reference the tests compare against.

Each dataset is written into a `.incomplete-*` folder and renamed into place when complete. TFDS cannot
describe an empty split, so a split without examples is not written; readers treat a split missing from the
dataset info as empty.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import tempfile

import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming, splits as tfds_splits
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.utils import shard_utils

from data_prep.hashed_order import DEFAULT_BUFFER_BYTES, HashedOrder

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
# One record per chunk (as TFDS writes them), so a random read decodes one record. Uncompressed, unlike
# TFDS's zstd default: a chunk of one sentence does not compress (zstd's framing made our files 5% larger)
# and the compression tripled the write time. Readers handle either.
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"


class _InMemoryBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder whose examples are passed in, with no source files next to its code.

  TFDS looks for a checksums file beside the builder's module, and the lookup needs `importlib_resources`
  for a module inside a package; we download nothing, so the builder declares no code path at all.
  """
  BUILDER_CONFIGS = []  # configs are created per build, one per language
  FEATURES = ()  # feature names, in the order the streaming writer serializes them

  def __init__(self, *, splits: dict | None = None, **kwargs):
    self._splits = splits or {}
    super().__init__(**kwargs)

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    # Built directly (not from a metadata folder next to this module, which does not exist).
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {name: tfds.features.Text() for name in self.FEATURES}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split, items in self._splits.items() if items}

  def _generate_examples(self, split):
    lang = config_language(type(self), self.builder_config.name)
    for index, item in enumerate(self._splits[split]):
      yield index, example_values(type(self), item, lang)

  # Our build shows its own progress; TFDS would print two lines per dataset.
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


class XlmjMono(_InMemoryBuilder):
  """Monolingual sentences of one language (config name = language code)."""
  VERSION = tfds.core.Version(VERSION)
  FEATURES = ("text", "lang")


class XlmjParallel(_InMemoryBuilder):
  """English-foreign sentence pairs (config name = "en_<lang>")."""
  VERSION = tfds.core.Version(VERSION)
  FEATURES = ("en", "xx", "lang")


def config_language(builder_cls, config_name: str) -> str:
  """The language of a dataset config: "de" for xlmj_mono/de and for xlmj_parallel/en_de."""
  return config_name if builder_cls is XlmjMono else config_name.removeprefix("en_")


def example_values(builder_cls, item, lang: str) -> dict[str, str]:
  """One example's feature values: a sentence (mono) or an (english, foreign) pair (parallel)."""
  if builder_cls is XlmjMono:
    return {"text": item, "lang": lang}
  en, xx = item
  return {"en": en, "xx": xx, "lang": lang}


# --- tf.train.Example, serialized by hand (TFDS's serializer costs ~20 us an example in Python) -----------

def _varint(n: int) -> bytes:
  out = bytearray()
  while n >= 0x80:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _field(payload: bytes) -> bytes:
  """Field 1, length-delimited (tag 0x0a): every message level of a text-only Example uses it."""
  n = len(payload)
  return b"\n" + (bytes((n,)) if n < 0x80 else _varint(n)) + payload


def _feature_entry(name: str, value: bytes) -> bytes:
  """A Features.feature map entry {name: Feature(bytes_list=BytesList(value=[value]))}."""
  feature = _field(_field(value))  # Feature.bytes_list (field 1) holding BytesList.value (field 1)
  n = len(feature)
  return _field(_field(name.encode("utf-8")) + b"\x12" + (bytes((n,)) if n < 0x80 else _varint(n)) + feature)


def serialize_example(values: dict[str, str]) -> bytes:
  """The tf.train.Example of text features, as TFDS stores a FeaturesDict of Text features.

  Map entries follow the dict's order (TFDS's own order varies from process to process; parsers ignore it).
  """
  return _field(b"".join(_feature_entry(k, v.encode("utf-8")) for k, v in values.items()))


def example_encoder(builder_cls, lang: str):
  """item -> serialize_example(example_values(builder_cls, item, lang)), with the constant "lang" entry
  serialized once: this runs for every sentence of the corpus."""
  lang_entry = _feature_entry("lang", lang.encode("utf-8"))
  if builder_cls is XlmjMono:
    return lambda text: _field(_feature_entry("text", text.encode("utf-8")) + lang_entry)
  return lambda pair: _field(_feature_entry("en", pair[0].encode("utf-8")) +
                             _feature_entry("xx", pair[1].encode("utf-8")) + lang_entry)


# --- writing -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_absl():
  """Hides TFDS's "Using custom data configuration" warning: per-build configs are what we intend."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _builder(builder_cls, config_name: str, tfds_dir: pathlib.Path, splits=None):
  with _quiet_absl():
    return builder_cls(splits=splits, data_dir=str(tfds_dir), file_format=FILE_FORMAT,
                       config=tfds.core.BuilderConfig(name=config_name, version=VERSION))


def _write_split(builder, split: str, items, lang: str, folder: pathlib.Path,
                 buffer_bytes: int) -> tfds_splits.SplitInfo | None:
  """Serializes, orders and shards one split into `folder`; its SplitInfo, or None if it has no example."""
  from array_record.python import array_record_module  # TFDS's own dependency for this format
  order = HashedOrder(folder / f".sort-{split}", split, buffer_bytes)
  encode = example_encoder(type(builder), lang)
  for index, item in enumerate(items):
    order.add(index, encode(item))
  if not order.num_examples:
    return None
  shards = shard_utils.ShardConfig.calculate_number_shards(order.total_bytes, order.num_examples)
  bounds = shard_utils.get_shard_boundaries(order.num_examples, shards)
  template = naming.ShardedFileTemplate(data_dir=folder, dataset_name=builder.name, split=split,
                                        filetype_suffix=FILE_FORMAT)
  records, start = iter(order), 0
  for shard, end in enumerate(bounds):
    writer = array_record_module.ArrayRecordWriter(
        os.fspath(template.sharded_filepath(shard_index=shard, num_shards=shards)), ARRAY_RECORD_OPTIONS)
    for _ in range(end - start):
      writer.write(next(records))
    writer.close()
    start = end
  shutil.rmtree(folder / f".sort-{split}", ignore_errors=True)
  return tfds_splits.SplitInfo(name=split, shard_lengths=[b - a for a, b in zip([0, *bounds], bounds)],
                               num_bytes=order.total_bytes, filename_template=template)


def _write(builder_cls, config_name: str, splits, tfds_dir: pathlib.Path,
           buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> pathlib.Path:
  builder = _builder(builder_cls, config_name, tfds_dir)
  final = pathlib.Path(builder.data_dir)
  lang = config_language(builder_cls, config_name)
  final.parent.mkdir(parents=True, exist_ok=True)
  work = final.parent / f".incomplete-{final.name}-{os.getpid()}"
  shutil.rmtree(work, ignore_errors=True)
  work.mkdir()
  try:
    infos = [info for split, items in splits.items()
             if (info := _write_split(builder, split, items, lang, work, buffer_bytes)) is not None]
    if not infos:
      raise ValueError(f"{builder_cls.__name__} {config_name}: every split is empty; nothing to write")
    builder.info.set_splits(tfds_splits.SplitDict(infos))
    builder.info.write_to_directory(work)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return final


def write_mono(tfds_dir, lang: str, splits: dict, **options) -> pathlib.Path:
  """Writes xlmj_mono/<lang>/1.0.0 under tfds_dir from {split: sentences}; returns that folder.

  options: buffer_bytes, the memory the ordering may hold before it sorts on disk.
  """
  return _write(XlmjMono, lang, splits, pathlib.Path(tfds_dir), **options)


def write_parallel(tfds_dir, lang: str, splits: dict, **options) -> pathlib.Path:
  """Writes xlmj_parallel/en_<lang>/1.0.0 under tfds_dir from {split: (english, foreign) pairs}."""
  return _write(XlmjParallel, f"en_{lang}", splits, pathlib.Path(tfds_dir), **options)


def write_with_tfds(kind: str, tfds_dir, lang: str, splits: dict) -> pathlib.Path:
  """The same dataset written by TFDS's download_and_prepare (kind "mono" or "parallel"); holds the
  examples in memory. The reference for tests of the streaming writer."""
  builder_cls, config_name = (XlmjMono, lang) if kind == "mono" else (XlmjParallel, f"en_{lang}")
  if not any(splits.values()):
    raise ValueError(f"{builder_cls.__name__} {config_name}: every split is empty; nothing to write")
  tfds.disable_progress_bar()  # TFDS's per-split bars would interleave with the build's own
  builder = _builder(builder_cls, config_name, pathlib.Path(tfds_dir), splits)
  # TFDS creates a downloads/ folder even when nothing is downloaded; keep it out of the corpus.
  with tempfile.TemporaryDirectory() as downloads, _quiet_absl():
    builder.download_and_prepare(download_dir=downloads)
  return pathlib.Path(builder.data_dir)
