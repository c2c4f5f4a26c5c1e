"""The risk block list: card fingerprints, IPs, emails and customers refused, kept by the shard that owns its key."""

from engine.changes import Changes
from engine.listing import EVERYWHERE, Listing
from engine.records import AddToBlocklist, BlocklistEntry, Outcome, RemoveFromBlocklist

MAX_BLOCKLIST_ENTRIES = 100_000


class Blocklist:
    def __init__(self, changes: Changes) -> None:
        self.entries: dict[str, BlocklistEntry] = changes.dict()  # entry id -> entry, oldest first
        self.listing = Listing(changes)  # derived: restore rebuilds it

    def add(self, command: AddToBlocklist, timestamp: int) -> Outcome:
        entry = command.entry
        if entry.id in self.entries:
            return Outcome("exists", record=self.entries[entry.id])
        if len(self.entries) >= MAX_BLOCKLIST_ENTRIES:
            return Outcome("blocklist_full")
        entry.created_at = timestamp
        self._add(entry)
        return Outcome(record=entry)

    def remove(self, command: RemoveFromBlocklist, timestamp: int) -> Outcome:
        entry = self.entries.pop(command.entry_id, None)
        if entry is None:
            return Outcome("blocklist_entry_not_found")
        self.listing.remove(EVERYWHERE, entry.id)
        return Outcome(record=entry)

    def list_entries(self, limit: int, starting_after: str = "") -> tuple[list[BlocklistEntry], bool]:
        """Block list entries, newest first, and whether more follow."""
        return self.listing.page(EVERYWHERE, self.entries, limit, starting_after)

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"blocklist": list(self.entries.values())}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot."""
        for entry in snapshot.blocklist:
            self._add(entry)

    def _add(self, entry: BlocklistEntry) -> None:
        self.entries[entry.id] = entry
        self.listing.add(EVERYWHERE, entry.id)
