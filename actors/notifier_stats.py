"""What the notifier reports about itself, written once a second to `<data>/notifier/stats.json` and read by the
edge's /metrics (a file, as the risk table is: the edge never waits on Ray)."""

import pathlib

import msgspec

STATS_FILE = "stats.json"


class NotifierStats(msgspec.Struct):
    """What the notifier has done since it started, and what it holds."""

    pid: int = 0
    # "<channel>.<outcome>" -> attempts recorded with that outcome (delivered | retry | dead)
    outcomes: dict[str, int] = {}
    backlog: int = 0  # pending deliveries held in the schedule
    unloaded_shards: int = 0  # shards with pending deliveries the schedule had no room for yet
    schedule_full: int = 0  # times the schedule had no room, leaving pending deliveries in the engine for later
    unrecorded: int = 0  # outcomes waiting to be recorded
    latency_p50_ms: int = 0  # commit of the event to its delivery, over the latest deliveries
    latency_p99_ms: int = 0
    delivered_total: int = 0
    journal_reads: int = 0  # reads of the shards' journals (each woken by an announcement, or a poll's time)
    woken_by_announcement: int = 0  # waits for new entries that a shard's announcement ended
    cursors: list[int] = []
    written_at_ms: int = 0


def stats_path(data: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(data) / "notifier" / STATS_FILE


def read_stats(data: pathlib.Path) -> NotifierStats | None:
    """The notifier's last written stats in a data folder, if any."""
    try:
        return msgspec.json.decode(stats_path(data).read_bytes(), type=NotifierStats)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
