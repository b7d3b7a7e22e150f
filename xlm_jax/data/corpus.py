"""Read a corpus directory built by `xlm-jax data build` (manifest, TFDS sources, plain-text splits, tokenizer).

    <corpus_dir>/manifest.json                          written last: its presence means the build finished
    <corpus_dir>/text/mono/{train,test}/<lang>.txt      one sentence per line
    <corpus_dir>/text/parallel/{train,test}/en-<lang>.tsv
    <corpus_dir>/spm/spm.model
    <corpus_dir>/tfds/xlmj_mono/<lang>/1.0.0, tfds/xlmj_parallel/en_<lang>/1.0.0   (array_record)

Every check fails with a message that names the path or language and says what to run.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

FORMAT_VERSION = 1
# The corpora `xlm-jax data build` can make from Debian packages alone (no user text). The one list: the
# builder checks --recipe against it, and training checks it to know whether a missing corpus can be built
# on the fly without importing the builder.
RECIPES = ("gettext8", "debian8")
DEFAULT_CORPUS_NAME = "gettext8"  # the quickstart's corpus (config data.corpus's default)
DATA_DIR_VARIABLE = "XLM_JAX_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/xlm_jax/data"
SPLITS = ("train", "test")
TFDS_VERSION = "1.0.0"
MANIFEST_KEYS = ("name", "languages", "created", "packages", "heldout_programs", "counts", "dropped",
                 "tokenizer", "format_version")
# Manifest fields that describe one build rather than the data: two builds of the same packages
# differ only in them, so a corpus's identity (`content_digest`) leaves them out.
BUILD_ONLY_KEYS = ("created", "build_seconds")


def content_digest(manifest: dict) -> str:
  """sha256 of a manifest without its build-only fields (canonical JSON): equal for two builds of
  the same data (package versions and hashes, held-out programs, counts, tokenizer hash), so it
  names the corpus a result was measured on; the manifest file's own hash changes with every build."""
  content = {key: value for key, value in manifest.items() if key not in BUILD_ONLY_KEYS}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def resolve_corpus_dir(corpus_dir: str | os.PathLike = "", corpus: str = DEFAULT_CORPUS_NAME) -> pathlib.Path:
  """Where corpus `corpus` lives: `corpus_dir` if given, else $XLM_JAX_DATA_DIR/<corpus>, else
  ~/.cache/xlm_jax/data/<corpus>. The one resolver of the builder, the data commands and training.

  An empty $XLM_JAX_DATA_DIR counts as unset (`XLM_JAX_DATA_DIR= cmd` must not put corpora in the current
  directory), and "~" is expanded in both.
  """
  if corpus_dir:
    return pathlib.Path(corpus_dir).expanduser()
  # `or`, not a get() default: an exported-but-empty variable falls back too.
  root = os.environ.get(DATA_DIR_VARIABLE) or DEFAULT_DATA_DIR
  return pathlib.Path(root).expanduser() / corpus


def build_command(corpus_dir, recipe: str | None = None) -> str:
  """The `xlm-jax data build` command that (re)builds `corpus_dir` as it was built.

  The recipe comes from `recipe`, else from the corpus's own manifest (so a hint never rebuilds
  a debian8 corpus as the default gettext8); a corpus of users' text names where its inputs are
  recorded, since only the user has them.
  """
  command = f"xlm-jax data build --corpus-dir {corpus_dir}"
  if recipe is None:
    try:
      manifest = json.loads((pathlib.Path(corpus_dir) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
      manifest = {}
    recipe = manifest.get("recipe") if isinstance(manifest, dict) else None
    if recipe not in RECIPES and isinstance(manifest, dict) and manifest.get("user_corpora"):
      return f"{command} <the inputs listed under 'user_corpora' in its manifest.json>"
  return f"{command} --recipe {recipe}" if recipe in RECIPES else command


def read_manifest(corpus_dir) -> dict:
  """Loads and checks <corpus_dir>/manifest.json."""
  corpus_dir = pathlib.Path(corpus_dir).expanduser()
  path = corpus_dir / "manifest.json"
  if not corpus_dir.is_dir():
    raise FileNotFoundError(f"corpus directory {corpus_dir} does not exist; "
                            f"run `{build_command(corpus_dir)}` to build it")
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found, so {corpus_dir} is not a finished corpus (the manifest is "
                            f"written last); run `{build_command(corpus_dir)} --force` to build it")
  try:
    manifest = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not valid JSON ({err}); "
                     f"rebuild with `{build_command(corpus_dir)} --force`") from err
  if not isinstance(manifest, dict):
    raise ValueError(f"{path} must hold a JSON object, not {type(manifest).__name__}; rebuild with --force")
  missing = [key for key in MANIFEST_KEYS if key not in manifest]
  if missing:
    raise ValueError(f"{path} lacks the fields {missing}; rebuild with `{build_command(corpus_dir)} --force`")
  if manifest["format_version"] != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {manifest['format_version']!r} is not {FORMAT_VERSION}, "
                     f"which this code reads; rebuild with `{build_command(corpus_dir)} --force`")
  languages = manifest["languages"]
  if not isinstance(languages, list) or not all(isinstance(l, str) for l in languages):
    raise ValueError(f"{path}: field 'languages' must be a list of language codes, got {languages!r}")
  no_counts = [l for l in languages if l not in manifest["counts"]]
  if no_counts:
    raise ValueError(f"{path}: field 'counts' has no entry for languages {no_counts}; rebuild with --force")
  return manifest


class EmptySource:
  """A random-access source with no records (TFDS cannot store an empty split, so none is written)."""

  def __len__(self) -> int:
    return 0

  def __getitem__(self, index):
    raise IndexError(f"index {index} out of range: this split has no examples")

  def __repr__(self) -> str:
    return "EmptySource()"


class Corpus:
  """A built corpus. `languages`, if given, are checked: known to the manifest, non-empty training text."""

  def __init__(self, corpus_dir, languages=None):
    self.dir = pathlib.Path(corpus_dir).expanduser()
    self.manifest = read_manifest(self.dir)
    self.languages = list(self.manifest["languages"])
    if languages is not None:
      self.check_languages(languages)

  def check_languages(self, languages) -> None:
    """ValueError naming any language the corpus lacks or whose training split is empty."""
    for lang in languages:
      self._check_language(lang)
      if self.num_examples(lang, "train") == 0:
        raise ValueError(f"language {lang!r} has an empty train split in {self.dir} (0 sentences); drop "
                         "it from data.languages or rebuild with more packages "
                         f"(`{build_command(self.dir)} --force`)")

  def _check_language(self, lang: str) -> None:
    if lang not in self.languages:
      raise ValueError(f"language {lang!r} is not in corpus {self.dir} "
                       f"(available: {', '.join(self.languages)}); build a corpus with it: "
                       f"`{build_command('DIR')} --languages ... {lang}`")

  @staticmethod
  def _check_split(split: str) -> None:
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")

  def _check_foreign(self, lang: str) -> None:
    self._check_language(lang)
    if lang == "en":
      raise ValueError("there is no parallel en-en data; parallel sources exist for the non-English "
                       f"languages {[l for l in self.languages if l != 'en']}")

  @property
  def tokenizer_path(self) -> pathlib.Path:
    return self.dir / "spm" / "spm.model"

  def tokenizer(self):
    """The corpus's SentencePiece tokenizer."""
    from xlm_jax.data.tokenizer import Tokenizer
    return Tokenizer(self.tokenizer_path)

  def num_examples(self, lang: str, split: str, kind: str = "mono") -> int:
    """Number of sentences (kind "mono") or sentence pairs (kind "parallel"), from the manifest."""
    self._check_language(lang)
    self._check_split(split)
    if kind not in ("mono", "parallel"):
      raise ValueError(f"unknown kind {kind!r}; use 'mono' or 'parallel'")
    return int(self.manifest["counts"][lang].get(f"{kind}_{split}", 0))

  def _tfds_source(self, dataset_dir: pathlib.Path, split: str):
    import tensorflow_datasets as tfds  # deferred: only readers of the TFDS files pay for the import
    if not dataset_dir.is_dir():
      raise FileNotFoundError(f"TFDS dataset {dataset_dir} is missing from the corpus; "
                              f"rebuild with `{build_command(self.dir)} --force`")
    try:
      builder = tfds.builder_from_directory(str(dataset_dir))
    except Exception as err:  # TFDS raises many types for a damaged dataset_info.json
      raise ValueError(f"TFDS dataset {dataset_dir} cannot be opened ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}); rebuild the corpus with "
                       f"`{build_command(self.dir)} --force`") from err
    # An empty split was never written (TFDS cannot store one): it reads as no records.
    if split not in builder.info.splits:
      return EmptySource()
    source = builder.as_data_source(split)
    self._check_shards(source, builder.info.splits[split], dataset_dir, split)
    return source

  def _check_shards(self, source, split_info, dataset_dir: pathlib.Path, split: str) -> None:
    """Reads the first record of every shard: a truncated or damaged array_record file fails
    here, named, instead of deep inside a grain worker thread with a Riegeli error."""
    # The source numbers records across shards in order: `start` is each shard's first index.
    start = 0
    for index, length in enumerate(split_info.shard_lengths):
      if length:
        try:
          source[start]
        except Exception as err:  # array_record raises RuntimeError / OSError variants
          shard = f"{split}.array_record-{index:05d}-of-{len(split_info.shard_lengths):05d}"
          raise ValueError(
              f"corpus {self.dir}: shard {shard} of {dataset_dir.relative_to(self.dir)} (language "
              f"{dataset_dir.parent.name}) cannot be read ({type(err).__name__}: "
              f"{str(err).splitlines()[0][:200] if str(err) else ''}); the file is truncated or "
              f"damaged. Rebuild the corpus with `{build_command(self.dir)} --force`") from err
      start += length

  def mono_source(self, lang: str, split: str):
    """Random access to {"text": bytes, "lang": bytes} records (TFDS array_record data source)."""
    self._check_language(lang)
    self._check_split(split)
    return self._tfds_source(self.dir / "tfds" / "xlmj_mono" / lang / TFDS_VERSION, split)

  def parallel_source(self, lang: str, split: str):
    """Random access to {"en": bytes, "xx": bytes, "lang": bytes} records for the pair en-<lang>."""
    self._check_foreign(lang)
    self._check_split(split)
    return self._tfds_source(self.dir / "tfds" / "xlmj_parallel" / f"en_{lang}" / TFDS_VERSION, split)

  def _read_lines(self, path: pathlib.Path) -> list[str]:
    if not path.is_file():
      raise FileNotFoundError(f"{path} is missing from the corpus; "
                              f"rebuild with `{build_command(self.dir)} --force`")
    text = path.read_text(encoding="utf-8")
    # Not splitlines(), which also breaks at \r, \x85 or U+2028 that a sentence may hold. Every
    # line ends in "\n", so the last piece is the empty tail.
    return text.split("\n")[:-1] if text else []

  def mono_texts(self, lang: str, split: str) -> list[str]:
    """Sentences of one language and split, from text/mono/<split>/<lang>.txt."""
    self._check_language(lang)
    self._check_split(split)
    return self._read_lines(self.dir / "text" / "mono" / split / f"{lang}.txt")

  def parallel_pairs(self, lang: str, split: str) -> list[tuple[str, str]]:
    """(English, foreign) pairs from text/parallel/<split>/en-<lang>.tsv."""
    self._check_foreign(lang)
    self._check_split(split)
    path = self.dir / "text" / "parallel" / split / f"en-{lang}.tsv"
    pairs = []
    for number, line in enumerate(self._read_lines(path), start=1):
      fields = line.split("\t")
      if len(fields) != 2:
        raise ValueError(f"{path} line {number}: expected 'english<TAB>foreign', got {len(fields)} fields")
      pairs.append((fields[0], fields[1]))
    return pairs

  def __repr__(self) -> str:
    return f"Corpus({str(self.dir)!r}, languages={self.languages})"
