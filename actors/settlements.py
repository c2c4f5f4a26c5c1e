"""Settlement files: a provider's daily CSV, read into rows, and reconciled on every shard at once.

The file's columns are `transaction_id,amount,currency,status,settled_at` and an optional `fee` (API.md); its
`transaction_id` is the reference we gave the provider, a payment's or a refund's id, which says nothing of the
shard that holds it: every shard is asked which of the file's ids it holds, in memory or archived, gets those rows
in its part of the reconciliation (engine/reconciliations.py) with the archived records its cold store answered,
and one shard also gets the rows none holds, to list them missing in the ledger. Every shard gets a part, even
with no rows, since each names what it captured that day and the file left out. The parts share the
reconciliation's id, so running it again (after a crash, a lost answer) completes what is missing and answers the
rest again.

The edge (POST /v1/reconciliations) and the reconciler actor both use this; no Ray here.
"""

import asyncio
import collections
import csv
import datetime
import hashlib
import io
from typing import Awaitable, Callable

import aiohttp
import msgspec

from engine.days import day_of_date
from engine.queries import MAX_PAGE, FindSettlementItems, GetReconciliation
from engine.reconciliations import MAX_SETTLEMENT_ROWS, ROW_STATUSES, SETTLING_ACQUIRERS
from engine.records import Order, Outcome, Payment, Reconcile, Reconciliation, Refund, SettlementRow
from engine.types import AMOUNT_MAX, ID_MAX_LENGTH, NANOSECONDS_PER_SECOND

MAX_FILE_BYTES = 4 << 20
FETCH_TIMEOUT_S = 30.0
REQUIRED_COLUMNS = ("transaction_id", "amount", "currency", "status")
# Which shard lists the rows no shard holds: any one will do, as long as it is always the same.
UNKNOWN_ROWS_SHARD = 0
PROVIDERS = SETTLING_ACQUIRERS

# What reconciling needs of the shards: read (one answer per query) and submit (one command's outcome), by index.
Read = Callable[[int, list], Awaitable[list]]
Submit = Callable[[int, Reconcile], Awaitable[Outcome]]


class SettlementFileError(ValueError):
    """A file that cannot be reconciled: the message says where."""


class Refused(RuntimeError):
    """A shard refused its part (another file under the same id, a bad date or provider)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.code)
        self.outcome = outcome


def parse(text: str) -> list[SettlementRow]:
    """The file's rows, checked whole: a file with one bad row is refused, never reconciled in part."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise SettlementFileError(f"the header lacks {', '.join(missing)}: it must name "
                                      f"{', '.join(REQUIRED_COLUMNS)}")
        rows = []
        for record in reader:
            if len(rows) == MAX_SETTLEMENT_ROWS:
                raise SettlementFileError(f"more than {MAX_SETTLEMENT_ROWS} rows")
            rows.append(_row(record))
    except (ValueError, TypeError, OverflowError, csv.Error) as error:  # the file's own error, or a row's field
        raise SettlementFileError(f"line {reader.line_num}: {error}") from None
    return rows


def _row(record: dict) -> SettlementRow:
    transaction_id = (record.get("transaction_id") or "").strip()
    if not 0 < len(transaction_id) <= ID_MAX_LENGTH:
        raise ValueError(f"transaction_id must be 1..{ID_MAX_LENGTH} characters")
    status = (record.get("status") or "").strip()
    if status not in ROW_STATUSES:
        raise ValueError(f"status must be one of {', '.join(ROW_STATUSES)}")
    currency = (record.get("currency") or "").strip().lower()
    if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
        raise ValueError("currency must be an ISO 4217 code")
    return SettlementRow(transaction_id, _whole(record.get("amount"), "amount", 1), currency, status,
                         _instant(record.get("settled_at")), _whole(record.get("fee") or "0", "fee", 0))


def _whole(text, name: str, low: int) -> int:
    text = (text or "").strip()
    if not text.isdigit() or not low <= int(text) <= AMOUNT_MAX:
        raise ValueError(f"{name} must be a whole number of minor units from {low} to {AMOUNT_MAX}")
    return int(text)


def _instant(text) -> int:
    """An RFC 3339 time as engine nanoseconds (0 when the column is empty or absent)."""
    text = (text or "").strip()
    if not text:
        return 0
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("settled_at must carry its UTC offset")
    return int(moment.timestamp()) * NANOSECONDS_PER_SECOND


def date_of(rows: list[SettlementRow]) -> str | None:
    """The date most of the rows settled on (UTC), for a file sent without one; None if none says."""
    days = collections.Counter(datetime.datetime.fromtimestamp(row.settled_at // NANOSECONDS_PER_SECOND,
                                                               datetime.timezone.utc).date().isoformat()
                               for row in rows if row.settled_at)
    return days.most_common(1)[0][0] if days else None


def check_date(date: str) -> str:
    if day_of_date(date) is None:
        raise SettlementFileError("date must be a YYYY-MM-DD date")
    return date


def request_hash(provider: str, date: str, rows: list[SettlementRow]) -> str:
    """What the same file for the same day always hashes to: a different one under a reconciliation's id is refused."""
    return hashlib.sha256(msgspec.msgpack.encode([provider, date, rows])).hexdigest()


async def fetch(session: aiohttp.ClientSession, base_url: str, provider: str, date: str) -> str:
    """The provider's settlement file for `date`, as text (at most MAX_FILE_BYTES)."""
    url = f"{base_url.rstrip('/')}/psp/{provider}/settlements/{check_date(date)}.csv"
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with session.get(url, timeout=timeout, allow_redirects=False) as response:
        if response.status != 200:
            raise SettlementFileError(f"{provider} answered {response.status} for {date}'s settlement file")
        body = await response.content.read(MAX_FILE_BYTES + 1)
        if len(body) > MAX_FILE_BYTES:
            raise SettlementFileError(f"{provider}'s settlement file is larger than {MAX_FILE_BYTES} bytes")
        return body.decode("utf-8")


async def reconcile(read: Read, submit: Submit, shard_count: int, reconciliation_id: str, provider: str, date: str,
                    rows: list[SettlementRow]) -> list[Outcome]:
    """Each shard's outcome: its part of the reconciliation, made now or (replayed) earlier under the same id."""
    ids = sorted({row.transaction_id for row in rows})
    chunks = [ids[start:start + MAX_PAGE] for start in range(0, len(ids), MAX_PAGE)]
    answers = await asyncio.gather(*(read(shard, [FindSettlementItems(chunk) for chunk in chunks])
                                     for shard in range(shard_count)))
    holder = {}
    # The archived payments and refunds each shard's cold store answered, which its part carries.
    archived: list[list] = [[] for _ in range(shard_count)]
    for shard, shard_answers in enumerate(answers):
        for answer in shard_answers:
            for item_id in answer.ids or ():
                holder.setdefault(item_id, shard)
            archived[shard] += answer.records or ()
    by_shard: list[list[SettlementRow]] = [[] for _ in range(shard_count)]
    unknown = []
    for row in rows:
        (by_shard[holder[row.transaction_id]] if row.transaction_id in holder else unknown).append(row)
    digest = request_hash(provider, date, rows)
    outcomes = await asyncio.gather(*(submit(shard, Reconcile(
        reconciliation_id=reconciliation_id, provider=provider, date=date, request_hash=digest, rows=shard_rows,
        unknown=unknown if shard == UNKNOWN_ROWS_SHARD else [],
        archived_payments=[record for record in archived[shard] if type(record) is Payment],
        archived_refunds=[record for record in archived[shard] if type(record) is Refund],
        archived_orders=[record for record in archived[shard] if type(record) is Order]))
        for shard, shard_rows in enumerate(by_shard)))
    for outcome in outcomes:
        if outcome.code != "ok":
            raise Refused(outcome)
    return list(outcomes)


async def parts_of(read: Read, shard_count: int, reconciliation_id: str) -> list[Reconciliation]:
    """The parts of a reconciliation the shards hold (fewer than the shards while one is being made)."""
    answers = await asyncio.gather(*(read(shard, [GetReconciliation(reconciliation_id)])
                                     for shard in range(shard_count)))
    return [answer[0].record for answer in answers if answer[0].record is not None]


def combined(parts: list[Reconciliation]) -> Reconciliation:
    """The parts as one reconciliation: every list joined, the fees added up, the time its first part's."""
    whole = msgspec.structs.replace(parts[0], rows=0, matched=[], missing_in_settlement=[], missing_in_ledger=[],
                                    amount_mismatch=[], duplicates=[], chargebacks=[], fees={},
                                    created_at=min(part.created_at for part in parts))
    fees: collections.Counter = collections.Counter()
    for part in parts:
        whole.rows += part.rows
        for name in ("matched", "missing_in_settlement", "missing_in_ledger", "amount_mismatch", "duplicates",
                     "chargebacks"):
            getattr(whole, name).extend(getattr(part, name))
        fees.update(part.fees)
    whole.fees = dict(fees)
    return whole
