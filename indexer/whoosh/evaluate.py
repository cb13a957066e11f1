"""Evaluating a parsed Whoosh query on one shard into matching documents and scores."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pickle import loads

import numpy as np
import numpy.typing as npt
from whoosh import query as wq

from indexer.errors import BadQuery
from indexer.whoosh.analysis import ArchivePositions, pair_term
from indexer.whoosh.expansion import prefix_terms
from indexer.whoosh.matchsets import (
    AnyMatches,
    Matches,
    both,
    contains,
    densify,
    empty_matches,
    maybe,
    member,
    union,
    without,
)
from indexer.whoosh.postings import (
    NO_DOCS,
    Block,
    Docs,
    Floats,
    position_keys,
)
from indexer.whoosh.query import MAX_SCAN, MAX_TERMS
from indexer.whoosh.schema import TEXT_FIELDS, pair_field
from indexer.whoosh.shards import BM25_K1, GlobalStats, ShardCache


@dataclass
class _PairMatch:
    """The documents holding a phrase's word pairs."""

    docs: Docs
    freqs: Floats | None  # the phrase's frequency per document, for a two-word phrase
    complete: bool  # every adjacent pair of the phrase was looked up


class Evaluator:
    """Evaluates a parsed Whoosh query on one shard into :class:`Matches`."""

    def __init__(
        self,
        cache: ShardCache,
        stats: GlobalStats | None,
        scored: bool,
        pair_terms: frozenset[bytes] = frozenset(),
    ) -> None:
        """:param pair_terms: the terms the shard's word-pair fields pair."""
        self.pair_terms = pair_terms
        self.cache = cache
        self.reader = cache.searcher.reader()
        self.stats = stats
        self.scored = scored

    def run(self, q: wq.Query) -> Matches:
        """Return the matching live documents and their scores."""
        return self._eval(q).sparse()

    def _eval(self, q: wq.Query) -> AnyMatches:
        size = self.cache.size
        if isinstance(q, wq.Term):
            return self._term(q.fieldname, q.text, q.boost)
        if isinstance(q, wq.Phrase):
            return self._phrase(q)
        if isinstance(q, wq.And):
            parts = sorted((self._eval(c) for c in q.subqueries), key=len)
            if not parts:
                return empty_matches()
            out = parts[0]
            for other in parts[1:]:
                out = both(out, other, size)
                if not len(out):
                    break
            return out
        if isinstance(q, (wq.Or, wq.DisjunctionMax)):
            parts = sorted((self._eval(c) for c in q.subqueries), key=len, reverse=True)
            return union(parts, size)
        if isinstance(q, wq.AndNot):
            pos = self._eval(q.a)
            if not len(pos):
                return pos
            return without(pos, self._eval(q.b), size)
        if isinstance(q, wq.AndMaybe):
            return maybe(self._eval(q.a), self._eval(q.b))
        if isinstance(q, wq.Require):
            pos = self._eval(q.a).sparse()
            return pos.take(contains(self._eval(q.b), pos.docs))
        if isinstance(q, wq.Not):
            live = self.cache.live_docs
            docs = live[~contains(self._eval(q.query), live)]
            return densify(Matches(docs, np.zeros(len(docs), np.float64)), size)
        if isinstance(q, (wq.Prefix, wq.Wildcard, wq.FuzzyTerm, wq.TermRange, wq.Regex)):
            terms = [self._term(q.field(), bt, q.boost) for bt in self._expand(q)]
            return union(terms, size)
        if q is wq.NullQuery or isinstance(q, wq.qcore._NullQuery):
            return empty_matches()
        raise BadQuery(f"unsupported query part: {type(q).__name__}")

    def _expand(self, q: wq.Query) -> list[bytes]:
        """Return the terms a multi-term query stands for in this shard."""
        if isinstance(q, wq.Prefix):
            return prefix_terms(self.reader, q.fieldname, q.text, MAX_SCAN)
        return list(q._btexts(self.reader))

    def _postings(
        self, fieldname: str, btext: bytes, blocks: list[Block] | None = None
    ) -> tuple[Docs, Floats]:
        """Return a term's live documents in this shard and their weights (term frequencies)."""
        if blocks is None:
            return self.cache.live_postings(fieldname, btext)
        return self.cache.read_postings(fieldname, btext, blocks)

    def _bm25(self, fieldname: str, idf: float, docs: Docs, freqs: Floats) -> Floats:
        """Return BM25 scores of documents from a frequency per document and an idf."""
        assert self.stats is not None
        norm = self.cache.norms(fieldname, self.stats.avg_field_length(fieldname))
        scores: Floats = idf * (BM25_K1 + 1) * freqs / (freqs + norm[docs])
        return scores

    def _term(self, fieldname: str, text: str | bytes, boost: float = 1.0) -> Matches:
        btext = text.encode("utf-8") if isinstance(text, str) else text
        ids, weights = self._postings(fieldname, btext)
        if not self.scored or fieldname not in TEXT_FIELDS:
            scores = np.full(len(ids), 1.0 * boost if self.scored else 0.0, np.float64)
        else:
            assert self.stats is not None
            idf = self.stats.idf(fieldname, btext) * boost
            avgfl = self.stats.avg_field_length(fieldname)
            scores = self.cache.term_scores(
                fieldname, btext, (idf, avgfl), lambda: self._bm25(fieldname, idf, ids, weights)
            )
        return Matches(ids, scores)

    def _phrase(self, q: wq.Phrase) -> Matches:
        """Match a phrase: from its word pairs where the shard has them, else from positions.

        A phrase scores as BM25 of its frequency in the document with the sum of its words'
        idf, the way Lucene scores phrases.
        """
        words = [w.encode("utf-8") if isinstance(w, str) else w for w in q.words]
        if len(words) == 1:
            return self._term(q.fieldname, words[0], q.boost)
        pairs = self._pair_candidates(q, words)
        if pairs is not None and pairs.freqs is not None:
            # two words: exact, with the phrase's frequency
            return self._phrase_matches(q, words, pairs.docs, pairs.freqs)
        if pairs is not None and not len(pairs.docs):
            return empty_matches()
        blocks: list[list[Block]] = [[] for _ in words]
        read: dict[int, tuple[Docs, Floats]] = {}
        # Without every pair, positions will be needed: read the blocks along with the ids.
        positional = pairs is None or not pairs.complete

        def postings(i: int) -> tuple[Docs, Floats]:
            got = read.get(i)
            if got is None:
                got = read[i] = self._postings(
                    q.fieldname, words[i], blocks[i] if positional else None
                )
            return got

        sure = NO_DOCS
        if pairs is None:
            candidates = min((postings(i)[0] for i in range(len(words))), key=len)
            for i in range(len(words)):
                candidates = candidates[member(candidates, postings(i)[0])]
        else:
            candidates = pairs.docs
        if pairs is not None and pairs.complete:
            # Every adjacent pair is found, so where each inner word occurs once the pairs chain
            # through its one position: the phrase is there, once. Only documents where an
            # inner word repeats need positions.
            once = np.ones(len(candidates), np.bool_)
            for i in range(1, len(words) - 1):
                ids, weights = postings(i)
                once &= weights[np.searchsorted(ids, candidates)] == 1
            sure, candidates = candidates[once], candidates[~once]
        if len(candidates):
            if not positional:  # the blocks, for their positions
                for i, word in enumerate(words):
                    self._postings(q.fieldname, word, blocks[i])
            all_postings = [postings(i) for i in range(len(words))]
            docs, counts = self._positional_counts(q, words, blocks, all_postings, candidates)
        else:
            docs, counts = NO_DOCS, np.zeros(0, np.int64)
        if len(sure):
            docs = np.concatenate([sure, docs])
            counts = np.concatenate([np.ones(len(sure), np.int64), counts])
            order = np.argsort(docs, kind="stable")
            docs, counts = docs[order], counts[order]
        if not len(docs):
            return empty_matches()
        return self._phrase_matches(q, words, docs, counts.astype(np.float64))

    def _pair_candidates(self, q: wq.Phrase, words: list[bytes]) -> _PairMatch | None:
        """Return the documents holding every word pair of an exact phrase (None: no pairs)."""
        pairs_field = pair_field(q.fieldname)
        if q.slop != 1 or pairs_field not in self.cache.searcher.schema:
            return None
        found: _PairMatch | None = None
        complete = True
        for a, b in zip(words, words[1:], strict=False):
            if a not in self.pair_terms or b not in self.pair_terms:
                complete = False
                continue
            docs, freqs = self._postings(pairs_field, pair_term(a, b))
            if len(words) == 2:
                return _PairMatch(docs, freqs, True)
            if found is None:
                found = _PairMatch(docs, None, True)
            else:
                found.docs = found.docs[member(found.docs, docs)]
        if found is not None:
            found.complete = complete
        return found

    def _positional_counts(
        self,
        q: wq.Phrase,
        words: list[bytes],
        blocks: list[list[Block]],
        postings: list[tuple[Docs, Floats]],
        candidates: Docs,
    ) -> tuple[Docs, npt.NDArray[np.int64]]:
        """Return the candidates holding the phrase, from positions, and how often each does."""
        if not len(candidates):
            return NO_DOCS, np.zeros(0, np.int64)
        fmt = self.cache.searcher.schema[q.fieldname].format
        decode = None if type(fmt) is ArchivePositions else fmt.decode_positions
        slop = q.slop
        starts = NO_DOCS
        if slop == 1:
            # An exact phrase starts at p where word i is at p + i for every i: the positions
            # of word i shifted back by i (plus a margin, so none is negative) all share p.
            # Rarer words first, so that the frequent ones are decoded for fewer documents.
            for n, i in enumerate(sorted(range(len(words)), key=lambda i: len(postings[i][0]))):
                keys = self._positions(blocks[i], candidates, decode) + (MAX_TERMS - i)
                starts = keys if n == 0 else starts[member(starts, keys)]
                if not len(starts):
                    break
                candidates = np.unique(starts >> 32)
        else:
            for i in range(len(words)):
                keys = self._positions(blocks[i], candidates, decode)
                if i == 0:
                    starts = keys
                else:
                    # A start survives while every next word is found within slop after it.
                    ok = np.zeros(len(starts), np.bool_)
                    for k in range(slop):
                        ok |= member(starts + (i + k), keys)
                    starts = starts[ok]
                if not len(starts):
                    break
                candidates = np.unique(starts >> 32)
        docs, counts = np.unique(starts >> 32, return_counts=True)
        return docs, counts.astype(np.int64)

    def _phrase_matches(
        self, q: wq.Phrase, words: list[bytes], docs: Docs, freqs: Floats
    ) -> Matches:
        """Score a phrase's documents from its frequency in each."""
        if not self.scored:
            return Matches(docs, np.zeros(len(docs), np.float64))
        assert self.stats is not None
        idf = sum(self.stats.idf(q.fieldname, w) for w in words) * q.boost
        return Matches(docs, self._bm25(q.fieldname, idf, docs, freqs))

    def _positions(
        self, blocks: list[Block], candidates: Docs, decode: Callable[[bytes], list[int]] | None
    ) -> Docs:
        """Return ``doc << 32 | position`` for a word's positions in the candidate documents."""
        if not blocks:
            return NO_DOCS
        sizes = np.array([len(ids) for ids, _source, _compressed in blocks], np.int64)
        offsets = np.zeros(len(blocks) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        all_ids = np.concatenate([ids for ids, _source, _compressed in blocks])
        wanted = member(all_ids, candidates)
        running = np.zeros(len(all_ids) + 1, np.int64)
        np.cumsum(wanted, out=running[1:])
        used = running[offsets[1:]] - running[offsets[:-1]] > 0
        # the values of the blocks that hold a candidate, in one list; unpickled once a query
        values_all: list[bytes] = []
        starts = np.zeros(len(blocks), np.int64)
        for i in np.flatnonzero(used).tolist():
            ids, source, compressed = blocks[i]
            if isinstance(source, bytes):
                source = loads(zlib.decompress(source) if compressed else source)[2]
                blocks[i] = (ids, source, False)
            starts[i] = len(values_all)
            values_all.extend(source)
        hits = np.flatnonzero(wanted)
        block_of = np.searchsorted(offsets, hits, side="right") - 1
        picks = (hits - offsets[block_of] + starts[block_of]).tolist()
        values = [values_all[j] for j in picks]
        return position_keys(values, all_ids[hits], decode)
