"""The risk block list: card fingerprints, IPs, emails and customers refused, kept by the shard that owns its key."""

from engine.changes import Changes
from engine.records import AddToBlocklist, BlocklistEntry, Outcome, RemoveFromBlocklist

MAX_BLOCKLIST_ENTRIES = 100_000


class Blocklist:
    def __init__(self, changes: Changes) -> None:
        self.entries: dict[str, BlocklistEntry] = changes.dict()  # entry id -> entry, oldest first

    def add(self, command: AddToBlocklist, timestamp: int) -> Outcome:
        entry = command.entry
        if entry.id in self.entries:
            return Outcome("exists", record=self.entries[entry.id])
        if len(self.entries) >= MAX_BLOCKLIST_ENTRIES:
            return Outcome("blocklist_full")
        entry.created_at = timestamp
        self.entries[entry.id] = entry
        return Outcome(record=entry)

    def remove(self, command: RemoveFromBlocklist, timestamp: int) -> Outcome:
        entry = self.entries.pop(command.entry_id, None)
        return Outcome(record=entry) if entry is not None else Outcome("blocklist_entry_not_found")

    def list_entries(self, limit: int, starting_after: str = "") -> tuple[list[BlocklistEntry], bool]:
        """Block list entries, newest first, and whether more follow."""
        newest_first = reversed(self.entries)
        if starting_after:
            if starting_after not in self.entries:
                return [], False
            for entry_id in newest_first:
                if entry_id == starting_after:
                    break
        page = [self.entries[entry_id] for entry_id, _ in zip(newest_first, range(limit + 1))]
        return page[:limit], len(page) > limit

    # State

    def snapshot(self) -> dict[str, list]:
        """Its part of the engine's snapshot, by field."""
        return {"blocklist": list(self.entries.values())}

    def restore(self, snapshot) -> None:
        """Fill from the engine's snapshot."""
        self.entries.load((entry.id, entry) for entry in snapshot.blocklist)
