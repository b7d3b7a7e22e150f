"""Train/test splits by program, with every test string removed from all training text.

Splitting by line would leak: gnulib messages ("memory exhausted", "write error") repeat across programs and
a translator's phrasing carries over between neighbouring strings. So whole programs are held out, and
then any English or foreign string that occurs in any test set is deleted from all training text (mono and
parallel, every language), wherever it came from.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib

from data_prep.gettext_corpus import Message

# Programs held out for testing when present: small, well-translated GNU/Debian tools that other programs
# do not depend on for their messages.
HELDOUT_PROGRAMS = ("dpkg", "libc", "wget", "tar", "sed", "grep", "findutils", "diffutils")


def program_bucket(program: str, buckets: int = 100) -> int:
  """Deterministic bucket of a program name (md5, so it is stable across Python runs and machines)."""
  return int(hashlib.md5(program.encode("utf-8")).hexdigest(), 16) % buckets


def choose_heldout_programs(programs, heldout=HELDOUT_PROGRAMS, test_percent: int = 0) -> list[str]:
  """Test programs: the fixed hold-out list (where present) plus those whose md5 bucket is < test_percent.

  With a custom package list that contains none of the fixed programs and test_percent 0, the program with
  the lowest bucket is held out, so that a test set always exists. Never holds out every program when there
  are two or more (training would be empty).
  """
  programs = sorted(set(programs))
  chosen = {p for p in programs if p in heldout or program_bucket(p) < test_percent}
  if not chosen and programs:
    chosen = {min(programs, key=lambda p: (program_bucket(p), p))}
  if len(chosen) == len(programs) > 1:
    chosen.discard(max(chosen, key=lambda p: (program_bucket(p), p)))
  return sorted(chosen)


@dataclasses.dataclass
class Splits:
  """Text of a corpus. mono[lang][split] is a list of sentences; parallel[lang][split] a list of (en, xx)."""
  mono: dict[str, dict[str, list[str]]]
  parallel: dict[str, dict[str, list[tuple[str, str]]]]
  heldout_programs: list[str]
  dropped: collections.Counter

  def counts(self) -> dict[str, dict[str, int]]:
    """The manifest's per-language counts (parallel counts are 0 for English, which has no en-en pairs)."""
    result = {}
    for lang, by_split in self.mono.items():
      pairs = self.parallel.get(lang, {"train": [], "test": []})
      result[lang] = {"mono_train": len(by_split["train"]), "mono_test": len(by_split["test"]),
                      "parallel_train": len(pairs["train"]), "parallel_test": len(pairs["test"])}
    return result


def _unique(items):
  return list(dict.fromkeys(items))


def split_messages(messages: list[Message], languages, heldout_programs) -> Splits:
  """Builds mono and parallel train/test text for `languages` from cleaned gettext messages.

  Mono text of a foreign language is the translation side; English mono text is the msgid side of all
  catalogues, deduplicated. Training keeps a pair only if neither its English nor its translation occurs
  anywhere in any test set; the removed pairs are counted as dropped["test_overlap"].
  """
  heldout = set(heldout_programs)
  foreign = [lang for lang in languages if lang != "en"]
  test_pairs = {lang: [] for lang in foreign}
  train_pairs = {lang: [] for lang in foreign}
  en_test, en_train = [], []
  for m in messages:
    if m.program in heldout:
      en_test.append(m.en)  # English test text comes from all catalogues, wanted language or not
      if m.lang in test_pairs:
        test_pairs[m.lang].append((m.en, m.xx))
    else:
      en_train.append(m.en)
      if m.lang in train_pairs:
        train_pairs[m.lang].append((m.en, m.xx))

  test_strings = set(en_test)
  for pairs in test_pairs.values():
    test_strings.update(xx for _, xx in pairs)

  dropped = collections.Counter()
  parallel, mono = {}, {}
  for lang in foreign:
    test = _unique(test_pairs[lang])
    train = []
    for en, xx in _unique(train_pairs[lang]):
      if en in test_strings or xx in test_strings:
        dropped["test_overlap"] += 1
      else:
        train.append((en, xx))
    parallel[lang] = {"train": train, "test": test}
    mono[lang] = {"train": _unique(xx for _, xx in train), "test": _unique(xx for _, xx in test)}
  if "en" in languages:
    train_en = _unique(en_train)
    kept = [en for en in train_en if en not in test_strings]
    dropped["test_overlap_en"] += len(train_en) - len(kept)
    mono["en"] = {"train": kept, "test": _unique(en_test)}
  # Keep the caller's language order in the result.
  mono = {lang: mono[lang] for lang in languages}
  return Splits(mono=mono, parallel=parallel, heldout_programs=sorted(heldout), dropped=dropped)
