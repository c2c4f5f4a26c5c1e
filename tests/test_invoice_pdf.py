"""actors/invoice_pdf.py: an invoice's PDF shows merchant, number, date, line, amount in major units with its
currency and the card's brand and last four digits; the same invoice gives the same bytes."""

import io

import pypdf
import pytest

from actors.invoice_pdf import invoice_pdf, major_units
from engine.records import Invoice

CREATED = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z


def invoice(**fields) -> Invoice:
    return Invoice(**{"id": "inv_00000000000a000001", "merchant_id": "mer_1", "number": 42,
                      "merchant_name": "Corner Cafe", "order_id": "ord_1", "order_name": "Two flat whites",
                      "amount": 1500, "currency": "usd", "payment_id": "pay_1", "payment_method": "card",
                      "card_brand": "visa", "card_last4": "4242", "created_at": CREATED, **fields})


def text_of(pdf: bytes) -> str:
    return pypdf.PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


def test_the_pdf_shows_what_an_invoice_must():
    text = text_of(invoice_pdf(invoice()))
    for shown in ("Corner Cafe", "Invoice number 42", "2023-11-14", "Two flat whites", "15.00 USD",
                  "Visa card ending in 4242"):
        assert shown in text
    assert "4000" not in text  # nothing of a card but its last four digits is known, or shown


@pytest.mark.parametrize("amount, currency, shown", [(1500, "usd", "15.00 USD"), (120000, "vnd", "120000 VND"),
                                                      (5, "eur", "0.05 EUR"), (7, "jpy", "7 JPY")])
def test_amounts_are_in_major_units(amount, currency, shown):
    assert major_units(amount, currency) == shown
    assert shown in text_of(invoice_pdf(invoice(amount=amount, currency=currency)))


def test_letters_outside_the_font_lose_their_accents_and_the_rest_becomes_a_question_mark():
    text = text_of(invoice_pdf(invoice(merchant_name="Cà phê Đường — 東京", order_name="Bánh mì",
                                       payment_method="wallet", card_brand="", card_last4="")))
    assert "Cà phê Duong — ??" in text and "Bánh mì" in text and "Paid by wallet" in text


def test_the_same_invoice_gives_the_same_bytes():
    assert invoice_pdf(invoice()) == invoice_pdf(invoice())
