"""`xlm-jax data stats`: a per-language table of a built corpus.

Columns: training/test sentences, training tokens (under the corpus's own tokenizer), parallel pairs, the
share q_l ∝ p_l^alpha a sampler gives each language for a few alphas, and, for corpora with dictionaries
(recipe debian8), the dictionary training pairs and BLI test pairs. Token counts are recorded in the
manifest by debian8 builds; for older corpora they are counted from the text files on the fly.
"""
from __future__ import annotations

import pathlib

from xlm_jax.data.corpus import Corpus
from xlm_jax.data.sampling import language_sampling_probs
from xlm_jax.data.tokenizer import Tokenizer

# Sampling exponents shown by `stats`: XLM-R's 0.3, the tokenizer's default 0.5, and the raw shares (1.0).
STATS_ALPHAS = (0.3, 0.5, 1.0)
# Lines tokenized per encode call when counting tokens from the text files.
_CHUNK = 4096


def count_tokens(tokenizer: Tokenizer, path) -> int:
  """Tokens (no <s>/</s>) of the lines of a text file; 0 when the file does not exist."""
  path, total, chunk = pathlib.Path(path), 0, []
  if not path.is_file():
    return 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      chunk.append(line.rstrip("\n"))
      if len(chunk) == _CHUNK:
        total += sum(map(len, tokenizer.encode(chunk)))
        chunk = []
  return total + (sum(map(len, tokenizer.encode(chunk))) if chunk else 0)


def train_tokens(corpus: Corpus) -> dict[str, int]:
  """{lang: tokens of the mono training text}: from the manifest if recorded, else counted."""
  recorded = corpus.manifest.get("tokens")
  if recorded:
    return {lang: recorded.get(lang, 0) for lang in corpus.languages}
  tokenizer = Tokenizer(corpus.tokenizer_path)
  return {lang: count_tokens(tokenizer, corpus.dir / "text" / "mono" / "train" / f"{lang}.txt")
          for lang in corpus.languages}


def stats_table(corpus: Corpus) -> str:
  """Per-language table: sentences, pairs, sampling shares q@alpha, tokens, dictionary and BLI sizes."""
  manifest = corpus.manifest
  counts = manifest["counts"]
  train = {lang: counts[lang]["mono_train"] for lang in corpus.languages if counts[lang]["mono_train"] > 0}
  probs = {alpha: language_sampling_probs(train, alpha) for alpha in STATS_ALPHAS} if train else {}
  tokens = train_tokens(corpus)
  dicts, bli = manifest.get("dictionaries", {}), manifest.get("eval", {}).get("bli_pairs", {})
  header = (f"{'lang':<5} {'mono_train':>10} {'mono_test':>9} {'par_train':>9} {'par_test':>8}"
            + "".join(f" {'q@' + str(a):>7}" for a in STATS_ALPHAS)
            + f" {'tok_train':>10} {'dict':>6} {'bli':>5}")
  lines = [f"corpus {corpus.dir} ({manifest['name']}, recipe {manifest.get('recipe', 'gettext8')}, "
           f"created {manifest['created']})", header]
  for lang in corpus.languages:
    c = counts[lang]
    shares = "".join(f" {probs[a].get(lang, 0.0):>7.3f}" for a in probs)
    words = dicts.get(lang, {}).get("word_pairs", 0)
    lines.append(f"{lang:<5} {c['mono_train']:>10} {c['mono_test']:>9} {c['parallel_train']:>9} "
                 f"{c['parallel_test']:>8}{shares} {tokens[lang]:>10} {words:>6} {bli.get(lang, 0):>5}")
  packages = manifest["packages"]
  missing = [p["name"] for p in packages if p["status"] != "ok"]
  lines.append(f"packages: {len(packages) - len(missing)} ok, {len(missing)} missing"
               + (f": {', '.join(missing)}" if missing else ""))
  lines.append(f"held-out programs (test): {', '.join(manifest['heldout_programs'])}")
  if "eval" in manifest:
    ev = manifest["eval"]
    lines.append(f"eval sets: retrieval {ev['retrieval_items']} multi-way items; classification "
                 f"train {ev['classification_train']} (en), test {ev['classification_test']}")
  lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in manifest["dropped"].items()))
  tok = manifest["tokenizer"]
  lines.append(f"tokenizer: {tok['model_type']} vocab {tok['vocab_size']} alpha {tok['alpha']} "
               f"sha256 {tok['sha256'][:12]}")
  return "\n".join(lines)
