"""E-mail to a merchant's customers: a receipt when an order is paid (the invoice PDF attached), a refund receipt
when a refund succeeds, sent over SMTP with aiosmtplib to `paygate serve --smtp-url smtp://host:port` (by default a
local sink that keeps each message as a file, actors/simulators/mailsink.py).

A message is composed once, when its delivery is queued, and kept as bytes: every attempt sends the same message,
with a Message-ID named after the delivery, so a mailbox that gets it twice can tell.

May import engine types and aiosmtplib; never the edge, never Ray.
"""

import email.policy
import email.utils
import time
import urllib.parse
from email.message import EmailMessage

import aiosmtplib

from actors.invoice_pdf import major_units
from actors.webhooks import AttemptResult, failed, ms_since

SENDER = "receipts@paygate.localhost"
REQUEST_TIMEOUT_S = 10.0
MAX_NAME_CHARS = 200
DEFAULT_PORT = 25


def parse_smtp_url(url: str) -> tuple[str, int]:
    """(host, port) of `smtp://host[:port]`; ValueError naming what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "smtp" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"an SMTP server is smtp://host:port, not {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"not a port: {url!r}") from None
    return parts.hostname, port


def one_line(text: str) -> str:
    """Whitespace runs (line breaks among them) as one space: no value can start a header of its own."""
    return " ".join(text.split())[:MAX_NAME_CHARS]


def _message(delivery_id: str, merchant_name: str, merchant_email: str, recipient: str, subject: str, text: str,
             sent_at_ns: int) -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = email.utils.formataddr((one_line(merchant_name), SENDER))
    if merchant_email:
        message["Reply-To"] = one_line(merchant_email)
    message["To"] = one_line(recipient)
    message["Subject"] = one_line(subject)
    message["Date"] = email.utils.formatdate(sent_at_ns / 1e9, usegmt=True)
    message["Message-ID"] = f"<{delivery_id}@paygate>"
    message.set_content(text)
    return message


def receipt(delivery_id: str, merchant_name: str, merchant_email: str, recipient: str, order_name: str, amount: int,
            currency: str, invoice_number: int, paid_by: str, paid_at_ns: int, invoice_pdf: bytes) -> bytes:
    """The receipt of a paid order, its invoice attached."""
    total = major_units(amount, currency)
    text = (f"Thank you for your payment to {merchant_name}.\n\n{order_name}: {total}\nPaid by {paid_by}\n"
            f"Invoice no. {invoice_number} is attached.\n")
    message = _message(delivery_id, merchant_name, merchant_email, recipient,
                       f"Receipt from {merchant_name}: {total}", text, paid_at_ns)
    message.add_attachment(invoice_pdf, maintype="application", subtype="pdf", filename=f"invoice-{invoice_number}.pdf")
    return message.as_bytes()


def refund_receipt(delivery_id: str, merchant_name: str, merchant_email: str, recipient: str, order_name: str,
                   amount: int, currency: str, refunded_at_ns: int) -> bytes:
    total = major_units(amount, currency)
    text = (f"{merchant_name} has refunded {total} of your payment for {order_name}.\n"
            "It reaches you the way you paid.\n")
    return _message(delivery_id, merchant_name, merchant_email, recipient, f"Refund from {merchant_name}: {total}",
                    text, refunded_at_ns).as_bytes()


class MailSender:
    """Sends composed messages to one SMTP server, each attempt over its own connection, bounded in time."""

    def __init__(self, smtp_url: str, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.host, self.port = parse_smtp_url(smtp_url)
        self.timeout_s = timeout_s

    async def send(self, message: bytes, recipient: str) -> AttemptResult:
        if not message:
            return failed("unsendable_message")
        started = time.monotonic()
        try:
            await aiosmtplib.send(message, sender=SENDER, recipients=[recipient], hostname=self.host,
                                  port=self.port, timeout=self.timeout_s, start_tls=False)
        except aiosmtplib.SMTPResponseException as error:  # the server refused: its code, like an HTTP status
            return AttemptResult(False, error.code, error.message[:200], ms_since(started))
        except (aiosmtplib.SMTPException, OSError) as error:
            return failed(type(error).__name__, ms_since(started))
        return AttemptResult(True, 250, "", ms_since(started))

