"""EMVCo merchant-presented QR payloads (EMV QRCPS MPM), as used by VietQR / NAPAS.

Pure and stdlib-only: strings in, strings out; no I/O.

A payload is a chain of data objects "ID LL value": a two-digit ID, a two-digit
length and the value. Lengths count characters (Python str length), not bytes;
the CRC (tag 63, CRC-16/CCITT-FALSE) is computed over the UTF-8 bytes of the
whole payload up to and including "6304". Both readings are the ones that make
the EMVCo specification's sample (which carries Chinese text in tag 64) verify
to its printed checksum A13A.

What we build is a VietQR account-transfer QR:
    00 "01"  01 "11"|"12"  38 {00 GUID, 01 {00 BIN, 01 account}, 02 service}
    52 MCC  53 currency  54 amount (dynamic only)  58 country  59 name  60 city
    62 {01 bill number = order id, 08 purpose}  63 CRC
"""

import binascii
import re
from dataclasses import dataclass

__all__ = [
    "MAX_AMOUNT_LENGTH",
    "MAX_PAYLOAD_LENGTH",
    "MerchantAccount",
    "MerchantQr",
    "build_payload",
    "crc16_ccitt_false",
    "encode_tlv",
    "format_amount",
    "parse_payload",
    "parse_tlv",
]

MAX_PAYLOAD_LENGTH = 512
MAX_AMOUNT_LENGTH = 13  # tag 54
NAPAS_GUID = "A000000727"
SERVICE_ACCOUNT_TRANSFER = "QRIBFTTA"

_HEX = frozenset("0123456789ABCDEFabcdef")
# "ans" in the spec: printable ASCII. Non-ASCII text belongs in tag 64, which we do not build.
_ANS = re.compile(r"[\x20-\x7e]+")
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?")
_ACCOUNT = re.compile(r"[0-9A-Za-z]{1,19}")


def _is_template(tag: str) -> bool:
    # 26-51 merchant account information, 62 additional data, 64 language, 80-99 unreserved.
    n = int(tag)
    return 26 <= n <= 51 or n in (62, 64) or 80 <= n <= 99


def _digits(s: str, n: int) -> bool:
    # isascii first: str.isdigit alone would take other scripts' digits
    return isinstance(s, str) and len(s) == n and s.isascii() and s.isdigit()


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_tlv(tag: str, value: str) -> str:
    """One data object: two-digit ID, two-digit length (in characters), value (1..99 chars)."""
    if not isinstance(tag, str) or not _digits(tag, 2):
        raise ValueError(f"tag must be two digits: {tag!r}")
    if not isinstance(value, str) or not 1 <= len(value) <= 99:
        raise ValueError(f"tag {tag}: value must be a str of 1..99 characters")
    return f"{tag}{len(value):02d}{value}"


def parse_tlv(payload: str) -> list[tuple[str, str]]:
    """Split a chain of data objects into (tag, value) pairs, in order.

    Raises ValueError (and nothing else) on anything malformed: not a str, longer
    than MAX_PAYLOAD_LENGTH, a non-digit ID or length, a zero length, a length
    running past the end, or trailing data too short for a header.
    """
    if not isinstance(payload, str):
        raise ValueError("payload must be a str")
    n = len(payload)
    if n > MAX_PAYLOAD_LENGTH:
        raise ValueError(f"payload longer than {MAX_PAYLOAD_LENGTH} characters")
    items: list[tuple[str, str]] = []
    i = 0
    while i < n:
        if n - i < 4:
            raise ValueError(f"truncated data object at offset {i}")
        tag, size = payload[i : i + 2], payload[i + 2 : i + 4]
        if not _digits(tag, 2) or not _digits(size, 2):
            raise ValueError(f"non-digit tag or length at offset {i}")
        length = int(size)
        if length == 0:
            raise ValueError(f"zero length at offset {i}")
        end = i + 4 + length
        if end > n:
            raise ValueError(f"tag {tag}: length {length} runs past the end")
        items.append((tag, payload[i + 4 : end]))
        i = end
    return items


def _to_dict(items: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for tag, value in items:
        if tag in out:
            raise ValueError(f"duplicate tag {tag}")
        out[tag] = value
    return out


def parse_payload(payload: str) -> dict[str, str | dict[str, str]]:
    """Parse and check a whole payload: tag 00 = "01" first, tag 63 last with a valid CRC.

    Returns the top-level tags; templates (26-51, 62, 64, 80-99) become dicts of
    their sub-tags, one level deep (VietQR's 38/01 stays a string: parse_tlv it).
    Raises ValueError ("crc mismatch" for a wrong checksum) on anything invalid.
    """
    items = parse_tlv(payload)
    if not items or items[0] != ("00", "01"):
        raise ValueError("payload must start with payload format indicator 000201")
    tag, crc = items[-1]
    if tag != "63" or len(crc) != 4 or not all(c in _HEX for c in crc):
        raise ValueError("payload must end with the CRC data object 6304XXXX")
    try:
        body = payload[:-4].encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("payload is not encodable as UTF-8") from None
    if crc16_ccitt_false(body) != int(crc, 16):
        raise ValueError("crc mismatch")
    flat = _to_dict(items)
    return {t: _to_dict(parse_tlv(v)) if _is_template(t) else v for t, v in flat.items()}


@dataclass(frozen=True, slots=True)
class MerchantAccount:
    """Tag 38 for VietQR/NAPAS: 00 GUID, 01 beneficiary {00 bank BIN, 01 account}, 02 service code."""

    bank_bin: str
    account_number: str
    guid: str = NAPAS_GUID
    service_code: str = SERVICE_ACCOUNT_TRANSFER

    def encode(self) -> str:
        if not _digits(self.bank_bin, 6):
            raise ValueError("bank_bin must be 6 digits")
        if not isinstance(self.account_number, str) or not _ACCOUNT.fullmatch(self.account_number):
            raise ValueError("account_number must be 1..19 letters or digits")
        _check_ans("guid", self.guid, 32)
        _check_ans("service_code", self.service_code, 20)
        beneficiary = encode_tlv("00", self.bank_bin) + encode_tlv("01", self.account_number)
        return encode_tlv("00", self.guid) + encode_tlv("01", beneficiary) + encode_tlv("02", self.service_code)


@dataclass(frozen=True, slots=True)
class MerchantQr:
    """What goes into one QR. `amount` is in major units (see format_amount)."""

    dynamic: bool
    merchant_account: MerchantAccount  # tag 38
    currency_numeric: str  # 53, ISO 4217 numeric: "704" VND, "840" USD
    country: str  # 58, ISO 3166-1 alpha-2
    merchant_name: str  # 59, <= 25
    merchant_city: str  # 60, <= 15
    amount: str | None = None  # 54, dynamic only: "25.50", "120000"
    merchant_category_code: str = "0000"  # 52
    bill_reference: str | None = None  # 62/01 bill number: the order id
    purpose: str | None = None  # 62/08 purpose of transaction


def _check_ans(name: str, value: object, max_len: int) -> None:
    if not isinstance(value, str) or not _ANS.fullmatch(value) or len(value) > max_len:
        raise ValueError(f"{name} must be 1..{max_len} printable ASCII characters")


def build_payload(qr: MerchantQr) -> str:
    """The payload string, CRC included. Raises ValueError on any field out of bounds."""
    if not isinstance(qr.merchant_account, MerchantAccount):
        raise ValueError("merchant_account must be a MerchantAccount")
    if not _digits(qr.merchant_category_code, 4):
        raise ValueError("merchant_category_code must be 4 digits")
    if not _digits(qr.currency_numeric, 3):
        raise ValueError("currency_numeric must be 3 digits")
    if not isinstance(qr.country, str) or not re.fullmatch(r"[A-Z]{2}", qr.country):
        raise ValueError("country must be 2 uppercase letters")
    _check_ans("merchant_name", qr.merchant_name, 25)
    _check_ans("merchant_city", qr.merchant_city, 15)
    if qr.dynamic:
        if not isinstance(qr.amount, str) or not _AMOUNT.fullmatch(qr.amount) or len(qr.amount) > MAX_AMOUNT_LENGTH:
            raise ValueError(f"a dynamic QR needs an amount of up to {MAX_AMOUNT_LENGTH} characters: digits, "
                             "optional '.' decimals")
    elif qr.amount is not None:
        raise ValueError("a static QR carries no amount")
    additional = ""
    for sub, name, value in (("01", "bill_reference", qr.bill_reference), ("08", "purpose", qr.purpose)):
        if value is not None:
            _check_ans(name, value, 25)
            additional += encode_tlv(sub, value)

    out = [
        encode_tlv("00", "01"),
        encode_tlv("01", "12" if qr.dynamic else "11"),
        encode_tlv("38", qr.merchant_account.encode()),
        encode_tlv("52", qr.merchant_category_code),
        encode_tlv("53", qr.currency_numeric),
    ]
    if qr.dynamic:
        out.append(encode_tlv("54", qr.amount))
    out += [encode_tlv("58", qr.country), encode_tlv("59", qr.merchant_name), encode_tlv("60", qr.merchant_city)]
    if additional:
        out.append(encode_tlv("62", additional))
    body = "".join(out) + "6304"
    return f"{body}{crc16_ccitt_false(body.encode('utf-8')):04X}"


def format_amount(amount_minor: int, exponent: int) -> str:
    """Minor units to the tag-54 string: (2550, 2) -> "25.50", (120000, 0) -> "120000"."""
    for name, v in (("amount_minor", amount_minor), ("exponent", exponent)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name} must be a non-negative int")
    if exponent == 0:
        return str(amount_minor)
    digits = str(amount_minor).rjust(exponent + 1, "0")
    return f"{digits[:-exponent]}.{digits[-exponent:]}"
