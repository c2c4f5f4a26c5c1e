"""`paygate rotate-kek`: every vaulted card sealed again under a new key-encryption key, then the old keys retired.

The cards live in the shards' engine state, so their new sealing goes in as a journaled command (ResealCards) that
the running shards apply, replicate and replay like any other command, and `verify` checks as any other. A rewrite
of a stopped folder would have to forge journal entries past the hash chain and leave the replica behind; so the
rotation runs beside a running `paygate serve`.
"""

import asyncio
import pathlib

import msgspec

from edge import cards
from engine.queries import ListCards
from engine.records import ResealCards, ResealedCard
from journal.auth import KeyFileError, key_path, load_key
from journal.client import ShardClient
from journal.processes import LAYOUT_FILE, Layout, running_address, shard_folder
from journal.wire import ReplyStatus

# Edge workers take up a new key within a second; a card one sealed just before may still be on its way to a shard
# for up to the gateway's 10 s timeout: after this, no card is sealed under the old keys any more.
SETTLE_S = 12.0
PAGE_CARDS = 1000  # per read, and per ResealCards command
MAX_ROUNDS = 5
_sealed_encoder = msgspec.msgpack.Encoder()
_sealed_decoder = msgspec.msgpack.Decoder(cards.SealedCard)


class RotationError(Exception):
    """The rotation stopped; the message says where it left the keys."""


class RotationReport(msgspec.Struct):
    new_key_id: str
    resealed: int = 0
    unavailable: int = 0  # cards under a key paygate no longer held before this rotation: they stay unusable
    retired_key_ids: list[str] = []


async def rotate_kek(data: pathlib.Path, settle_s: float = SETTLE_S, say=print) -> RotationReport:
    """Adds a new key, reseals every card of every shard under it, and retires the keys no card uses any more."""
    try:
        key = load_key(key_path(data), "rotate-kek")
    except KeyFileError as error:
        raise RotationError(str(error)) from None
    clients = [ShardClient(addresses, key) for addresses in shard_addresses(data)]
    try:
        for client in clients:  # every shard answers before a key is made
            await client.read(ListCards(0, 1))
        new = cards.add_key(data)
        report = RotationReport(new.key_id)
        say(f"new card key {new.key_id}; {settle_s:g} s for the edge workers to seal new cards under it")
        await asyncio.sleep(settle_s)
        ring = cards.KeyRing.load(data)
        if ring.current.key_id != new.key_id:
            raise RotationError(f"a newer card key than {new.key_id} appeared: is another rotation running?")
        for _ in range(MAX_ROUNDS):
            counts = [await _reseal_shard(client, ring) for client in clients]
            resealed = sum(count for count, _ in counts)
            report.resealed += resealed
            report.unavailable = sum(unavailable for _, unavailable in counts)
            if not resealed:
                break
        else:
            raise RotationError(f"cards kept appearing under old keys; all keys are kept ({new.key_id} seals new "
                                "cards): run rotate-kek again")
        report.retired_key_ids = cards.retire_keys(data, new)
        return report
    finally:
        for client in clients:
            client.close()


async def _reseal_shard(client: ShardClient, ring: cards.KeyRing) -> tuple[int, int]:
    """How many of the shard's cards were sealed again under the ring's newest key, and how many could not be."""
    start = resealed = unavailable = 0
    while True:
        page = (await client.read(ListCards(start, PAGE_CARDS))).cards or []
        items = []
        for token_id, vaulted in page:
            sealed = _sealed_decoder.decode(vaulted.sealed)
            if sealed.key_id == ring.current.key_id:
                continue
            try:
                items.append(ResealedCard(token_id, vaulted.sealed, _sealed_encoder.encode(cards.reseal(ring, sealed))))
            except cards.CardUnavailable:
                unavailable += 1
        if items:
            reply = await client.submit([ResealCards(items)])
            if reply.status != ReplyStatus.OK or reply.results[0].code != "ok":
                raise RotationError(f"a shard refused the resealed cards: {reply.message or reply.results}")
        resealed += len(items)
        if len(page) < PAGE_CARDS:
            return resealed, unavailable
        start += len(page)


def shard_addresses(data: pathlib.Path) -> list[list[str]]:
    """Each shard's running processes (primary and replica) as their folders name them."""
    try:
        layout = msgspec.json.decode((data / LAYOUT_FILE).read_bytes(), type=Layout)
        addresses = [[running_address(folder) for folder in (shard_folder(data, shard), shard_folder(data, shard, True))
                      if (folder / "shard.json").exists()] for shard in range(layout.shard_count)]
    except (OSError, ValueError, KeyError, msgspec.DecodeError) as error:
        raise RotationError(f"{data} is not a data folder a serve has run on: {error}") from None
    if not all(addresses):
        raise RotationError(f"{data}: a shard has never run: start paygate serve on it first")
    return addresses
