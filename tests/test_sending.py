"""journal/sending.py: requests handed to nng without waiting, bounded, and those that wait too long dropped and
counted; what waits leaves as soon as nng can take it, in order."""

import asyncio
import time

import pynng

from journal.sending import Sender
from shard_harness import address, free_ports


def test_what_waits_is_bounded_and_what_waits_too_long_is_counted_and_dropped():
    with pynng.Req0(resend_time=-1) as socket:  # no peer: nothing can go
        sender = Sender(socket, timeout_ms=50, max_in_flight=2)
        assert sender.send(b"one") and sender.send(b"two")
        assert not sender.send(b"three")  # two wait: refused at once, nothing sent
        time.sleep(0.1)
        assert sender.send(b"four")  # the two that waited too long were dropped, so four may wait
        assert (sender.failed, [message for _, message in sender.waiting]) == (2, [b"four"])
        sender.close()
        assert (sender.failed, len(sender.waiting)) == (3, 0)


def test_a_request_that_waits_for_its_connection_leaves_when_it_comes_up_and_the_loop_stops_watching():
    listen = address(free_ports(1)[0])

    async def scenario():
        with pynng.Req0(resend_time=-1, recv_timeout=2000) as socket:
            socket.dial(listen, block=False)  # nobody listens yet
            sender = Sender(socket, timeout_ms=5000, max_in_flight=1, loop=asyncio.get_running_loop())
            assert sender.send(b"first") and sender.watching
            await asyncio.sleep(0.2)
            with pynng.Rep0(listen=listen, recv_timeout=2000) as replier:
                # The connection comes up: the loop sends what waited without anyone calling send again.
                assert await asyncio.to_thread(replier.recv) == b"first"
                assert not sender.waiting and not sender.watching
                replier.send(b"answer")
                assert await asyncio.to_thread(socket.recv) == b"answer"
                assert sender.send(b"second")
                assert await asyncio.to_thread(replier.recv) == b"second"
                assert not sender.waiting and not sender.watching
            assert sender.failed == 0
            sender.close()

    asyncio.run(scenario())
