"""xlm-jax: pre-training cross-lingual encoders (XLM-R and friends) in JAX/Flax.

    model, params, tokenizer, config = xlm_jax.load_pretrained("workdirs/quickstart/export")
    vectors = xlm_jax.load_pretrained(path).encode(["Datei nicht gefunden"], lang="de")
    model = xlm_jax.load_pretrained("path/to/hf/xlm-roberta-base")   # a Hugging Face folder too
"""
__version__ = "0.1.0"


def load_pretrained(path, mesh=None, rules=None):
  """Loads an encoder as `Pretrained(model, params, tokenizer, config)`.

  `path` is an xlm-jax export (`xlm_jax.export.export.load_pretrained`) or a Hugging Face
  XLMRobertaForMaskedLM folder (converted in memory by `xlm_jax.export.hf.load_hf`). With a
  `jax.sharding.Mesh` the params are sharded over it by `rules` (default: training's
  mesh.rules) and `encode` splits its batches over it. Imported lazily so `import xlm_jax`
  stays cheap.
  """
  from xlm_jax.export import hf
  if hf.is_hf_folder(path):
    return hf.load_hf(path, mesh, rules)
  from xlm_jax.export.export import load_pretrained as _load
  return _load(path, mesh, rules)
