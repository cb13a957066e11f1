"""Processes: the tree of records linked by `parent_id`, the unit of every move.

A record's process is found by following `parent_id` up while the parent is known (active,
archived or restored) to the root, then taking the root and everything that descends from it.
This module holds that grouping and the contract's rules over a process (when it may be
archived, when disposed), as plain functions of a `ProcessSource`: where the records live
(Archivist's own table, the CRM's tables, the archive catalog) is the source's business.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from archivist.holds import HoldSet
from archivist.retention import RetentionRules, is_aged, is_due_for_disposal

ACTIVE = "active"
MAX_DEPTH = 100_000  # a guard against a cycle a source might still hold (import refuses them)


@dataclass(frozen=True)
class Member:
    """What the rules need to know of one record of a process.

    :param state: `active` (in the active database, restored ones included), `archived`, or
        `restored` (restored, then removed from the active database by the CRM).
    :param restored_at: when it was last restored, if ever: a restore counts as an update when
        its age is measured for archiving.
    """

    id: str
    parent_id: str | None
    state: str
    category: str
    customer_id: str | None
    updated_at: datetime
    restored_at: datetime | None = None


class ProcessSource(Protocol):
    """Where the records of processes are looked up (batched: a call per tree level)."""

    def members(self, ids: Collection[str]) -> dict[str, Member]:
        """The known records among these ids."""
        ...

    def children(self, ids: Collection[str]) -> list[Member]:
        """The known records whose `parent_id` is one of these ids."""
        ...


@dataclass(frozen=True)
class Process:
    """One process: its root and its known members, parents before children."""

    root: str
    members: tuple[Member, ...]

    @property
    def ids(self) -> list[str]:
        """The member ids, parents before children."""
        return [m.id for m in self.members]

    def in_state(self, state: str) -> list[Member]:
        """The members in one state."""
        return [m for m in self.members if m.state == state]


def find_roots(source: ProcessSource, ids: Iterable[str]) -> dict[str, str]:
    """The root of each known id (an unknown id is left out): a batched walk up the parents."""
    known = source.members(list(dict.fromkeys(ids)))
    parent_of: dict[str, str | None] = {i: m.parent_id for i, m in known.items()}  # known only
    unknown: set[str] = set()
    frontier = {p for p in parent_of.values() if p is not None and p not in parent_of}
    for _ in range(MAX_DEPTH):
        if not frontier:
            break
        found = source.members(frontier)
        unknown |= frontier - found.keys()
        parent_of.update((i, m.parent_id) for i, m in found.items())
        frontier = {
            m.parent_id for m in found.values()
            if m.parent_id is not None and m.parent_id not in parent_of
            and m.parent_id not in unknown
        }

    def climb(record_id: str) -> str:
        seen = {record_id}
        while True:
            parent = parent_of[record_id]
            if parent is None or parent not in parent_of or parent in seen:
                return record_id
            seen.add(parent)
            record_id = parent

    return {record_id: climb(record_id) for record_id in known}


def find_processes(source: ProcessSource, ids: Iterable[str]) -> list[Process]:
    """The processes of these ids (each once, however many of its members are among them)."""
    roots = find_roots(source, ids)
    root_ids = list(dict.fromkeys(roots.values()))
    root_members = source.members(root_ids)
    processes: list[Process] = []
    # One level of the trees at a time for all roots, so a batch of many small processes
    # costs a few queries, not a few per process.
    members: dict[str, list[Member]] = {r: [root_members[r]] for r in root_ids}
    seen: set[str] = set(root_ids)
    frontier: dict[str, str] = {r: r for r in root_ids}  # id -> its root
    for _ in range(MAX_DEPTH):
        if not frontier:
            break
        children = sorted(source.children(list(frontier)), key=lambda m: m.id)
        nxt: dict[str, str] = {}
        for child in children:
            if child.id in seen or child.parent_id not in frontier:
                continue
            seen.add(child.id)
            root = frontier[child.parent_id]
            members[root].append(child)
            nxt[child.id] = root
        frontier = nxt
    for root in root_ids:
        processes.append(Process(root, tuple(members[root])))
    return processes


def effective_updated_at(member: Member) -> datetime:
    """The instant a record's archiving age is measured from: a restore counts as an update."""
    if member.restored_at is not None and member.restored_at > member.updated_at:
        return member.restored_at
    return member.updated_at


def is_member_aged(member: Member, rules: RetentionRules, as_of: datetime) -> bool:
    """True when an active record is aged by its own category's policy (restore grace included)."""
    return is_aged(effective_updated_at(member), rules.policy_for(member.category), as_of)


def is_held(process: Process, holds: HoldSet) -> bool:
    """True when a hold covers any record of the process (and so holds all of it)."""
    return any(holds.covers(m.id, m.customer_id, m.category) for m in process.members)


def may_archive(
    process: Process, rules: RetentionRules, holds: HoldSet, as_of: datetime
) -> bool:
    """True when the process's active records may move now: every one aged, none held."""
    active = process.in_state(ACTIVE)
    if not active or is_held(process, holds):
        return False
    return all(is_member_aged(m, rules, as_of) for m in active)


def may_dispose(
    process: Process, rules: RetentionRules, holds: HoldSet, as_of: datetime
) -> bool:
    """True when the process's archived records are all due for disposal and none is held."""
    archived = process.in_state("archived")
    if not archived or is_held(process, holds):
        return False
    return all(
        is_due_for_disposal(m.updated_at, rules.policy_for(m.category), as_of) for m in archived
    )
