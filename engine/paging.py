"""One page of a list read: the API's `limit` and `starting_after` over ids in the list's order."""

from typing import Callable, Iterable, TypeVar

Found = TypeVar("Found")


def page(ids: Iterable[str], lookup: Callable[[str], Found | None], limit: int,
         starting_after: str) -> tuple[list[Found], bool]:
    """Up to `limit` of what `lookup` finds for `ids` (None: left out), taken in the order given, after the id
    `starting_after` ("" from the first; one not among `ids` gives an empty page); and whether more follow."""
    found: list[Found] = []
    started = not starting_after
    for record_id in ids:
        if not started:
            started = record_id == starting_after
            continue
        record = lookup(record_id)
        if record is None:
            continue
        if len(found) == limit:
            return found, True
        found.append(record)
    return found, False
