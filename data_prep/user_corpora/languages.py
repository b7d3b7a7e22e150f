"""Language codes accepted for users' corpora: ISO 639-1, a few codes big corpora use, and suffixes.

A code is a base language plus an optional script, region or variant suffix joined by "-" or "_":
"de", "zh-Hans" (CC-100), "zh_CN" (OPUS), "pt-BR", "sr_Latn", "hi_rom" (CC-100's romanised Hindi),
"my_zaw" (Zawgyi-encoded Burmese). The code is kept as the user spelled it: it names the output files
(text/mono/<split>/<code>.txt), so mapping "zh_CN" to "zh" is the user's choice, made by naming the input.
Checking the base against a fixed list catches the usual mistakes early (a README.txt in a CC-100
folder, "ger" for German, a typo) instead of building a corpus with a language nobody asked for.
"""
from __future__ import annotations

import difflib
import re

ISO_639_1 = frozenset("""
aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz
ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io
is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr
ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si
sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh
yi yo za zh zu""".split())

# Codes outside ISO 639-1 that multilingual corpora use for languages without a two-letter code.
EXTRA_CODES = frozenset({
    "ns",   # Northern Sotho in CC-100 (ISO 639-3: nso)
    "nso", "fil", "yue", "ceb", "ckb", "war", "ast", "hsb", "als", "arz", "azb", "bar", "hak", "haw",
    "hmn", "jbo", "lmo", "nap", "nds", "pam", "pms", "scn", "sco", "szl", "vec", "wuu", "zza",
})

# Suffixes: a region (BR, CN, cn), a script (Latn, Hans), or CC-100's variants (romanised, Zawgyi).
_CODE = re.compile(r"(?P<base>[a-z]{2,3})(?:[-_](?P<suffix>[A-Za-z]{2}|[A-Za-z]{4}|rom|zaw))?")


def check_language(code: str, where: str, extra=()) -> str:
  """Returns `code` if it is a known language code, else ValueError naming `where` (a file or spec).

  `extra` adds base codes for this call (a language the list does not know yet).
  """
  match = _CODE.fullmatch(code)
  known = ISO_639_1 | EXTRA_CODES | frozenset(extra)
  if match and match["base"] in known:
    return code
  close = difflib.get_close_matches(code.lower(), sorted(known), n=3, cutoff=0.5)
  hint = f" (did you mean {', '.join(close)}?)" if close else ""
  raise ValueError(
      f"{where}: {code!r} is not a known language code{hint}. Use an ISO 639-1 code such as 'de', "
      "optionally with a script or region suffix ('zh-Hans', 'pt_BR', 'hi_rom'); rename the file, or "
      f"pass extra_languages=[{code.split('-')[0].split('_')[0]!r}] (--extra-language) if it is a real language")
