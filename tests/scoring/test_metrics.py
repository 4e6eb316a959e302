"""Metrics: hand-checked cases, empty strings, CJK, combining marks, and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_ocr.scoring.metrics import aggregate, cer, char_f1, edit_distance, normalize_text, score_pairs


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("kitten", "sitting", 3 / 7),  # 2 substitutions + 1 insertion
        ("abc", "abc", 0.0),
        ("", "abc", 1.0),  # all deleted
        ("abcdef", "abc", 1.0),  # 3 insertions over 3 reference chars
        ("abcdefghi", "abc", 2.0),  # CER can exceed 1
        ("", "", 0.0),  # empty reference, empty prediction
        ("x", "", 1.0),  # empty reference, something predicted
        ("發票號碼", "發票號馬", 0.25),  # CJK counts per character
        ("៥៥៣", "៥៣", 0.5),  # Khmer digits
    ],
)
def test_cer_hand_checked(pred, ref, expected):
    assert cer(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize(
    "pred, ref, expected",
    [
        ("abc", "abc", 1.0),
        ("", "", 1.0),
        ("", "a", 0.0),
        ("a", "", 0.0),
        ("abcd", "ab", 2 * (0.5 * 1.0) / 1.5),  # precision 2/4, recall 2/2
        ("cba", "abc", 1.0),  # a multiset ignores order
        ("aab", "abb", 2 * (2 / 3) * (2 / 3) / (4 / 3)),  # overlap {a, b} = 2
        ("xyz", "abc", 0.0),
    ],
)
def test_f1_hand_checked(pred, ref, expected):
    assert char_f1(pred, ref) == pytest.approx(expected)


def test_combining_marks_are_code_points_unless_nfkc():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert edit_distance(composed, decomposed) == 2  # é vs e + combining acute
    assert normalize_text(composed, "nfkc") == normalize_text(decomposed, "nfkc")
    assert cer(normalize_text(decomposed, "nfkc"), normalize_text(composed, "nfkc")) == 0.0


def test_normalize_removes_whitespace_and_punctuation():
    assert normalize_text(" Hello,\tworld!\n") == "Helloworld"
    assert normalize_text("「發票」，號碼。（一）《二》！？、；：") == "發票號碼一二"
    assert normalize_text("Total: $12.50") == "Total1250"
    assert normalize_text(None) == ""
    # NFKC folds full-width letters and digits; without it they stay.
    assert normalize_text("ＡＢＣ１２") == "ＡＢＣ１２"
    assert normalize_text("ＡＢＣ１２", "nfkc") == "ABC12"


def test_aggregate_micro_and_macro_differ_and_empty_refs_apart():
    scores = score_pairs(["a", "abcdefghij", "zz", ""], ["b", "abcdefghij", "", ""])
    overall = aggregate(scores)
    # micro: (1 + 0) edits / (1 + 10) chars; macro: mean(1.0, 0.0)
    assert overall.cer_micro == pytest.approx(1 / 11)
    assert overall.cer_macro == pytest.approx(0.5)
    assert overall.overall_cer == overall.cer_micro
    assert overall.empty_references == 2
    assert overall.empty_references_with_prediction == 1
    assert overall.total_reference_chars == 11
    # F1 micro: tp = 0 + 10, predicted 1 + 10 + 2, reference 1 + 10
    p, r = 10 / 13, 10 / 11
    assert overall.f1_micro == pytest.approx(2 * p * r / (p + r))
    assert overall.f1_macro == pytest.approx((0 + 1 + 0 + 1) / 4)


def test_score_pairs_normalize_flag():
    (raw,) = score_pairs(["Hello, world"], ["hello world!"])
    (norm,) = score_pairs(["Hello, world"], ["hello world!"], normalize=True)
    assert raw.cer > norm.cer == pytest.approx(1 / 10)


def test_score_pairs_length_mismatch():
    with pytest.raises(ValueError):
        score_pairs(["a"], ["a", "b"])


text = st.text(alphabet=st.sampled_from(list("abc 1,發票។៥\u0301")), max_size=12)


@settings(max_examples=200, deadline=None)
@given(text, text)
def test_properties(a, b):
    assert cer(a, a) == 0.0
    assert char_f1(a, a) == 1.0
    assert 0.0 <= char_f1(a, b) <= 1.0
    assert char_f1(a, b) == pytest.approx(char_f1(b, a))
    assert edit_distance(a, b) == edit_distance(b, a)
    assert abs(len(a) - len(b)) <= edit_distance(a, b) <= max(len(a), len(b))
    if b:
        assert cer(a, b) == pytest.approx(edit_distance(a, b) / len(b))
        assert not math.isnan(cer(a, b))
    n = normalize_text(a)
    assert normalize_text(n) == n  # idempotent
    assert not any(ch.isspace() for ch in n)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(text, text), max_size=20))
def test_batched_scores_match_scalar_functions(pairs):
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    for (p, r), s in zip(pairs, score_pairs(preds, refs)):
        assert s.cer == pytest.approx(cer(p, r))
        assert s.f1 == pytest.approx(char_f1(p, r))
        assert s.edits == edit_distance(p, r)


# ------------------------------------------------------------------------------------ character units

KHMER_AND_EMOJI = [  # (prediction, reference, CER by code point, CER by grapheme cluster)
    ("ខ្មេរ", "ខ្មែរ", 1 / 5, 1 / 2),  # one wrong vowel sign in ខ្មែ|រ
    ("គ្រុម", "ក្រុម", 1 / 5, 1 / 2),  # one wrong consonant in ក្រុ|ម
    ("👨\u200d👩\u200d👦", "👨\u200d👩\u200d👧", 1 / 5, 1.0),  # one family emoji for another
    ("cafe\u0301", "café", 2 / 4, 1 / 4),  # NFD é against NFC é: one cluster each, still a different one
]


@pytest.mark.parametrize("pred, ref, by_codepoint, by_grapheme", KHMER_AND_EMOJI)
def test_grapheme_cer_counts_what_a_reader_counts(pred, ref, by_codepoint, by_grapheme):
    assert cer(pred, ref) == pytest.approx(by_codepoint)
    assert cer(pred, ref, unit="grapheme") == pytest.approx(by_grapheme)
    (batched,) = score_pairs([pred], [ref], unit="grapheme")
    assert batched.cer == pytest.approx(by_grapheme)


def _reference_grapheme_edits(a: str, b: str) -> int:
    """Levenshtein distance over the clusters of the graphemeu package (an independent UAX #29 implementation),
    by the textbook dynamic programme."""
    import grapheme

    x, y = list(grapheme.graphemes(a)), list(grapheme.graphemes(b))
    row = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        prev, row[0] = row[0], i
        for j, cy in enumerate(y, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (cx != cy))
    return row[-1]


# Well-formed text: pieces a reader writes (Khmer syllables with subscripts and vowel signs, accents, emoji ZWJ
# sequences, flags). Malformed sequences and control characters (U+200B is one to UAX #29) are left out: there the
# two implementations part (a stray coeng after a control, a ZWJ after a ZWJ, graphemeu splits a flag that follows
# a control), edge cases of UAX #29. Khmer words separated by U+200B are checked on their own below.
graphemes_text = st.lists(st.sampled_from(
    ["ក", "ខ្មែ", "ក្រុ", "គ្រុ", "ម", "រ", "ភា", "សា", "ព្រះ", "a", "e\u0301", " ", "👨\u200d👩\u200d👧",
     "👨", "🇰🇭", "日", "發票"]), max_size=10).map("".join)


@settings(max_examples=300, deadline=None)
@given(graphemes_text, graphemes_text)
def test_grapheme_segmentation_matches_the_reference_implementation(a, b):
    import grapheme

    from gemma_ocr.scoring.metrics import graphemes, unit_length

    assert graphemes(a) == list(grapheme.graphemes(a))
    assert unit_length(a, "grapheme") == grapheme.length(a)
    assert edit_distance(a, b, unit="grapheme") == _reference_grapheme_edits(a, b)
    (s,) = score_pairs([a], [b], unit="grapheme")
    assert s.edits == _reference_grapheme_edits(a, b) and s.reference_chars == grapheme.length(b)


def test_khmer_words_separated_by_zero_width_spaces_agree_with_the_reference():
    import grapheme

    from gemma_ocr.scoring.metrics import graphemes

    text = "ខ្មែរ\u200bភាសា\u200bក្រុម\u200bព្រះរាជាណាចក្រកម្ពុជា"
    assert graphemes(text) == list(grapheme.graphemes(text))


def test_grapheme_f1_counts_clusters():
    # {ខ្មេ, រ} against {ខ្មែ, រ}: one of two clusters in common on each side
    assert char_f1("ខ្មេរ", "ខ្មែរ", unit="grapheme") == pytest.approx(0.5)
    assert char_f1("ខ្មេរ", "ខ្មែរ") == pytest.approx(0.8)


# ------------------------------------------------------------------------------------ normalization profiles

PROFILE_CASES = [  # text, then what each profile makes of it
    ("Ａb c，\u200bd\u00e9\u0301!", {"raw": "Ａb c，\u200bd\u00e9\u0301!", "seed": "Ａbcd\u00e9\u0301",
                                   "nfc": "Ａbcd\u00e9\u0301", "nfkc": "Abcd\u00e9\u0301", "caseless": "abcd\u00e9\u0301"}),
    ("cafe\u0301", {"raw": "cafe\u0301", "seed": "cafe\u0301", "nfc": "caf\u00e9", "nfkc": "caf\u00e9", "caseless": "caf\u00e9"}),
    ("ខ្មែរ\u200bភាសា\u200c\u200d\u2060\ufeff", {"raw": "ខ្មែរ\u200bភាសា\u200c\u200d\u2060\ufeff", "seed": "ខ្មែរភាសា",
                                             "nfc": "ខ្មែរភាសា", "nfkc": "ខ្មែរភាសា", "caseless": "ខ្មែរភាសា"}),
    ("Straße ＦＩＮＡＬ ﬁ²", {"raw": "Straße ＦＩＮＡＬ ﬁ²", "seed": "StraßeＦＩＮＡＬﬁ²", "nfc": "StraßeＦＩＮＡＬﬁ²",
                           "nfkc": "StraßeFINALfi2", "caseless": "strassefinalfi2"}),
    ("「發票」，號碼。", {"raw": "「發票」，號碼。", "seed": "發票號碼", "nfc": "發票號碼", "nfkc": "發票號碼", "caseless": "發票號碼"}),
]


@pytest.mark.parametrize("text, expected", PROFILE_CASES)
def test_each_normalization_profile(text, expected):
    from gemma_ocr.scoring.metrics import NORMALIZATION_PROFILES

    assert set(expected) == set(NORMALIZATION_PROFILES)
    assert {p: normalize_text(text, p) for p in NORMALIZATION_PROFILES} == expected


def test_zero_width_characters_no_longer_survive_the_seed_normalization():
    # U+200B is the usual Khmer word separator; Python does not count it as white space
    assert not "\u200b".isspace()
    (s,) = score_pairs(["ខ្មែរ\u200bភាសា"], ["ខ្មែរភាសា"], normalize=True)
    assert s.cer == 0.0


def test_profile_descriptions_name_each_step_and_unknown_names_are_one_line():
    from gemma_ocr.errors import GemmaOcrError
    from gemma_ocr.scoring.metrics import normalization_description

    assert "U+200B" in normalization_description("seed") and "NFC" in normalization_description("nfc")
    assert normalization_description("raw").startswith("none")
    assert "case folding" in normalization_description("caseless")
    with pytest.raises(GemmaOcrError, match="nfkd.*raw, seed, nfc, nfkc, caseless"):
        normalize_text("x", "nfkd")
    with pytest.raises(GemmaOcrError, match="unknown character unit"):
        cer("a", "b", unit="byte")


def test_the_settings_spell_the_same_profiles_and_units():
    import typing

    from gemma_ocr.scoring.metrics import CHARACTER_UNITS, NORMALIZATION_PROFILES
    from gemma_ocr.scoring.results import ProfileName, UnitName

    assert list(typing.get_args(ProfileName)) == list(NORMALIZATION_PROFILES)
    assert list(typing.get_args(UnitName)) == list(CHARACTER_UNITS)
