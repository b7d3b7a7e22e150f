"""A self-contained workdir: `xlm-jax eval` and `xlm-jax export` need nothing but this folder.

    <workdir>/config.json        the run's validated config; written once every check has passed,
                                 never by eval or export
    <workdir>/tokenizer/         the tokenizer the run encodes with, stored as an export stores it
    <workdir>/eval_sets/         every evaluator's sets, read from the corpus at the first start
    <workdir>/resources/         objectives' host-side constants (dictionary pairs), one npz each
    <workdir>/checkpoints/<step>/  Orbax: state, data-iterator positions, meta (the model's shape)
    <workdir>/metrics.jsonl, tensorboard/, summary.json, eval/<step>/, export/

The corpus is read only by training. Keeping the tokenizer, evaluation sets and resources here
also means a rebuilt corpus cannot silently change what a checkpoint is evaluated on.
"""
from __future__ import annotations

import io
import json
import pathlib

import ml_collections
import numpy as np

from xlm_jax import config as config_lib
from xlm_jax.atomic_files import write_directory_atomically, write_json_atomically
from xlm_jax.data.tokenizer import has_tokenizer_files, read_tokenizer_files, tokenizer_files

CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
EVAL_SETS_DIR = "eval_sets"
RESOURCES_DIR = "resources"
SUMMARY_FILE = "summary.json"


def check_path(workdir) -> pathlib.Path:
  """The workdir as an absolute path; ValueError when it names a file."""
  workdir = pathlib.Path(workdir).expanduser()
  # The path itself, or a folder above it, may be a file: either way mkdir would fail late.
  for path in (workdir, *workdir.parents):
    if path.exists():
      if not path.is_dir():
        what = "is a file" if path == workdir else f"lies under {path}, which is a file"
        raise ValueError(f"--workdir {workdir} {what}, not a folder; pass a folder (it is "
                         "created if missing)")
      break
  return workdir


def require_trained(workdir) -> pathlib.Path:
  """A workdir that a training run has written (FileNotFoundError naming what is missing)."""
  workdir = check_path(workdir)
  if not (workdir / CONFIG_FILE).is_file():
    raise FileNotFoundError(f"{workdir / CONFIG_FILE} not found: {workdir} is not a training "
                            "workdir (run `xlm-jax train --config ... --workdir` first)")
  return workdir


# ------------------------------------------------------------------------------- config.json


def read_config(workdir) -> ml_collections.ConfigDict:
  """The run's config as training validated it (a damaged file is named, with the field)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  try:
    raw = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not valid JSON ({err}); restore it from a backup, or start a "
                     "new --workdir") from err
  if not isinstance(raw, dict):
    raise ValueError(f"{path} does not hold a config object; start a new --workdir")
  return config_lib.validate(ml_collections.ConfigDict(raw), source=str(path))


def write_config(workdir, config) -> None:
  # Atomic: a half-written config.json would make the workdir unreadable to eval, export and resume.
  write_json_atomically(pathlib.Path(workdir) / CONFIG_FILE, config.to_dict())


def read_summary(workdir) -> dict | None:
  path = pathlib.Path(workdir) / SUMMARY_FILE
  if not path.is_file():
    return None
  # The summary is informational: a damaged one reads as absent rather than failing the command.
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None


# ------------------------------------------------------------------------------- tokenizer
# Stored as an export stores it (xlm_jax.data.tokenizer.tokenizer_files), under tokenizer/.


def save_tokenizer(workdir, tokenizer) -> None:
  folder = pathlib.Path(workdir) / TOKENIZER_DIR
  files = tokenizer_files(tokenizer)
  if all((folder / name).is_file() and (folder / name).read_bytes() == data
         for name, data in files.items()):
    return  # already there, byte for byte: a resume writes nothing
  write_directory_atomically(folder, files)


def load_tokenizer(workdir):
  folder = pathlib.Path(workdir) / TOKENIZER_DIR
  if not has_tokenizer_files(folder):
    raise FileNotFoundError(
        f"{folder} holds no tokenizer: this workdir was trained before workdirs kept their "
        "tokenizer. Run `xlm-jax train` on it once more with the corpus present (it resumes "
        "and stores the tokenizer), then evaluate or export")
  return read_tokenizer_files(folder)


# ------------------------------------------------------------------------------- resources


def save_resources(workdir, resources: dict[str, dict]) -> None:
  """Objectives' resources ({objective: {name: array}}); numeric arrays only, no pickle."""
  files = {}
  for name, arrays in resources.items():
    if arrays:
      buffer = io.BytesIO()
      np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
      files[f"{name}.npz"] = buffer.getvalue()
  folder = pathlib.Path(workdir) / RESOURCES_DIR
  # Written once, at the first start: a resume keeps them even if the corpus was rebuilt since.
  if files and not folder.is_dir():
    write_directory_atomically(folder, files)


def load_resources(workdir, name: str) -> dict:
  path = pathlib.Path(workdir) / RESOURCES_DIR / f"{name}.npz"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: objective {name!r} reads corpus resources that "
                            "this workdir did not store; point --config.data.corpus_dir at the "
                            "corpus")
  try:
    # No pickle: loading a workdir must never run code stored in it.
    with np.load(path, allow_pickle=False) as arrays:
      return {k: arrays[k] for k in arrays.files}
  except (ValueError, OSError) as err:
    raise ValueError(f"{path} is damaged ({err}); point --config.data.corpus_dir at the corpus "
                     "to read the resources again") from err
