"""Sets of matching documents with a score each, and the algebra queries are evaluated with.

A set is held one of two ways. :class:`Matches` is a sorted array of document numbers with the
scores beside it: compact for rare terms. :class:`DenseMatches` is a mask and a score for every
document of the shard (0 where it does not match): once a set holds more than a few percent of
the shard, an And or an Or of two such sets is a couple of vector operations over the shard
instead of a binary search per document. Both give the same documents and bit-equal scores:
scores are added in the same order either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from indexer.whoosh.postings import NO_DOCS, NO_SCORES, Docs, Floats

DENSE_SHARE = 16
"""A set of at least 1/DENSE_SHARE of the shard's documents is held dense."""


@dataclass
class Matches:
    """Matching documents of one shard (sorted, unique) and their scores."""

    docs: Docs
    scores: Floats

    def __len__(self) -> int:
        return len(self.docs)

    def take(self, keep: npt.NDArray[Any]) -> Matches:
        """Return the matches selected by a boolean mask or an index array."""
        return Matches(self.docs[keep], self.scores[keep])

    def sparse(self) -> Matches:
        return self


@dataclass
class DenseMatches:
    """Matching documents of one shard as a mask over all of them, and a score per document
    (0 where the mask is False)."""

    mask: npt.NDArray[np.bool_]
    scores: Floats
    count: int

    def __len__(self) -> int:
        return self.count

    def sparse(self) -> Matches:
        """Return the same set as sorted document numbers and their scores."""
        docs = np.flatnonzero(self.mask)
        return Matches(docs, self.scores[docs])


AnyMatches = Matches | DenseMatches


def empty_matches() -> Matches:
    return Matches(NO_DOCS, NO_SCORES)


def is_dense_size(count: int, size: int) -> bool:
    """Whether a set of ``count`` documents of a shard of ``size`` is best held dense."""
    return count * DENSE_SHARE >= size and count > 0


def densify(m: AnyMatches, size: int) -> AnyMatches:
    """Return a large sparse set as dense, anything else as it is."""
    if isinstance(m, DenseMatches) or not is_dense_size(len(m), size):
        return m
    mask = np.zeros(size, np.bool_)
    mask[m.docs] = True
    scores = np.zeros(size, np.float64)
    scores[m.docs] = m.scores
    return DenseMatches(mask, scores, len(m))


def intersect(a: Docs, b: Docs) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return the indices in a and in b of the values both sorted arrays hold."""
    if len(a) > len(b):
        ib, ia = intersect(b, a)
        return ia, ib
    if not len(a):
        return np.empty(0, np.intp), np.empty(0, np.intp)
    pos = np.searchsorted(b, a)
    pos[pos == len(b)] = 0
    hit = b[pos] == a
    return np.flatnonzero(hit), pos[hit]


def member(a: Docs, b: Docs) -> npt.NDArray[np.bool_]:
    """Return which values of a (any order) are in the sorted array b."""
    if not len(b):
        return np.zeros(len(a), np.bool_)
    pos = np.searchsorted(b, a)
    pos[pos == len(b)] = 0
    hit: npt.NDArray[np.bool_] = b[pos] == a
    return hit


def contains(m: AnyMatches, docs: Docs) -> npt.NDArray[np.bool_]:
    """Return which of the documents (any order) are in the set."""
    if isinstance(m, DenseMatches):
        found: npt.NDArray[np.bool_] = m.mask[docs]
        return found
    return member(docs, m.docs)


def both(a: AnyMatches, b: AnyMatches, size: int) -> AnyMatches:
    """The documents in both sets, each scored ``a``'s score + ``b``'s.

    :param size: the shard's document count; of two large sparse sets, the larger is spread
        over the shard once instead of searching it for each document of the other.
    """
    large = is_dense_size(min(len(a), len(b)), size)
    if isinstance(a, Matches) and isinstance(b, Matches) and large:
        if len(b) >= len(a):
            b = densify(b, size)
        else:
            a = densify(a, size)
    if isinstance(a, DenseMatches) and isinstance(b, DenseMatches):
        mask = a.mask & b.mask
        scores = a.scores + b.scores
        scores *= mask
        return DenseMatches(mask, scores, int(np.count_nonzero(mask)))
    if isinstance(a, DenseMatches):
        assert isinstance(b, Matches)
        keep = a.mask[b.docs]
        docs = b.docs[keep]
        return Matches(docs, a.scores[docs] + b.scores[keep])
    if isinstance(b, DenseMatches):
        keep = b.mask[a.docs]
        docs = a.docs[keep]
        return Matches(docs, a.scores[keep] + b.scores[docs])
    ia, ib = intersect(a.docs, b.docs)
    return Matches(a.docs[ia], a.scores[ia] + b.scores[ib])


def without(pos: AnyMatches, neg: AnyMatches, size: int) -> AnyMatches:
    """The documents of ``pos`` not in ``neg``, with their scores from ``pos``.

    :param size: the shard's document count (against a large ``pos``, ``neg`` is spread over
        it once).
    """
    if not len(neg):
        return pos
    if isinstance(pos, Matches):
        if is_dense_size(len(pos), size):
            neg = densify(neg, size)
        return pos.take(~contains(neg, pos.docs))
    if isinstance(neg, DenseMatches):
        mask = pos.mask & ~neg.mask
    else:
        mask = pos.mask.copy()
        mask[neg.docs] = False
    return DenseMatches(mask, pos.scores * mask, int(np.count_nonzero(mask)))


def maybe(pos: AnyMatches, opt: AnyMatches) -> Matches:
    """The documents of ``pos``, with ``opt``'s score added where they are in ``opt`` too."""
    base = pos.sparse()
    if isinstance(opt, DenseMatches):
        # adding the 0 of a document not in opt leaves its score as it was
        return Matches(base.docs, base.scores + opt.scores[base.docs])
    ia, ib = intersect(base.docs, opt.docs)
    scores = base.scores.copy()
    scores[ia] += opt.scores[ib]
    return Matches(base.docs, scores)


def union(parts: Sequence[AnyMatches], size: int) -> AnyMatches:
    """The documents in any of the sets, their scores added up in the order of the parts.

    :param size: the shard's document count; large unions add up over dense arrays.
    """
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_matches()
    if len(parts) == 1:
        return parts[0]
    if is_dense_size(sum(map(len, parts)), size):
        acc = np.zeros(size, np.float64)
        seen = np.zeros(size, np.bool_)
        for p in parts:
            if isinstance(p, DenseMatches):
                acc += p.scores
                seen |= p.mask
            else:
                # a part has each document once, so fancy-index += adds each score once
                acc[p.docs] += p.scores
                seen[p.docs] = True
        return DenseMatches(seen, acc, int(np.count_nonzero(seen)))
    sparse = [p.sparse() for p in parts]
    docs = np.unique(np.concatenate([p.docs for p in sparse]))
    scores = np.zeros(len(docs), np.float64)
    for p in sparse:
        scores[np.searchsorted(docs, p.docs)] += p.scores
    return Matches(docs, scores)
