"""A local SMTP server that keeps every message it receives as an `.eml` file: the stand-in for the outside world's
mail servers while developing (`paygate serve` runs it unless given `--smtp-url`).

    python -m actors.simulators.mailsink --port 7125 --folder data/mail

Each message is written whole (to a temporary name, then renamed) as `<unix ns>-<n>.eml`, owner-only, with a
`Received`-style envelope header (`X-Envelope-From`, `X-Envelope-To`) before the message as it came. At most
`--max-messages` files are kept: past that the oldest go. Standard library and aiosmtpd only: nothing of ours is
imported, and nothing of ours imports this.
"""

import argparse
import collections
import logging
import os
import pathlib
import signal
import threading
import time

from aiosmtpd.controller import Controller

MAX_MESSAGE_BYTES = 10 << 20
MAX_MESSAGES = 10_000
SUFFIX = ".eml"

log = logging.getLogger("paygate.simulators.mailsink")


class EmlFolder:
    """aiosmtpd's handler: every accepted message becomes one file in `folder`."""

    def __init__(self, folder: pathlib.Path, max_messages: int) -> None:
        self.folder = folder
        self.max_messages = max(1, max_messages)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.kept = collections.deque(sorted(self.folder.glob(f"*{SUFFIX}")))  # oldest first: names start with the time
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        envelope_lines = (f"X-Envelope-From: {envelope.mail_from}\r\n"
                          f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode("utf-8", "replace")
        content = envelope.original_content or envelope.content
        self.count += 1  # handlers run one at a time, on the controller's loop
        path = self.folder / f"{time.time_ns()}-{self.count}{SUFFIX}"
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(envelope_lines + content)
        os.rename(temporary, path)
        self.kept.append(path)
        while len(self.kept) > self.max_messages:
            self.kept.popleft().unlink(missing_ok=True)
        log.info("kept a message from %s to %d recipient(s) as %s", envelope.mail_from, len(envelope.rcpt_tos),
                 path.name)
        return "250 Message accepted for delivery"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mailsink", description="An SMTP server that keeps messages as .eml files.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", required=True, help="where the .eml files go")
    parser.add_argument("--max-messages", type=int, default=MAX_MESSAGES, help="files kept; the oldest go first")
    parser.add_argument("--log-level", default="INFO")
    options = parser.parse_args(argv)
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s mailsink %(levelname)s %(message)s")
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    handler = EmlFolder(pathlib.Path(options.folder), options.max_messages)
    controller = Controller(handler, hostname=options.host, port=options.port, data_size_limit=MAX_MESSAGE_BYTES)
    controller.start()
    log.info("mail sink on smtp://%s:%d keeps messages in %s", options.host, options.port, options.folder)
    try:
        stop.wait()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
