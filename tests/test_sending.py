"""journal/sending.py: requests handed to nng without waiting, bounded, and those that wait too long dropped and
counted; what waits leaves as soon as nng can take it, in order. journal/replier.py: replies from a thread of their
own, each to its own client."""

import asyncio
import time

import pynng
import pytest

import journal.replier as replier_module
from journal.replier import Replier
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


def requests_to(replier_address: str, count: int) -> list[pynng.Req0]:
    """`count` clients, each with one request sent to the replier."""
    clients = [pynng.Req0(dial=replier_address, resend_time=-1, recv_timeout=5000) for _ in range(count)]
    for index, client in enumerate(clients):
        client.send(f"request {index}".encode())
    return clients


def take(replier: Replier, count: int) -> list[tuple[pynng.Context, bytes]]:
    held = []
    deadline = time.monotonic() + 5
    while len(held) < count and time.monotonic() < deadline:
        received = replier.receive()
        if received is None:
            time.sleep(0.01)
        else:
            held.append(received)
    return held


@pytest.mark.parametrize("queued", [True, False], ids=["from-the-reply-thread", "past-the-queue-bound-from-the-loop"])
def test_each_reply_reaches_its_own_client_and_its_context_is_then_idle(monkeypatch, queued):
    """Replies leave from the replier's thread (or, past its queue's bound, from the caller); each reaches the client
    whose request its context holds, and the context is idle again once the reply went."""
    if not queued:
        monkeypatch.setattr(replier_module, "MAX_QUEUED_REPLIES", 0)
    listen = address(free_ports(1)[0])
    replier = Replier(listen, reply_timeout_ms=1000)
    clients = requests_to(listen, 8)
    try:
        held = take(replier, len(clients))
        assert sorted(message for _, message in held) == sorted(f"request {index}".encode() for index in range(8))
        for context, message in reversed(held):
            replier.reply(context, b"answer to " + message)
        assert [client.recv() for client in clients] == [f"answer to request {index}".encode() for index in range(8)]
    finally:
        replier.close()
        for client in clients:
            client.close()
    assert len(replier.idle) == len(replier.contexts) == len(clients)


def test_close_drops_replies_still_queued_after_a_reply_timeout_and_the_thread_ends(monkeypatch, caplog):
    """A reply that takes its client longer than the reply timeout holds up those queued behind it: close waits one
    timeout for them, drops those still queued, and the thread ends once the reply under way has."""
    listen = address(free_ports(1)[0])
    replier = Replier(listen, reply_timeout_ms=100)
    send = replier._send

    def slow_send(context, body):
        time.sleep(0.15)
        send(context, body)

    monkeypatch.setattr(replier, "_send", slow_send)
    clients = requests_to(listen, 3)
    try:
        for context, message in take(replier, len(clients)):
            replier.reply(context, b"answer to " + message)
        replier.close()
        assert not replier.thread.is_alive()
        assert "2 replies dropped" in caplog.text
    finally:
        for client in clients:
            client.close()
