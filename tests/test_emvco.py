"""EMVCo merchant-presented QR payloads: CRC, TLV, published samples, build/parse, limits.

The checksum is cross-checked against `crc_bitwise` below, an independent bit-by-bit
CRC-16/CCITT-FALSE, never against the module's own function.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.emvco import (
    MerchantAccount,
    MerchantQr,
    build_payload,
    crc16_ccitt_false,
    encode_tlv,
    format_amount,
    parse_payload,
    parse_tlv,
)


def crc_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE one bit at a time: poly 0x1021, init 0xFFFF, MSB first, no xorout."""
    crc = 0xFFFF
    for byte in data:
        for bit in range(7, -1, -1):
            top = (crc >> 15) ^ ((byte >> bit) & 1)
            crc = (crc << 1) & 0xFFFF
            if top:
                crc ^= 0x1021
    return crc


def checks_out(payload: str) -> bool:
    return payload[-8:-4] == "6304" and payload[-4:] == f"{crc_bitwise(payload[:-4].encode('utf-8')):04X}"


# EMV QRCPS Merchant-Presented Mode v1.1, appendix example (Chinese text in tag 64).
SPEC_SAMPLE = (
    "00020101021229300012D156000000000510A93FO3230Q31280012D15600000001030812345678"
    "520441115802CN5914BEST TRANSPORT6007BEIJING64200002ZH0104最佳运输0202北京"
    "540523.7253031565502016233030412340603***0708A60086670902ME"
    "91320016A0112233449988770708123456786304A13A"
)
# VietQR transfer of 120000 VND, published in the README of github.com/subiz/vietqr.
VIETQR_SAMPLE = (
    "00020101021238570010A00000072701270006970415011300110019324180208QRIBFTTA"
    "530370454061200005802VN62170813ung ho lu lut6304C15C"
)

ACCOUNT = MerchantAccount("970436", "1234567890")
ACCOUNT_38 = {"00": "A000000727", "01": "000697043601101234567890", "02": "QRIBFTTA"}


def qr(**fields) -> MerchantQr:
    base = dict(
        dynamic=False,
        merchant_account=ACCOUNT,
        currency_numeric="704",
        country="VN",
        merchant_name="PAYGATE",
        merchant_city="HANOI",
        merchant_category_code="5812",
    )
    return MerchantQr(**(base | fields))


# CRC


@pytest.mark.parametrize(
    "data, expected",
    [(b"123456789", 0x29B1), (b"", 0xFFFF), (b"A", crc_bitwise(b"A")), (SPEC_SAMPLE[:-4].encode(), 0xA13A)],
)
def test_crc_vectors(data, expected):
    assert crc16_ccitt_false(data) == expected == crc_bitwise(data)


@pytest.mark.parametrize(
    "encoding, verifies",
    [("utf-8", True), ("utf-16-be", False), ("utf-16-le", False), ("gb18030", False)],
)
def test_spec_sample_crc_is_over_utf8_bytes(encoding, verifies):
    assert (crc_bitwise(SPEC_SAMPLE[:-4].encode(encoding)) == 0xA13A) is verifies


# TLV


@pytest.mark.parametrize(
    "tag, value, expected",
    [("00", "01", "000201"), ("59", "BEST TRANSPORT", "5914BEST TRANSPORT"), ("01", "北京", "0102北京"),
     ("62", "x" * 99, "6299" + "x" * 99)],
)
def test_encode_tlv(tag, value, expected):
    assert encode_tlv(tag, value) == expected
    assert parse_tlv(expected) == [(tag, value)]


@pytest.mark.parametrize(
    "tag, value", [("62", "x" * 100), ("59", ""), ("5", "x"), ("123", "x"), ("ab", "x"), ("٣٣", "x"), (59, "x")]
)
def test_encode_tlv_rejects(tag, value):
    with pytest.raises(ValueError):
        encode_tlv(tag, value)


@pytest.mark.parametrize(
    "items",
    [[], [("00", "01")], [("00", "01"), ("59", "A" * 25), ("62", "0105ABCDE"), ("64", "0002ZH0102北京")]],
)
def test_tlv_round_trip(items):
    assert parse_tlv("".join(encode_tlv(t, v) for t, v in items)) == items


@pytest.mark.parametrize(
    "payload",
    [
        "0005abc",  # length past the end
        "000201" + "5910ABC",  # length past the end, after a good object
        "00x201",  # non-digit length
        "000 01",  # space in length
        "00٠201",  # Arabic-Indic digit in length
        "ab0201",  # non-digit tag
        "0000",  # zero length
        "000201X",  # odd trailing data
        "000201590",  # trailing header too short
        "0" * 513,  # over the bound
        None,
        b"000201",
    ],
)
def test_parse_tlv_malformed(payload):
    with pytest.raises(ValueError):
        parse_tlv(payload)


@given(st.text(max_size=600))
def test_parse_tlv_raises_only_value_error(text):
    for parse in (parse_tlv, parse_payload):
        try:
            parse(text)
        except ValueError:
            pass


@given(st.lists(st.tuples(st.from_regex(r"[0-9]{2}", fullmatch=True), st.text(min_size=1, max_size=99)), max_size=4))
def test_tlv_round_trip_property(items):
    assert parse_tlv("".join(encode_tlv(t, v) for t, v in items)) == items


# Published samples


@pytest.mark.parametrize(
    "payload, expected",
    [
        (
            SPEC_SAMPLE,
            {
                "00": "01", "01": "12",
                "29": {"00": "D15600000000", "05": "A93FO3230Q"},
                "31": {"00": "D15600000001", "03": "12345678"},
                "52": "4111", "58": "CN", "59": "BEST TRANSPORT", "60": "BEIJING",
                "64": {"00": "ZH", "01": "最佳运输", "02": "北京"},
                "54": "23.72", "53": "156", "55": "01",
                "62": {"03": "1234", "06": "***", "07": "A6008667", "09": "ME"},
                "91": {"00": "A011223344998877", "07": "12345678"},
                "63": "A13A",
            },
        ),
        (
            VIETQR_SAMPLE,
            {
                "00": "01", "01": "12",
                "38": {"00": "A000000727", "01": "000697041501130011001932418", "02": "QRIBFTTA"},
                "53": "704", "54": "120000", "58": "VN",
                "62": {"08": "ung ho lu lut"},
                "63": "C15C",
            },
        ),
    ],
    ids=["emvco-spec", "vietqr-subiz"],
)
def test_published_samples(payload, expected):
    assert checks_out(payload)
    assert parse_payload(payload) == expected


def test_vietqr_sample_beneficiary():
    beneficiary = parse_payload(VIETQR_SAMPLE)["38"]["01"]
    assert dict(parse_tlv(beneficiary)) == {"00": "970415", "01": "0011001932418"}


@pytest.mark.parametrize(
    "payload, old, new",
    [(SPEC_SAMPLE, "5802CN", "5802CM"), (VIETQR_SAMPLE, "5802VN", "5802VM"),
     (SPEC_SAMPLE, "6304A13A", "6304A13B"), (VIETQR_SAMPLE, "6304C15C", "6304C15D")],
)
def test_published_samples_tampered(payload, old, new):
    with pytest.raises(ValueError, match="crc mismatch"):
        parse_payload(payload.replace(old, new))


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "000202" + VIETQR_SAMPLE[6:],  # wrong payload format indicator
        VIETQR_SAMPLE[6:],  # 00 not first
        VIETQR_SAMPLE[:-8],  # no CRC
        VIETQR_SAMPLE[:-4] + "C15G",  # non-hex CRC
        VIETQR_SAMPLE[:-8] + "6303C15",  # short CRC
    ],
)
def test_parse_payload_rejects(payload):
    with pytest.raises(ValueError):
        parse_payload(payload)


def test_parse_payload_rejects_duplicate_tags():
    body = "000201" + "5802VN" + "5802VN" + "6304"
    with pytest.raises(ValueError, match="duplicate"):
        parse_payload(body + f"{crc_bitwise(body.encode()):04X}")


# Build


def test_static_vietqr_exact_payload():
    payload = build_payload(qr())
    assert payload[:-4] == (
        "000201" "010211"
        "38540010A00000072701240006970436011012345678900208QRIBFTTA"
        "52045812" "5303704" "5802VN" "5907PAYGATE" "6005HANOI" "6304"
    )
    assert checks_out(payload)


@pytest.mark.parametrize(
    "fields, expected",
    [
        (
            dict(),
            {"01": "11", "53": "704", "58": "VN"},
        ),
        (
            dict(purpose="TIP JAR"),
            {"01": "11", "53": "704", "58": "VN", "62": {"08": "TIP JAR"}},
        ),
        (
            dict(dynamic=True, amount=format_amount(120000, 0), bill_reference="ORDER_98765"),
            {"01": "12", "53": "704", "54": "120000", "58": "VN", "62": {"01": "ORDER_98765"}},
        ),
        (
            dict(dynamic=True, amount=format_amount(2550, 2), currency_numeric="840", country="US",
                 bill_reference="ord_01HZX", purpose="ord_01HZX"),
            {"01": "12", "53": "840", "54": "25.50", "58": "US", "62": {"01": "ord_01HZX", "08": "ord_01HZX"}},
        ),
    ],
    ids=["static", "static-purpose", "dynamic-vnd", "dynamic-usd"],
)
def test_build_parse_round_trip(fields, expected):
    payload = build_payload(qr(**fields))
    assert checks_out(payload)
    parsed = parse_payload(payload)
    assert parsed == {
        "00": "01", "38": ACCOUNT_38, "52": "5812", "59": "PAYGATE", "60": "HANOI", "63": payload[-4:]
    } | expected
    assert list(parsed) == sorted(parsed)  # tags come out in ascending order
    assert dict(parse_tlv(parsed["38"]["01"])) == {"00": "970436", "01": "1234567890"}


@pytest.mark.parametrize(
    "fields",
    [
        dict(merchant_name="N" * 25, merchant_city="C" * 15),
        dict(dynamic=True, amount="9" * 13, bill_reference="B" * 25, purpose="P" * 25),
        dict(merchant_category_code="0000", merchant_account=MerchantAccount("970415", "VQRQADAIJ5512")),
    ],
    ids=["name-city-max", "amount-62-max", "alnum-account"],
)
def test_build_accepts_limits(fields):
    assert checks_out(build_payload(qr(**fields)))


@pytest.mark.parametrize(
    "fields",
    [
        dict(merchant_name="N" * 26),
        dict(merchant_city="C" * 16),
        dict(merchant_name=""),
        dict(merchant_name="Phở 24"),  # ans is printable ASCII
        dict(merchant_city="HA\nNOI"),
        dict(merchant_category_code="581"),
        dict(currency_numeric="VND"),
        dict(country="vn"),
        dict(amount="120000"),  # static carries no amount
        dict(dynamic=True),  # dynamic needs one
        dict(dynamic=True, amount="9" * 14),
        dict(dynamic=True, amount="1,000"),
        dict(dynamic=True, amount="-5"),
        dict(dynamic=True, amount="25."),
        dict(dynamic=True, amount="12", bill_reference="B" * 26),
        dict(purpose="P" * 26),
        dict(merchant_account=MerchantAccount("97043", "1234567890")),
        dict(merchant_account=MerchantAccount("970436", "1" * 20)),
        dict(merchant_account=MerchantAccount("970436", "12-34")),
        dict(merchant_account="0010A000000727"),
    ],
)
def test_build_rejects(fields):
    with pytest.raises(ValueError):
        build_payload(qr(**fields))


# Amounts


@pytest.mark.parametrize(
    "minor, exponent, expected",
    [(2550, 2, "25.50"), (120000, 0, "120000"), (5, 2, "0.05"), (0, 2, "0.00"), (100, 2, "1.00"),
     (1234, 3, "1.234"), (0, 0, "0")],
)
def test_format_amount(minor, exponent, expected):
    assert format_amount(minor, exponent) == expected


@pytest.mark.parametrize("minor, exponent", [(-1, 2), (1, -1), (True, 2), (1.5, 2), ("25", 2)])
def test_format_amount_rejects(minor, exponent):
    with pytest.raises(ValueError):
        format_amount(minor, exponent)
