"""Ids by owner in the order they came, read newest first from any of them: the index behind every list page.

Each id knows its place in its owner's list, so a page `starting_after` an id starts there, without a scan. A
removed id leaves its place behind (lists in tracked dicts are only appended to: engine/changes.py), skipped when
read; an owner's list is packed once it holds more left places than ids, so it stays under about twice its ids.
The index is derived from the records it lists: restore rebuilds it in their order.
"""

import bisect
from typing import Callable, Iterator

from engine.changes import Changes, append_to, peek

MIN_PACK_PLACES = 64  # a list this short is not worth packing
EVERYWHERE = ""  # the owner of a listing that pages as one list


class Listing:
    __slots__ = ("ids", "places", "counts")

    def __init__(self, changes: Changes) -> None:
        self.ids: dict[str, list[str]] = changes.dict(ordered=False)  # owner -> ids, oldest first, with left places
        self.places: dict[str, int] = changes.dict(ordered=False)  # id -> its place in its owner's list
        self.counts: dict[str, int] = changes.dict(ordered=False)  # owner -> ids listed

    def add(self, owner: str, item_id: str) -> None:
        ids = self.ids.setdefault(owner, [])
        self.places[item_id] = len(ids)
        ids.append(item_id)
        self.counts[owner] = self.counts.get(owner, 0) + 1

    def remove(self, owner: str, item_id: str) -> None:
        """Unlist `item_id` (listed under `owner`)."""
        del self.places[item_id]
        count = self.counts[owner] - 1
        if not count:
            del self.counts[owner], self.ids[owner]
            return
        self.counts[owner] = count
        ids = self.ids[owner]
        if len(ids) > max(MIN_PACK_PLACES, 2 * count):
            packed = [listed for place, listed in enumerate(ids) if self.places.get(listed) == place]
            self.ids[owner] = packed
            for place, listed in enumerate(packed):
                self.places[listed] = place

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

    def page(self, owner: str, records: dict, limit: int, starting_after: str = "") -> tuple[list, bool]:
        """Up to `limit` of the owner's records (`records` by id), newest first after `starting_after`, and whether
        more follow."""
        page = [records[item_id] for item_id, _ in zip(self.newest_first(owner, starting_after), range(limit + 1))]
        return page[:limit], len(page) > limit


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
