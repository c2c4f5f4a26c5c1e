"""The simulated acquirer's daily settlement file, and the faults a test may ask it to make in it.

Rows: `transaction_id,amount,currency,status,settled_at,fee`; status is `captured`, `refunded` or `chargeback`;
amounts and fees in minor units; settled_at in RFC 3339 UTC. See actors/simulators/piggybank.py.
"""

import csv
import dataclasses
import datetime
import io

from actors.simulators import simhttp
from actors.simulators.simhttp import Invalid

STATUSES = ("captured", "refunded", "chargeback")
COLUMNS = ["transaction_id", "amount", "currency", "status", "settled_at", "fee"]
MAX_FAULTS = 1000  # of each kind a test may ask for


@dataclasses.dataclass(slots=True)
class Row:
    transaction_id: str
    amount: int
    currency: str
    status: str
    at: float  # unix seconds
    fee: int = 0


@dataclasses.dataclass(slots=True)
class Fees:
    basis_points: int = 290  # of a capture's amount
    fixed: int = 30  # per capture, minor units
    chargeback: int = 1500

    def of_capture(self, amount: int) -> int:
        return amount * self.basis_points // 10_000 + self.fixed


@dataclasses.dataclass(slots=True)
class Faults:
    """What a test asked the file to get wrong, until it asks otherwise."""

    omit: set = dataclasses.field(default_factory=set)
    amounts: dict = dataclasses.field(default_factory=dict)  # transaction id -> the amount to report instead
    extra: list = dataclasses.field(default_factory=list)  # Rows: unknown ones, and chargebacks

    @classmethod
    def parse(cls, body: dict, currency_of, fees: Fees) -> "Faults":
        """From a test's JSON body; `currency_of(payment id)` is the authorization's currency, if known."""
        faults = cls()
        omit = _items(body, "omit", list)
        if not all(isinstance(item, str) for item in omit):
            raise Invalid("omit", "omit must list transaction ids")
        faults.omit = set(omit)
        amounts = _items(body, "amounts", dict)
        for transaction_id, amount in amounts.items():
            faults.amounts[transaction_id] = simhttp.amount({"amounts": amount}, "amounts")
        for item in _items(body, "unknown", list):
            faults.extra.append(_row(item, "unknown", item.get("status", "captured") if isinstance(item, dict) else "",
                                     lambda transaction_id: "", 0))
        for item in _items(body, "chargebacks", list):
            faults.extra.append(_row(item, "chargebacks", "chargeback", currency_of, fees.chargeback))
        return faults

    def apply(self, rows: list[Row], day: datetime.date) -> list[Row]:
        kept = [dataclasses.replace(row, amount=self.amounts.get(row.transaction_id, row.amount)) for row in rows
                if row.transaction_id not in self.omit]
        return kept + [row for row in self.extra if _day(row.at) == day]


def rows_of(authorizations, day: datetime.date, fees: Fees, reversal_suffix: str) -> list[Row]:
    """The captures and refunds of authorizations made on `day` (UTC), in time order; a capture reversed whole is
    left out with its reversal."""
    rows = []
    for record in list(authorizations):
        reversed_whole = any(refund_id.endswith(reversal_suffix) for refund_id in record.refunds)
        if not record.amount_captured or record.voided or reversed_whole:
            continue
        if _day(record.captured_at) == day:
            rows.append(Row(record.payment_id, record.amount_captured, record.currency, "captured",
                            record.captured_at, fees.of_capture(record.amount_captured)))
        rows += [Row(refund_id, amount, record.currency, "refunded", at)
                 for refund_id, (amount, at) in record.refunds.items() if _day(at) == day]
    return sorted(rows, key=lambda row: row.at)


def csv_text(rows: list[Row]) -> str:
    output = io.StringIO()
    writer = csv.writer(output, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.transaction_id, row.amount, row.currency, row.status, rfc3339(row.at), row.fee])
    return output.getvalue()


def _items(body: dict, name: str, kind: type):
    value = body.get(name, kind())
    if not isinstance(value, kind) or len(value) > MAX_FAULTS:
        raise Invalid(name, f"{name} must be a {kind.__name__} of at most {MAX_FAULTS} items")
    return value


def _row(item, name: str, status: str, currency_of, fee: int) -> Row:
    if not isinstance(item, dict):
        raise Invalid(name, f"each of {name} is an object")
    transaction_id = simhttp.text_id(item, "transaction_id")
    if status not in STATUSES:
        raise Invalid(f"{name}.status", f"status is one of {', '.join(STATUSES)}")
    currency = simhttp.currency(item) if "currency" in item or not currency_of(transaction_id) \
        else currency_of(transaction_id)
    at = datetime.datetime.now(datetime.timezone.utc)
    if "date" in item:
        try:
            day = datetime.date.fromisoformat(item["date"]) if isinstance(item["date"], str) else None
        except ValueError:
            day = None
        if day is None:
            raise Invalid(f"{name}.date", "date must be YYYY-MM-DD")
        at = datetime.datetime.combine(day, datetime.time(12), datetime.timezone.utc)
    return Row(transaction_id, simhttp.amount(item), currency, status, at.timestamp(), fee)


def _day(unix: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).date()


def rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
