"""Which audit entries name an erased customer, so an erasure can blank them.

Searches and exports are audited with the query that was typed, restores and legal holds with
their reasons (a bulk restore with its search, a hold with the customer it holds): after an
erasure, a search for the customer's e-mail address or a word of their text would keep that text
in the audit log. An entry names the erased records when its typed text holds the customer's
id, or a word of the
erased records (of any archived version of them) that no other archived record holds (the index
finds none but theirs for it, so the answer is the same before the erasure and after it): their
e-mail addresses or a part of one, phone numbers, names, unusual words, or a prefix or wildcard
word that matched one of those. Words the remaining archive holds too ("refund", "invoice") do
not identify anyone, and stay.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from archivist.active_db import AuditEntry, LegalHold
from archivist.audit import BLANKED_DETAILS
from archivist.holds import ERASED_REASON, reason_hash
from indexer.errors import BadQuery
from indexer.search import SearchEngine, SearchQuery

# Entries that hold typed text: searches and exports (their query), restores (a reason, and a
# bulk restore's search), legal holds (the value held, and a reason).
QUERY_ACTIONS = ("search", "export", "restore", "hold_add", "hold_remove")
_SPLIT = re.compile(r"[\s\"'()\[\]{}<>,;:!|+=~]+")
_STRIP = ".:-^"
_BOOST = re.compile(r"\^[\d.]*$")
_WILDCARDS = re.compile(r"[*?]")
_PART = re.compile(r"[a-z0-9]+")  # what a whole part of a word is, in spaced scripts
MIN_WORD = 3  # letters and digits typed, wildcards not counted
MIN_CJK_WORD = 2  # ... in Chinese, where two characters make a word or a name (李伟)
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def record_text(records: Iterable[dict[str, Any]]) -> str:
    """Every string of the records, lowercased, one per line: what their words are found in.

    :param records: the erased records as they were archived
    """
    parts: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            parts.append(value.lower())
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for record in records:
        walk(record)
    return "\n".join(parts)


def _pieces(text: str, size: int = 2**20) -> Iterator[str]:
    """The text in pieces of about `size` characters, each ending at a line's end (a record's
    strings are lines: no word is cut)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def query_words(target: str, details: str, action: str = "search") -> set[str]:
    """The words typed into an audited entry, lowercased: a search's or export's query and
    its customer and owner filters, a bulk restore's search, a restore's or a hold's reason,
    the customer a hold names.

    :param target: the entry's target (a search's query text, a hold's `scope:value`)
    :param details: the entry's details JSON (its `q` and filters, a `search`, a `reason`)
    :param action: the entry's action
    """
    texts = [target] if action in ("search", "export") else []
    words = set()
    try:
        value = json.loads(details)
    except ValueError:
        value = {}
    if not isinstance(value, dict):
        value = {}
    search = value.get("search")
    if isinstance(search, str):  # the command line's `restore --search`, as typed
        search = dict(parse_qsl(search, keep_blank_values=True))
    queries = [value, search]
    for query in queries:
        if not isinstance(query, dict):
            continue
        if query.get("q"):
            texts.append(str(query["q"]))
        if query.get("customer_id"):  # a filter: the whole id, however short
            words.add(str(query["customer_id"]).lower())
        if query.get("owner"):  # a filter too, which may be their address (kind, category:
            owner = str(query["owner"])  # the CRM's own names, not personal)
            words.add(owner.lower())
            texts.append(owner)
    if value.get("reason"):
        texts.append(str(value["reason"]))
    if action in ("hold_add", "hold_remove"):
        scope, _, held = target.partition(":")
        if scope == "customer":  # (a category names no one; a record id is not personal)
            words.add(held.lower())
    for text in texts:
        for word in _SPLIT.split(text.lower()):
            word = _BOOST.sub("", word).strip(_STRIP)
            typed = len(_WILDCARDS.sub("", word))
            if typed >= (MIN_CJK_WORD if _CJK.search(word) else MIN_WORD):
                words.add(word)
    return words


class NamingWords:
    """Decides, once per word, whether a word names the erased records. The answer is the
    same before the records leave the index and after, so one instance serves both looks."""

    def __init__(
        self,
        records: Iterable[dict[str, Any]],
        customer_id: str | None,
        record_ids: Iterable[str],
        index: SearchEngine,
    ) -> None:
        """
        :param records: the erased records as they were archived
        :param customer_id: the erased customer, if a customer is erased
        :param record_ids: the erased records' ids
        :param index: the search index
        """
        self._text = text = record_text(records)
        self._words: set[str] = set()
        # as the index has them: stems (`words` finds `word`), and phone numbers as digits in
        # every form a search for them takes (`138-0013-8000`, `+8613800138000`, `013800138000`)
        self._terms: set[str] = set()
        for piece in _pieces(text):  # a piece at a time: a large customer's words all at once
            self._words.update(piece.split())  # would take many times the text's size
            self._words.update(_PART.findall(piece))
            self._terms |= index.terms_of(piece)
        self._words_and_terms = self._words | self._terms
        self._customer = customer_id.lower() if customer_id else None
        self._ids = set(record_ids)
        self._index = index
        self._known: dict[str, bool] = {}

    def erases(self, record_id: str) -> bool:
        """Whether the record is one of those erased (a restore of it is theirs, whatever its
        reason says)."""
        return record_id in self._ids

    def __call__(self, word: str) -> bool:
        known = self._known.get(word)
        if known is None:
            known = self._known[word] = self._decide(word)
        return known

    def _decide(self, word: str) -> bool:
        if word == self._customer:
            return True
        try:
            if self._occurs(word):
                return self._finds_only_theirs(word)
        except BadQuery:  # it cannot be run, so what it finds is unknown: their text holds it
            return True
        # A query refused for its wildcards (`*jane.roe@example.com`, `?uibble`) was audited
        # as typed; what it would have found cannot be asked, so it is blanked when it could
        # name them: an erasure rather blanks an unrunnable query than leaves their address.
        # (refused first: a search is cheap, scanning their whole text for each piece is not)
        return bool(_WILDCARDS.search(word)) and self._refused(word) and self._could_name(word)

    def _could_name(self, word: str) -> bool:
        """Whether a piece of the word between its wildcards is part of their text or of a
        term the index has of it, or holds a word of theirs that only their records have."""
        for piece in _WILDCARDS.split(word):
            piece = piece.strip(_STRIP)
            if len(piece) < (MIN_CJK_WORD if _CJK.search(piece) else MIN_WORD):
                continue
            if piece in self._text or any(piece in term for term in self._terms):
                return True
            if any(
                MIN_WORD <= len(theirs) < len(piece) and theirs in piece and self(theirs)
                for theirs in self._words_and_terms
            ):
                return True
        return False

    def _refused(self, word: str) -> bool:
        try:
            self._index.search(SearchQuery(q=word, per_page=1))
        except BadQuery:
            return True
        return False

    def _finds_only_theirs(self, word: str) -> bool:
        """Whether every record the index finds for the word is an erased one: true before
        the erasure as after it (when it finds none)."""
        # Another's record, if any, is most often among the newest matches (the erased or
        # disposed-of records are one customer's, or old): seen there, no need to read every
        # match (thousands, for a common word of a large disposal).
        newest = SearchQuery(q=word, date_field="updated_at", sort="newest", per_page=10)
        page = self._index.search(newest)
        if page.total == 0:
            return True
        if page.total > len(self._ids) or any(hit.id not in self._ids for hit in page.hits):
            return False
        if page.total <= len(page.hits):
            return True
        # (not a `customer_id` filter: a record of theirs may name no customer itself, a
        # message of their case that counts as theirs through it)
        return all(hit.id in self._ids for hit in self._index.iter_hits(SearchQuery(q=word)))

    def _occurs(self, word: str) -> bool:
        """Whether the erased text holds the word (wildcards matching) as a whole word or a
        whole part of one (`erin.k` of `erin.k@example.org`); in Chinese, which has no
        spaces, anywhere."""
        if word in self._words:  # the usual case, answered without a scan of the text
            return True
        if not _WILDCARDS.search(word):
            terms = self._index.terms_of(word, query=True)
            if terms and terms <= self._terms:
                return True
        if _PART.fullmatch(word):
            return False
        if any(piece not in self._text for piece in _WILDCARDS.split(word)):
            return False  # (a match holds each piece between the wildcards: found fast)
        pattern = "".join(
            r"\S*" if c == "*" else r"\S" if c == "?" else re.escape(c) for c in word
        )
        if word.isascii():
            pattern = rf"(?<![a-z0-9]){pattern}(?![a-z0-9])"
        return re.search(pattern, self._text) is not None


def _restored_only(naming: NamingWords, target: str, details: str) -> bool:
    """Whether an audited restore brought back only erased records (by id, or a process of
    them): its reason is about them, and may name the person in words their records never
    held. A restore that brought others back too keeps its entry unless its words name them."""
    try:
        value = json.loads(details)
    except ValueError:
        return False
    restored = value.get("restored") if isinstance(value, dict) else None
    ids = {str(i) for i in restored} if isinstance(restored, list) else set()
    if target not in ("ids", "search"):  # a one-click restore names its record
        ids.add(target)
    return bool(ids) and all(naming.erases(i) for i in ids)


def holds_naming(session: Session, naming: NamingWords) -> list[tuple[int, str]]:
    """(id, `reason_hash` of its reason) of each legal hold whose reason names the erased
    records, read as the audited `hold_add` that placed it is (which the erasure blanks).

    :param session: a session on the active database
    :param naming: the words that name the erased records
    """
    found: list[tuple[int, str]] = []
    for hold_id, reason in session.execute(
        select(LegalHold.id, LegalHold.reason).where(LegalHold.reason != ERASED_REASON)
    ):
        if any(naming(word) for word in query_words("", json.dumps({"reason": reason}), "")):
            found.append((hold_id, reason_hash(reason)))
    return found


def entries_naming(
    session: Session, naming: NamingWords, after: int = 0
) -> tuple[list[tuple[int, str]], int]:
    """(seq, entry_hash) of each audited entry whose typed text names erased records (see
    `QUERY_ACTIONS`), or that restored only erased records (see `_restored_only`), and the
    last seq looked at.

    :param session: a session on the active database
    :param naming: the words that name the erased records
    :param after: look only at entries after this seq (written since an earlier look)
    """
    last = session.scalar(select(func.max(AuditEntry.seq))) or 0
    found: list[tuple[int, str]] = []
    rows = session.execute(
        select(AuditEntry.seq, AuditEntry.entry_hash, AuditEntry.action, AuditEntry.target,
               AuditEntry.details)
        .where(
            AuditEntry.seq > after, AuditEntry.seq <= last,
            AuditEntry.action.in_(QUERY_ACTIONS), AuditEntry.details != BLANKED_DETAILS,
        )
        .order_by(AuditEntry.seq)
        .execution_options(yield_per=1000)
    )
    for seq, entry_hash, action, target, details in rows:
        if (action == "restore" and _restored_only(naming, target, details)) or any(
            naming(word) for word in query_words(target, details, action)
        ):
            found.append((seq, entry_hash))
    return found, max(last, after)
