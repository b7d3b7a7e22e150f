"""Text of any locally prepared TFDS dataset, read without TensorFlow and without the network.

Spec syntax (one string per input, e.g. on the command line):

    [<lang>=]tfds:<name>[/<config>][:<split>]:<field>

  name    the TFDS dataset name ("wiki40b"), or a dataset present only as files under the data dir
  config  its builder config ("de"); omit for datasets without configs
  split   one split of the dataset ("train"); omitted = every split, read in sorted order. Our own
          train/test split is by hash of each example, whatever split it came from.
  field   the text feature: a Text or Sequence(Text) feature; "/" reaches into nested features
  lang    language of the text; may be omitted when the config is a language code ("wiki40b/de")

  tfds:wiki40b/de:text                 German Wikipedia, all splits, field "text"
  de=tfds:my_crawl:train:content       a custom dataset's train split, language given explicitly

The data dir is the `data_dir` argument, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. The dataset must
already be prepared there (array_record, parquet or tfrecord files). User-corpus builds never download:
the machines that prepare corpora here cannot reach the TFDS servers, and an attempt would only hang until
a network timeout, so nothing here opens a socket and a missing dataset fails at once. Each example is one
document (the test-split unit); its text is split into lines at "\n". Beware of dataset-specific markup:
wiki40b, for one, keeps _START_ARTICLE_, _START_PARAGRAPH_ and _NEWLINE_ markers inside its text, and they
are kept as they are.

array_record and parquet are read through TFDS's data source; tfrecord (what `tfds build` writes by default)
through a small reader below, which parses tf.train.Example with the protos TFDS ships, so neither path
imports TensorFlow. The reader checks each record's length checksum (CRC-32C) but not the data checksum,
which would cost a pure-Python pass over every byte.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import pathlib
import re
import struct

from data_prep.user_corpora.languages import ISO_639_1, check_language

_SPEC = re.compile(r"(?:(?P<lang>[A-Za-z_-]+)=)?tfds:(?P<name>[\w]+)(?:/(?P<config>[\w.-]+))?"
                   r"(?::(?P<split>\w+))?:(?P<field>[\w/]+)")
# TFDS registers dataset classes when their family module is imported; the top-level package only imports
# them lazily, so without this "wiki40b" would be an unknown name.
_FAMILIES = ("audio", "graphs", "image", "image_classification", "object_detection", "question_answering",
             "ranking", "recommendation", "structured", "summarization", "text", "text_simplification",
             "time_series", "translate", "video", "vision_language")
_BATCH = 256


@dataclasses.dataclass(frozen=True)
class TfdsText:
  """One text field of one TFDS dataset (see the module docstring for the spec syntax)."""
  lang: str
  name: str
  config: str | None
  split: str | None
  field: str
  data_dir: pathlib.Path

  @property
  def full_name(self) -> str:
    return f"{self.name}/{self.config}" if self.config else self.name

  def describe(self) -> str:
    return f"tfds:{self.full_name}{':' + self.split if self.split else ''}:{self.field} in {self.data_dir}"


def default_tfds_data_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


def parse_tfds_spec(spec: str, data_dir=None, extra_languages=()) -> TfdsText:
  """Parses "[lang=]tfds:name[/config][:split]:field"; ValueError naming the spec if malformed."""
  match = _SPEC.fullmatch(spec.strip())
  if not match:
    raise ValueError(f"TFDS input {spec!r} is not of the form [<lang>=]tfds:<name>[/<config>][:<split>]:"
                     "<field>, e.g. 'tfds:wiki40b/de:text' or 'de=tfds:my_data:train:content'")
  lang = match["lang"]
  if lang is None:
    if match["config"] and match["config"].split("-")[0].split("_")[0] in ISO_639_1:
      lang = match["config"]
    else:
      raise ValueError(f"TFDS input {spec!r}: cannot tell its language from the config; prefix the "
                       "language code, e.g. 'de=" + spec.strip() + "'")
  check_language(lang, f"TFDS input {spec!r}", extra_languages)
  data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_tfds_data_dir()
  return TfdsText(lang, match["name"], match["config"], match["split"], match["field"], data_dir)


def _import_tfds():
  import tensorflow_datasets as tfds
  for family in _FAMILIES:
    try:
      importlib.import_module(f"tensorflow_datasets.{family}")
    except ImportError:  # a family needing an optional package we lack (h5py, ...): not a text source
      pass
  return tfds


def _close_names(tfds, name: str, data_dir: pathlib.Path) -> list[str]:
  known = set(tfds.list_builders(with_community_datasets=False))
  if data_dir.is_dir():
    known.update(p.name for p in data_dir.iterdir() if p.is_dir())
  return difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)


def _prepared_versions(source: TfdsText) -> list[pathlib.Path]:
  folder = source.data_dir / source.name / (source.config or "")
  if not folder.is_dir():
    return []
  return sorted((p for p in folder.iterdir() if (p / "dataset_info.json").is_file()),
                key=lambda p: tuple(int(x) if x.isdigit() else 0 for x in p.name.split(".")))


def _config_error(tfds, source: TfdsText) -> ValueError | None:
  """A ValueError naming close configs if the dataset is registered and lacks source.config, else None."""
  from tensorflow_datasets.core.registered import DatasetNotFoundError
  try:
    configs = sorted(tfds.builder_cls(source.name).builder_configs)
  except DatasetNotFoundError:
    return None
  if source.config is None or not configs or source.config in configs:
    return None
  close = difflib.get_close_matches(source.config, configs, n=5, cutoff=0.5)
  return ValueError(f"TFDS dataset {source.name} has no config {source.config!r}"
                    f"{'; close matches: ' + ', '.join(close) if close else ''} (it has {len(configs)}: "
                    f"{', '.join(configs[:20])}{', ...' if len(configs) > 20 else ''})")


def open_builder(source: TfdsText):
  """The prepared TFDS builder of `source`, checked for the split and field; never touches the network.

  ValueError for a name TFDS does not know (with close matches), an unknown config, split or field;
  FileNotFoundError when the dataset is not prepared under the data dir.
  """
  tfds = _import_tfds()
  from tensorflow_datasets.core.registered import DatasetNotFoundError
  from data_prep.tfds_writer import _quiet_absl  # TFDS warns about the unprepared folders we check for
  with _quiet_absl():
    try:
      builder = tfds.builder(source.full_name, data_dir=str(source.data_dir))
    except DatasetNotFoundError as err:
      close = _close_names(tfds, source.name, source.data_dir)
      hint = f"; close matches: {', '.join(close)}" if close else ""
      raise _config_error(tfds, source) or ValueError(
          f"TFDS dataset {source.name!r} is not known to TFDS and not found under {source.data_dir}{hint}. "
          "Check the name (tfds.list_builders()) and the data dir (--tfds-data-dir / $TFDS_DATA_DIR)") from err
    except ValueError as err:  # most often a config the dataset lacks
      raise _config_error(tfds, source) or ValueError(f"TFDS input {source.describe()}: {err}") from err
    if not builder.is_prepared():
      versions = _prepared_versions(source)
      if not versions:
        raise FileNotFoundError(
            f"TFDS dataset {source.full_name} is not prepared under {source.data_dir} (no "
            f"{builder.data_dir}/dataset_info.json), and this build cannot reach the TFDS servers to "
            f"download {source.full_name}; prepare it elsewhere (`tfds build {source.full_name} "
            "--file_format=array_record`) and copy it to "
            f"{source.data_dir / source.name / (source.config or '')}")
      builder = tfds.builder_from_directory(str(versions[-1]))  # older than the code's version
  splits = sorted(builder.info.splits)
  if source.split is not None and source.split not in splits:
    raise ValueError(f"TFDS input {source.describe()}: no split {source.split!r}; it has {splits}")
  _check_field(builder, source)
  return builder


def _check_field(builder, source: TfdsText) -> None:
  from tensorflow_datasets.core import utils as tfds_utils
  from tensorflow_datasets.core.utils import dtype_utils
  flat = tfds_utils.flatten_nest_dict(builder.info.features.get_serialized_info())
  info = flat.get(source.field)
  if info is None:
    raise ValueError(f"TFDS input {source.describe()}: no feature {source.field!r}; the dataset has "
                     f"{sorted(flat)}")
  if not dtype_utils.is_string(info.np_dtype) or len(info.shape) > 1:
    raise ValueError(f"TFDS input {source.describe()}: feature {source.field!r} is {info}, not text; "
                     "choose a Text or Sequence(Text) feature")


def _texts(value) -> list[str]:
  """A decoded Text (bytes) or Sequence(Text) (array of bytes) value as a list of str."""
  values = [value] if isinstance(value, (bytes, str)) else list(value)
  return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def iter_documents(source: TfdsText, builder=None):
  """Yields (where, lines) per example: where = "<name>/<split>[<index>]", lines = its text split at "\\n"."""
  from tensorflow_datasets.core.file_adapters import FileFormat
  builder = builder or open_builder(source)
  splits = [source.split] if source.split else sorted(builder.info.splits)
  file_format = builder.info.file_format or FileFormat.TFRECORD  # datasets from before the field existed
  if file_format not in FileFormat.with_random_access() and file_format != FileFormat.TFRECORD:
    raise ValueError(f"TFDS input {source.describe()}: cannot read {file_format.value} files without "
                     "TensorFlow; prepare the dataset with --file_format=array_record")
  for split in splits:
    if file_format == FileFormat.TFRECORD:
      examples = _tfrecord_values(builder, split, source.field)
    else:
      examples = _data_source_values(builder, split, source.field)
    for index, value in enumerate(examples):
      yield f"{source.full_name}/{split}[{index}]", [value] if isinstance(value, (bytes, str)) else list(value)


def _data_source_values(builder, split: str, field: str):
  data = builder.as_data_source(split)
  keys = field.split("/")
  for start in range(0, len(data), _BATCH):
    for example in data.__getitems__(range(start, min(start + _BATCH, len(data)))):
      for key in keys:
        example = example[key]
      yield example


# --- tfrecord without TensorFlow -------------------------------------------------------------------------

def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord uses; pure Python, for short inputs."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecord(path: pathlib.Path):
  """Yields the records of a TFRecord file: [u64 length][u32 masked crc(length)][data][u32 masked crc]."""
  with open(path, "rb", buffering=1 << 20) as f:
    offset = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path}: truncated record header at byte {offset}; the file is cut short, "
                         "copy it again")
      length, length_crc = struct.unpack("<QI", header)
      if masked_crc32c(header[:8]) != length_crc:
        raise ValueError(f"{path}: corrupt record length at byte {offset} (checksum mismatch); "
                         "the file is damaged, copy it again")
      data = f.read(length + 4)
      if len(data) < length + 4:
        raise ValueError(f"{path}: record at byte {offset} is cut short; copy the file again")
      offset += 12 + length + 4
      yield data[:length]


def _tfrecord_values(builder, split: str, field: str):
  from tensorflow_datasets.proto import tf_example_pb2
  for path in builder.info.splits[split].filepaths:
    for record in read_tfrecord(pathlib.Path(path)):
      feature = tf_example_pb2.Example.FromString(record).features.feature
      yield list(feature[field].bytes_list.value) if field in feature else []
