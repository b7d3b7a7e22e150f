"""xlm-jax: pre-training cross-lingual encoders (XLM-R and friends) in JAX/Flax.

    model, params, tokenizer, config = xlm_jax.load_pretrained("workdirs/quickstart/export")
    vectors = xlm_jax.load_pretrained(path).encode(["Datei nicht gefunden"], lang="de")
"""
__version__ = "0.1.0"


def load_pretrained(path):
  """Loads an exported encoder as `Pretrained(model, params, tokenizer, config)`.

  See `xlm_jax.export.export.load_pretrained`; imported lazily so `import xlm_jax` stays cheap.
  """
  from xlm_jax.export.export import load_pretrained as _load
  return _load(path)
