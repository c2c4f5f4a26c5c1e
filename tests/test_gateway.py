"""The edge's coalescer: how items for one shard are grouped into requests, and what it bounds."""

import asyncio

import msgspec
import pytest

from edge.gateway import Coalescer, InvalidCommand, ShardBusy
from edge.http import LogThrottle


class Shard:
    """A `send` whose replies the test releases: it records each request's items."""

    def __init__(self) -> None:
        self.requests: list[list] = []
        self.replies: list[asyncio.Future] = []
        self.fail = False

    async def send(self, items: list) -> list:
        self.requests.append([msgspec.msgpack.decode(item) for item in items])
        reply = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        await reply
        if self.fail:
            raise RuntimeError("the shard went away")
        return [f"done {msgspec.msgpack.decode(item)}" for item in items]

    def answer(self, index: int) -> None:
        self.replies[index].set_result(None)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def submitted(coalescer: Coalescer, items, weight: int = 1) -> list[asyncio.Future]:
    """The items handed to the coalescer, once it has done what it does at once."""
    futures = [asyncio.ensure_future(coalescer.submit(item, weight)) for item in items]
    await settle()
    return futures


def test_items_wait_while_the_requests_in_flight_are_out_and_then_leave_together():
    async def scenario():
        shard = Shard()
        sizes = []
        coalescer = Coalescer(shard.send, max_items=3, max_in_flight=2, on_batch=sizes.append)
        first, = await submitted(coalescer, [1])
        assert shard.requests == [[1]]  # a lone item leaves on the next loop turn
        second, = await submitted(coalescer, [2])
        later = await submitted(coalescer, range(3, 8))
        assert shard.requests == [[1], [2]]  # two out: the other five wait
        shard.answer(0)
        await settle()
        assert shard.requests == [[1], [2], [3, 4, 5]]  # one reply frees one slot; max_items bounds the request
        assert await first == "done 1"
        shard.answer(1)
        shard.answer(2)
        await settle()
        assert shard.requests[3:] == [[6, 7]]
        shard.answer(3)
        assert [await second, *[await each for each in later]] == [f"done {n}" for n in range(2, 8)]
        assert sizes == [1, 1, 3, 2]

    asyncio.run(scenario())


def test_too_many_waiting_items_are_refused_and_a_failed_request_fails_only_its_own_items():
    async def scenario():
        shard = Shard()
        coalescer = Coalescer(shard.send, max_items=2, max_in_flight=1, max_pending_weight=2)
        out, = await submitted(coalescer, [1])
        waiting = await submitted(coalescer, [2, 3])
        with pytest.raises(ShardBusy, match="2 items already wait"):
            await coalescer.submit(4)
        shard.fail = True
        shard.answer(0)
        with pytest.raises(ShardBusy, match="the shard went away"):
            await out
        await settle()
        assert shard.requests == [[1], [2, 3]]  # the waiting items still went
        shard.fail = False
        shard.answer(1)
        assert [await each for each in waiting] == ["done 2", "done 3"]

    asyncio.run(scenario())


def test_a_request_never_weighs_more_than_the_shard_takes_in_one_batch():
    async def scenario():
        shard = Shard()
        coalescer = Coalescer(shard.send, max_items=10, max_weight=10, max_in_flight=1)
        out, = await submitted(coalescer, [0])
        heavy = await submitted(coalescer, [1, 2, 3, 4], weight=4)
        light, = await submitted(coalescer, [5])
        with pytest.raises(InvalidCommand, match="more than 10 items"):
            await coalescer.submit(6, weight=11)
        for index in range(3):
            shard.answer(index)
            await settle()
        assert shard.requests == [[0], [1, 2], [3, 4, 5]]  # 4 + 4, then 4 + 4 + 1: never above 10
        assert [await each for each in (out, *heavy, light)] == [f"done {n}" for n in range(6)]

    asyncio.run(scenario())


def test_a_storm_of_the_same_warning_is_one_line_a_second():
    throttle = LogThrottle(interval_s=60.0)
    assert throttle.passed() == 0
    assert [throttle.passed() for _ in range(5)] == [None] * 5
    throttle.next_at = 0.0  # the interval has passed
    assert throttle.passed() == 5
