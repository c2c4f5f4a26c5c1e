"""An invoice as a PDF: merchant, invoice number, date, the order's line, its amount in major units with the
currency, and the payment method (brand and last four digits only). Pure: an Invoice in, the same bytes out every
time (the creation date is the invoice's), for GET /v1/invoices/{id}.pdf and the receipt e-mail's attachment.

Written with fpdf2's core Helvetica (a few milliseconds; a TrueType font costs a third of a second per document),
which holds Windows-1252 only: other letters lose their accents ("Cà phê" is written "Ca phe"), and a character with
no such form becomes "?".
"""

import datetime
import unicodedata

import fpdf

from engine.currencies import CURRENCY_EXPONENTS
from engine.emvco import format_amount
from engine.records import Invoice
from engine.types import NANOSECONDS_PER_SECOND

FONT = "Helvetica"
ENCODING = "cp1252"
# Letters Unicode does not decompose into a base letter and marks.
FOLDED = str.maketrans({"đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ħ": "h", "Ħ": "H"})


def invoice_pdf(invoice: Invoice) -> bytes:
    created = datetime.datetime.fromtimestamp(invoice.created_at // NANOSECONDS_PER_SECOND, datetime.timezone.utc)
    amount = major_units(invoice.amount, invoice.currency)
    pdf = fpdf.FPDF(format="A4")
    pdf.core_fonts_encoding = ENCODING  # the core fonts are WinAnsi-encoded
    pdf.set_creation_date(created)
    pdf.set_title(_text(f"Invoice {invoice.number} - {invoice.merchant_name}"))
    pdf.add_page()
    pdf.set_font(FONT, "B", 18)
    pdf.cell(0, 10, _text(invoice.merchant_name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 11)
    for label, value in (("Invoice number", str(invoice.number)), ("Invoice id", invoice.id),
                         ("Date", created.strftime("%Y-%m-%d")), ("Order", invoice.order_id)):
        pdf.cell(40, 7, label)
        pdf.cell(0, 7, _text(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font(FONT, "B", 11)
    pdf.cell(130, 8, "Description", border="B")
    pdf.cell(0, 8, "Amount", border="B", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 11)
    pdf.cell(130, 8, _text(invoice.order_name))
    pdf.cell(0, 8, amount, align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "B", 11)
    pdf.cell(130, 8, "Total", border="T")
    pdf.cell(0, 8, amount, border="T", align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(6)
    pdf.set_font(FONT, "", 11)
    pdf.cell(0, 7, _text(f"Paid by {payment_method(invoice)}"), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def major_units(amount_minor: int, currency: str) -> str:
    """1500 usd -> "15.00 USD"; 120000 vnd -> "120000 VND"."""
    return f"{format_amount(amount_minor, CURRENCY_EXPONENTS.get(currency, 2))} {currency.upper()}"


def payment_method(invoice: Invoice) -> str:
    if invoice.card_brand:
        return f"{invoice.card_brand.title()} card ending in {invoice.card_last4}"
    return invoice.payment_method.replace("_", " ") or "unknown method"


def _text(value: str) -> str:
    """`value` in what the core font holds: accents dropped from letters outside it, "?" for what is left."""
    if _encodes(value):
        return value
    folded = "".join(character if _encodes(character) else _fold(character) for character in value.translate(FOLDED))
    return folded.encode(ENCODING, errors="replace").decode(ENCODING)


def _fold(character: str) -> str:
    return "".join(part for part in unicodedata.normalize("NFKD", character) if not unicodedata.combining(part))


def _encodes(value: str) -> bool:
    try:
        value.encode(ENCODING)
    except UnicodeEncodeError:
        return False
    return True
