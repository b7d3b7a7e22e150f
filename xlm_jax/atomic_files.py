"""Crash-safe writes: a reader sees the old content or the new one, never a half-written mix.

Used by every artifact the project writes outside Orbax (exports, derived corpora, tokenizers,
run summaries). Orbax checkpoints and the corpus build have their own rename-on-finish steps.

A write that fails for want of room (a full disk, a file-size limit, a quota) raises DiskFullError,
naming what could not be written and what was kept; the checkpointer and the corpus build raise it
too (`no_room` recognises the errors their libraries raise).
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Callable, Sequence


# A write that failed for want of room: a full disk, a file-size limit (`ulimit -f`), a quota.
NO_ROOM_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# The same in the text of errors that libraries raise under other types: TensorStore (Orbax's
# arrays) raises ValueError "... File too large [os_error_code='27']", array_record (TFDS)
# RuntimeError "write() failed: No space left on device", tar "File size limit exceeded".
_NO_ROOM_TEXT = tuple(os.strerror(code) for code in NO_ROOM_ERRNOS) + ("File size limit exceeded",)
_NO_ROOM_HINT = ("the disk may be full (or a file-size limit, `ulimit -f`, or a disk quota was "
                 "reached)")


class DiskFullError(OSError, ValueError):
  """A write that failed for want of room, with a message naming what could not be written and
  what was kept. An OSError (`errno` is the original one where known) and also a ValueError, so
  that the command line reports it in one line, as it does bad input."""

  def __str__(self) -> str:  # the message alone: it quotes the original "[Errno 28] ..." itself
    return self.strerror if self.errno is not None and self.strerror else super().__str__()


def no_room(err: BaseException | None) -> bool:
  """Whether `err`, or an exception it was raised from, is a write refused for want of room."""
  return _errno(err) is not None or any(text in str(e) for e in _chain(err)
                                        for text in _NO_ROOM_TEXT)


def _chain(err: BaseException | None):
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    yield err
    err = err.__cause__ or err.__context__


def _errno(err: BaseException | None) -> int | None:
  """The errno of the first no-room error in `err`'s chain, an OSError's or one a library quotes
  (TensorStore: `[os_error_code='28']`)."""
  for e in _chain(err):
    if isinstance(e, OSError) and e.errno in NO_ROOM_ERRNOS:
      return e.errno
    for code in re.findall(r"os_error_code='(\d+)'", str(e)):
      if int(code) in NO_ROOM_ERRNOS:
        return int(code)
  return None


def _reason(err: BaseException) -> str:
  """`err`'s message on one line; a long one (TensorStore's run to a kilobyte: the array, the
  file, a JSON spec) cut to its start and the words around the OS error."""
  text = " ".join(str(err).split()) or type(err).__name__
  code = _errno(err)
  if len(text) > 400:
    found = re.search("|".join(map(re.escape, _NO_ROOM_TEXT)) + r"|\[os_error_code='\d+'\]", text)
    end = found.end() if found else len(text)
    more = " ..." if end < len(text) else ""
    text = (f"{text[:end]}{more}" if end <= 350
            else f"{text[:150]} ... {text[max(150, end - 200):end]}{more}")
  if code is not None and os.strerror(code) not in text:
    text += f" ({os.strerror(code)})"
  return text


def disk_full_error(what: str, err: BaseException, kept: str) -> DiskFullError:
  """The error for `err` (where `no_room(err)`): "could not write <what>: <err's message>; the
  disk may be full ... <kept>". `kept` says what is intact and how to go on."""
  message = f"could not write {what}: {_reason(err)}; {_NO_ROOM_HINT}. {kept}"
  code = _errno(err)
  return DiskFullError(code, message) if code is not None else DiskFullError(message)


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
  existed = directory.exists()
  try:
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
  except OSError as err:
    if no_room(err):
      raise disk_full_error(f"{directory}", err, _kept(directory, existed, what)) from err
    raise
  name = None
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
  except BaseException as err:
    shutil.rmtree(staging, ignore_errors=True)
    if no_room(err):  # the staging folder is gone; the target was never touched
      raise disk_full_error(str(directory / name) if name else str(directory), err,
                            _kept(directory, existed, what)) from err
    raise


def _kept(directory: pathlib.Path, existed: bool, what: str) -> str:
  if existed:
    return (f"{directory} is unchanged (it still holds the earlier {what.removeprefix('earlier ')}"
            "); free some space and run the command again")
  return f"Nothing was written to {directory}; free some space and run the command again"


def write_text_atomically(path: pathlib.Path, text: str) -> None:
  """UTF-8 text to `path` via a temporary file and a rename: a reader sees the old or the new."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  existed = path.exists()
  try:
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
  except BaseException as err:
    tmp.unlink(missing_ok=True)
    if no_room(err):
      raise disk_full_error(str(path), err, (
          f"{path} is unchanged" if existed else f"{path} was not created")
          + "; free some space and run the command again") from err
    raise


def write_json_atomically(path: pathlib.Path, obj: Any) -> None:
  """JSON to `path` via a temporary file and a rename."""
  write_text_atomically(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
