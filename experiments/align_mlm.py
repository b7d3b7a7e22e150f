"""ALIGN-MLM (Tang, Deshpande, Narasimhan 2022): MLM + lambda * (-mean cosine of dictionary pairs).

    xlm-jax train --config experiments/align_mlm.py --workdir workdirs/align_mlm            # 8 languages
    xlm-jax train --config experiments/align_mlm.py:synthetic --workdir workdirs/align_syn  # en + en_trans

The alignment term pulls together the tied embedding rows of dictionary pairs, every step, over the
whole dictionary (`align_pairs_per_step=0`) or a sample of it. `synthetic` trains English with its
derived "trans" language (Deshpande et al.: ids shifted by V, a disjoint script) whose implicit
dictionary is i <-> i + V; the "alignment" evaluator then reports the share of ids whose nearest
embedding is their counterpart. Args: size (tiny | small | base | large), lam=<lambda>,
pairs=<align_pairs_per_step>, op=<derived op for synthetic: trans | trans+inv | trans+perm>.
"""
from xlm_jax import presets
from xlm_jax.config import default_config


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="real", lam=10.0, pairs=0, op="trans")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  section = dict(align_weight=args["lam"], align_pairs_per_step=args["pairs"])
  if args["variant"] == "synthetic":
    derived = f"en_{args['op']}"
    c.data.languages = ("en", derived)
    c.data.alpha = 1.0  # the derived corpus is content-parallel to English: same size, same weight
    section["dictionary_languages"] = (derived,)
  elif args["variant"] != "real":
    raise ValueError(f"experiments/align_mlm.py: unknown variant {args['variant']!r}; "
                     "known: real, synthetic")
  presets.set_objectives(c, align_mlm=section)
  c.eval.evaluators = ("mlm", "retrieval", "alignment") if args["variant"] == "real" else (
      "mlm", "alignment")
  return c
