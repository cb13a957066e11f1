"""Searches by process, and each hit's process, as the contract defines processes.

A process follows `parent_id` up through every record Archivist knows, active ones included,
but the index is built from the archive alone (so that it can be rebuilt from the archive or a
backup): it roots a record at its top archived ancestor. The two differ only when a parent is
in the active database alone, above archived records (imported after they were archived). The
search is then asked for the roots the index holds, and its hits are given their process's
root, both read from the active database at the time of the search.

With the CRM's own tables the index's roots are kept as they are: a process is archived whole
and a row's parent link lives in the row itself, so no row left in the CRM is the parent of an
archived one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from indexer.processes import index_roots, process_roots
from indexer.search.types import SearchHit, SearchPage, SearchQuery
from indexer.services import Services


def search_processes(services: Services, query: SearchQuery) -> SearchPage:
    """Run a search whose `process` filter and hits' `process_id` follow active parents too."""
    page = services.index.search(resolve_process(services, query))
    if services.crm is not None or not any(hit.parent_id is not None for hit in page.hits):
        return page
    tops = {hit.process_id for hit in page.hits if hit.parent_id is not None and hit.process_id}
    roots = process_roots(services.read_sessions, services.store, tops)
    if not roots:
        return page
    hits = [
        replace(hit, process_id=roots[hit.process_id]) if hit.process_id in roots else hit
        for hit in page.hits
    ]
    return replace(page, hits=hits)


def iter_process_hits(services: Services, query: SearchQuery) -> Iterator[SearchHit]:
    """Every hit of a search (an export, a bulk restore) whose `process` filter follows active
    parents too; the hits keep the index's `process_id`."""
    return services.index.iter_hits(resolve_process(services, query))


def resolve_process(services: Services, query: SearchQuery) -> SearchQuery:
    """The query with the index's roots for its `process` filter, if it has one."""
    if query.process is None or services.crm is not None:
        return query
    roots = index_roots(services.read_sessions, services.store, query.process)
    return replace(query, process_roots=roots)
