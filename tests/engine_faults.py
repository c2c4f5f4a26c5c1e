"""Faults the tests put into the engine: commands that make real changes and then raise half-way, as a bug would.

Nothing in paygate can reach these: `install()` wraps engine functions in the process that calls it, in the tests'
own process, or in a shard or `paygate` process started with `FAULTS_ENVIRONMENT` (fault_site/sitecustomize.py).
Each fault acts only on commands marked for it, deterministically, so a replica and a replay meet the same fault.
"""

import os
import pathlib

from engine import commerce as commerce_module
from engine import machine
from engine import submits as engine_submits
from engine.commerce import Commerce
from engine.ledger import Ledger
from engine.payments import move, system_account
from engine.queries import LookupAccounts
from engine.records import CreateOrder, Payment
from engine.types import Event, Transfer

# An order whose metadata holds this raises in CreateOrder once it has changed a good deal.
RAISE_HALF_WAY = {"fault": "raise_half_way"}
# An order whose metadata holds this makes the batch's advance of time raise when the order expires.
RAISE_AT_EXPIRY = {"fault": "raise_at_expiry"}
# A transfer with this code makes CreateTransfers raise once the transfers before it are applied.
RAISE_AT_CODE = 65_535
# A read of the account with this id raises.
RAISE_ON_READ = "test:raise-on-read"
SITE_FOLDER = pathlib.Path(__file__).parent / "fault_site"
# Set (to a number), the processes that install the faults keep that few Submits in their window.
MAX_SUBMITS_VARIABLE = "PAYGATE_TEST_MAX_SUBMITS"


class HalfWay(RuntimeError):
    """The fault itself: a command stopped in the middle of its changes."""


def faults_environment() -> dict[str, str]:
    """An environment whose Python processes (shards, `paygate replay`, their children) install the faults."""
    paths = [str(SITE_FOLDER), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}


def install(setattr_=setattr, setitem=None) -> None:
    """Wrap the engine's functions (with pytest's monkeypatch.setattr / setitem, to be undone after a test)."""
    setitem = setitem or (lambda mapping, key, value: mapping.__setitem__(key, value))
    if os.environ.get(MAX_SUBMITS_VARIABLE):  # a Submit window a test can fill
        setattr_(engine_submits, "MAX_SUBMITS", int(os.environ[MAX_SUBMITS_VARIABLE]))
    create_order = commerce_module._HANDLERS[CreateOrder]
    if getattr(create_order, "is_fault", False):
        return
    setitem(commerce_module._HANDLERS, CreateOrder, _create_order_then_raise(create_order))
    setattr_(Ledger, "create_transfers", _create_transfers_then_raise(Ledger.create_transfers))
    setattr_(Commerce, "advance", _advance_then_raise(Commerce.advance))
    setattr_(machine, "answer", _answer_or_raise(machine.answer))


def _create_order_then_raise(create_order):
    def handler(commerce: Commerce, command: CreateOrder, timestamp: int):
        outcome = create_order(commerce, command, timestamp)
        order = command.order
        if outcome.code != "ok" or order.metadata != RAISE_HALF_WAY:
            return outcome
        merchant = commerce.merchants.by_id[order.merchant_id]
        merchant.name = "changed by a command that then raised"
        merchant.sub_accounts = []
        clearing = system_account(commerce.ledger, merchant.id, "clearing_fault", order.currency, timestamp)
        balance = system_account(commerce.ledger, merchant.id, "balance", order.currency, timestamp)
        code = move(commerce.ledger, Transfer(f"{order.id}.fault", clearing, balance, order.amount, order.currency),
                    timestamp)
        commerce.payments.add(Payment(id=f"{order.id}.payment", merchant_id=merchant.id, amount=order.amount,
                                      currency=order.currency, order_id=order.id, created_at=timestamp))
        commerce.events.append(Event("order.fault", order.id, timestamp))
        commerce.blocklist.entries.pop("b1", None)
        commerce.blocklist.entries.pop("b0", None)
        raise HalfWay(f"order {order.id} created and {order.amount} moved ({code}), then raised")

    handler.is_fault = True
    return handler


def _create_transfers_then_raise(create_transfers):
    def method(ledger: Ledger, transfers: list[Transfer], timestamp: int) -> list[int]:
        fault = next((index for index, transfer in enumerate(transfers) if transfer.code == RAISE_AT_CODE), None)
        if fault is None:
            return create_transfers(ledger, transfers, timestamp)
        codes = create_transfers(ledger, transfers[:fault], timestamp)
        raise HalfWay(f"{len(codes)} transfers applied ({codes.count(0)} ok), then raised")

    return method


def _advance_then_raise(advance):
    def method(commerce: Commerce, timestamp: int, expired_transfers: list[str]) -> list[Event]:
        events = advance(commerce, timestamp, expired_transfers)
        for event in events:
            if event.kind == "order.expired" and commerce.orders.by_id[event.object_id].metadata == RAISE_AT_EXPIRY:
                raise HalfWay(f"order {event.object_id} expired, then the advance of time raised")
        return events

    return method


def _answer_or_raise(answer):
    def function(query, ledger, commerce):
        if type(query) is LookupAccounts and RAISE_ON_READ in query.ids:
            raise HalfWay("a read raised")
        return answer(query, ledger, commerce)

    return function
