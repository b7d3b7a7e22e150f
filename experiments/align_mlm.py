"""ALIGN-MLM (Tang, Deshpande, Narasimhan 2022): MLM + lambda * (-mean cosine of dictionary pairs).

    xlm-jax train --config experiments/align_mlm.py --workdir workdirs/align_mlm            # 8 languages
    xlm-jax train --config experiments/align_mlm.py:synthetic --workdir workdirs/align_syn  # en + en_trans

The alignment term pulls together the tied embedding rows of dictionary pairs, every step, over the
whole dictionary (`align_pairs_per_step=0`) or a sample of it. `synthetic` trains English with its
derived "trans" language (Deshpande et al.: ids shifted by V, a disjoint script) whose implicit
dictionary is i <-> i + V, of which a fixed random share `rate` of the vocabulary is aligned
(`bilingual_rate`: the paper's runs use 0.25, 0.5 and 1; 0.25 is the reference code's default); the
"alignment" evaluator then reports the share of ids whose nearest embedding among all derived rows is
their counterpart. Args: size (tiny | small | base | large), lam=<lambda>, pairs=<align_pairs_per_step>,
op=<derived op for synthetic: trans | trans+inv | trans+perm>, rate=<bilingual_rate>.
The baselines of the paper's table on the same data: experiments/xlm_tlm.py:synthetic (MLM + TLM on
English / derived-English pairs) and experiments/dict_mlm.py:synthetic (DICT-MLM, the reference's rule).

Remaining differences of `synthetic` from the paper and its code (princeton-nlp/align-mlm:
scripts/alignedmlm_paper_experiments/alignedmlm_transl_*_bildict_0_overl.sh,
transformers/examples/language-modeling/run_alignedmlm_synthetic_transitive.py,
transformers/src/transformers/models/roberta/modeling_roberta.py RobertaForAlignedMLM):

| what | reference | here | why |
|---|---|---|---|
| model | RoBERTa 8 layers, d 512, 8 heads, FFN 2048 (config/en/roberta_8/config_alignedmlm.json), no language embeddings | a preset size (tiny: 2 layers, d 128), no language embeddings | the preset sizes keep CPU runs comparable across objectives; 8 x 512 is not a preset |
| vocabulary | 40k BPE of English (x 2 with the derived copy) | the corpus's SentencePiece (8k at CPU sizes; x 2) | the corpus's tokenizer |
| text | English train.txt and a derived copy of the same file (`--train_file`, `--transitive_file`), concatenated into one shuffled set | the corpus's English and its derived copy, sampled with alpha 1 | same content; sampling instead of one concatenated dataset |
| recipe | seq 512, 8 cores x 16 = 128 rows, AdamW lr 1e-4 (wd 0, betas 0.9/0.999, eps 1e-8, clip 1), 10k warm-up, linear decay, 500k steps | the preset's CPU recipe (seq 128, batch 32, lr 2e-3, 1200 steps) or XLM-R's at base | CPU budget; not a paper-scale variant |
| bilingual share | torch.randperm(V)[:int(V r)] after set_seed(42), specials dropped | the same rule with numpy's generator (seed dictionary.BILINGUAL_SEED) | another RNG: a different but equally random subset |
| L_align | -lambda sum cos / N over the subset, every step | the same (align_pairs_per_step 0) | |
| alignment % | 90% of all V source ids vs all rows E[V:2V] | 90% of the implicit dictionary's ids (specials and overlap ids left out) vs all rows E[V:2V] | specials have no counterpart to find; at most 5 ids of V |
| derived text | one-to-one map of token ids after BPE | ids shifted by V after SentencePiece (xlm_jax.data.synthetic) | same construction |
| MLM | 15%, 80/10/10, random ids from [0, V) on both languages (`len(tokenizer)`, data_collator.py) | 15%, 80/10/10, random ids from the row's own half | an English id in derived text gives the corruption away; not stated in the paper |
"""
from xlm_jax import presets
from xlm_jax.config import default_config


def get_config(arg=None):
  args = presets.parse_arg(arg, size="tiny", variant="real", lam=10.0, pairs=0, op="trans", rate=0.25)
  c = default_config()
  presets.apply_size(c, args["size"])
  c.data.corpus = "debian8"
  section = dict(align_weight=args["lam"], align_pairs_per_step=args["pairs"],
                 bilingual_rate=args["rate"])
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
