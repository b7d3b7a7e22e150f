"""Write the split text as TFDS datasets (array_record files, random access), without TensorFlow.

One dataset config per language: xlmj_mono/<lang> with {"text", "lang"} and xlmj_parallel/en_<lang> with
{"en", "xx", "lang"}, each with train and test splits. The builders take their examples from memory (the
build already holds the text), so there is nothing to download. Readers use
`tfds.builder_from_directory(<tfds_dir>/xlmj_mono/<lang>/1.0.0).as_data_source(split)`.

TFDS cannot write an empty split, so a split without examples is simply not written; readers treat a split
missing from the dataset info as empty.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import tempfile

import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

VERSION = "1.0.0"


class _InMemoryBuilder(tfds.core.GeneratorBasedBuilder):
  """A builder whose examples are passed in, with no source files next to its code.

  TFDS looks for a checksums file beside the builder's module, and the lookup needs `importlib_resources`
  for a module inside a package; we download nothing, so the builder declares no code path at all.
  """
  BUILDER_CONFIGS = []  # configs are created per build, one per language

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  # Our build shows its own progress; TFDS would print two lines per dataset.
  def _log_download_bytes(self):
    pass

  def _log_download_done(self):
    pass


class XlmjMono(_InMemoryBuilder):
  """Monolingual sentences of one language (config name = language code)."""
  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, splits: dict[str, list[str]], **kwargs):
    self._splits = splits
    super().__init__(**kwargs)

  def _info(self):
    # Built directly (not from a metadata folder next to this module, which does not exist).
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "lang": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split, texts in self._splits.items() if texts}

  def _generate_examples(self, split):
    lang = self.builder_config.name
    for index, text in enumerate(self._splits[split]):
      yield index, {"text": text, "lang": lang}


class XlmjParallel(_InMemoryBuilder):
  """English-foreign sentence pairs (config name = "en_<lang>")."""
  VERSION = tfds.core.Version(VERSION)

  def __init__(self, *, splits: dict[str, list[tuple[str, str]]], **kwargs):
    self._splits = splits
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"en": tfds.features.Text(), "xx": tfds.features.Text(), "lang": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split, pairs in self._splits.items() if pairs}

  def _generate_examples(self, split):
    lang = self.builder_config.name.split("_", 1)[1]
    for index, (en, xx) in enumerate(self._splits[split]):
      yield index, {"en": en, "xx": xx, "lang": lang}


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


def _prepare(builder_cls, config_name: str, splits, tfds_dir: pathlib.Path) -> pathlib.Path:
  if not any(splits.values()):
    raise ValueError(f"{builder_cls.__name__} {config_name}: every split is empty; nothing to write")
  tfds.disable_progress_bar()  # TFDS's per-split bars would interleave with the build's own
  with _quiet_absl():
    builder = builder_cls(splits=splits, data_dir=str(tfds_dir), file_format="array_record",
                          config=tfds.core.BuilderConfig(name=config_name, version=VERSION))
    # TFDS creates a downloads/ folder even when nothing is downloaded; keep it out of the corpus.
    with tempfile.TemporaryDirectory() as downloads:
      builder.download_and_prepare(download_dir=downloads)
  return pathlib.Path(builder.data_dir)


def write_mono(tfds_dir, lang: str, splits: dict[str, list[str]]) -> pathlib.Path:
  """Writes xlmj_mono/<lang>/1.0.0 under tfds_dir; returns that folder."""
  return _prepare(XlmjMono, lang, splits, pathlib.Path(tfds_dir))


def write_parallel(tfds_dir, lang: str, splits: dict[str, list[tuple[str, str]]]) -> pathlib.Path:
  """Writes xlmj_parallel/en_<lang>/1.0.0 under tfds_dir; returns that folder."""
  return _prepare(XlmjParallel, f"en_{lang}", splits, pathlib.Path(tfds_dir))
