"""Segment merging: the tiered policy, and merged shards holding exactly what was indexed."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
from whoosh import index as windex
from whoosh.reading import SegmentReader

from indexer.search import SearchQuery
from indexer.whoosh import index as index_module
from indexer.whoosh.index import SearchIndex, open_writer
from indexer.whoosh.merging import (
    MERGE_FACTOR,
    MERGE_KEEP_DOCS,
    MERGE_MAX_DOCS,
    _shift_first_id,
    choose_merges,
    stitch_segments,
)
from tests.test_search import CORPUS, word


def test_a_full_tier_merges_into_the_new_segment() -> None:
    assert choose_merges(500, [(500, 0)] * (MERGE_FACTOR - 1)) == list(range(MERGE_FACTOR - 1))
    assert choose_merges(500, [(500, 0)] * (MERGE_FACTOR - 2)) == []


def test_a_merge_that_fills_the_next_tier_takes_it_too() -> None:
    small = [(500, 0)] * (MERGE_FACTOR - 1)
    middle = [(5_000, 0)] * (MERGE_FACTOR - 1)
    assert choose_merges(500, middle + small) == list(range(2 * (MERGE_FACTOR - 1)))
    # with one segment fewer in the next tier, only the small ones merge
    assert choose_merges(500, middle[1:] + small) == list(
        range(MERGE_FACTOR - 2, 2 * MERGE_FACTOR - 3)
    )


def test_large_segments_are_left_alone() -> None:
    big = (MERGE_KEEP_DOCS + 1, 0)
    assert choose_merges(500, [big] * 20) == []
    # a merge never grows past the limit: a full tier merges as many as fit under it
    assert choose_merges(8_000, [(8_000, 0)] * 12) == [0, 1, 2, 3, 4]
    assert choose_merges(0, [(8_000, 0)] * 12) == [0, 1, 2, 3, 4, 5]
    assert choose_merges(0, [(8_000, 0)] * 9) == []
    assert 6 * 8_000 <= MERGE_MAX_DOCS < 7 * 8_000


def test_a_small_segment_that_lost_a_quarter_is_merged_at_once() -> None:
    assert choose_merges(10, [(100, 25), (100, 24), (30_000, 22_000)]) == [0, 2]
    assert choose_merges(0, [(100, 0)]) == []


def _shard_content(shard: Path) -> dict[str, Any]:
    """Everything a shard holds, keyed by record id rather than document number."""
    ix = windex.open_dir(str(shard))
    with ix.searcher() as s:
        r = s.reader()
        rid = {d: r.stored_fields(d)["stored"][0] for d in r.all_doc_ids()}
        postings: dict[tuple[str, bytes], list[tuple[str, float, bytes]]] = {}
        for fieldname, btext in r.all_terms():
            m = r.postings(fieldname, btext)
            got = []
            while m.is_active():
                if m.id() in rid:
                    got.append((rid[m.id()], m.weight(), m.value()))
                m.next()
            if got:
                postings[(fieldname, btext)] = sorted(got)
        docs = {}
        for d, record_id in rid.items():
            lengths = {f: r.doc_field_length(d, f) for f in ("subject", "body")}
            cols = {
                f: r.column_reader(f, translate=False)[d]
                for f in ("id", "kind", "category", "created_us", "updated_us", "archived_us")
            }
            docs[record_id] = (r.stored_fields(d), lengths, cols)
        totals = {f: r.field_length(f) for f in ("subject", "body")}
    return {"postings": postings, "docs": docs, "totals": totals}


def _segment_sizes(directory: Path) -> dict[str, list[tuple[int, int]]]:
    current = directory / (directory / "CURRENT").read_text().strip()
    out = {}
    for shard in sorted(p for p in current.iterdir() if p.is_dir()):
        segs = windex.open_dir(str(shard))._segments()
        out[shard.name] = [(s.doc_count_all(), s.deleted_count()) for s in segs]
    return out


def test_merged_shards_hold_exactly_what_one_batch_writes(tmp_path: Path) -> None:
    records = CORPUS[:900]
    first, rest = records[:30], records[30:]
    merged = SearchIndex.open(tmp_path / "merged")
    merged.add(first)
    for i in range(0, len(rest), 30):
        merged.add(rest[i : i + 30])
    sizes = _segment_sizes(tmp_path / "merged")
    commits = (len(records) + 29) // 30
    assert all(len(segs) < MERGE_FACTOR for segs in sizes.values())
    assert max(sum(n for n, _ in segs) for segs in sizes.values()) > 0
    assert any(max(n for n, _ in segs) > 30 for segs in sizes.values()), sizes
    assert commits >= MERGE_FACTOR

    whole = SearchIndex.open(tmp_path / "whole")
    whole.add(first)  # the same first batch chooses the same pair terms
    whole.add(rest)
    for shard in sizes:
        a = _shard_content(tmp_path / "merged" / "g000001" / shard)
        b = _shard_content(tmp_path / "whole" / "g000001" / shard)
        assert a["docs"] == b["docs"]
        assert a["postings"] == b["postings"]
        assert a["totals"] == b["totals"]
    for q in ("refund", '"refund request"', "发票", "invoice OR shipped"):
        query = SearchQuery(q=q, per_page=100)
        pa, pb = merged.search(query), whole.search(query)
        assert pa.total == pb.total > 0
        assert [(h.id, h.score) for h in pa.hits] == [(h.id, h.score) for h in pb.hits]


def test_merges_leave_deleted_and_replaced_records_out(tmp_path: Path) -> None:
    records = CORPUS[:600]
    ix = SearchIndex.open(tmp_path / "ix")
    for i in range(0, 300, 30):
        ix.add(records[i : i + 30])
    gone = [r["id"] for r, _ in records[:300:3]]
    ix.delete(gone)
    changed = [({**r, "subject": "zephyrine replacement"}, at) for r, at in records[1:300:3]]
    ix.add(changed)
    for i in range(300, 600, 30):
        ix.add(records[i : i + 30])
    sizes = _segment_sizes(tmp_path / "ix")
    # the segments holding the deletions were merged away
    assert sum(d for segs in sizes.values() for _, d in segs) < len(gone) + len(changed)
    assert ix.doc_count() == 600 - len(gone)
    ids = set(ix.iter_ids())
    assert ids == {r["id"] for r, _ in records} - set(gone)
    page = ix.search(SearchQuery(q="zephyrine", per_page=100))
    assert page.total == len(changed)
    assert {h.id for h in page.hits} == {r["id"] for r, _ in changed}


@pytest.mark.parametrize("batch", [1, 7])
def test_many_tiny_batches_keep_few_segments(tmp_path: Path, batch: int) -> None:
    records = [r for r in CORPUS if r[0]["created_at"].startswith("2023")][:120]
    ix = SearchIndex.open(tmp_path / "ix")
    for i in range(0, len(records), batch):
        ix.add(records[i : i + batch])
    (segs,) = _segment_sizes(tmp_path / "ix").values()
    assert len(segs) < MERGE_FACTOR
    assert sum(n for n, _ in segs) == len(records)
    assert ix.search(SearchQuery(q="", per_page=1)).total == len(records)


@pytest.mark.parametrize(
    "ids", [(5,), (5, 1), (5, 1, 2), (5, 1, 2, 3), (300, 1, 1, 1), (70_000, 1)]
)
@pytest.mark.parametrize("shift", [1, 250, 65_000, 3_000_000])
def test_a_block_is_renumbered_by_its_first_id_alone(ids: tuple[int, ...], shift: int) -> None:
    weights = tuple(float(i) for i in range(len(ids)))
    values = tuple(b"v%d" % i for i in range(len(ids)))
    raw = pickle.dumps((ids, weights, values), 2)
    shifted = pickle.loads(_shift_first_id(raw, shift))
    assert shifted == ((ids[0] + shift, *ids[1:]), weights, values)


def test_a_block_of_another_shape_is_repickled() -> None:
    raw = pickle.dumps(([7, 1, 1], None, None), 2)
    assert pickle.loads(_shift_first_id(raw, 10)) == ((17, 1, 1), None, None)


def _stitch_shard(shard: Path) -> bool:
    ix = windex.open_dir(str(shard))
    writer = open_writer(ix, frozenset())
    done: list[bool] = []

    def stitch_all(w: Any, segments: list[Any]) -> list[Any]:
        readers = [SegmentReader(w.storage, w.schema, s) for s in segments]
        done.append(stitch_segments(w, readers))
        for r in readers:
            r.close()
        return [] if done[0] else segments

    writer.commit(mergetype=stitch_all)
    return done[0]


def test_stitched_segments_hold_what_their_sources_held(tmp_path: Path) -> None:
    records = [r for r in CORPUS if r[0]["created_at"].startswith("2022")][:600]
    ix = SearchIndex.open(tmp_path / "ix")
    for i in range(0, len(records), 200):
        ix.add(records[i : i + 200])
    (shard,) = [p for p in (tmp_path / "ix" / "g000001").iterdir() if p.name == "2022"]
    before = _shard_content(shard)
    assert len(windex.open_dir(str(shard))._segments()) == 3
    assert _stitch_shard(shard)
    assert [s.doc_count_all() for s in windex.open_dir(str(shard))._segments()] == [600]
    assert _shard_content(shard) == before
    # a segment with deletions is not stitched (its documents are renumbered one by one)
    ix.delete([records[0][0]["id"]])
    ix.add(records[:1])
    assert not _stitch_shard(shard)


def _small_segments(directory: Path, deleted_first: bool) -> tuple[SearchIndex, list[str]]:
    """An index whose shards hold many small segments (merges off), some documents deleted."""
    ix = SearchIndex.open(directory)
    records = CORPUS[:900]
    for i in range(0, len(records), 30):
        ix.add(records[i : i + 30], merge=False)
    if deleted_first:
        ix.delete([r["id"] for r, _ in records[::7]])
    alive = sorted(set(ix.iter_ids()))
    return ix, alive


@pytest.mark.parametrize("deleted_first", [False, True], ids=["stitched", "decoded"])
def test_deletions_made_while_a_merge_is_written_are_carried_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deleted_first: bool
) -> None:
    """A merge holds no lock while it writes: a restore deleting documents from its sources
    meanwhile is not lost when the merged segment replaces them."""
    ix, alive = _small_segments(tmp_path / "ix", deleted_first)
    other = SearchIndex.open(tmp_path / "ix")  # another process's index, e.g. the server's
    before = _segment_sizes(tmp_path / "ix")
    gone = alive[1::5]
    written = []

    original = index_module.write_merge

    def write_then_delete(*args: Any) -> Any:
        got = original(*args)
        if not written:
            other.delete(gone)  # only possible because the merge holds no lock
        written.append(got)
        return got

    monkeypatch.setattr(index_module, "write_merge", write_then_delete)
    assert ix.merge_segments() > 0
    assert written
    after = _segment_sizes(tmp_path / "ix")
    assert sum(map(len, after.values())) < sum(map(len, before.values()))
    kept = sorted(set(alive) - set(gone))
    assert sorted(ix.iter_ids()) == kept
    refund = [h.id for h in _all_hits(ix, "refund")]
    assert sorted(refund) == [rid for rid in kept if word("refund")(rid)]
    assert not set(refund) & set(gone)
    assert ix.doc_count() == len(kept)


def test_a_merge_whose_sources_were_merged_meanwhile_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ix, alive = _small_segments(tmp_path / "ix", deleted_first=False)
    other = SearchIndex.open(tmp_path / "ix")
    calls = []

    def write_then_merge_elsewhere(*args: Any) -> Any:
        got = original(*args)
        if not calls:
            calls.append(1)
            other.merge_segments()  # commits first, replacing the same sources
        return got

    original = index_module.write_merge
    monkeypatch.setattr(index_module, "write_merge", write_then_merge_elsewhere)
    ix.merge_segments()
    assert calls
    ids = list(ix.iter_ids())
    assert sorted(ids) == alive and len(ids) == len(set(ids))
    current = tmp_path / "ix" / (tmp_path / "ix" / "CURRENT").read_text().strip()
    assert not (current / "_staged").exists()  # the unused merge was removed


def _all_hits(ix: SearchIndex, q: str) -> list[Any]:
    hits, page = [], 1
    while True:
        got = ix.search(SearchQuery(q=q, per_page=100, page=page))
        hits.extend(got.hits)
        if page * 100 >= got.total:
            return hits
        page += 1

