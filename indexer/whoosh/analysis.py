"""Text analysis: English stemming, Chinese words and bigrams, whole identifiers, in one stream.

Every text token is produced by :func:`iter_tokens`. The same function serves indexing, query
parsing, snippets and the brute-force tests, so what is indexed and what is searched agree.

Token rules (index mode):

* English and other alphabetic words are lowercased and reduced with Snowball English
  (Porter2): refund/refunds/refunded -> ``refund``, escalate/escalated/escalation -> ``escal``,
  ship/shipped/shipping -> ``ship``. Stop words are kept so that phrases stay exact.
* Words joined by ``. _ - : / ' +`` (``INV-2023-004512``, ``li.wei``, ``v2.3``) are emitted whole
  (lowercased, not stemmed) and as their parts (stemmed), all at the same position, so that a
  phrase containing an identifier still lines up. E-mail addresses are emitted whole, plus their
  local part and domain whole, plus the parts. Digit groups joined by separators with at least
  7 digits (``+86 138 0013 8000``, ``138-0013-8000``) are emitted as the digits alone
  (``8613800138000``) besides the groups. A number written with its country code
  (``+86 138 0013 8000``, ``+86-138-0013-8000``, ``+8613800138000``) is also emitted as it is
  dialled inside its country (``13800138000``, ``013800138000``), so that it is found typed
  without the country code. An area code in brackets (``(555) 123-4567``) is read the same way
  (``5551234567``), and the number after it alone (``1234567``) is emitted too. A run of
  groups may hold a number next to another (``+86 138 0013 8000 2023``): every shorter run of
  two or more of its groups with at least 7 digits is emitted too.
* A run of Chinese characters is indexed as overlapping bigrams at consecutive positions (so a
  query word of two or more characters, searched as a bigram phrase, finds exactly the texts that
  contain it, even inside compounds the segmenter glues together) plus the segmenter's words of
  three or more characters and its one-character words, stacked on the bigram where they start.

In query mode, an identifier yields only its whole form and a Chinese run only its bigrams
(one-character run: the character), so a typed identifier or Chinese word maps to one term or
one phrase; a possessive ``'s`` is dropped first (``client's`` searches ``client``).
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

import rjieba
import Stemmer
from whoosh.analysis import Token, Tokenizer
from whoosh.formats import Positions

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = rf"[^\W_{_CJK}]+"

# Order matters: an e-mail before a compound word, a spaced phone number before its groups.
# An identifier glued to a label or to Chinese text is still found whole: a word does not run on
# over ":" or "/" into an e-mail address (`Email:li.wei@example.com`), and a phone number may
# follow a Chinese character (`致电+86 138 0013 8000`).
_EMAIL_AHEAD = r"(?![A-Za-z0-9._%+-]*[A-Za-z0-9]@[A-Za-z0-9-]+\.)"
# An area code in brackets (`(555) 123-4567`, `+1 (555) 123-4567`, `(010) 8888 6666`,
# `(0755) 88886666`, `(11) 98765-4321`, `+49 (6221) 1234567`): two or three digits, or four
# or five after a trunk `0` or a country code, then a local number as one is written (three
# to five digits and four more, or seven or eight together), so that `(1) 22 33` (a list),
# `(2023) 1234` or `(2019) 2020 2021` (years) is not read as a number.
_BRACKETED = (
    r"(?:\+\d{1,4} ?\(\d{2,5}\)|\((?:\d{2,3}|0\d{3,4})\))"
    r" ?(?:\d{3,5}[ -]\d{4}|\d{7,8})(?!\d)"
)
# The trunk prefix in brackets after the country code (`+44 (0)20 7946 0958`,
# `+41 (0)44 668 18 00`, `+49(0)62215438210`): dialled from abroad without the `0`, at home
# with it; its digits are those of the number without the bracket (see `_phone_digits`).
_TRUNK_BRACKETED = r"\+\d{1,4} ?\(0\) ?(?:\d{1,5}(?:[ -]\d{2,8}){1,4}|\d{6,12})(?!\d)"
_TRUNK = "(0)"
# A one-digit area code after the country code (`+33 1 23 45 67 89`, `+43 1 234 56 78`,
# `+32 2 123 45 67`): then at least three groups, so that `+1 5 items` stays words.
_ONE_DIGIT_AREA = r"\+\d{1,4} \d(?: \d{2,5}){3,5}(?!\d)"
# After a country code, the subscriber's number in one group of six to eight digits, directly
# or after one area-code group (`+44 7700 900123`, `+49 30 12345678`, `+44-7700-900123`): read
# first, so that it is not cut after the area code; only a number of ten digits or more after
# a country code counts (see `_phone_digits`), so `+5 100000` or `+15 250000` stays an amount.
# A longer run of groups is left to the forms after it, so a number after one stays its own.
_LONG_SUBSCRIBER = r"\+\d{1,4}(?: \d{1,5})? \d{6,8}(?!\d)|\+\d{1,4}(?:-\d{1,5})?-\d{6,8}(?!\d)"
_MIN_LONG_SUBSCRIBER_DIGITS = 10
# As dialled at home: three or more groups, or the trunk `0` and an area code before the
# subscriber's number in one group, nine digits or more (`07700 900123`, `030 12345678`).
_SPACED_AT_HOME = r"\d{2,5}(?: \d{2,5}){2,5}|0\d{2,4} \d{6,8}|0\d \d{7,8}"
_CHUNK_RE = re.compile(
    rf"(?P<email>[A-Za-z0-9._%+-]*[A-Za-z0-9]@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
    rf"|(?P<phone>(?<![+.-])(?<![^\W{_CJK}])"
    rf"(?:{_BRACKETED}|{_TRUNK_BRACKETED}|{_ONE_DIGIT_AREA}|{_LONG_SUBSCRIBER}"
    rf"|\+\d{{1,4}}(?: \d{{2,5}}){{1,5}}|{_SPACED_AT_HOME}"
    rf"|\+\d{{1,4}}(?:-\d{{2,5}}){{1,5}}|\+\d{{7,15}})"
    rf"(?![^\W{_CJK}]|@|[.:/-]\w))"
    rf"|(?P<cjk>[{_CJK}]+)"
    rf"|(?P<word>{_WORD}(?:[._'+-]{_WORD}|[:/]{_EMAIL_AHEAD}{_WORD})*)"
)
# Where an identifier sits inside a longer compound (`Re:INV-2023-000060`, `INV-1's`, `A-1/A-2`)
_LABEL_SEPARATORS = re.compile(r"[:/']")
_COMPOUND = re.compile(r"[._+-]")
_PART_RE = re.compile(_WORD)
# ... as the index reads it: also glued to Chinese text (`致电+86 138 0013 8000`)
_PHONE_QUERY_RE = re.compile(
    rf"(?:(?P<cjk>[{_CJK}]+)|(?<![+.:-])(?<!\w/)(?<![^\W{_CJK}]))"
    rf"(?P<phone>{_BRACKETED}|{_TRUNK_BRACKETED}|{_ONE_DIGIT_AREA}|{_LONG_SUBSCRIBER}"
    rf"|\+\d{{1,4}}(?: \d{{2,5}}){{1,5}}|{_SPACED_AT_HOME})"
    rf"(?![^\W{_CJK}]|[@*?~]|[.:/-]\w)"
)
_POSSESSIVE = ("'s", "'S")
_DIGITISH_RE = re.compile(r"\+?[\d.\- ()]+")
_MIN_PHONE_DIGITS = 7
_GROUPS = re.compile(r"\d+")
_ONE_DIGIT_AREA_RE = re.compile(_ONE_DIGIT_AREA)
_LONG_SUBSCRIBER_RE = re.compile(_LONG_SUBSCRIBER)
_LONG_AREA_AFTER_SIGN = re.compile(r"\+\d+ ?\(\d{4,5}\)")  # `+49 (6221)`, or `+3 (2019)`
# ITU-T E.164 country codes of one and two digits; every other code has three. The codes are
# prefix-free, so the digits after a "+" name their country code unambiguously.
_SHORT_COUNTRY_CODES = frozenset(
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 "
    "60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98".split()
)

_stemmer = Stemmer.Stemmer("english")
_stem_cache: dict[str, str] = {}
_STEM_CACHE_MAX = 500_000


def stem(word: str) -> str:
    """Return the Snowball English stem of a lowercased word (cached).

    :param word: a lowercased word.
    """
    s = _stem_cache.get(word)
    if s is None:
        if word.isdigit() or len(word) < 3:
            s = word
        else:
            s = _stemmer.stemWord(word)
        if len(_stem_cache) < _STEM_CACHE_MAX:
            _stem_cache[word] = s
    return s


def _digits_only(text: str) -> str | None:
    """Return the digits of a phone-like text, or None when it is not phone-like."""
    if not _DIGITISH_RE.fullmatch(text):
        return None
    digits = "".join(ch for ch in text if ch.isdigit())
    return digits if len(digits) >= _MIN_PHONE_DIGITS else None


def _phone_digits(chunk: str) -> str | None:
    """The digits a phone number is dialled with: `+44 (0)20 7946 0958` without its bracketed
    trunk `0` (``442079460958``); None when it is not phone-like, or when a sign and a year
    in brackets only look like a country and an area code (`+3 (2019) 2020 2021`), or a sign
    and a long group are too short or lack a country code to be a number (`+15 250000`)."""
    if _LONG_AREA_AFTER_SIGN.match(chunk) and not _has_country_code(chunk):
        return None
    digits = _digits_only(chunk.replace(_TRUNK, "", 1))
    if digits is not None and _LONG_SUBSCRIBER_RE.fullmatch(chunk):
        if len(digits) < _MIN_LONG_SUBSCRIBER_DIGITS or not _has_country_code(chunk):
            return None
    return digits


def _has_country_code(chunk: str) -> bool:
    """Whether the digits written after the `+` (up to a space, dash or bracket) can begin with
    a country code: one of the short codes, or three digits (no code starts with `0`)."""
    lead = _GROUPS.search(chunk)  # the chunk begins with the sign and these digits
    digits = lead.group() if lead else ""
    if digits[:1] in _SHORT_COUNTRY_CODES or digits[:2] in _SHORT_COUNTRY_CODES:
        return True
    return len(digits) >= 3 and not digits.startswith("0")


def _national_forms(chunk: str, digits: str) -> list[str]:
    """Return how a phone number written with its country code is dialled inside its
    country: the national number (``+86 138 0013 8000``: ``13800138000``) and, with the
    trunk prefix most countries use, ``0`` and the national number. None without a ``+``."""
    if not chunk.startswith("+"):
        return []
    size = next((n for n in (1, 2) if digits[:n] in _SHORT_COUNTRY_CODES), 3)
    national = digits[size:]
    if len(national) < _MIN_PHONE_DIGITS:
        return []
    return [national] if national.startswith("0") else [national, "0" + national]


def _local_number(chunk: str) -> str | None:
    """The digits after the area code, so that the number typed without it finds it: after a
    bracketed one (`(555) 123-4567`: ``1234567``), or the first group after a bracketed trunk
    `0` (`+33 (0)1 23 45 67 89`: ``23456789``) or a one-digit one (`+33 1 23 45 67 89`); None
    when there is none or it is too short."""
    if _TRUNK in chunk:
        groups = _GROUPS.findall(chunk.partition(_TRUNK)[2])[1:]
    elif ")" in chunk:
        groups = _GROUPS.findall(chunk.partition(")")[2])
    elif _ONE_DIGIT_AREA_RE.fullmatch(chunk):
        groups = _GROUPS.findall(chunk)[2:]
    else:
        return None
    digits = "".join(groups)
    return digits if len(digits) >= _MIN_PHONE_DIGITS else None


def _numbers_inside(chunk: str) -> Iterator[tuple[str, int, int]]:
    """The numbers a run of digit groups may hold besides the whole: a phone number written
    next to another number (`+86 138 0013 8000 2023`, `4411 138 0013 8000`, two numbers in a
    row) is read as one long run, so that every shorter run of two or more of its groups with
    seven digits or more is found too. A run from the sign is read as `_phone_digits` reads a
    number, with its national forms. Yields ``(digits, start, end)``, offsets into the chunk;
    a chunk with brackets holds none (its brackets already say where its number is)."""
    if "(" in chunk:
        return
    groups = list(_GROUPS.finditer(chunk))
    signed = chunk.startswith("+")
    for i in range(len(groups)):
        for j in range(i + 2, len(groups) + 1):
            if i == 0 and j == len(groups):
                continue  # the whole chunk
            begin, end = groups[i].start(), groups[j - 1].end()
            if i == 0 and signed:
                digits = _phone_digits(chunk[:end])
                if digits is not None:
                    yield digits, 0, end
                    for national in _national_forms(chunk[:end], digits):
                        yield national, 0, end
                continue
            digits = "".join(g.group() for g in groups[i:j])
            if len(digits) >= _MIN_PHONE_DIGITS:
                yield digits, begin, end


def _segment(run: str) -> list[str]:
    return rjieba.cut(run)  # type: ignore[no-any-return]


def _lowered_offsets(chunk: str) -> list[int]:
    """For each index into `chunk.lower()` (and its end), the index into `chunk` it came from."""
    offsets = [i for i, c in enumerate(chunk) for _ in c.lower()]
    offsets.append(len(chunk))
    return offsets


def _in_text(start: int, at_char: list[int] | None, i: int, end: bool = False) -> int:
    """The text offset of index `i` into a lowered chunk that begins at `start`."""
    if at_char is None:
        return start + i
    return start + (at_char[i - 1] + 1 if end and i else at_char[i])


# Full-width forms of ASCII (`ＩＮＶ－２０２３`, typed with a Chinese input method) and the
# ideographic space read as their ASCII selves, and so do the typographic apostrophes that word
# processors and phones put for `'` (`O’Brien`, `customer’s`), one character for one, so that
# offsets into the text stay right for snippets.
_FULL_WIDTH = re.compile("[\uff01-\uff5e\u3000\u2018\u2019\u02bc]+")
_TO_ASCII = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {
    0x3000: 0x20, 0x2018: 0x27, 0x2019: 0x27, 0x02BC: 0x27,
}


def fold_width(text: str) -> str:
    """The text with full-width ASCII forms, the ideographic space and typographic
    apostrophes as ASCII.

    (Chinese text holds a full-width comma in most sentences: only the runs found are
    translated, which costs a fraction of translating the whole text.)

    :param text: any text; returned as it is when it has none of them
    """
    if text.isascii():
        return text
    return _FULL_WIDTH.sub(lambda run: run.group().translate(_TO_ASCII), text)


def fold_text(text: str) -> str:
    """The text as it is analysed: full-width forms as ASCII, then composed (Unicode NFC).

    An accented letter typed as one character (`é`) or as a letter and a combining accent
    (`e` + U+0301) is then the same term, in the index and in queries.

    :param text: any text
    """
    if text.isascii():
        return text
    return unicodedata.normalize("NFC", fold_width(text))


def _composed(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """`fold_text` of a text and, when composing changed it, where each of its characters
    came from: ``starts[k]`` and ``ends[k]`` bound the run of `text` that became character k.

    Each run is a character and what composes with it (combining marks, Hangul jamo), so
    offsets into the composed text map back onto whole runs of the text a snippet shows.
    """
    folded = fold_width(text)
    if folded.isascii() or unicodedata.is_normalized("NFC", folded):
        return folded, None, None
    nfc = unicodedata.normalize
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i, n = 0, len(folded)
    while i < n:
        j = i + 1
        while True:
            # Combining marks always join the run: skipped over, then the run composed once.
            while j < n and unicodedata.combining(folded[j]):
                j += 1
            piece = nfc("NFC", folded[i:j])
            if j == n or len(nfc("NFC", folded[i : j + 1])) > len(piece):
                break  # the next character is one of its own
            j += 1  # it composed with the run (Hangul jamo)
        out.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(out), starts, ends


def iter_tokens(
    text: str, mode: str = "index", start_pos: int = 0
) -> Iterator[tuple[str, int, int, int]]:
    """Yield ``(term, position, startchar, endchar)`` for every token of a text.

    :param text: the text to analyse.
    :param mode: ``"index"`` for documents, ``"query"`` for query words (whole identifiers only,
        Chinese bigrams only).
    :param start_pos: the position of the first token.
    """
    composed, starts, ends = _composed(text)
    if starts is None or ends is None:
        yield from _iter_tokens(composed, mode, start_pos)
        return
    for term, pos, s, e in _iter_tokens(composed, mode, start_pos):
        yield term, pos, starts[s], ends[e - 1] if e else 0


def _iter_tokens(text: str, mode: str, start_pos: int) -> Iterator[tuple[str, int, int, int]]:
    """`iter_tokens` of a text already folded (`fold_text`): its offsets are into that text."""
    query = mode == "query"
    pos = start_pos
    for m in _CHUNK_RE.finditer(text):
        kind = m.lastgroup
        chunk = m.group()
        start = m.start()
        if kind == "word":
            if query and chunk[-2:] in _POSSESSIVE:
                # `client's` asks for the client: the word's own terms (the index holds them
                # for `client's` too, at the same position), not the possessive form alone
                chunk = chunk[:-2]
            if chunk.isalnum():
                yield stem(chunk.lower()), pos, start, m.end()
                pos += 1
                continue
            lower = chunk.lower()
            whole = _digits_only(lower) or lower
            yield whole, pos, start, m.end()
            if not query:
                # offsets into `lower` are offsets into the text only while lowering keeps
                # every character one character long (`İ` becomes two)
                at_char = _lowered_offsets(chunk) if len(lower) != len(chunk) else None
                seen = {whole}
                at = 0
                for piece in _LABEL_SEPARATORS.split(lower):  # each identifier inside, whole
                    if piece not in seen and _COMPOUND.search(piece):
                        seen.add(piece)
                        yield (_digits_only(piece) or piece, pos, _in_text(start, at_char, at),
                               _in_text(start, at_char, at + len(piece), end=True))
                    at += len(piece) + 1  # (and its one-character separator)
                for part in _PART_RE.finditer(lower):
                    p = stem(part.group())
                    if p not in seen:
                        yield (p, pos, _in_text(start, at_char, part.start()),
                               _in_text(start, at_char, part.end(), end=True))
            pos += 1
        elif kind == "cjk":
            n = len(chunk)
            if n == 1:
                yield chunk, pos, start, start + 1
                pos += 1
                continue
            if query:
                for i in range(n - 1):
                    yield chunk[i : i + 2], pos + i, start + i, start + i + 2
                pos += n - 1
                continue
            extra: dict[int, list[tuple[int, str]]] = {}
            offset = 0
            for word in _segment(chunk):
                w = len(word)
                if w == 1 or w >= 3:
                    extra.setdefault(min(offset, n - 2), []).append((offset, word))
                offset += w
            for i in range(n - 1):
                yield chunk[i : i + 2], pos + i, start + i, start + i + 2
                for wstart, word in extra.get(i, ()):
                    yield word, pos + i, start + wstart, start + wstart + len(word)
            pos += n - 1
        elif kind == "phone":
            digits = _phone_digits(chunk)
            if digits is None:
                for part in _PART_RE.finditer(chunk):
                    yield part.group(), pos, start + part.start(), start + part.end()
                    pos += 1
                continue
            yield digits, pos, start, m.end()
            if not query:
                seen = {digits}
                for national in _national_forms(chunk, digits):
                    seen.add(national)
                    yield national, pos, start, m.end()
                local = _local_number(chunk)
                if local is not None and local not in seen:
                    seen.add(local)
                    yield local, pos, start, m.end()
                for number, a, b in _numbers_inside(chunk):
                    if number not in seen:
                        seen.add(number)
                        yield number, pos, start + a, start + b
                for part in _PART_RE.finditer(chunk):
                    if part.group() not in (digits, local):
                        yield part.group(), pos, start + part.start(), start + part.end()
            pos += 1
        else:  # email
            lower = chunk.lower()
            yield lower, pos, start, m.end()
            if not query:
                local, _, domain = lower.rpartition("@")
                seen = {lower}
                for extra_term in (local, domain):
                    if extra_term not in seen:
                        seen.add(extra_term)
                        yield extra_term, pos, start, m.end()
                for part in _PART_RE.finditer(lower):
                    p = stem(part.group())
                    if p not in seen:
                        seen.add(p)
                        yield p, pos, start + part.start(), start + part.end()
            pos += 1


# A chunk's index terms depend on its text alone (the kinds cannot overlap: a phone number has a
# space or a leading +, an e-mail an @, a word neither), so they are worked out once per distinct
# chunk. Chunks of many terms (Chinese runs, mostly unique) are not kept: they filled the cache.
# The regex is _CHUNK_RE without the group names, so that findall returns whole chunks.
_CHUNK_TEXT_RE = re.compile(re.sub(r"\(\?P<\w+>", "(?:", _CHUNK_RE.pattern))
_CHUNK_CACHE_MAX = 300_000
_CHUNK_CACHE_TERMS = 4
_chunk_cache: dict[str, tuple[tuple[tuple[str, bytes, int], ...], int]] = {}


def _chunk_terms(chunk: str) -> tuple[tuple[tuple[str, bytes, int], ...], int]:
    """Return a chunk's ``(term, utf-8 term, position offset)`` in :func:`iter_tokens` order, and
    how many positions the chunk takes."""
    got = _chunk_cache.get(chunk)
    if got is None:
        terms = tuple((t, t.encode("utf-8"), pos) for t, pos, _s, _e in iter_tokens(chunk))
        got = (terms, max((pos for _t, _b, pos in terms), default=-1) + 1)
        if len(terms) <= _CHUNK_CACHE_TERMS and len(_chunk_cache) < _CHUNK_CACHE_MAX:
            _chunk_cache[chunk] = got
    return got


def index_term_positions(text: str) -> dict[bytes, list[int]]:
    """Return each UTF-8 term of a document text with its sorted, distinct positions.

    The same as :func:`index_positions`, keyed the way Whoosh stores terms.

    :param text: the text to analyse.
    """
    poses: dict[bytes, list[int]] = {}
    pos = 0
    cache = _chunk_cache
    for chunk in _CHUNK_TEXT_RE.findall(fold_text(text)):
        entry = cache.get(chunk) or _chunk_terms(chunk)
        terms, width = entry
        for _t, term, offset in terms:
            p = pos + offset
            lst = poses.get(term)
            if lst is None:
                poses[term] = [p]
            elif lst[-1] != p:
                lst.append(p)
        pos += width
    return poses


def index_positions(text: str) -> dict[str, list[int]]:
    """Return each term of a document text with its sorted, distinct positions.

    :param text: the text to analyse.
    """
    return {t.decode("utf-8"): p for t, p in index_term_positions(text).items()}


def normalize_query_text(q: str) -> str:
    """Rewrite spaced phone numbers in a query string into the single token the index holds.

    Whoosh's parser splits on whitespace before analysis, so ``+86 138 0013 8000`` would become
    four words; it becomes ``8613800138000`` here.

    :param q: the raw query string.
    """

    def repl(m: re.Match[str]) -> str:
        digits = _phone_digits(m.group("phone"))
        if digits is None:
            return m.group()
        chinese = m.group("cjk")
        if not chinese:
            return digits
        # Glued to the Chinese before it, as pasted from a record: the two together, as a
        # phrase (within the user's own quotes, already one)
        if q.count('"', 0, m.start()) % 2:
            return f"{chinese} {digits}"
        return f'"{chinese} {digits}"'

    return _PHONE_QUERY_RE.sub(repl, q)


_WILDCARD_CHARS = re.compile(r"[*?]")


class ArchiveTokenizer(Tokenizer):  # type: ignore[misc]
    """Whoosh tokenizer over :func:`iter_tokens` (the whole analyzer for subject and body)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArchiveTokenizer)

    def __hash__(self) -> int:
        return hash(type(self))

    def __call__(  # noqa: D102
        self,
        value: str,
        positions: bool = False,
        chars: bool = False,
        keeporiginal: bool = False,
        removestops: bool = True,
        start_pos: int = 0,
        start_char: int = 0,
        tokenize: bool = True,
        mode: str = "",
        **kwargs: Any,
    ) -> Iterator[Token]:
        t = Token(positions, chars, removestops=removestops, mode=mode, **kwargs)
        if not tokenize and _WILDCARD_CHARS.search(value):
            # A wildcard word (`refun?`, `zo?b*`, `ref*nd`): the parser hands it over whole, to
            # be matched against the index's terms; split, its parts would make a phrase.
            t.text, t.boost, t.stopped = value.lower(), 1.0, False
            if positions:
                t.pos = start_pos
            if chars:
                t.startchar, t.endchar = start_char, start_char + len(value)
            yield t
            return
        for term, pos, s, e in iter_tokens(value, "query" if mode == "query" else "index"):
            t.text = term
            t.boost = 1.0
            t.stopped = False
            if keeporiginal:
                t.original = value[s:e]
            if positions:
                t.pos = start_pos + pos
            if chars:
                t.startchar = start_char + s
                t.endchar = start_char + e
            yield t


class ArchivePositions(Positions):  # type: ignore[misc]
    """Positions format that indexes through :func:`index_positions`, skipping Token objects."""

    def word_values(self, value: str, analyzer: Any, **kwargs: Any) -> Iterator[Any]:
        """Yield ``(term, frequency, weight, encoded positions)`` for a document text."""
        fb = self.field_boost
        encode = self.encode
        single = SINGLE_POSITION_VALUES
        for w, poslist in index_positions(value).items():
            n = len(poslist)
            if n == 1 and poslist[0] < len(single):
                # Most terms occur once in a document; their encoding is precomputed.
                yield w, 1, fb, single[poslist[0]]
            else:
                yield w, n, n * fb, encode(poslist)


SINGLE_POSITION_VALUES = [Positions().encode([p]) for p in range(4096)]
"""The Positions value of a term found once, at position ``i`` (most terms of a document)."""


# --- word pairs, for phrases ------------------------------------------------------------------
#
# A phrase of common words (``"please update"``) needs the positions of every document holding
# both words: hundreds of thousands of posting values to decode. So each text field has a
# companion field of word pairs: for every position p, each term at p joined by a space to
# each term at p + 1, with how many times that pair occurs. A two-word phrase is then one
# posting list, exactly, and a longer one starts from the documents holding all its pairs.
#
# Only the frequent terms pair up: the index's most frequent alphabetic terms, chosen once per
# index generation from its first records. A phrase with a rarer word has few candidate
# documents, so positions are cheap for it, while pairing every term multiplied the vocabulary
# (at 1,000,000 records of Zipf-distributed words the index grew 2.4 times and a rebuild
# worker held 5 GB).

PAIR_SEPARATOR = b" "
PAIR_TERMS = 400
"""How many of the most frequent terms take part in word pairs."""
_PACK_FREQ = [struct.pack("!I", n) for n in range(256)]


PAIR_TERM_OWNERS = 3
"""How many customers' records a term must be in to pair up (see ``choose_pair_terms``)."""


def choose_pair_terms(
    texts: Iterable[tuple[str, str]], limit: int = PAIR_TERMS
) -> list[str]:
    """Return the terms that pair up: the most frequent alphabetic terms of some texts.

    Terms are ranked by how many texts hold them (then by the term, so the choice is
    deterministic); a term must be in the texts of at least ``PAIR_TERM_OWNERS`` customers.
    The chosen terms are written in the generation's META file, which erasure does not
    rewrite: a word particular to one customer (a name, an e-mail address's parts) must never
    be among them.

    :param texts: (owner, text) of sample texts (subjects and bodies); the owner is the
        record's customer, or the record itself when it has none.
    :param limit: how many terms at most.
    """
    counts: dict[bytes, int] = {}
    owners: dict[bytes, set[str]] = {}
    for owner, text in texts:
        for term in index_term_positions(text):
            counts[term] = counts.get(term, 0) + 1
            seen = owners.setdefault(term, set())
            if len(seen) < PAIR_TERM_OWNERS:
                seen.add(owner)
    ranked = sorted(
        (
            t for t, n in counts.items()
            if len(owners[t]) >= PAIR_TERM_OWNERS and t.decode("utf-8").isalpha()
        ),
        key=lambda t: (-counts[t], t),
    )
    return [t.decode("utf-8") for t in ranked[:limit]]


def pair_term(first: bytes, second: bytes) -> bytes:
    """Return the pair-field term of two adjacent terms."""
    return first + PAIR_SEPARATOR + second


def pair_counts(positions: dict[bytes, list[int]], terms: AbstractSet[bytes]) -> dict[bytes, int]:
    """Return each word pair of a text with how often it occurs.

    :param positions: the text's terms and positions, from :func:`index_term_positions`.
    :param terms: the terms that pair up (UTF-8).
    """
    at: dict[int, list[bytes]] = {}
    for term, poslist in positions.items():
        if term in terms:
            for p in poslist:
                got = at.get(p)
                if got is None:
                    at[p] = [term]
                else:
                    got.append(term)
    counts: dict[bytes, int] = {}
    for p, firsts in at.items():
        seconds = at.get(p + 1)
        if seconds is None:
            continue
        for a in firsts:
            for b in seconds:
                key = a + PAIR_SEPARATOR + b
                counts[key] = counts.get(key, 0) + 1
    return counts


def pair_postings(
    positions: dict[bytes, list[int]], terms: AbstractSet[bytes]
) -> list[tuple[bytes, int, float, bytes]]:
    """Return a text's word pairs as ``(term, frequency, weight, Frequency value)`` postings."""
    pack = _PACK_FREQ
    return [
        (term, n, float(n), pack[n] if n < 256 else struct.pack("!I", n))
        for term, n in pair_counts(positions, terms).items()
    ]


class PairTokenizer(Tokenizer):  # type: ignore[misc]
    """Marks the word-pair fields. Their postings depend on the index's pair terms, so they are
    written by the index writer, never by Whoosh's own ``add_document``."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PairTokenizer)

    def __hash__(self) -> int:
        return hash(type(self))

    def __call__(self, value: str, **kwargs: Any) -> Iterator[Token]:  # noqa: D102
        raise NotImplementedError("word pairs are written by indexer.whoosh.index, not by Whoosh")
