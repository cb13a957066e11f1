"""Parsing a search query and refusing costly ones before anything runs."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from whoosh import query as wq
from whoosh.qparser import MultifieldParser, QueryParserError

from archivist.config import QUERY_LENGTH_LIMIT
from indexer.errors import BadQuery
from indexer.whoosh.analysis import fold_text, normalize_query_text, stem
from indexer.whoosh.expansion import prefix_terms
from indexer.whoosh.schema import TEXT_FIELDS

MAX_TERMS = 64
MAX_EXPANSION = 1000
MAX_SCAN = 20_000
QUERY_FIELDS = frozenset(
    {"subject", "body", "customer_id", "owner", "id", "parent_id", "process_id"}
)
"""The fields ``q`` may name (``field:value``); any other name is refused. The one list to
extend when a field becomes searchable (the shard schema must hold it too)."""


@dataclass
class CompiledQuery:
    """A parsed, checked text query and what snippets need to highlight it."""

    query: wq.Query | None
    terms: dict[str, set[str]]
    prefixes: list[tuple[str, re.Pattern[str]]]
    fields: frozenset[str] = frozenset()  # every field the query looks in


# ``name:`` right before a value is a field reference, as Whoosh's parser reads it; a name must
# start with a letter (``10:30`` is a time) and a colon before ``/`` is a URL's (``http://``).
# Inside a word (``case:12``, ``id:case:12``) a colon joins an identifier's parts.
_FIELD_REF = re.compile(r"(?<![\w.:@+/'*?-])([A-Za-z_]\w*):(?=[^\s/])")
_QUOTED = re.compile(r'"[^"]*"')
# A field with nothing after its colon (`subject:` at the end, `(subject:)`), and `()`: Whoosh
# would search them as nothing and answer no record rather than say the query is incomplete.
_EMPTY_FIELD = re.compile(r"(?<![\w.:@+/'-])([A-Za-z_]\w*):\s*(?=\)|$)")
_EMPTY_GROUP = re.compile(r"(\w*)\(\s*\)")  # (`printf()` is a word with its brackets)
# Filters that have their own parameter, named in the refusal of ``kind:note`` and the like.
_FILTER_PARAMETERS = frozenset({"kind", "category", "created_at", "updated_at", "archived_at"})
_BINARY_OPERATORS = frozenset({"AND", "OR", "ANDNOT", "ANDMAYBE"})
_QUERY_TOKEN = re.compile(r'"[^"]*"|[()]|[^\s()"]+')
_BAD_WILDCARD = re.compile(r"(?:^|[\s(:])[*?]")
# Whoosh's fuzzy syntax after a word, which this parser does not have: it would search
# `refund 1` instead (`3~4`, a range of numbers, is text).
_FUZZY = re.compile(r"(?<=[^\W\d_])~\d*(?=[\s)]|$)")


def _check_syntax(q: str) -> None:
    depth = 0
    in_quote = False
    for ch in q:
        if ch == '"':
            in_quote = not in_quote
        elif not in_quote:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise BadQuery("unbalanced parenthesis")
    if in_quote:
        raise BadQuery("unbalanced quote")
    if depth:
        raise BadQuery("unbalanced parenthesis")
    bad = _BAD_WILDCARD.search(q)
    if bad:
        for value in _ID_VALUE.finditer(q):  # `id:tenant:case:*`: say what is refused there
            if value.start(2) <= bad.start() < value.end(2) and value.group(2).count(":") > 1:
                raise BadQuery(_ID_WILDCARD.format(value.group(0)))
        raise BadQuery("a wildcard cannot start a term")
    if any(not phrase.group()[1:-1].strip() for phrase in _QUOTED.finditer(q)):
        raise BadQuery('an empty phrase (""): put words inside the quotes, or leave them out')
    unquoted = _QUOTED.sub('""', q)
    if _DOUBLE_MINUS.search(unquoted):
        raise BadQuery(
            "a minus cannot follow a minus: write -word to leave a word out, or put the text "
            'in quotes to search for it ("--word")'
        )
    if _TRAILING_MINUS.search(unquoted):
        raise BadQuery("a minus needs a term after it")
    if _FUZZY.search(unquoted):
        raise BadQuery("fuzzy terms (word~ or word~2) are not supported: try a prefix (word*)")
    for group in _EMPTY_GROUP.finditer(unquoted):
        if group.group(1) in ("", "NOT", *_BINARY_OPERATORS):
            raise BadQuery("empty parentheses: put terms inside them, or leave them out")
    for empty in _EMPTY_FIELD.finditer(unquoted):
        if empty.group(1) in QUERY_FIELDS:
            raise BadQuery(f"{empty.group(1)}: needs a value after the colon")


# ``-word`` as web search engines read it: NOT word. Only a minus that starts a term (after the
# start, a space or an opening parenthesis) and comes before a letter, a quote or a group:
# ``INV-2023``, ``-120.00`` and a minus inside quotes stay text.
_MINUS = re.compile(r'"[^"]*"|(?:^|(?<=[\s(]))-(?=[^\W\d_]|["(])')
# ... refused where it cannot mean that: doubled before a term (``--word``, which Whoosh would
# search as the word), or with no term after it (``refund -``, ``-`` alone).
_DOUBLE_MINUS = re.compile(r'(?:^|(?<=[\s(]))--+(?=[^\W\d_]|["(])')
_TRAILING_MINUS = re.compile(r"(?:^|(?<=[\s(]))-+\s*(?=\)|$)")


def _minus_as_not(q: str) -> str:
    """Read ``refund -chargeback`` as ``refund NOT chargeback``: Whoosh's parser would drop the
    minus and search for both words, the opposite of what was asked."""
    return _MINUS.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "NOT ", q)


def _check_fields(q: str) -> None:
    """Refuse a ``field:value`` whose field ``q`` cannot search, naming those it can.

    Whoosh's parser would read an unknown field's ``name:value`` as one word, which matches
    nothing: a typo or an internal field would silently give no results.
    """
    # a quoted text holds no field, but may be one's value (foo:"a b")
    for m in _FIELD_REF.finditer(_QUOTED.sub('""', q)):
        name = m.group(1)
        if name in QUERY_FIELDS:
            continue
        hint = f"; {name} is given as its own parameter" if name in _FILTER_PARAMETERS else ""
        raise BadQuery(
            f"unknown field {name!r} in q: the fields are {', '.join(sorted(QUERY_FIELDS))}"
            f"{hint} (to search for text with a colon, put it in quotes)"
        )


# The fields holding whole identifiers, whose values may themselves hold colons.
_ID_FIELDS = ("customer_id", "owner", "id", "parent_id", "process_id")
_ID_VALUE = re.compile(
    r"(?<![\w.:@+/'-])(" + "|".join(_ID_FIELDS) + r"):([^\s()\"]*:[^\s()\"]*)"
)


_ID_WILDCARD = "{!r}: an identifier with a colon cannot take a wildcard"


def _quote_id_values(q: str) -> str:
    """Quote an identifier field's value that holds a colon (``id:tenant:case:42``): Whoosh's
    parser would read ``case:42`` as the field and value, a search for another record.

    :raises BadQuery: such a value with a wildcard, which quotes would make literal
    """
    def quoted(m: re.Match[str]) -> str:
        if "*" in m.group(2) or "?" in m.group(2):
            if m.group(2).count(":") == 1:  # (``id:case:4*`` reads as meant)
                return m.group(0)
            raise BadQuery(_ID_WILDCARD.format(m.group(0)))
        return f'{m.group(1)}:"{m.group(2)}"'

    parts = re.split(r'("[^"]*")', q)  # text outside quotes, then a quoted text, and so on
    return "".join(p if i % 2 else _ID_VALUE.sub(quoted, p) for i, p in enumerate(parts))


def _check_operators(q: str) -> None:
    """Refuse an operator without its operands: ``refund AND``, ``OR refund``, ``NOT NOT a``.

    Whoosh would read an operator at the start or end as a plain word (``and``) and fail on a
    doubled NOT, so the query would not mean what it says.
    """
    tokens = _QUERY_TOKEN.findall(q)
    for i, token in enumerate(tokens):
        before = tokens[i - 1] if i else None
        after = tokens[i + 1] if i + 1 < len(tokens) else None
        operand_after = after is not None and after != ")" and after not in _BINARY_OPERATORS
        if token in _BINARY_OPERATORS:
            operand_before = before is not None and before not in ("(", "NOT")
            operand_before = operand_before and before not in _BINARY_OPERATORS
            if not (operand_before and operand_after):
                raise BadQuery(f"{token} needs a term on each side")
        elif token == "NOT":
            if after == "NOT":
                raise BadQuery("NOT cannot follow NOT")
            if not operand_after:
                raise BadQuery("NOT needs a term after it")


def make_parser(schema: Any) -> MultifieldParser:
    """Build the query parser: subject and body by default, AND between words.

    :param schema: the shard schema; only the fields a query may name are given to the parser.
    """
    from whoosh.fields import Schema

    visible = Schema(**{name: schema[name] for name in sorted(QUERY_FIELDS)})
    return MultifieldParser(list(TEXT_FIELDS), visible)


# Endings that make a word of a typed prefix (escalat + e, ed, ion), whose stems a prefix stands
# for besides the terms that begin with it.
_WORD_ENDINGS = (
    "", "e", "s", "es", "ed", "ing", "er", "ers", "or", "ion", "ions", "ive", "ment", "al",
    "ly", "ness", "ity", "able", "ate", "ated", "ation", "ize", "ized",
)  # fmt: skip


def _with_stems(q: wq.Query, readers: Sequence[Any]) -> wq.Query:
    """Let a prefix in a text field also match the stems of the words it begins.

    Text fields hold stems, and the parser stems a typed prefix as a word (``shipping*`` is
    ``ship*``), which does not help a cut-off word: escalate, escalated and escalation are all
    indexed as ``escal``, so ``escalat*`` alone would find none of them. A prefix therefore also
    stands for the stems of itself with common English endings (``escalate``, ``escalation``:
    ``escal``) that the index holds and that do not begin with it: ``escalat* OR escal``.
    """
    if isinstance(q, wq.Prefix):
        text, fieldname = q.text, q.fieldname
        if fieldname in TEXT_FIELDS and text.isascii() and text.isalpha():
            stems = sorted({stem(text + ending) for ending in _WORD_ENDINGS})
            found = [
                wq.Term(fieldname, s, boost=q.boost)
                for s in stems
                if not s.startswith(text) and any((fieldname, s) in r for r in readers)
            ]
            if found:
                return wq.Or([q, *found])
        return q
    return q if q.is_leaf() else q.apply(lambda child: _with_stems(child, readers))


def _leaves(q: wq.Query) -> Iterable[wq.Query]:
    if q.is_leaf():
        yield q
    else:
        for child in q.children():
            yield from _leaves(child)


def compile_query(text: str, parser: MultifieldParser, readers: Sequence[Any]) -> CompiledQuery:
    """Parse a query string and refuse it before running when unparseable or too costly.

    :param text: the ``q`` parameter.
    :param parser: the parser from :func:`make_parser`.
    :param readers: one Whoosh reader per shard, to count wildcard and range expansions.
    """
    if len(text) > QUERY_LENGTH_LIMIT:  # callers hold `q` to `server.max_query_length` first
        raise BadQuery(f"query longer than {QUERY_LENGTH_LIMIT} characters")
    text = fold_text(text).strip()  # (typed with a Chinese input method: the same query)
    if not text:
        return CompiledQuery(None, {}, [])
    if text.count("*") + text.count("?") > 20:
        raise BadQuery("too many wildcards")
    _check_syntax(text)
    text = _minus_as_not(text)
    _check_fields(text)
    _check_operators(text)
    text = _quote_id_values(text)
    text = normalize_query_text(text)
    try:
        parsed = parser.parse(text)
    except (QueryParserError, LookupError, ValueError, TypeError) as e:
        # what the checks above let through and Whoosh's parser still trips on
        raise BadQuery(f"cannot parse query: {e}") from e
    parsed = _with_stems(parsed.normalize(), readers)
    terms: dict[str, set[str]] = {}
    prefixes: list[tuple[str, re.Pattern[str]]] = []
    # Counted per field: a typed word is searched in subject and body both, and the limit is
    # on what the user typed (a Chinese run counts each of its two-character pairs).
    nterms: Counter[str | None] = Counter()
    named: set[str] = set()
    for leaf in _leaves(parsed):
        if getattr(leaf, "error", None):
            raise BadQuery(f"cannot parse query: {leaf.error}")
        if leaf is wq.NullQuery or isinstance(leaf, wq.qcore._NullQuery):
            continue
        fieldname = leaf.field() if hasattr(leaf, "field") else None
        if fieldname is not None:
            named.add(fieldname)
        if isinstance(leaf, wq.Every):
            raise BadQuery("a query matching everything: leave q empty instead")
        if fieldname is not None and fieldname not in QUERY_FIELDS:
            raise BadQuery(f"unknown field {fieldname!r}")
        if isinstance(leaf, (wq.TermRange, wq.NumericRange, wq.DateRange)):
            raise BadQuery("ranges ([a TO b]) cannot be searched in q; give dates with from/to")
        if isinstance(leaf, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.Regex)):
            _check_expansion(leaf, readers)
            if fieldname in TEXT_FIELDS:
                prefixes.append((fieldname, _pattern_of(leaf)))
            nterms[fieldname] += 1
        elif isinstance(leaf, wq.Phrase):
            nterms[fieldname] += len(leaf.words)
            terms.setdefault(leaf.fieldname, set()).update(leaf.words)
        elif isinstance(leaf, wq.Term):
            nterms[fieldname] += 1
            terms.setdefault(leaf.fieldname, set()).add(leaf.text)
        else:
            raise BadQuery(f"unsupported query part: {type(leaf).__name__}")
    if max(nterms.values(), default=0) > MAX_TERMS:
        raise BadQuery(f"more than {MAX_TERMS} terms")
    if sum(nterms.values()) == 0:
        # e.g. only punctuation or only operators: nothing can match.
        return CompiledQuery(wq.NullQuery, terms, prefixes, frozenset(named))
    return CompiledQuery(parsed, terms, prefixes, frozenset(named))


def _pattern_of(leaf: wq.Query) -> re.Pattern[str]:
    if isinstance(leaf, wq.Prefix):
        return re.compile(re.escape(leaf.text) + ".*")
    if isinstance(leaf, wq.Wildcard):
        parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in leaf.text]
        return re.compile("".join(parts))
    return re.compile("(?!)")


def _literal_prefix(leaf: wq.Query) -> str:
    if isinstance(leaf, wq.Prefix):
        return str(leaf.text)
    if isinstance(leaf, wq.Wildcard):
        return str(re.split(r"[*?]", leaf.text, maxsplit=1)[0])
    if isinstance(leaf, wq.FuzzyTerm):
        return str(leaf.text[: leaf.prefixlength])
    return ""


def _check_expansion(leaf: wq.Query, readers: Sequence[Any]) -> None:
    """Refuse a multi-term query whose expansion would pass the limits, reading few terms."""
    fieldname = leaf.field()
    prefix = _literal_prefix(leaf)
    if isinstance(leaf, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.Regex)) and not prefix:
        raise BadQuery("a wildcard cannot start a term")
    pattern = _pattern_of(leaf) if isinstance(leaf, wq.Wildcard) else None
    found: set[bytes] = set()
    scanned = 0
    for reader in readers:
        if isinstance(leaf, wq.TermRange):
            source: Iterable[Any] = leaf._btexts(reader)
        else:
            source = prefix_terms(reader, fieldname, prefix, MAX_SCAN)
        for btext in source:
            scanned += 1
            if scanned > MAX_SCAN:
                raise BadQuery(f"{leaf} scans too many terms")
            if isinstance(btext, str):
                btext = btext.encode("utf-8")
            if pattern is None or pattern.fullmatch(btext.decode("utf-8")):
                found.add(btext)
                if len(found) > MAX_EXPANSION:
                    raise BadQuery(f"{leaf} expands to more than {MAX_EXPANSION} terms")
