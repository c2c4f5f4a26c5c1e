"""Ids by owner in the order they came, read newest first from any of them: the index behind every list page.

Each id knows its place in its owner's list, so a page `starting_after` an id starts there, without a scan. A
removed id leaves its place behind (lists in tracked dicts are only appended to: engine/changes.py), skipped when
read; an owner's list is packed once it holds more left places than ids, so it stays under about twice its ids.
The index is derived from the records it lists: restore rebuilds it in their order.
"""

from typing import Iterator

from engine.changes import Changes

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
