"""Real servers for the notification tests: a free loopback port, and an aiosmtpd SMTP server that keeps what it is
sent (or refuses it)."""

import contextlib
import email
import email.policy
import socket

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Inbox:
    """aiosmtpd's handler: keeps each message (envelope and parsed), or answers `refusal` when one is set."""

    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []  # (MAIL FROM, RCPT TOs, the message as sent)
        self.refusal = ""
        self.url = ""

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.refusal:
            return self.refusal
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(content, policy=email.policy.default) for _, _, content in list(self.received)]


@contextlib.contextmanager
def smtp_server():
    """An Inbox listening on a free loopback port (its `url`: smtp://127.0.0.1:<port>) while the block runs."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{controller.port}"
    try:
        yield inbox
    finally:
        controller.stop()
