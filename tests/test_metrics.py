"""Metrics: hand-checked cases, empty strings, CJK, combining marks, and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_ocr.metrics import aggregate, cer, char_f1, edit_distance, normalize_text, score_pairs


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
    assert normalize_text(composed, nfkc=True) == normalize_text(decomposed, nfkc=True)
    assert cer(normalize_text(decomposed, nfkc=True), normalize_text(composed, nfkc=True)) == 0.0


def test_normalize_removes_whitespace_and_punctuation():
    assert normalize_text(" Hello,\tworld!\n") == "Helloworld"
    assert normalize_text("「發票」，號碼。（一）《二》！？、；：") == "發票號碼一二"
    assert normalize_text("Total: $12.50") == "Total1250"
    assert normalize_text(None) == ""
    # NFKC folds full-width letters and digits; without it they stay.
    assert normalize_text("ＡＢＣ１２") == "ＡＢＣ１２"
    assert normalize_text("ＡＢＣ１２", nfkc=True) == "ABC12"


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
