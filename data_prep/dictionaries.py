"""Bilingual en<->xx word dictionaries (for DICT-MLM, ALIGN-MLM, extra anchors and BLI) from FreeDict.

Both FreeDict directions (eng-deu, deu-eng) are merged into single-word (English, foreign) pairs, kept where
both words are common (wordfreq zipf >= 3 by default: entries are noisy, many are rare technical terms).
Every filter is explicit and counts the pairs it removes, so that candidates == kept + sum(dropped):
  multiword       a side holds whitespace ("jagendes Tier")
  not_a_word      a side holds something other than letters, inner hyphens or apostrophes ("sb.", "G8")
  wrong_script    a letter outside the language's script (eng-jpn glosses read as Japanese: "region")
  identical       the same word on both sides ("Angola"): trivially found by BLI, useless as an anchor
  duplicate       the same pair again (both directions, spelling variants, case)
  rare_en/rare_xx below the zipf threshold on that side
Chinese has no FreeDict pair in Debian, so its pairs come from single-word gettext UI terms ("File" ->
"文件") through the same filters (gettext_term_pairs). Splits are by English headword: no BLI test word is
an English word of a training pair. The saved artifact (TSV + token-id .npy + JSON) is part of the corpus
format, so its writer and reader live in xlm_jax.data.dictionary (save_dictionary, load_dictionary); this
module only builds the word pairs.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
import re
import unicodedata

import polib

from data_prep import freedict, gettext_corpus

DEFAULT_MIN_ZIPF = 3.0
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_MIN_TEST_PAIRS = 500
DEFAULT_MAX_TEST_FRACTION = 0.5

# Unicode name prefixes of the letters each language is written in; a language not listed is not checked.
SCRIPTS = {**{lang: ("LATIN",) for lang in ("en", "de", "fr", "es", "it", "pl", "nl", "pt", "sv", "cs")},
           "ru": ("CYRILLIC",), "ja": ("HIRAGANA", "KATAKANA", "CJK", "IDEOGRAPHIC"),
           "zh": ("CJK", "IDEOGRAPHIC")}
# German capitalises every noun: "Haus" is the spelling, "haus" is not a word the corpus contains.
CASE_SENSITIVE_LANGUAGES = ("de",)
# Characters allowed inside a word besides letters and combining marks ("e-mail", "aujourd'hui").
_WORD_JOINERS = "-'"
_WHITESPACE = re.compile(r"\s")
# Typographic apostrophes and hyphens become ASCII: spellings from different sources compare equal.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2010": "-", "\u2011": "-"})


def freedict_packages(lang: str) -> list[str]:
  """The Debian packages of both FreeDict directions for en<->lang (apt may lack one or both)."""
  return [freedict.freedict_package("en", lang), freedict.freedict_package(lang, "en")]


def normalise_word(word: str, lang: str) -> str:
  """NFC, ASCII apostrophes and hyphens, and lower case where case is not part of the spelling.

  A capitalised or lower-case word is lower-cased (sentence-initial or proper-noun capitals: "Arctic" ->
  "arctic"); acronyms and mixed case ("USB", "iPod") and every German word keep their case.
  """
  word = unicodedata.normalize("NFC", word).translate(_APOSTROPHES)
  if lang not in CASE_SENSITIVE_LANGUAGES and word[1:] == word[1:].lower():
    return word.lower()
  return word


@functools.lru_cache(maxsize=1 << 20)  # candidates repeat words: de has 1.6M candidates of 0.3M words
def word_problem(word: str, lang: str) -> str:
  """Why `word` is no single word of `lang` ("multiword", "not_a_word", "wrong_script"), or "" if it is."""
  if not word or _WHITESPACE.search(word):
    return "multiword"
  # Joiners only inside a word: "e-mail" passes, "-ism" and "'s" do not.
  if not (word[0].isalpha() and word[-1].isalpha()):
    return "not_a_word"
  scripts = SCRIPTS.get(lang)
  for ch in word:
    if ch.isalpha():
      if scripts and not unicodedata.name(ch, "").startswith(scripts):
        return "wrong_script"
    # Combining marks (category M) belong to the letter before them.
    elif ch not in _WORD_JOINERS and not unicodedata.category(ch).startswith("M"):
      return "not_a_word"
  return ""


def word_zipf(word: str, lang: str) -> float:
  """wordfreq's Zipf frequency of `word` (log10 of uses per billion words; 3 = once per million).

  Languages wordfreq splits with a regex use `wordfreq.zipf_frequency`. For ja and zh, wordfreq would need
  MeCab or jieba to split the word; we look it up as one token of wordfreq's list (after wordfreq's own
  normalisation) instead, which asks for exactly what we want: a common single word."""
  return _zipf_function(lang)(word)


@functools.lru_cache(maxsize=None)
def _zipf_function(lang: str):
  """word -> zipf for one language (cached: wordfreq.available_languages() globs the disk on every call)."""
  try:
    import langcodes
    import wordfreq
    from wordfreq.language_info import get_language_info
    from wordfreq.preprocess import preprocess_text
  except ImportError as err:
    raise ImportError("the dictionary frequency filter needs wordfreq: pip install wordfreq") from err
  if lang not in wordfreq.available_languages():
    raise ValueError(f"wordfreq has no word list for language {lang!r}; pass min_zipf=0 to skip the filter")
  if get_language_info(lang)["tokenizer"] == "regex":
    return lambda word: wordfreq.zipf_frequency(word, lang)
  language, frequencies = langcodes.Language.get(lang), wordfreq.get_frequency_dict(lang)

  def exact_token_zipf(word):
    freq = frequencies.get(preprocess_text(word, language), 0.0)
    # Rounded to 2 decimals like wordfreq.zipf_frequency, so both paths compare alike with min_zipf.
    return round(wordfreq.freq_to_zipf(freq), 2) if freq else 0.0
  return exact_token_zipf


def clean_pairs(candidates, lang: str, dropped: collections.Counter) -> list[tuple[str, str]]:
  """Normalised single-word (English, foreign) pairs from raw candidates, unique, in first-seen order."""
  kept = {}
  for en, xx in candidates:
    problem = word_problem(en, "en") or word_problem(xx, lang)
    if problem:
      dropped[problem] += 1
      continue
    pair = (normalise_word(en, "en"), normalise_word(xx, lang))
    # casefold: "Angola" / "angola" (and German nouns) still count as identical.
    if pair[0].casefold() == pair[1].casefold():
      dropped["identical"] += 1
    elif pair in kept:
      dropped["duplicate"] += 1
    else:
      kept[pair] = None
  return list(kept)


def filter_by_frequency(pairs, lang: str, dropped: collections.Counter, min_zipf: float = DEFAULT_MIN_ZIPF,
                        zipf=word_zipf) -> list[tuple[str, str]]:
  """Pairs whose English and foreign words both have zipf >= min_zipf (`zipf(word, lang)`); 0 keeps all."""
  if min_zipf <= 0:
    return list(pairs)
  # Each distinct word is looked up once; pairs share many words.
  words = {(en, "en") for en, _ in pairs} | {(xx, lang) for _, xx in pairs}
  common = {key for key in words if zipf(*key) >= min_zipf}
  kept = []
  for en, xx in pairs:
    if (en, "en") not in common:
      dropped["rare_en"] += 1
    elif (xx, lang) not in common:
      dropped["rare_xx"] += 1
    else:
      kept.append((en, xx))
  return kept


def gettext_term_pairs(messages, dropped: collections.Counter | None = None) -> list[tuple[str, str]]:
  """Candidates from one-word gettext messages (msgid, msgstr): "_File" / "文件(_F)" gives ("File", "文件").

  Accelerators and a trailing ellipsis or colon are removed ("Open…" -> "Open"). Counted in `dropped`:
  "phrase" (several English words: not a term), "placeholder" (all-capitals metavariables of --help texts
  such as "COMMAND"; their translations are placeholders too: "BEFEHL") and "empty". Feed the result to
  build_dictionary like FreeDict's candidates."""
  candidates, dropped = [], collections.Counter() if dropped is None else dropped
  for msgid, msgstr in messages:
    # Full-width "：" ends CJK labels as ":" ends English ones.
    en, xx = (gettext_corpus.strip_accelerators(t).strip().rstrip(".…:：").strip() for t in (msgid, msgstr))
    if len(en.split()) != 1:
      dropped["phrase"] += 1
    # len > 1: a one-letter term ("A") is not taken for a metavariable.
    elif en.isupper() and len(en) > 1:
      dropped["placeholder"] += 1
    elif not xx:
      dropped["empty"] += 1
    else:
      candidates.append((en, xx))
  return candidates


def read_gettext_messages(roots, lang: str) -> list[tuple[str, str]]:
  """Raw (msgid, msgstr) of every translated singular message of `lang` in the unpacked package trees."""
  messages = []
  for root in roots:
    for locale, _, path in gettext_corpus.find_catalogues(root):
      if gettext_corpus.language_of_locale(locale) == lang:
        messages += [(e.msgid, e.msgstr) for e in polib.mofile(str(path)) if e.msgid and e.msgstr]
  return messages


def headword_position(headword: str) -> float:
  """A headword's fixed place in [0, 1) (md5, so the split is the same on every machine and Python run)."""
  return int(hashlib.md5(headword.encode("utf-8")).hexdigest(), 16) / 2.0**128


def split_by_headword(pairs, test_fraction: float = DEFAULT_TEST_FRACTION,
                      min_test_pairs: int = DEFAULT_MIN_TEST_PAIRS,
                      max_test_fraction: float = DEFAULT_MAX_TEST_FRACTION):
  """(train, test) pairs; all translations of an English headword go to the same side.

  Headwords are taken into the test set in md5 order: the first ceil(test_fraction * headwords), then more
  while the test set has fewer than `min_test_pairs` pairs and would not exceed `max_test_fraction` of all
  pairs (small dictionaries such as en-ru still get a usable BLI test set and keep a training half)."""
  by_headword = collections.defaultdict(list)
  for en, xx in pairs:
    by_headword[en].append((en, xx))
  # The headword breaks md5 ties, so the order is total.
  order = sorted(by_headword, key=lambda h: (headword_position(h), h))
  test_heads, test_size = set(), 0
  for i, headword in enumerate(order):
    size = len(by_headword[headword])
    if i >= math.ceil(test_fraction * len(order)) and (
        test_size >= min_test_pairs or test_size + size > max_test_fraction * len(pairs)):
      break
    test_heads.add(headword)
    test_size += size
  train = [pair for pair in pairs if pair[0] not in test_heads]
  test = [pair for pair in pairs if pair[0] in test_heads]
  return train, test


@dataclasses.dataclass
class LanguageDictionary:
  """The en<->lang dictionary: train and test pairs, the counts of each stage, and what was dropped."""
  lang: str
  train: list[tuple[str, str]]
  test: list[tuple[str, str]]
  counts: dict[str, int]
  dropped: collections.Counter


def build_dictionary(lang: str, candidates, counts: dict[str, int] | None = None,
                     min_zipf: float = DEFAULT_MIN_ZIPF, zipf=word_zipf, **split_args) -> LanguageDictionary:
  """Cleans, filters and splits raw (English, foreign) candidates into a LanguageDictionary.

  `counts` may carry earlier stages (entries per direction); candidates / pairs / frequent_pairs /
  train_pairs / test_pairs / test_headwords are added.
  """
  dropped = collections.Counter()
  candidates = list(candidates)
  pairs = clean_pairs(candidates, lang, dropped)
  # Sorted, so the saved pair order does not depend on the candidates' order.
  frequent = sorted(filter_by_frequency(pairs, lang, dropped, min_zipf, zipf))
  train, test = split_by_headword(frequent, **split_args)
  counts = dict(counts or {}, candidates=len(candidates), pairs=len(pairs), frequent_pairs=len(frequent),
                train_pairs=len(train), test_pairs=len(test), test_headwords=len({en for en, _ in test}))
  return LanguageDictionary(lang, train, test, counts, dropped)


def freedict_dictionary(lang: str, roots: dict, map_fn=map, **build_args) -> LanguageDictionary:
  """The en<->lang dictionary from whichever FreeDict directions were fetched.

  `roots` maps package names to unpacked package trees (missing packages are simply absent). The reader's
  skipped entries and lines go to `dropped` prefixed "freedict_". `map_fn` may be a pool's map."""
  jobs = [(roots[freedict.freedict_package(s, t)], s, t) for s, t in [("en", lang), (lang, "en")]
          if freedict.freedict_package(s, t) in roots]
  read = dict(zip([(s, t) for _, s, t in jobs], map_fn(freedict.read_direction, jobs)))
  empty = ([], collections.Counter())
  en_to_xx, xx_to_en = read.get(("en", lang), empty)[0], read.get((lang, "en"), empty)[0]
  counts = {"entries_en_xx": len(en_to_xx), "entries_xx_en": len(xx_to_en)}
  skipped = collections.Counter()
  candidates = freedict.candidate_pairs(en_to_xx, xx_to_en, skipped)
  result = build_dictionary(lang, candidates, counts, **build_args)
  for _, direction_skipped in read.values():
    skipped.update(direction_skipped)
  result.dropped.update({f"freedict_{reason}": n for reason, n in skipped.items()})
  return result
