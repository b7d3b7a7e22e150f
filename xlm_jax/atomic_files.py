"""Crash-safe writes: a reader sees the old content or the new one, never a half-written mix.

Used by every artifact the project writes outside Orbax (exports, derived corpora, tokenizers,
run summaries). Orbax checkpoints and the corpus build have their own rename-on-finish steps.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Sequence


def _fsync_dir(path: pathlib.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)  # makes a rename inside `path` durable
  finally:
    os.close(fd)


def check_replaceable(directory: pathlib.Path, markers: Sequence[str], what: str) -> None:
  """Raises ValueError unless `directory` is absent, an empty folder, or a folder holding every
  name in `markers`, i.e. an earlier `what` that a new one may replace. Only reads."""
  directory = pathlib.Path(directory)
  if not directory.exists() and not directory.is_symlink():
    return
  if not directory.is_dir():
    raise ValueError(f"{directory} exists and is not a folder; choose another path for the {what}")
  contents = sorted(p.name for p in directory.iterdir())
  missing = [name for name in markers if not (directory / name).exists()]
  if not contents or not missing:
    return
  shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
  raise ValueError(f"{directory} is not empty and is not an {what} (it has no {' or '.join(missing)}; "
                   f"it holds {shown}); refusing to replace it, which would delete those files. "
                   "Choose another folder, or move its contents away yourself")


def write_directory_atomically(directory: pathlib.Path, files: dict[str, bytes | Callable], *,
                               markers: Sequence[str] | None = None,
                               what: str = "earlier output of this writer") -> None:
  """Writes `files` ({relative name: bytes}) into a staging folder beside `directory`, then
  renames it into place. At worst a crash leaves a hidden `.<name>.tmp-*` folder beside it.
  A value may also be a function `write(binary_file)`: large files (model weights) are then
  streamed into place piece by piece instead of being built in memory first.

  An existing `directory` is replaced whole. With `markers` (pass them whenever the path comes
  from a user), it is replaced only if it is an empty folder or holds every name in `markers`
  (an earlier `what`); anything else is refused with a ValueError naming it, before anything is
  written, so that a mistyped path never deletes a user's files.
  """
  directory = pathlib.Path(directory)
  if markers is not None:
    check_replaceable(directory, markers, what)
  parent = directory.parent
  parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
  try:
    os.chmod(staging, 0o755)  # mkdtemp creates it private (0700)
    for name, data in files.items():
      target = staging / name
      target.parent.mkdir(parents=True, exist_ok=True)
      with open(target, "wb") as f:
        if callable(data):
          data(f)
        else:
          f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if directory.exists():
      # os.replace cannot overwrite a non-empty folder: move the old one aside first.
      previous = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=parent))
      os.replace(directory, previous / "old")
      os.replace(staging, directory)
      shutil.rmtree(previous, ignore_errors=True)
    else:
      os.replace(staging, directory)
    _fsync_dir(parent)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  """UTF-8 text to `path` via a temporary file and a rename: a reader sees the old or the new."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text, encoding="utf-8")
  os.replace(tmp, path)


def write_json_atomically(path: pathlib.Path, obj: Any) -> None:
  """JSON to `path` via a temporary file and a rename."""
  write_text_atomically(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
