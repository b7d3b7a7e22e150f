"""Users' own corpora -> the corpus text layout (text/mono, text/parallel), streamed in flat memory.

    inputs = collect_inputs(mono_dirs=["cc100/"], parallel=[{"en": "a.en", "de": "a.de"}],
                            tfds_specs=["tfds:wiki40b/de:text"], tfds_data_dir="~/tensorflow_datasets")
    report = build_user_text(work_dir, inputs, test_fraction=0.01)

Inputs (inputs.py, tfds_text.py): CC-100-style folders (<lang>.txt[.gz|.xz]), Wikipedia-like folders
(<lang>/*.txt), OPUS/Moses pairs, TSV pairs, explicit file pairs, and any locally prepared TFDS dataset's
text field. The train/test split is by md5 of each document (or block of pairs); duplicates and training
lines equal to a test string are removed exactly, with digests kept on disk (dedup.py). Every dropped or
altered line is counted by reason in the report. Tokenizer training and TFDS writing then run on the files
(views.py has the streaming adapters for data_prep.tfds_writer and
xlm_jax.data.tokenizer_training).
"""
from __future__ import annotations

from data_prep.user_corpora.build_text import (DEFAULT_MAX_UNIT_LINES, DEFAULT_TEST_FRACTION, RecipeText,
                                               build_user_text, is_test_unit)
from data_prep.user_corpora.inputs import (MonoFiles, ParallelFiles, ParallelTsv, UserInputs, add_mono_dir,
                                           add_parallel_dir, parallel_files, parallel_tsv)
from data_prep.user_corpora.languages import check_language
from data_prep.user_corpora.tfds_text import TfdsText, open_builder, parse_tfds_spec
from data_prep.user_corpora.views import TextLines, TsvPairs, alpha_sample_files, corpus_views

__all__ = [
    "DEFAULT_MAX_UNIT_LINES", "DEFAULT_TEST_FRACTION", "MonoFiles", "ParallelFiles", "ParallelTsv", "RecipeText",
    "TextLines", "TfdsText", "TsvPairs", "UserInputs", "add_mono_dir", "add_parallel_dir",
    "alpha_sample_files", "build_user_text", "check_language", "collect_inputs", "corpus_views",
    "is_test_unit", "open_builder", "parallel_files", "parallel_tsv", "parse_tfds_spec",
]


def collect_inputs(*, mono_dirs=(), parallel_dirs=(), parallel=(), parallel_tsvs=(), tfds_specs=(),
                   tfds_data_dir=None, languages=None, extra_languages=()) -> UserInputs:
  """Finds and checks every input before any text is read (fails in seconds, not after the stream).

  mono_dirs      folders in the CC-100 or Wikipedia-like layout
  parallel_dirs  folders of OPUS/Moses pairs and <name>.<l1>-<l2>.tsv files
  parallel       dicts {lang: path, lang: path} of line-aligned files (--parallel en:PATH de:PATH)
  parallel_tsvs  (path, l1, l2) of "l1<TAB>l2" files
  tfds_specs     "[lang=]tfds:<name>[/<config>][:<split>]:<field>" strings (see tfds_text.py), read from
                 tfds_data_dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets)
  languages      if given, folder inputs of other languages are skipped (listed in .skipped)
  extra_languages  base codes to accept beyond ISO 639-1 and languages.EXTRA_CODES
  """
  inputs = UserInputs()
  for folder in mono_dirs:
    add_mono_dir(inputs, folder, languages, extra_languages)
  for folder in parallel_dirs:
    add_parallel_dir(inputs, folder, languages, extra_languages)
  inputs.parallel.extend(parallel_files(files, extra_languages) for files in parallel)
  inputs.parallel.extend(parallel_tsv(path, l1, l2, extra_languages) for path, l1, l2 in parallel_tsvs)
  for spec in tfds_specs:
    source = parse_tfds_spec(spec, tfds_data_dir, extra_languages)
    open_builder(source)  # unknown name, unprepared dataset, bad split or field: fail now
    inputs.tfds.append(source)
  return inputs
