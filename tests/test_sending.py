"""journal/sending.py: sends that never wait, bounded, and a failed send's message freed."""

import time

import pynng

from journal.sending import Sender
from shard_harness import address, free_ports


def test_sends_are_bounded_and_those_nng_gives_up_on_are_counted_and_their_aios_reused():
    with pynng.Push0() as socket:  # no peer: each send waits in nng until its timeout
        sender = Sender(socket, timeout_ms=50, max_in_flight=2)
        assert sender.send(b"one") and sender.send(b"two")
        assert not sender.send(b"three")  # two under way: refused at once, nothing sent
        time.sleep(0.3)
        assert sender.send(b"four")  # the timed-out aios were reaped and one reused
        assert (sender.failed, len(sender.busy) + len(sender.idle)) == (2, 2)
        sender.close()


def test_sent_messages_arrive_in_order():
    listen = address(free_ports(1)[0])
    with pynng.Pull0(listen=listen, recv_timeout=2000) as receiver, pynng.Push0(dial=listen) as socket:
        sender = Sender(socket, timeout_ms=2000, max_in_flight=4)
        for number in range(10):
            while not sender.send(b"message %d" % number):
                time.sleep(0.01)
        assert [receiver.recv() for _ in range(10)] == [b"message %d" % number for number in range(10)]
        sender.close()
        assert sender.failed == 0


def test_closing_with_finish_lets_the_sends_under_way_leave():
    listen = address(free_ports(1)[0])
    with pynng.Pull0(listen=listen, recv_timeout=2000) as receiver, pynng.Push0(dial=listen) as socket:
        sender = Sender(socket, timeout_ms=2000, max_in_flight=64)
        while not socket.pipes:  # connected, so every send below goes at once
            time.sleep(0.01)
        for number in range(20):
            assert sender.send(b"last %d" % number)
        sender.close(finish=True)
        assert [receiver.recv() for _ in range(20)] == [b"last %d" % number for number in range(20)]
