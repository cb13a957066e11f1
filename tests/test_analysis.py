"""Tests for the text analyzer: English stems, Chinese words and bigrams, identifiers."""

import pytest

from indexer.whoosh.analysis import (
    choose_pair_terms,
    index_positions,
    iter_tokens,
    normalize_query_text,
    stem,
)


def terms(text: str, mode: str = "index") -> set[str]:
    return {t for t, *_ in iter_tokens(text, mode)}


@pytest.mark.parametrize(
    ("forms", "root"),
    [
        (["refund", "refunds", "refunded", "refunding"], "refund"),
        (["escalate", "escalated", "escalation", "escalates", "escalating"], "escal"),
        (["ship", "shipped", "shipping", "ships"], "ship"),
        (["invoice", "invoices", "invoiced"], "invoic"),
    ],
)
def test_stem_english_inflections_share_a_root(forms: list[str], root: str) -> None:
    assert {stem(f) for f in forms} == {root}


def test_iter_tokens_lowercases_and_stems_words() -> None:
    assert [t for t, *_ in iter_tokens("Refunds were Refunded")] == ["refund", "were", "refund"]


@pytest.mark.parametrize(
    ("identifier", "whole"),
    [
        ("INV-2023-004512", "inv-2023-004512"),
        ("li.wei@example.com", "li.wei@example.com"),
        ("+86 138 0013 8000", "8613800138000"),
        ("+86-138-0013-8000", "8613800138000"),
        ("+8613800138000", "8613800138000"),
        ("ORD_77.A", "ord_77.a"),
    ],
)
def test_identifier_is_one_whole_token_in_both_modes(identifier: str, whole: str) -> None:
    text = f"see {identifier} today"
    assert whole in terms(text)
    query = normalize_query_text(identifier)
    assert [t for t, *_ in iter_tokens(query, "query")] == [whole]


def test_identifier_keeps_its_parts_and_email_halves() -> None:
    got = terms("mail li.wei@example.com about INV-2023-004512")
    assert {"li", "wei", "exampl", "com", "li.wei", "example.com"} <= got
    assert {"inv", "2023", "004512"} <= got


def test_identifier_parts_share_one_position_so_phrases_line_up() -> None:
    positions = index_positions("call INV-2023-004512 now")
    assert positions["call"] == [0]
    assert positions["inv-2023-004512"] == positions["inv"] == positions["004512"] == [1]
    assert positions["now"] == [2]


def test_chinese_run_gives_bigrams_and_segmenter_words() -> None:
    got = terms("客户申请退款单和发票")
    assert {"退款", "款单", "发票", "客户", "申请"} <= got
    assert "和" in got  # a one-character word from the segmenter


def test_chinese_query_gives_consecutive_bigrams() -> None:
    got = list(iter_tokens("退款申请", "query"))
    assert [(t, p) for t, p, _s, _e in got] == [("退款", 0), ("款申", 1), ("申请", 2)]


def test_mixed_text_keeps_character_offsets() -> None:
    text = "订单ABC-1 已发货 shipped"
    for term, _pos, s, e in iter_tokens(text):
        assert 0 <= s < e <= len(text)
        if term == "abc-1":
            assert text[s:e] == "ABC-1"


def test_offsets_inside_an_identifier_survive_letters_that_lower_to_two() -> None:
    # "İ".lower() is two characters: offsets into the lowered word must be mapped back, or
    # every highlight after it lands one character late
    text = "İİ-order:INV-2024-7 refund"
    spans = {text[s:e] for _term, _pos, s, e in iter_tokens(text)}
    assert {"INV-2024-7", "INV", "2024", "7", "order", "refund"} <= spans
    assert all(span for span in spans)


def test_a_long_run_of_combining_marks_keeps_the_offsets_after_it() -> None:
    # a letter with thousands of marks (as some spam writes it) is one character of the text,
    # composed once; what follows keeps its offsets into the text as written
    text = "za" + "\u0301" * 5_000 + " cafe\u0301 INV-7"
    spans = {term: text[s:e] for term, _pos, s, e in iter_tokens(text)}
    assert spans["café"] == "cafe\u0301"
    assert spans["inv-7"] == "INV-7"
    assert spans["z\u00e1"] == "za" + "\u0301" * 5_000


def test_normalize_query_text_leaves_other_syntax_alone() -> None:
    assert normalize_query_text('refund AND "+86 138 0013 8000"') == 'refund AND "8613800138000"'
    assert normalize_query_text("2023 AND 2024") == "2023 AND 2024"


def test_pair_terms_are_words_of_at_least_three_customers() -> None:
    """The chosen terms are written in plain text in the index's META file, which erasure does
    not rewrite: a word of one customer's records, however frequent, is never chosen."""
    texts = [("C1", f"Refund for zorblax order {i}") for i in range(50)]
    texts += [("C2", "refund parcel"), ("C3", "refund parcel"), ("C3", "parcel refund")]
    chosen = choose_pair_terms(texts)
    assert chosen == ["refund"]  # zorblax and order: one customer; parcel: two
    texts.append(("C4", "parcel"))
    assert choose_pair_terms(texts) == ["refund", "parcel"]
