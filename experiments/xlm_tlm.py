"""XLM (Conneau & Lample 2019): MLM on monolingual streams alternated with TLM on parallel pairs.

    xlm-jax train --config experiments/xlm_tlm.py --workdir workdirs/xlm_tlm          # tiny, CPU
    xlm-jax train --config experiments/xlm_tlm.py:base --workdir /mnt/shared/xlm_tlm
    xlm-jax train --config experiments/xlm_tlm.py:synthetic --workdir workdirs/xlm_syn  # en + en_trans

TLM reads `<s> x </s> </s> y </s>` pairs (batch kind "parallel"), masks both sides, and restarts
y's positions (`reset_positions`, XLM's default: facebookresearch/XLM xlm/trainer.py `generate_batch`,
which `mlm_step` uses, joins a language pair with `concat_batches(..., reset_positions=True)`). XLM has language embeddings, so the model does too, and
samples languages with alpha 0.7. Variants: a size (tiny | small | base | large), `mlm_only` (the
paper's "XLM (MLM)" row: the same model and data without TLM), `tlm_only`,
`no_reset` (continuous positions over the pair) and `synthetic`: the XLM baseline of ALIGN-MLM's table,
MLM on English and a derived language (op=trans | trans+inv | trans+perm) plus TLM on each English
sentence beside its derived form (xlm_jax.data.derived.DerivedPairSource).

Remaining differences of `synthetic` from ALIGN-MLM's XLM baseline and its code (princeton-nlp/
align-mlm: scripts/alignedmlm_paper_experiments/xlm_transl_*_gen_0_overl.sh,
transformers/examples/language-modeling/run_tlm_synthetic_transitive.py):

| what | reference | here | why |
|---|---|---|---|
| TLM rows | several sentence pairs packed per row: English in the first half (256 tokens), derived in the second, each half padded | one pair per row, `<s> x </s> </s> y </s>`, sides in random order | the project's one parallel layout; random order as in XLM |
| positions | restart in each half at pad+1 | restart on y at pad+1 (reset_positions) | |
| language ids | 2 / 3 (pad+1, pad+2), embeddings on (config_tlm.json: the model's default use_lang_ids True) | the run's language ids, model.num_languages = 2 | |
| TLM share | `tlm_generation_rate` r of the sentences make TLM rows, mixed into one shuffled set with the two MLM sets: r / (1 + r) of the tokens | MLM and TLM batches alternate: half the steps | r = 1 (the argparse default; the paper's runs use 0.25 and 1) gives the same half |
| MLM | 15%, 80/10/10, random ids from [0, V) (`len(tokenizer)`) | 15% per row, 80/10/10, random ids from the token's own half | an English id in derived text gives the corruption away; not stated in the paper |
| model, recipe | RoBERTa 8 layers, d 512, seq 512, 128 rows, AdamW lr 1e-4, 10k warm-up, 500k steps | a preset size and its recipe | CPU budget; not a paper-scale variant |
"""
from xlm_jax import presets
from xlm_jax.config import default_config

VARIANTS = ("mlm_tlm", "mlm_only", "tlm_only", "no_reset", "synthetic")


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="mlm_tlm", op="trans")
  if args["variant"] not in VARIANTS:
    raise ValueError(f"experiments/xlm_tlm.py: unknown variant {args['variant']!r}; known: {VARIANTS}")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  c.data.alpha = 0.7
  if args["variant"] == "synthetic":
    c.data.languages = ("en", f"en_{args['op']}")
    c.data.alpha = 1.0  # the derived text is content-parallel to English: same size, same weight
    c.eval.evaluators = ("mlm", "alignment")
  c.model.num_languages = len(c.data.languages)
  sections = {}
  if args["variant"] != "mlm_only":
    sections["tlm"] = dict(weight=1.0, reset_positions=args["variant"] != "no_reset")
  if args["variant"] != "tlm_only":
    sections["mlm"] = dict(weight=1.0)
  presets.set_objectives(c, **sections)
  c.objective_mixing = "alternate"  # XLM alternates MLM and TLM batches
  return c
