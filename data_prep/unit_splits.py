"""The `debian8` splits: every source split by its own unit, evaluation sets, and decontamination.

Units: gettext by program (splits.choose_heldout_programs), LibreOffice help by file, fortunes by fortune
file, man pages by page, dictionaries by English headword (dictionaries.split_by_headword). A unit's bucket
is md5(source:unit), so the split is the same on every machine. Everything from a held-out unit is test
text, in every language. The evaluation sets are built from held-out units only:
  retrieval       multi-way-parallel items (one text per language, all languages present) from held-out
                  gettext programs and held-out help files
  bli             the dictionaries' test pairs (held-out English headwords)
  classification  help paragraphs labelled with their module: train = English paragraphs of training files,
                  test = the paragraphs of held-out files in every language (English too: the transfer gap)
Then every string of any test split or evaluation set, in any language, is removed from all training text
(mono, parallel, classification train): gnulib messages and help paragraphs repeat across units, so a unit
split alone would still leak. Dictionary train pairs are disjoint from BLI test pairs in English headwords
(the MUSE convention) and lose any pair equal to sentence-level evaluation text.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib

from data_prep import splits as splits_lib
from data_prep.sources import libreoffice_help

# Share (percent) of help files and of fortune files / man pages held out for testing.
HELP_TEST_PERCENT = 10
PAGE_TEST_PERCENT = 5
# Fewer multi-way-parallel retrieval items than this gives too noisy a P@1 (evaluation.md asks >= 500).
MIN_RETRIEVAL_ITEMS = 500


def unit_bucket(source: str, unit: str, buckets: int = 100) -> int:
  """Deterministic bucket of a unit (md5 of "source:unit": stable across Python runs and machines)."""
  return int(hashlib.md5(f"{source}:{unit}".encode("utf-8")).hexdigest(), 16) % buckets


def is_test_unit(source: str, unit: str) -> bool:
  percent = HELP_TEST_PERCENT if source == libreoffice_help.SOURCE else PAGE_TEST_PERCENT
  return unit_bucket(source, unit) < percent


@dataclasses.dataclass
class EvalSets:
  """retrieval: [{"id", "source", <lang>: text...}]; bli: {lang: [(en, xx)]};
  classification: {"train": [{"id", "label", "text"}], "test": [{"id", "label", "lang", "text"}]}."""
  retrieval: list[dict]
  bli: dict[str, list[tuple[str, str]]]
  classification: dict[str, list[dict]]

  def sizes(self) -> dict:
    test_langs = collections.Counter(row["lang"] for row in self.classification["test"])
    return {"retrieval_items": len(self.retrieval),
            "bli_pairs": {lang: len(pairs) for lang, pairs in self.bli.items()},
            "classification_train": len(self.classification["train"]),
            "classification_test": dict(sorted(test_langs.items()))}

  def strings(self, include_bli: bool = True) -> set[str]:
    """Every text of every evaluation set, any language (BLI words too unless include_bli=False)."""
    out = set()
    for item in self.retrieval:
      out.update(v for k, v in item.items() if k not in ("id", "source"))
    for pairs in self.bli.values() if include_bli else ():
      for en, xx in pairs:
        out.update((en, xx))
    out.update(row["text"] for row in self.classification["test"])
    return out


def _multiway_items(groups, languages, source: str) -> list[dict]:
  """Items with a text in every language; an item repeating any earlier item's text in any language is
  left out (a duplicate in the pool would make nearest-neighbour retrieval ambiguous)."""
  items, seen = [], {lang: set() for lang in languages}
  for key, texts in groups.items():
    if all(lang in texts for lang in languages) and not any(texts[l] in seen[l] for l in languages):
      for lang in languages:
        seen[lang].add(texts[lang])
      items.append({"id": f"{source}:{key}", "source": source, **{l: texts[l] for l in languages}})
  return items


def retrieval_items(messages, help_units, languages, heldout_programs) -> list[dict]:
  """Multi-way-parallel items from held-out gettext programs (keyed by English text) and held-out help
  files (keyed by file and paragraph id)."""
  heldout = set(heldout_programs)
  gettext_groups = collections.defaultdict(dict)
  for m in messages:
    if m.program in heldout:
      group = gettext_groups[m.en]
      group.setdefault("en", m.en)
      group.setdefault(m.lang, m.xx)
  help_groups = collections.defaultdict(dict)
  for u in help_units:
    if is_test_unit(u.source, u.unit):
      help_groups[f"{u.unit}#{u.key}"].setdefault(u.lang, u.text)
  items = _multiway_items(gettext_groups, languages, "gettext")
  seen = {lang: {item[lang] for item in items} for lang in languages}
  more = [item for item in _multiway_items(help_groups, languages, "libreoffice_help")
          if not any(item[l] in seen[l] for l in languages)]
  return items + more


def classification_sets(help_units) -> dict[str, list[dict]]:
  """Module-labelled help paragraphs (the eight application modules only; "shared" dialogs have no
  module): English paragraphs of training files, every language's paragraphs of held-out files."""
  train, test, seen = [], [], set()
  for u in help_units:
    if u.label not in libreoffice_help.MODULES:
      continue
    row_id = f"{u.unit}#{u.key}"
    if is_test_unit(u.source, u.unit):
      test.append({"id": row_id, "label": u.label, "lang": u.lang, "text": u.text})
    elif u.lang == "en" and u.text not in seen:
      seen.add(u.text)
      train.append({"id": row_id, "label": u.label, "text": u.text})
  return {"train": train, "test": test}


def _unique(items):
  return list(dict.fromkeys(items))


def split_all(collected, languages, heldout_programs, min_retrieval_items: int = MIN_RETRIEVAL_ITEMS):
  """(splits_lib.Splits, EvalSets, dictionary train pairs {lang: [(en, xx)]}) of the collected sources.

  Raises ValueError when the retrieval set has fewer than min_retrieval_items items.
  """
  languages = list(languages)
  foreign = [lang for lang in languages if lang != "en"]
  heldout = set(heldout_programs)
  mono = {lang: {"train": [], "test": []} for lang in languages}
  pairs = {lang: {"train": [], "test": []} for lang in foreign}
  for m in collected.messages:
    split = "test" if m.program in heldout else "train"
    if "en" in mono:
      mono["en"][split].append(m.en)
    if m.lang in pairs:
      mono[m.lang][split].append(m.xx)
      pairs[m.lang][split].append((m.en, m.xx))
  english = {(u.unit, u.key): u.text for u in collected.help if u.lang == "en"}
  for u in collected.help + collected.fortune + collected.man:
    if u.lang not in mono:
      continue
    split = "test" if is_test_unit(u.source, u.unit) else "train"
    mono[u.lang][split].append(u.text)
    if u.source == libreoffice_help.SOURCE and u.lang in pairs and (u.unit, u.key) in english:
      pairs[u.lang][split].append((english[(u.unit, u.key)], u.text))

  evals = EvalSets(retrieval=retrieval_items(collected.messages, collected.help, languages, heldout),
                   bli={lang: d.test for lang, d in collected.dictionaries.items() if lang in pairs},
                   classification=classification_sets(collected.help))
  if len(evals.retrieval) < min_retrieval_items:
    raise ValueError(f"only {len(evals.retrieval)} multi-way-parallel retrieval items in all of "
                     f"{languages} (at least {min_retrieval_items} needed): the held-out gettext programs "
                     f"{sorted(heldout)} and held-out help files do not cover every language; check the "
                     "missing packages in the warnings above, or drop the languages without help/catalogues")

  test_strings = evals.strings()
  for by_split in mono.values():
    test_strings.update(by_split["test"])
  for by_split in pairs.values():
    for en, xx in by_split["test"]:
      test_strings.update((en, xx))

  dropped = collections.Counter()
  for lang, by_split in mono.items():
    train = _unique(by_split["train"])
    by_split["train"] = [t for t in train if t not in test_strings]
    by_split["test"] = _unique(by_split["test"])
    dropped["test_overlap_mono"] += len(train) - len(by_split["train"])
  for lang, by_split in pairs.items():
    train = _unique(by_split["train"])
    by_split["train"] = [(en, xx) for en, xx in train if en not in test_strings and xx not in test_strings]
    by_split["test"] = _unique(by_split["test"])
    dropped["test_overlap_parallel"] += len(train) - len(by_split["train"])
  cls_train = evals.classification["train"]
  evals.classification["train"] = [row for row in cls_train if row["text"] not in test_strings]
  dropped["test_overlap_classification"] += len(cls_train) - len(evals.classification["train"])
  # Dictionaries follow the BLI convention (MUSE): test and train are disjoint in English headwords
  # (split_by_headword), and a foreign word may answer both a train and a test headword. Dropping
  # every train pair whose foreign side answers some test headword would remove a third of the
  # dictionary for no gain, so only sentence-level evaluation text is filtered out here.
  sentence_strings = evals.strings(include_bli=False)
  dict_train = {}
  for lang, d in collected.dictionaries.items():
    if lang in pairs:
      test_heads = {en for en, _ in evals.bli.get(lang, ())}
      dict_train[lang] = [(en, xx) for en, xx in d.train if en not in test_heads
                          and en not in sentence_strings and xx not in sentence_strings]
      dropped["test_overlap_dictionary"] += len(d.train) - len(dict_train[lang])
  result = splits_lib.Splits(mono=mono, parallel=pairs, heldout_programs=sorted(heldout), dropped=dropped)
  return result, evals, dict_train
