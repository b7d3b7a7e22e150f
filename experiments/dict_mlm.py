"""DICT-MLM (Chaudhary et al. 2020): MLM whose masked dictionary words are swapped for translations.

    xlm-jax train --config experiments/dict_mlm.py --workdir workdirs/dict_mlm              # target_swap
    xlm-jax train --config experiments/dict_mlm.py:input_swap --workdir workdirs/dict_mlm_in
    xlm-jax train --config experiments/dict_mlm.py:synthetic --workdir workdirs/dict_mlm_syn  # en + en_trans

Three swap rules behind `objectives.dict_mlm.variant`: `target_swap` (the paper: the label of a masked
word becomes one of its translations), `input_swap` (the input shows the translation, the label stays)
and `princeton` (princeton-nlp/align-mlm's exact rule, the DICT-MLM baseline of ALIGN-MLM: see
xlm_jax/objectives/dict_mlm.py). The dictionaries of the real variants are the saved FreeDict artifacts
of the debian8 corpus (<corpus>/dictionaries/en-<lang>.tsv + token ids), built by `xlm-jax data build`.
`synthetic` trains English with a derived language (op=trans | trans+inv | trans+perm) under the
princeton rule, p_swap 0.5, on the implicit dictionary of a random share `rate` of the vocabulary.
Sizes: tiny | small (CPU) | base | large.

Remaining differences of `synthetic` from ALIGN-MLM's DICT-MLM baseline and its code (princeton-nlp/
align-mlm: scripts/alignedmlm_paper_experiments/dictmlm_transl_*_bildict_0_overl.sh,
transformers/examples/language-modeling/run_dictmlm_synthetic_transitive.py,
transformers/src/transformers/data/data_collator_dict_mlm.py DataCollatorForDictMLM):

| what | reference | here | why |
|---|---|---|---|
| swap rule | coin p 0.5 per masked token; heads + translation: the translation shown, its language id; heads, no translation: the token shown as is; tails: 80/10/10 | the same (variant "princeton", p_swap 0.5) | |
| candidates | every masked token of the bilingual share (no whole-word test) | the same (whole_words off); the share is that of `bilingual_rate` | |
| random replacements | ids from [0, V) on both languages (`len(tokenizer)`) | ids from the row's own half | an English id in derived text gives the corruption away; not stated in the paper |
| masking | Bernoulli(0.15) per token | 15% of each row's non-special tokens, rounded at random (mlm_mask) | the project's one MLM masking; same rate |
| language embeddings | on (config_dictmlm.json has no use_lang_ids: the model's default True), ids pad+1 / pad+2 | on (model.num_languages = 2) | |
| model | RoBERTa 8 layers, d 512, 8 heads, FFN 2048 | a preset size | as experiments/align_mlm.py |
| recipe | seq 512, 128 rows, AdamW lr 1e-4, 10k warm-up, 500k steps | the preset's | CPU budget; not a paper-scale variant |
| bilingual share | torch.randperm(V)[:int(V r)] after set_seed(42) | the same rule, numpy's generator | another RNG, an equally random subset |
"""
from xlm_jax import presets
from xlm_jax.config import default_config

VARIANTS = ("target_swap", "input_swap", "synthetic")


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="target_swap", p_swap=0.5, op="trans", rate=0.25)
  if args["variant"] not in VARIANTS:
    raise ValueError(f"experiments/dict_mlm.py: unknown variant {args['variant']!r}; known: {VARIANTS}")
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  section = dict(variant=args["variant"], p_swap=args["p_swap"], bilingual_rate=args["rate"])
  if args["variant"] == "synthetic":
    derived = f"en_{args['op']}"
    c.data.languages = ("en", derived)
    c.data.alpha = 1.0  # the derived text is content-parallel to English: same size, same weight
    c.model.num_languages = len(c.data.languages)
    section.update(variant="princeton", whole_words=False, dictionary_languages=(derived,))
    c.eval.evaluators = ("mlm", "alignment")
  presets.set_objectives(c, dict_mlm=section)
  return c
