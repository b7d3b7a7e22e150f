"""Per-language tokenizer variants: the union ("default anchors") and the language-tagged "no anchors" models,
trained on sentences this test generates from its own word lists (three languages sharing a few words)."""
import hashlib
import pickle

import numpy as np
import pytest
from sentencepiece import sentencepiece_model_pb2

from xlm_jax.data import tokenizer_variants as tv
from xlm_jax.data.tokenizer import Tokenizer

# (determiners, nouns, verbs); "server" and "Linux" are shared by every language: they should become anchors.
WORDS = {
    "en": (["the", "a", "this", "every"],
           ["file", "folder", "printer", "window", "user", "server", "email", "network", "password",
            "keyboard", "screen", "program", "Linux"],
           ["opens", "copies", "deletes", "finds", "saves", "checks", "prints", "closes"]),
    "de": (["der", "die", "das", "jede"],
           ["Datei", "Ordner", "Drucker", "Fenster", "Benutzer", "server", "email", "Netzwerk", "Passwort",
            "Tastatur", "Bildschirm", "Programm", "Linux"],
           ["öffnet", "kopiert", "löscht", "findet", "speichert", "prüft", "druckt", "schließt"]),
    "fr": (["le", "la", "ce", "chaque"],
           ["fichier", "dossier", "imprimante", "fenêtre", "utilisateur", "server", "courriel", "réseau",
            "mot", "clavier", "écran", "programme", "Linux"],
           ["ouvre", "copie", "supprime", "trouve", "enregistre", "vérifie", "imprime", "ferme"]),
}
SIZES = {"en": 50, "de": 52, "fr": 50}


def _sentences(lang, count, seed):
  rng = np.random.default_rng(seed)
  determiners, nouns, verbs = WORDS[lang]
  pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
  return [f"{pick(determiners)} {pick(nouns)} {pick(verbs)} {pick(determiners)} {pick(nouns)}."
          for _ in range(count)]


TEXTS = {lang: _sentences(lang, 300, index) for index, lang in enumerate(WORDS)}


@pytest.fixture(scope="module")
def models():
  return tv.train_per_language(TEXTS, SIZES, seed=0)


def _pieces(model):
  return [p.piece for p in sentencepiece_model_pb2.ModelProto.FromString(model).pieces]


def _digest(folder):
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# --- union ("default anchors") ------------------------------------------------------------------------------

def _hand_model(pieces_and_scores, specials=tv.SPECIALS):
  proto = sentencepiece_model_pb2.ModelProto()
  kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
  for piece, kind in zip(specials, ["CONTROL", "CONTROL", "CONTROL", "UNKNOWN", "USER_DEFINED"]):
    proto.pieces.add(piece=piece, score=0.0, type=getattr(kinds, kind))
  for piece, score in pieces_and_scores:
    proto.pieces.add(piece=piece, score=score, type=kinds.NORMAL)
  proto.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
  return proto.SerializeToString()


def test_union_of_hand_built_models_keeps_each_piece_once_with_its_best_score():
  en = _hand_model([("▁the", -1.0), ("▁server", -3.0), ("e", -4.0)])
  de = _hand_model([("▁der", -1.5), ("▁server", -2.0), ("e", -4.0)])
  model, owners = tv.union_model({"en": en, "de": de})
  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  assert [(p.piece, p.score) for p in proto.pieces] == [
      ("<s>", 0), ("<pad>", 0), ("</s>", 0), ("<unk>", 0), ("<mask>", 0),
      ("▁the", -1.0), ("▁der", -1.5), ("▁server", -2.0), ("e", -4.0)]
  assert proto.trainer_spec.vocab_size == 9
  assert owners == {"▁the": ["en"], "▁der": ["de"], "▁server": ["en", "de"], "e": ["en", "de"]}
  with pytest.raises(ValueError, match=r"the fr model has .* at ids 0\.\.4"):
    tv.union_model({"en": en, "fr": _hand_model([("a", -1.0)], specials=("<unk>", "<s>", "</s>", "a", "b"))})


def test_union_tokenizer_holds_every_language_piece_once(models, tmp_path):
  summary = tv.write_union_tokenizer(models, tmp_path / "union")
  tokenizer = Tokenizer(tmp_path / "union" / "spm.model")
  union_pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  assert union_pieces[:5] == list(tv.SPECIALS) and tokenizer.special_ids == (0, 1, 2, 3, 4)
  assert tokenizer.mask_id == 4 and len(set(union_pieces)) == len(union_pieces)
  per_lang = {lang: set(_pieces(model)[5:]) for lang, model in models.items()}
  assert set(union_pieces[5:]) == set.union(*per_lang.values())
  shared = {p for p in set.union(*per_lang.values()) if sum(p in s for s in per_lang.values()) > 1}
  assert set(summary["anchors"]) == shared and summary["num_anchors"] == len(shared)
  assert {"▁server", "▁Linux"} <= shared and "▁Datei" not in shared
  assert summary["anchors"]["▁server"] == ["en", "de", "fr"]
  for lang, texts in TEXTS.items():
    assert tokenizer.decode(tokenizer.encode(texts[:1])[0]) == texts[0]
  # An anchor is one id whichever language uses it.
  server = union_pieces.index("▁server")
  assert all(server in tokenizer.encode([f"{WORDS[lang][0][0]} server"])[0] for lang in WORDS)


def test_variants_are_reproducible_byte_for_byte(tmp_path):
  for run in ("a", "b"):
    tv.build_union_tokenizer(TEXTS, tmp_path / run / "union", SIZES, seed=3)
    tv.build_no_anchors_tokenizer(TEXTS, tmp_path / run / "tagged", SIZES, seed=3)
  for variant in ("union", "tagged"):
    assert _digest(tmp_path / "a" / variant) == _digest(tmp_path / "b" / variant)


def test_union_of_bpe_models_loads_and_round_trips(tmp_path):
  bpe = tv.train_per_language(TEXTS, 60, model_type="bpe", seed=0)
  tv.write_union_tokenizer(bpe, tmp_path / "bpe")
  tokenizer = Tokenizer(tmp_path / "bpe" / "spm.model")
  assert all(tokenizer.decode(tokenizer.encode(t[:1])[0]) == t[0] for t in TEXTS.values())
  with pytest.raises(ValueError, match="mix model types"):
    tv.union_model({"en": bpe["en"], "de": tv.train_per_language({"de": TEXTS["de"]}, 52)["de"]})


# --- no anchors ---------------------------------------------------------------------------------------------

def test_language_tagged_ranges_are_disjoint_and_encode_stays_in_range(models):
  tokenizer = tv.LanguageTaggedTokenizer(models)
  sizes = {lang: len(_pieces(model)) - 5 for lang, model in models.items()}
  assert tokenizer.language_ranges == {"en": (5, 5 + sizes["en"]),
                                       "de": (5 + sizes["en"], 5 + sizes["en"] + sizes["de"]),
                                       "fr": (5 + sizes["en"] + sizes["de"], tokenizer.vocab_size)}
  assert tokenizer.vocab_size == 5 + sum(sizes.values())
  ranges = tokenizer.language_ranges
  assert tokenizer.ranges_for(["fr", "en"]).tolist() == [list(ranges["fr"]), list(ranges["en"])]
  for lang, texts in TEXTS.items():
    start, end = tokenizer.language_ranges[lang]
    encoded = tokenizer.encode(texts[:50], lang)
    assert all(start <= i < end or i in tokenizer.special_ids for ids in encoded for i in ids)
    assert [tokenizer.decode(ids) for ids in encoded] == texts[:50]
    assert {tokenizer.language_of(i) for ids in encoded for i in ids} == {lang}
  # The same piece learned by two languages is two ids: nothing is shared.
  en_server, de_server = tokenizer.encode(["server"], "en")[0], tokenizer.encode(["server"], "de")[0]
  assert [tokenizer.id_to_piece(i) for i in en_server] == ["▁server"] == \
         [tokenizer.id_to_piece(i) for i in de_server]
  assert en_server != de_server
  # Local ids map by a fixed offset: en's model sees exactly the pieces the tagged ids name.
  en_local = tv.spm.SentencePieceProcessor(model_proto=models["en"]).encode(TEXTS["en"][:1])[0]
  assert tokenizer.encode(TEXTS["en"][:1], "en")[0] == en_local  # the first range starts right after 0..4
  de_local = tv.spm.SentencePieceProcessor(model_proto=models["de"]).encode(TEXTS["de"][:1])[0]
  assert tokenizer.encode(TEXTS["de"][:1], "de")[0] == [i if i < 5 else i + sizes["en"] for i in de_local]


def test_language_tagged_decode_mixes_languages_and_specials(models):
  tokenizer = tv.LanguageTaggedTokenizer(models)
  en, de = TEXTS["en"][0], TEXTS["de"][0]
  ids = [0] + tokenizer.encode([en], "en")[0] + [2] + tokenizer.encode([de], "de")[0] + [2, 1]
  assert tokenizer.decode(ids) == f"{en} {de}"
  assert tokenizer.decode([tokenizer.mask_id]) == "<mask>" and tokenizer.decode([]) == ""
  with pytest.raises(ValueError, match="no tokenizer for language 'it'"):
    tokenizer.encode(["x"], "it")
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tokenizer.decode([tokenizer.vocab_size])


def test_language_tagged_save_load_and_pickle(models, tmp_path):
  tokenizer = tv.LanguageTaggedTokenizer(models)
  tokenizer.save(tmp_path / "tagged")
  assert sorted(p.name for p in (tmp_path / "tagged").iterdir()) == [
      "de.model", "en.model", "fr.model", "tokenizer.json"]
  loaded = tv.LanguageTaggedTokenizer.load(tmp_path / "tagged")
  for restored in (loaded, pickle.loads(pickle.dumps(tokenizer))):
    assert restored.language_ranges == tokenizer.language_ranges
    assert restored.encode(TEXTS["fr"][:5], "fr") == tokenizer.encode(TEXTS["fr"][:5], "fr")
  (tmp_path / "tagged" / "de.model").write_bytes(models["en"])
  with pytest.raises(ValueError, match="de.model does not match the sha256"):
    tv.LanguageTaggedTokenizer.load(tmp_path / "tagged")
  with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
    tv.LanguageTaggedTokenizer.load(tmp_path / "missing")


def test_too_large_vocabulary_names_the_language():
  with pytest.raises(ValueError, match="language 'de': SentencePiece training failed"):
    tv.train_per_language({"de": TEXTS["de"]}, 500)
