"""HTML-escaped snippets with `<mark>` around what a query matched."""

from __future__ import annotations

import html
import re

from indexer.whoosh.analysis import fold_width, iter_tokens
from indexer.whoosh.query import CompiledQuery

SNIPPET_CHARS = 200


def _match_spans(text: str, terms: set[str], patterns: list[re.Pattern[str]]) -> list[list[int]]:
    spans: list[list[int]] = []
    for term, _pos, s, e in iter_tokens(text):
        if spans and s >= spans[0][0] + SNIPPET_CHARS:
            break  # past any snippet window (bodies run to 1 MiB)
        if term in terms or (patterns and any(p.fullmatch(term) for p in patterns)):
            if spans and s <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], e)
            else:
                spans.append([s, e])
    return spans


def make_snippet(text: str, fieldname: str, compiled: CompiledQuery) -> str | None:
    """Return an HTML-escaped excerpt of text with matches in ``<mark>``, or None if none match.

    :param text: the stored text.
    :param fieldname: ``subject`` or ``body``.
    :param compiled: the query, for its terms.
    """
    terms = compiled.terms.get(fieldname, set())
    patterns = [p for f, p in compiled.prefixes if f == fieldname]
    if not terms and not patterns:
        return None
    spans = _match_spans(text, terms, patterns)
    if not spans:
        return None
    first = spans[0][0]
    begin = max(0, first - SNIPPET_CHARS // 4)
    if begin:  # at a word's start: the last space up to 20 before `begin`, else the next one
        space = text.rfind(" ", max(0, begin - 20), begin)
        if space < 0:
            space = text.find(" ", begin, first)
        begin = space + 1 if space >= 0 else begin
    end = min(len(text), begin + SNIPPET_CHARS)
    out = ["…" if begin else ""]
    cur = begin
    for s, e in spans:
        if s >= end:
            break
        e = min(e, end)
        out.append(html.escape(text[cur:s]))
        out.append("<mark>" + html.escape(text[s:e]) + "</mark>")
        cur = e
    out.append(html.escape(text[cur:end]))
    if end < len(text):
        out.append("…")
    return "".join(out)


def make_long_snippet(
    text: str, fieldname: str, compiled: CompiledQuery, head: int, tries: int = 20
) -> str | None:
    """``make_snippet`` for a text of any length (bodies run to 1 MiB): its first ``head``
    characters, else around the first later place where a query term occurs literally and is
    a match there.

    Analysing a whole long text for every hit would cost too much, so beyond the head only the
    windows around literal occurrences of the terms are analysed, at most ``tries`` of them. A
    match found only by a stem that is not a prefix of its word, or by a wildcard, stays
    unmarked past the head.

    :param head: how many characters are searched by analysis alone.
    :param tries: how many windows are analysed beyond the head.
    """
    found = make_snippet(text[:head], fieldname, compiled)
    if found is not None or len(text) <= head:
        return found
    # as the terms were analysed, but not composed: offsets must stay those of the text
    lowered = fold_width(text).lower()
    if len(lowered) != len(text):  # (offsets would not line up)
        return None
    terms = [t for t in compiled.terms.get(fieldname, ()) if t]
    at = head - SNIPPET_CHARS
    for _ in range(tries):
        hits = [i for t in terms if (i := lowered.find(t, at)) >= 0]
        if not hits:
            return None
        at = min(hits)
        start = max(0, at - SNIPPET_CHARS)
        space = text.find(" ", start, at)  # a word's start, as far before the match as can be
        start = space + 1 if space >= 0 else start
        window = make_snippet(text[start : at + SNIPPET_CHARS * 2], fieldname, compiled)
        if window is not None:
            return window if window.startswith("…") else "…" + window
        at += 1
    return None


def plain_snippet(text: str) -> str:
    """Return the HTML-escaped start of a text.

    :param text: the stored text.
    """
    if len(text) <= SNIPPET_CHARS:
        return html.escape(text)
    return html.escape(text[:SNIPPET_CHARS]) + "…"
