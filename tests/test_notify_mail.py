"""Receipts by e-mail against real SMTP servers: an aiosmtpd server in the test receives a receipt with its PDF
attached and a refund receipt; a refusal and a missing server are failed attempts; the local mail sink serve runs
(a process of its own) keeps each message as an .eml file, the newest --max-messages of them."""

import asyncio
import email
import email.policy
import io

import pytest
from fpdf import FPDF
from pypdf import PdfReader

from actors.mail import MailSender, parse_smtp_url, receipt, refund_receipt
from actors.services import MailSink
from notify_harness import free_port, smtp_server

SENT_AT = 1_700_000_000 * 10**9


@pytest.fixture
def inbox():
    with smtp_server() as inbox:
        yield inbox


def a_pdf(text: str) -> bytes:
    document = FPDF()
    document.add_page()
    document.set_font("helvetica", size=12)
    document.cell(text=text)
    return bytes(document.output())


def test_smtp_urls():
    assert parse_smtp_url("smtp://mail.example.com:2525") == ("mail.example.com", 2525)
    assert parse_smtp_url("smtp://127.0.0.1") == ("127.0.0.1", 25)
    for bad in ("http://mail:25", "smtp://", "smtp://u:p@mail:25", "smtp://mail:99999", "smtp://mail:25/x", "mail:25"):
        with pytest.raises(ValueError):
            parse_smtp_url(bad)


def test_a_receipt_reaches_the_server_with_its_invoice_attached(inbox):
    message = receipt("whd_1", "Coffee\r\nBcc: victim@example.com", "owner@shop.example", "payer@example.com",
                      "Latte", 1999, "usd", 7, "visa ending 4242", SENT_AT, a_pdf("Invoice 7: 19.99 USD"))
    result = asyncio.run(MailSender(inbox.url).send(message, "payer@example.com"))
    assert (result.delivered, result.status_code) == (True, 250)
    sender, recipients, content = inbox.received[0]
    assert recipients == ["payer@example.com"] and sender == "receipts@paygate.localhost"
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed["Bcc"] is None and parsed["Message-ID"] == "<whd_1@paygate>"
    assert parsed["Reply-To"] == "owner@shop.example" and "19.99 USD" in parsed["Subject"]
    assert "Latte: 19.99 USD" in parsed.get_body(("plain",)).get_content()
    attachment = next(parsed.iter_attachments())
    assert attachment.get_filename() == "invoice-7.pdf"
    pdf = PdfReader(io.BytesIO(attachment.get_content()))
    assert "19.99 USD" in pdf.pages[0].extract_text()


def test_a_refund_receipt_says_how_much(inbox):
    message = refund_receipt("whd_2", "Coffee", "", "payer@example.com", "Latte", 500, "usd", SENT_AT)
    assert asyncio.run(MailSender(inbox.url).send(message, "payer@example.com")).delivered
    parsed = inbox.messages[0]
    assert parsed["Reply-To"] is None and "5.00 USD" in parsed.get_body(("plain",)).get_content()


def test_a_refusal_or_no_server_is_a_failed_attempt(inbox):
    message = refund_receipt("whd_3", "Coffee", "", "payer@example.com", "Latte", 500, "usd", SENT_AT)
    inbox.refusal = "552 mailbox full"
    result = asyncio.run(MailSender(inbox.url).send(message, "payer@example.com"))
    assert (result.delivered, result.status_code) == (False, 552)
    result = asyncio.run(MailSender(f"smtp://127.0.0.1:{free_port()}").send(message, "payer@example.com"))
    assert (result.delivered, result.status_code) == (False, 0) and result.error


def test_the_local_sink_keeps_each_message_as_an_eml_file(tmp_path):
    sink = MailSink("127.0.0.1", free_port(), tmp_path / "mail").start()
    try:
        for number in range(3):
            message = refund_receipt(f"whd_{number}", "Coffee", "", "payer@example.com", "Latte", 100 + number,
                                     "usd", SENT_AT)
            assert asyncio.run(MailSender(sink.url).send(message, "payer@example.com")).delivered
    finally:
        sink.stop()
    files = sorted(sink.folder.glob("*.eml"), key=lambda path: int(path.name.split("-")[0]))
    assert len(files) == 3 and all(path.stat().st_mode & 0o777 == 0o600 for path in files)
    parsed = email.message_from_bytes(files[-1].read_bytes(), policy=email.policy.default)
    assert parsed["X-Envelope-To"] == "payer@example.com" and parsed["Message-ID"] == "<whd_2@paygate>"
    assert "1.02 USD" in parsed.get_body(("plain",)).get_content()
