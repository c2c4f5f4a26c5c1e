"""Ids by owner in the order they came, read newest first from any of them: the index behind every list page.

Each id knows its place in its owner's list, so a page `starting_after` an id starts there, without a scan. A
removed id leaves its place behind, skipped when read; an owner's list is packed once it holds more left places than
ids, so it stays under about twice its ids. The index is derived from the records it lists: restore rebuilds it in
the order they were made.

A command's adds and removes are undone from a log of its own (engine/changes.py calls `undo` or `forget`): one entry
per change, where tracked dicts would keep three keys and hand out two values, on every command that lists a record.

Record pages (`by_key`) list newest first by (created_at, id), the order the cold store keeps for archived records
(journal/cold.py), so that a page reads the same before and after archival: records of one instant (one batch)
came in an order no client chose, and are read by id. Ids are listed as their records are made, so an owner's list
holds them in the order of their created_at.
"""

import bisect
from typing import Callable, Iterator

from engine.changes import Changes, append_to, peek

MIN_PACK_PLACES = 64  # a list this short is not worth packing
EVERYWHERE = ""  # the owner of a listing that pages as one list


class Listing:
    __slots__ = ("changes", "ids", "places", "counts", "log")

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.ids: dict[str, list[str]] = {}  # owner -> ids, oldest first, with left places
        self.places: dict[str, int] = {}  # id -> its place in its owner's list
        self.counts: dict[str, int] = {}  # owner -> ids listed (an owner without ids has no list)
        # This command's changes, in order: (owner, id, its place before or None) for an add; for a remove, also
        # the owner's list before and the (id, place) pairs a pack moved.
        self.log: list[tuple] = []

    def add(self, owner: str, item_id: str) -> None:
        ids = self.ids.get(owner)
        if ids is None:
            ids = self.ids[owner] = []
        self._note((owner, item_id, self.places.get(item_id)))
        self.places[item_id] = len(ids)
        ids.append(item_id)
        self.counts[owner] = self.counts.get(owner, 0) + 1

    def has(self, item_id: str) -> bool:
        return item_id in self.places

    def remove(self, owner: str, item_id: str) -> None:
        """Unlist `item_id` (listed under `owner`)."""
        ids, place, places = self.ids[owner], self.places[item_id], self.places
        count = self.counts[owner] - 1
        moved: list[tuple[str, int]] = []  # a pack's (id, place) pairs: the ids still listed but this one
        if count and len(ids) > max(MIN_PACK_PLACES, 2 * count):
            moved = [(listed, at) for at, listed in enumerate(ids) if at != place and places.get(listed) == at]
        self._note((owner, item_id, place, ids, moved))
        del places[item_id]
        if not count:
            del self.counts[owner], self.ids[owner]
            return
        self.counts[owner] = count
        if moved:
            self.ids[owner] = [listed for listed, _ in moved]
            for at, (listed, _) in enumerate(moved):
                places[listed] = at

    def _note(self, change: tuple) -> None:
        changes = self.changes
        if not changes.active:
            return  # restore, outside any command
        if not self.log:
            changes.dicts.append(self)
        self.log.append(change)

    def undo(self) -> None:
        """Back to the lists and places the command found: its changes taken back, the last first."""
        for change in reversed(self.log):
            owner, item_id, place = change[:3]
            if len(change) == 3:  # an add: it was the last of its owner's ids
                ids = self.ids[owner]
                ids.pop()
                count = self.counts[owner] - 1
                if count:
                    self.counts[owner] = count
                else:
                    del self.counts[owner], self.ids[owner]
            else:
                self.ids[owner] = change[3]
                self.counts[owner] = self.counts.get(owner, 0) + 1
                for listed, at in change[4]:
                    self.places[listed] = at
            if place is None:
                del self.places[item_id]
            else:
                self.places[item_id] = place
        self.forget()

    def forget(self) -> None:
        self.log = []

    def count(self, owner: str) -> int:
        return self.counts.get(owner, 0)

    def newest_first(self, owner: str, starting_after: str = "") -> Iterator[str]:
        """The owner's ids, newest first; only those older than `starting_after` if given (none if it is not
        listed under `owner`)."""
        ids = self.ids.get(owner)
        if ids is None:
            return
        end = len(ids)
        if starting_after:
            end = self.places.get(starting_after, -1)
            if end < 0 or end >= len(ids) or ids[end] != starting_after:
                return
        places = self.places
        for place in range(end - 1, -1, -1):
            listed = ids[place]
            if places.get(listed) == place:
                yield listed

    def by_key(self, owner: str, records: dict, cursor: tuple[int, str] | None = None) -> Iterator:
        """The owner's records (`records` by id) newest first by (created_at, id), only those before `cursor` if
        given."""
        ids = self.ids.get(owner)
        if ids is None:
            return
        places = self.places
        end = len(ids) if cursor is None else self._end_of_instant(ids, records, cursor[0])
        instant: list = []  # the records of one created_at, met newest first
        for place in range(end - 1, -1, -1):
            listed = ids[place]
            if places.get(listed) != place:
                continue
            record = peek(records, listed)
            if instant and record.created_at != instant[0].created_at:
                yield from _before(instant, cursor)
                instant = []
            instant.append(record)
        yield from _before(instant, cursor)

    def _end_of_instant(self, ids: list[str], records: dict, created_at: int) -> int:
        """A place past every listed record made at or before `created_at`, and before every later one's."""
        places = self.places

        def created_at_of(place: int) -> int:
            """Of the first listed record from `place` on (one made after all: none)."""
            while place < len(ids) and places.get(ids[place]) != place:
                place += 1
            return peek(records, ids[place]).created_at if place < len(ids) else created_at + 1
        return bisect.bisect_right(range(len(ids)), created_at, key=created_at_of)

    def page(self, owner: str, records: dict, limit: int, starting_after: str = "") -> tuple[list, bool]:
        """Up to `limit` of the owner's records (`records` by id), newest first after `starting_after`, and whether
        more follow."""
        page = [records[item_id] for item_id, _ in zip(self.newest_first(owner, starting_after), range(limit + 1))]
        return page[:limit], len(page) > limit


def _before(instant: list, cursor: tuple[int, str] | None) -> Iterator:
    """The records of one instant by id, newest first: those before `cursor` if given."""
    instant.sort(key=_id, reverse=True)
    for record in instant:
        if cursor is None or (record.created_at, record.id) < cursor:
            yield record


def _id(record) -> str:
    return record.id


def made_in_order(records: list, unlisted) -> list:
    """The records a listing lists (those not `unlisted`), in the order they were made: archival moves records it
    cannot take yet to the end of their dict, which snapshots keep."""
    return sorted((record for record in records if record.id not in unlisted), key=_created_at)


def _created_at(record) -> int:
    return record.created_at


def list_cursor(records: dict, merchant_id: str, starting_after: str,
                created_at: int) -> tuple[int, str] | None | bool:
    """Where a page starts, as (created_at, id): after the merchant's record `starting_after`, found in `records`,
    or placed by `created_at` (>= 0) when only the cold store holds it; None from the first; False for a cursor
    that names nothing (an empty page)."""
    if not starting_after:
        return None
    record = peek(records, starting_after)
    if record is not None:
        return (record.created_at, record.id) if record.merchant_id == merchant_id else False
    return (created_at, starting_after) if created_at >= 0 else False


class Queue:
    """Ids in the order they were queued, each with its rank (a number that never falls from one id queued to the
    next), read oldest first from past any rank: the index behind a queue's pages, found by bisection, not a scan.

    As in a Listing, an id that leaves (or is queued again, further on) leaves its entry behind, skipped when read:
    `rank_of` says at which rank an id is queued now (None: it is not). The entries are packed once they outnumber
    twice the ids queued. Derived from the records it lists: restore rebuilds it in their order.
    """

    __slots__ = ("entries", "rank_of")

    def __init__(self, changes: Changes, rank_of: Callable[[str], int | None]) -> None:
        # One list of (rank, id) by rank, with left entries; held in a tracked dict, so a command's appends undo.
        self.entries: dict[str, list[tuple[int, str]]] = changes.dict(ordered=False)
        self.rank_of = rank_of

    def add(self, rank: int, item_id: str) -> None:
        append_to(self.entries, EVERYWHERE, (rank, item_id))

    def left(self, queued: int) -> None:
        """An id left the queue and `queued` are still in it: pack the entries if they outnumber twice those."""
        entries = peek(self.entries, EVERYWHERE) or []
        if len(entries) > max(MIN_PACK_PLACES, 2 * queued):
            self.entries[EVERYWHERE] = [(rank, item_id) for rank, item_id in entries if self.rank_of(item_id) == rank]

    def after(self, rank: int) -> Iterator[str]:
        """The ids queued now at a rank above `rank`, oldest first."""
        entries = peek(self.entries, EVERYWHERE) or []
        for place in range(bisect.bisect_right(entries, rank, key=_rank), len(entries)):
            entry_rank, item_id = entries[place]
            if self.rank_of(item_id) == entry_rank:
                yield item_id


def _rank(entry: tuple[int, str]) -> int:
    return entry[0]
