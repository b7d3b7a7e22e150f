"""The evaluator contract: evaluators take functions and evaluation sets, never a training run.

An evaluator has two halves (big_vision's evaluators take a predict function and their own config;
ours also keep the data they score on apart from the corpus):

    sets = Evaluator.collect(data)            # read once from the corpus: texts, id pairs, batches
    evaluator = Evaluator(sets, eval_config)  # built from its own config section (config.eval)
    metrics = evaluator(model)                # model: an EvalModel of functions (encode, ...)

`collect` returns plain data (numpy arrays and JSON values). The trainer stores it in the workdir
(`save_sets`), so `xlm-jax eval` scores a checkpoint on exactly the items training used, even
when the corpus has been moved, rebuilt or deleted. The same evaluator runs on a checkpoint in
training, a restored workdir or an exported model: each supplies an `EvalModel`.

Nothing here imports `xlm_jax.train`: the trainer depends on evaluation, not the reverse.
"""
from __future__ import annotations

import dataclasses
import io
import json
import pathlib
from typing import Any, Callable, Mapping

import numpy as np

from xlm_jax.atomic_files import write_directory_atomically
from xlm_jax.registry import EVALUATORS

SETS_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class EvalModel:
  """What an evaluator may ask of a model: functions, not training objects.

  encode: `encode(texts, lang, *, pooling="mean", layer=-1) -> float32 [n, hidden]` (the
    `Pretrained.encode` contract).
  word_embeddings: `() -> [rows, hidden]` host copy of the (tied) word-embedding table.
  config: the model's EncoderConfig (evaluators check shapes and language-specific parts).
  eval_step: `(kind, index, host_batch) -> {objective: {metric: value, "weight": w}}` for the
    objectives that read batch kind `kind`; None where no objective is bound (an exported model).
  """
  encode: Callable[..., np.ndarray]
  word_embeddings: Callable[[], np.ndarray]
  config: Any
  eval_step: Callable[[str, int, Mapping[str, np.ndarray]], dict] | None = None


@dataclasses.dataclass(frozen=True)
class EvalData:
  """Where `collect` reads evaluation sets from: the corpus and the run's data facts.

  make_batches: `kind -> [host batch, ...]`, the fixed held-out batches of a batch kind, built by
    the caller's input pipeline (the evaluator does not know the run's batch size or mesh).
  batch_kinds: the batch kinds the run's objectives read (held-out losses are scored on each).
  """
  corpus: Any
  tokenizer: Any
  languages: tuple[str, ...]
  seed: int
  alpha: float
  model_config: Any                    # the EncoderConfig the sets are read for (its vocabulary)
  eval_config: Any
  make_batches: Callable[[str], list] | None = None
  batch_kinds: tuple[str, ...] = ()


def evaluator_class(name: str):
  """The registered evaluator class of `name` (ValueError listing the known names)."""
  return EVALUATORS.get(name)


def collect_sets(names, data: EvalData) -> dict[str, dict]:
  """Each evaluator's evaluation sets, read from the corpus."""
  return {name: evaluator_class(name).collect(data) for name in names}


def covers(name: str, sets: dict, data: EvalData) -> bool:
  """Whether stored `sets` of evaluator `name` hold what `data` asks for now; an evaluator may
  define `covers(sets, data)` (held-out batches of every batch kind the run reads)."""
  check = getattr(evaluator_class(name), "covers", None)
  return True if check is None else bool(check(sets, data))


def build_evaluators(sets: Mapping[str, dict], eval_config) -> dict[str, Any]:
  """The evaluators of `sets` (name -> sets), each built from its sets and `eval_config`."""
  return {name: evaluator_class(name)(named_sets, eval_config) for name, named_sets in sets.items()}


def evaluate(evaluators: Mapping[str, Any], model: EvalModel) -> dict:
  """Every evaluator's metrics on `model`, merged (names are prefixed by each evaluator)."""
  results = {}
  for evaluator in evaluators.values():
    results.update(evaluator(model))
  return results


# ---------------------------------------------------------------------------------------------
# Stored sets: <folder>/<name>.json (JSON values) + <name>.npz (arrays), written as one folder,
# atomically. Multi-host runs hold different held-out batches per host: one sub-folder each.
# ---------------------------------------------------------------------------------------------


def sets_folder(folder, process_index: int = 0, process_count: int = 1) -> pathlib.Path:
  folder = pathlib.Path(folder)
  return folder if process_count == 1 else folder / f"process{process_index}of{process_count}"


def save_sets(folder, sets: Mapping[str, dict]) -> None:
  """Writes every evaluator's sets as the new folder `folder` (one json + one npz each)."""
  files = {}
  for name, named_sets in sets.items():
    arrays = {k: np.asarray(v) for k, v in named_sets.items() if isinstance(v, np.ndarray)}
    values = {k: v for k, v in named_sets.items() if not isinstance(v, np.ndarray)}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # numeric arrays only: loaded back without pickle
    files[f"{name}.npz"] = buffer.getvalue()
    files[f"{name}.json"] = json.dumps(
        {"format_version": SETS_FORMAT_VERSION, "values": values}, ensure_ascii=False).encode()
  write_directory_atomically(pathlib.Path(folder), files)


def load_sets(folder, names) -> dict[str, dict]:
  """The stored sets of `names` (FileNotFoundError / ValueError naming the file)."""
  folder = pathlib.Path(folder)
  out = {}
  for name in names:
    json_path, npz_path = folder / f"{name}.json", folder / f"{name}.npz"
    for path in (json_path, npz_path):
      if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the evaluation sets of {name!r} were not stored with this run "
            "(an evaluator added after training, or another process count). Point "
            "--config.data.corpus_dir at the corpus to read them again")
    try:
      stored = json.loads(json_path.read_text(encoding="utf-8"))
      with np.load(npz_path, allow_pickle=False) as arrays:
        loaded = {k: arrays[k] for k in arrays.files}
    except (ValueError, OSError) as err:  # JSONDecodeError is a ValueError
      raise ValueError(f"{json_path} or {npz_path} is damaged ({err}); point "
                       "--config.data.corpus_dir at the corpus to read the sets again") from err
    if stored.get("format_version") != SETS_FORMAT_VERSION:
      raise ValueError(f"{json_path}: field 'format_version' is {stored.get('format_version')!r}, "
                       f"not {SETS_FORMAT_VERSION}; read the sets again from the corpus")
    out[name] = {**stored["values"], **loaded}
  return out


def from_data(name: str, data: EvalData):
  """Evaluator `name` with its sets read from `data` now (nothing stored)."""
  cls = evaluator_class(name)
  return cls(cls.collect(data), data.eval_config)
