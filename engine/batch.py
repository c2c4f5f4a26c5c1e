"""The unit of input and output: a sequenced batch of commands, and its results."""

import msgspec

from engine.records import CommerceCommand, Idempotent, Outcome, Signed
from engine.submits import SubmitSpan
from engine.types import CreateAccounts, CreateTransfers, Event

Command = CreateAccounts | CreateTransfers | CommerceCommand | Idempotent | Signed


class Batch(msgspec.Struct, array_like=True):
    """Commands that the sequencer stamped with one number and one time."""

    sequence: int
    timestamp: int
    commands: list[Command]
    # The Submits the commands came in, in order, covering them all; empty in batches journaled before Submits had ids.
    submits: list[SubmitSpan] = []


class BatchResult(msgspec.Struct, array_like=True):
    sequence: int
    # One entry per command: a code per item for account and transfer commands, else an Outcome.
    results: list[list[int] | Outcome]
    events: list[Event]
    # Indexes of the commands that a re-sent Submit brought: answered with the first results, nothing applied.
    duplicates: list[int] = []


def applied_commands(commands: list[Command], result: BatchResult):
    """(command, result) of each command the batch applied: a re-sent Submit's copies are left out."""
    if not result.duplicates:
        return zip(commands, result.results)
    duplicates = set(result.duplicates)
    pairs = zip(commands, result.results)
    return (pair for index, pair in enumerate(pairs) if index not in duplicates)


class SkimmedBatch(msgspec.Struct, array_like=True):
    """A journaled Batch with its commands left encoded, for a reader that needs only a few of them."""

    sequence: int
    timestamp: int
    commands: list[msgspec.Raw]
    submits: list[msgspec.Raw] = []


_skimmed_decoder = msgspec.msgpack.Decoder(SkimmedBatch)
_skimmed_encoder = msgspec.msgpack.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
# An encoded ledger command is a two-item array, its tag then its items: (those first bytes, the command emptied).
_LEDGER_HEADS = [(encoded[:-1], msgspec.Raw(encoded))
                 for encoded in (_skimmed_encoder.encode(kind([])) for kind in (CreateAccounts, CreateTransfers))]


def without_ledger_items(payload: bytes) -> bytes:
    """A journaled batch with its ledger commands emptied (no accounts, no transfers), its other commands as they
    were: for a reader of commerce commands, a batch of a thousand transfers shrinks to a few bytes, and the results
    still line up with the commands."""
    batch = _skimmed_decoder.decode(payload)
    commands = batch.commands
    for index, raw in enumerate(commands):
        view = memoryview(raw)
        for head, emptied in _LEDGER_HEADS:
            if view[:len(head)] == head:
                commands[index] = emptied
                break
    return _skimmed_encoder.encode(batch)


def applied_outcomes(payload: bytes, result: BatchResult) -> tuple[int, list[tuple[Command, Outcome]]]:
    """A journaled batch's timestamp, and each commerce command it applied (one answered an Outcome) with that
    Outcome. Ledger commands stay encoded: a batch of a thousand transfers is most of the bytes and of the work."""
    batch = _skimmed_decoder.decode(payload)
    return batch.timestamp, [(_command_decoder.decode(raw), outcome)
                             for raw, outcome in applied_commands(batch.commands, result) if type(outcome) is Outcome]
