"""The unit of input and output: a sequenced batch of commands, and its results."""

import msgspec

from engine.records import CommerceCommand, Idempotent, Outcome
from engine.types import CreateAccounts, CreateTransfers, Event

Command = CreateAccounts | CreateTransfers | CommerceCommand | Idempotent


class Batch(msgspec.Struct, array_like=True):
    """Commands that the sequencer stamped with one number and one time."""

    sequence: int
    timestamp: int
    commands: list[Command]


class BatchResult(msgspec.Struct, array_like=True):
    sequence: int
    # One entry per command: a code per item for account and transfer commands, else an Outcome.
    results: list[list[int] | Outcome]
    events: list[Event]
