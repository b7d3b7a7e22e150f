"""Fetch Debian packages into a local cache and unpack them, without installing anything.

`apt-get download` needs no root once the apt lists exist; `dpkg-deb -x` unpacks a .deb into any folder.
Every package we use is recorded (name, version, .deb filename, sha256, status) so that a corpus can say
exactly which bytes it was built from.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import warnings

DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/xlm_jax/debs")
# Threads for the per-package retries and for dpkg-deb: subprocesses, so threads suffice.
DOWNLOAD_WORKERS = 6
APT_UPDATE_HINT = "run `apt-get update` (as root) so that apt-get can locate packages"


@dataclasses.dataclass(frozen=True)
class DebPackage:
  """One requested package: where its .deb lies and what it was (status "ok"), or why not ("missing")."""
  name: str
  version: str = ""
  filename: str = ""
  sha256: str = ""
  status: str = "missing"
  path: pathlib.Path | None = None
  reason: str = ""

  def manifest_entry(self) -> dict:
    """The manifest record from the corpus contract."""
    return {"name": self.name, "version": self.version, "filename": self.filename,
            "sha256": self.sha256, "status": self.status}


def file_sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _version_from_filename(filename: str) -> str:
  # Debian names a .deb `<name>_<version>_<arch>.deb`, with the epoch colon escaped as %3a.
  parts = urllib.parse.unquote(filename).split("_")
  return parts[1] if len(parts) == 3 else ""


def ensure_apt_lists(lists_dir: pathlib.Path = pathlib.Path("/var/lib/apt/lists")) -> None:
  """A fresh machine (or container) has no package lists; as root, fetch them once.

  Without lists, apt cannot locate any package. Non-root users get an error that says what to run.
  """
  if any(lists_dir.glob("*_Packages*")):
    return
  if os.geteuid() != 0:
    raise FileNotFoundError(f"{lists_dir} holds no package lists: {APT_UPDATE_HINT}")
  logging.warning("no apt package lists under %s: running `apt-get update` once", lists_dir)
  proc = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
  if proc.returncode != 0:
    raise ValueError(f"`apt-get update` failed ({proc.stderr.strip()[-500:]}); the corpus is "
                       "built from Debian packages, so apt must reach a Debian mirror")


def locate_packages(names) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
  """Asks apt for each package's candidate .deb: ({name: (filename, sha256)}, {name: why it is missing}).

  One `apt-get download --print-uris` call for all names (each call loads apt's whole cache, ~0.6 s of CPU).
  apt refuses the whole call if one name is unknown, so unknown names are taken out and the call repeated.
  Runs in an empty folder: `--print-uris` prints nothing for a .deb already in the working directory.
  """
  remaining, errors = list(names), {}
  while remaining:
    with tempfile.TemporaryDirectory() as empty:
      proc = subprocess.run(["apt-get", "download", "--print-uris", *remaining], cwd=empty,
                            capture_output=True, text=True)
    if proc.returncode == 0:
      break
    # e.g. "E: Unable to locate package foo", "E: Can't select candidate version from package bar as ..."
    named = re.findall(r"(?:Unable to locate package|from package) (\S+)", proc.stderr)
    culprits = set(named) & set(remaining)
    reason = " ".join(l for l in proc.stderr.splitlines() if l.startswith("E:")) or proc.stderr.strip()
    if not culprits:  # apt failed without naming a package: report it for all
      errors.update({name: reason or f"apt-get exited with {proc.returncode}" for name in remaining})
      return {}, errors
    for name in culprits:
      errors[name] = f"apt-get cannot locate package {name}"
    remaining = [n for n in remaining if n not in culprits]
  located = {}
  for line in proc.stdout.splitlines() if remaining else []:
    fields = line.split()  # 'URL' FILENAME SIZE SHA256:HEX
    if len(fields) == 4 and fields[3].startswith("SHA256:"):
      # Debian package names cannot contain "_", so the filename's first field is the package name.
      located[fields[1].split("_", 1)[0]] = (fields[1], fields[3].split(":", 1)[1])
  for name in remaining:
    if name not in located:
      errors[name] = f"apt-get --print-uris gave no .deb for {name} (a virtual package?)"
  return {n: located[n] for n in remaining if n in located}, errors


def _cached_fallback(name: str, cache_dir: pathlib.Path) -> pathlib.Path | None:
  """Newest cached .deb for `name`, used when apt cannot resolve it (e.g. lists removed, offline)."""
  found = sorted(cache_dir.glob(f"{glob_escape(name)}_*.deb"), key=lambda p: p.stat().st_mtime)
  return found[-1] if found else None


def glob_escape(text: str) -> str:
  return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _download(names, located, cache_dir: pathlib.Path) -> str:
  """`apt-get download NAMES` into the cache; returns apt's error text ("" on success).

  Downloads into a private folder on the same filesystem and renames only files whose sha256 matches
  apt's index, so a killed build never leaves a truncated .deb under a name the cache check trusts.
  """
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
    proc = subprocess.run(["apt-get", "download", "-q", *names], cwd=tmp, capture_output=True, text=True)
    for name in names:
      filename, expected = located[name]
      got = pathlib.Path(tmp) / filename
      if got.exists() and file_sha256(got) == expected:
        os.replace(got, cache_dir / filename)
  return "" if proc.returncode == 0 else " ".join(l for l in proc.stderr.splitlines() if l.startswith("E:"))


def _record(name: str, located, cache_dir: pathlib.Path, error: str) -> DebPackage:
  if name in located:
    filename, expected = located[name]
    target = cache_dir / filename
    if target.exists():  # verified above or just renamed in after its sha256 check
      return DebPackage(name, _version_from_filename(filename), filename, expected, "ok", target)
    return DebPackage(name=name, reason=error or f"apt-get download did not produce {filename}")
  cached = _cached_fallback(name, cache_dir)
  if cached is None:
    return DebPackage(name=name, reason=error)
  return DebPackage(name, _version_from_filename(cached.name), cached.name, file_sha256(cached), "ok", cached)


def fetch_packages(names, cache_dir=DEFAULT_CACHE_DIR, workers=DOWNLOAD_WORKERS, progress=False):
  """Fetches packages into cache_dir; returns DebPackage records in the order of `names`.

  Cached .debs whose sha256 matches apt's index are reused. The rest come from one `apt-get download` call
  (apt's own downloader fetches them concurrently: ~1 s for the 46 MB default set, where one apt-get per
  package in a thread pool took over a minute on a loaded 2-core machine). Packages that failed are retried
  one by one in a small thread pool to find out which and why. A package that cannot be fetched is kept
  with status "missing" and a warning; the caller decides whether the remaining data is enough.
  """
  cache_dir = pathlib.Path(cache_dir).expanduser()
  cache_dir.mkdir(parents=True, exist_ok=True)
  names = list(dict.fromkeys(names))  # drop duplicates, keep order
  if shutil.which("apt-get") is None:
    warnings.warn(f"apt-get not found: only .debs already in the cache {cache_dir} can be used")
    located, errors = {}, {n: "apt-get not found and no cached .deb" for n in names}
  else:
    ensure_apt_lists()
    located, errors = locate_packages(names)
  needed = [n for n in located if not ((cache_dir / located[n][0]).exists()
                                       and file_sha256(cache_dir / located[n][0]) == located[n][1])]
  if progress:
    print(f"[data build] {len(names)} packages: {len(located) - len(needed)} cached, "
          f"downloading {len(needed)} into {cache_dir}", file=sys.stderr, flush=True)
  for name in needed:  # a stale or damaged .deb under the expected name must not pass as fetched
    (cache_dir / located[name][0]).unlink(missing_ok=True)
  if needed and _download(needed, located, cache_dir):
    failed = [n for n in needed if not (cache_dir / located[n][0]).exists()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
      retries = dict(zip(failed, pool.map(lambda n: _download([n], located, cache_dir), failed)))
    errors.update(retries)
  packages = [_record(n, located, cache_dir, errors.get(n, "")) for n in names]
  missing = [p for p in packages if p.status != "ok"]
  for p in missing:
    warnings.warn(f"Debian package {p.name!r} skipped (status missing): {p.reason}")
  if missing and len(missing) == len(packages) and all("locate" in p.reason for p in missing):
    warnings.warn(f"apt-get could not locate any package: {APT_UPDATE_HINT}")
  return packages


def extract_package(deb_path: pathlib.Path, dest_dir: pathlib.Path) -> pathlib.Path:
  """Unpack a .deb's file tree into `dest_dir` with `dpkg-deb -x` (nothing is installed)."""
  dest_dir = pathlib.Path(dest_dir)
  dest_dir.mkdir(parents=True, exist_ok=True)
  if shutil.which("dpkg-deb") is None:
    raise FileNotFoundError("dpkg-deb not found: building a corpus needs Debian/Ubuntu's apt-get and "
                            "dpkg-deb; build it on such a machine and copy the folder (data.corpus_dir)")
  proc = subprocess.run(["dpkg-deb", "-x", str(deb_path), str(dest_dir)], capture_output=True, text=True)
  if proc.returncode != 0:
    from xlm_jax.atomic_files import disk_full_error, no_room
    failure = ValueError(f"dpkg-deb -x {deb_path} failed: {proc.stderr.strip()}")
    if no_room(failure):  # the .deb is fine: the folder it is unpacked into has no room
      raise disk_full_error(f"the files of {pathlib.Path(deb_path).name} into {dest_dir}", failure,
                            "Free some space there (the folder is under $TMPDIR) and run the build again")
    raise ValueError(f"{failure}; delete the file to re-download it")
  return dest_dir
