"""Shared test set-up.

Eight virtual CPU devices for every test, so sharded steps run on a (data, fsdp, tensor) mesh of
2x2x2 without an accelerator. XLA reads the flag when the backend starts, hence before any import
of jax below.
"""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XLA's persistent compilation cache for the session: most of the suite's time is compiling tiny
# programs, and many tests compile the same ones (the tiny config of test_train.py, the smoke
# report's second seed). A fresh folder per session, so no stale executable outlives a change.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile
  _cache = tempfile.mkdtemp(prefix="xlm_jax_tests_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# --- Small real corpus (helper A, data_prep) -------------------------------------------------------------
import pytest  # noqa: E402  (after the XLA flags above)

# Six small Debian packages (~6 MB of .debs): sed, grep and diffutils are held-out programs (test split),
# make, apt and coreutils give every one of the 8 default languages ~2-3k training sentences.
SMALL_CORPUS_PACKAGES = ("sed", "grep", "diffutils", "make", "apt", "coreutils")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
  """A real 8-language gettext corpus (vocab 2000), built once per session in ~10 s (.debs cached).

  If $XLM_JAX_TEST_CORPUS is set, the corpus lives there: built on first use, reused afterwards.
  Returns an xlm_jax.data.corpus.Corpus.
  """
  from data_prep import build
  path = os.environ.get("XLM_JAX_TEST_CORPUS") or tmp_path_factory.mktemp("corpus") / "small"
  return build.ensure_corpus(path, build.DEFAULT_LANGUAGES, build_if_missing=True,
                             packages=SMALL_CORPUS_PACKAGES, vocab_size=2000,
                             min_sentences_per_language=100, progress=False)


# --- Order: the longest files first ----------------------------------------------------------------------
# CI runs the suite on 2 workers, a whole file per worker (pytest-xdist --dist loadfile), handed out
# in collection order. The reproduction smoke run is the longest file by far: started first, it runs
# beside everything else instead of after it.
LONGEST_FILES = ("test_repro.py", "test_multiprocess.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
