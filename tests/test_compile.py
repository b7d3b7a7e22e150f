"""`xlm-jax compile`: the run's jitted steps compiled for a TPU slice that is not here.

The compiling tests need libtpu, which must not be in the test venv (with libtpu installed every
JAX process probes for a TPU at start-up). They run in a child process of a Python that has it:
$XLM_JAX_TPU_PYTHON, else `.venv-tpu/bin/python`, the venv the README's test command makes with
`pip install -e ".[tpu]"`; they are skipped, with the reason, when there is neither. The others
check, without libtpu, that the command says how to get it, that slice names give Cloud TPU's
shapes, and that the abstract batches and vocabulary the compile lowers with are exactly what
training feeds.
"""
import importlib.util
import json
import os
import pathlib
import subprocess

import pytest

from xlm_jax import cli
from xlm_jax import config as config_lib
from xlm_jax import mesh as mesh_lib
from xlm_jax.data import batch_kinds
from xlm_jax.data.corpus import Corpus
from xlm_jax.train import compile as compile_lib
from xlm_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "experiments" / "quickstart.py") + ":smoke"


def tpu_python() -> str | None:
  """A Python with libtpu for the compiling tests: $XLM_JAX_TPU_PYTHON, else .venv-tpu's."""
  named = os.environ.get("XLM_JAX_TPU_PYTHON")
  if named:
    return named
  venv = REPO / ".venv-tpu" / "bin" / "python"
  return str(venv) if venv.exists() else None


# Under CI the test command has made .venv-tpu: missing, the tests fail instead (_run_tpu).
needs_libtpu = pytest.mark.skipif(
    tpu_python() is None and not os.environ.get("CI"),
    reason='no Python with libtpu: the README\'s test command makes .venv-tpu (`python3 -m venv '
           '.venv-tpu && .venv-tpu/bin/pip install -e ".[tpu]"`), or set XLM_JAX_TPU_PYTHON to '
           'the python of a venv with the tpu extra')

# compile_run in the libtpu Python: the report as JSON, then its printed text and exit status.
_CHILD = """
import dataclasses, json, sys
from xlm_jax import config as config_lib
from xlm_jax.train import compile as compile_lib
spec, topology_name, overrides = json.loads(sys.argv[1])
topology = compile_lib.parse_topology(topology_name)
compile_lib.require_libtpu()
compile_lib.prepare_compile_process(topology)
report = compile_lib.compile_run(config_lib.load_config(spec, overrides), topology, spec)
print("REPORT " + json.dumps({"report": dataclasses.asdict(report),
                              "text": compile_lib.format_report(report),
                              "exit_status": compile_lib.exit_status(report)}))
"""


def _tpu_env() -> dict:
  """The test's environment for a libtpu child: this checkout first on the path, and neither the
  test session's 8 CPU devices nor its CPU compilation cache."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "").strip()
  return env


def _run_tpu(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
  assert tpu_python(), "CI: the test command makes .venv-tpu with the tpu extra; it is missing"
  return subprocess.run([tpu_python(), *args], cwd=REPO, env=_tpu_env(), capture_output=True,
                        text=True, timeout=timeout, check=False)


def compile_in_tpu_python(spec: str, topology: str, overrides=()) -> dict:
  """compile_run's report (as dataclasses.asdict gives it), text and exit status, from the
  libtpu Python."""
  done = _run_tpu(["-c", _CHILD, json.dumps([spec, topology, list(overrides)])])
  lines = [l for l in done.stdout.splitlines() if l.startswith("REPORT ")]
  assert lines, (f"{tpu_python()} gave no report (exit {done.returncode}); is libtpu installed "
                 f"there?\n{done.stderr[-4000:]}")
  return json.loads(lines[-1][len("REPORT "):])


def test_without_libtpu_the_command_says_how_to_install_it(monkeypatch, capsys):
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a))
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  assert not compile_lib.libtpu_installed()
  status = cli.main(["compile", "--config", SMOKE, "--topology", "v5e-4"])
  err = capsys.readouterr().err.strip()
  assert status == 2
  assert len(err.splitlines()) == 1, err
  assert err.startswith("xlm-jax compile: error: libtpu is not installed")
  assert 'pip install -e ".[tpu]"' in err and "jax[tpu]" in err


def test_topology_names_give_cloud_tpu_slice_shapes():
  # Accelerator types count chips on v5e/v6e and TensorCores (2 per chip) on v4/v5p.
  expected = {"v5e-256": (16, 16), "v5e-8": (2, 4), "v6e-64": (8, 8), "v5litepod-16": (4, 4),
              "v5p-128": (4, 4, 4), "v5p-8": (2, 2, 1), "v4-32": (2, 2, 4), "v4-256": (4, 4, 8),
              "v5p-512": (4, 8, 8), "v5p:4x4x12": (4, 4, 12), "v5e:2x2": (2, 2)}
  for name, shape in expected.items():
    assert compile_lib.parse_topology(name).shape == shape, name
  topology = compile_lib.parse_topology("v5p-128")
  assert (topology.chips, topology.libtpu_name, topology.generation.hbm_gib) == (64, "v5:4x4x4", 95)
  for bad in ("v5p-6", "v7-8", "v5e-24", "v5e:4x4x4", "tpu"):
    with pytest.raises(ValueError, match="--topology"):
      compile_lib.parse_topology(bad)


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_abstract_batches_and_vocabulary_are_what_training_reads(small_corpus, grad_accum_steps):
  """Every batch kind: the trainer's own placed batch has the abstract batch's shapes, dtypes and
  shardings; the stand-in vocabulary has the corpus tokenizer's special ids."""
  config = config_lib.load_config(SMOKE, [
      f"data.corpus_dir={str(small_corpus.dir)!r}", "data.build_if_missing=False",
      "data.seq_len=32", "data.pair_seq_len=12", "train.batch_size=16",
      f"train.grad_accum_steps={grad_accum_steps}"])
  mesh = mesh_lib.make_mesh(config.mesh)  # the 8 CPU devices of conftest.py
  corpus = Corpus(small_corpus.dir)
  tokenizer = trainer.open_tokenizer(config, corpus)
  leading = 1 if grad_accum_steps > 1 else 0
  for kind in batch_kinds.BATCH_KINDS:
    iterator = iter(trainer.make_batch_dataset(kind, config, corpus, tokenizer, "train"))
    placed = trainer._next_batches({kind: iterator}, [kind], mesh, grad_accum_steps)[kind]
    abstract = compile_lib.abstract_batch(kind, config, config.train.batch_size, mesh, leading)
    assert sorted(placed) == sorted(abstract), kind
    for key, array in placed.items():
      assert (array.shape, array.dtype) == (abstract[key].shape, abstract[key].dtype), (kind, key)
      assert array.sharding.is_equivalent_to(abstract[key].sharding, array.ndim), (kind, key)
  stand_in = compile_lib.StandInVocabulary(tokenizer.vocab_size)
  for field in ("bos_id", "pad_id", "eos_id", "unk_id", "mask_id", "special_ids"):
    assert getattr(stand_in, field) == getattr(tokenizer, field), field


@needs_libtpu
def test_compile_tiny_model_for_a_v5e_2x2_slice():
  """The smoke run on a 2x2 v5e slice with FSDP, compiled by libtpu: both steps compile, report
  positive memory and FLOPs that agree with the analytic count, FSDP's collectives, and a
  verdict per step."""
  out = compile_in_tpu_python(SMOKE, "v5e:2x2", ["mesh.data=2", "mesh.fsdp=2"])
  report, text = out["report"], out["text"]
  assert report["mesh_shape"] == {"data": 2, "fsdp": 2, "tensor": 1}
  assert report["device_kind"].startswith("TPU v5"), report["device_kind"]
  steps = report["steps"]
  assert [s["name"] for s in steps] == ["train/mlm", "eval/mono"]
  for step in steps:
    assert not step["error"] and not step["out_of_memory"], step
    memory = step["memory"]
    assert memory["arguments"] > 0 and memory["peak"] >= memory["arguments"], step
    assert memory["peak"] < 0.01 * 16 * compile_lib.GIB  # a 1.5M-parameter model
    # Unscanned, unrematerialised: the compiler's count is the matmuls plus elementwise work.
    assert step["flops"] > 0 and 0.9 < step["flops"] / step["analytic_flops"] < 1.5, step
  train = steps[0]["collectives"]
  assert train["all-gather"] > 0  # FSDP gathers each weight before use
  assert train["reduce-scatter"] + train["all-reduce"] > 0  # and reduces the gradients
  assert text.count("  memory      peak ") == 2
  assert text.count("  verdict     fits: ") == 2
  assert text.endswith("verdict: every step fits on v5e:2x2 under 80% of HBM")
  assert out["exit_status"] == 0


@needs_libtpu
def test_too_big_is_a_verdict_with_settings_to_try():
  """`xlm-jax compile` itself, in the libtpu Python: a step past the chip's HBM is a verdict
  quoting the compiler's figures with settings to try, and exit status 1."""
  # A 16M-piece vocabulary: 8 GiB of float32 embeddings replicated on each chip (mesh data=-1),
  # with gradients and Adam moments far past a v5e chip's 16 GiB.
  done = _run_tpu(["-m", "xlm_jax.cli", "compile", "--config", SMOKE, "--topology", "v5e-4",
                   "--config.data.vocab_size=16000000",
                   "--config.eval.evaluators=('retrieval',)"])
  assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
  (line,) = [l for l in done.stdout.splitlines() if l.startswith("  verdict     ")]
  assert line.startswith("  verdict     does not fit: ") and "GiB usable per chip" in line, line
  required, usable = (float(x) for x in line.split("does not fit: ")[1].split(" GiB")[0]
                      .split(" of "))
  assert required > usable > 15, line
  assert "--config.mesh.fsdp=-1 --config.mesh.data=1" in line
  assert done.stdout.rstrip().endswith("verdict: does not fit on v5e-4: train/mlm")
