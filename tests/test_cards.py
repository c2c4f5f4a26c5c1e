"""edge.cards: Luhn, normalization and brands; envelope-sealed cards and their key-encryption key; token ids; and
redaction of card numbers from log text."""

import hashlib
import io
import logging
import re
import stat

import msgspec
import pytest

from edge.cards import (CardUnavailable, KeyEncryptionKey, RedactingFilter, SealedCard, brand_of, luhn_valid,
                        new_token_id, normalize_number, redact, seal, unseal)

TEST_CARDS = ["4242424242424242", "4000000000000002", "4000000000009995", "4000000000003220", "4000000000000119",
              "4000000000000036"]
KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
VISA, MASTERCARD = "4242424242424242", "5555555555554444"


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def flip(data: bytes, index: int = -1) -> bytes:
    altered = bytearray(data)
    altered[index] ^= 0x01
    return bytes(altered)


# --- Luhn, normalization, brands -----------------------------------------------------------------------------------

@pytest.mark.parametrize("number", TEST_CARDS)
def test_api_test_cards_pass_luhn(number):
    assert luhn_valid(number)


@pytest.mark.parametrize("number", TEST_CARDS)
def test_any_one_digit_change_fails_luhn(number):
    for position in range(len(number)):
        for digit in "0123456789":
            if digit != number[position]:
                assert not luhn_valid(number[:position] + digit + number[position + 1:])


@pytest.mark.parametrize("value", [
    "", "4242 4242 4242 4242", "4242-4242-4242-4242", "42424242424", "4" + "0" * 18 + "04",  # 11 and 21 digits
    "４２４２４２４２４２４２４２４２",  # fullwidth digits
    None, 4242424242424242, b"4242424242424242",
])
def test_luhn_is_false_for_anything_but_12_to_19_ascii_digits(value):
    assert luhn_valid(value) is False


@pytest.mark.parametrize("raw, expected", [
    ("4242424242424242", "4242424242424242"),
    ("4242 4242 4242 4242", "4242424242424242"),
    ("4242-4242-4242-4242", "4242424242424242"),
    (" 4242 - 4242 4242-4242 ", "4242424242424242"),
    ("3782 822463 10005", "378282246310005"),
    ("1" * 12, "1" * 12),
    ("1" * 19, "1" * 19),
    ("1" * 11, None),
    ("1" * 20, None),
    ("4242x4242424242424242", None),
    ("4242.4242.4242.4242", None),
    ("4242\t4242\t4242\t4242", None),
    ("４２４２４２４２４２４２４２４２", None),
    ("", None),
    (" - ", None),
    (None, None),
    (4242424242424242, None),
])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("number, brand", [
    ("4242424242424242", "visa"),
    ("4000000000000002", "visa"),
    ("5105105105105100", "mastercard"),
    ("5555555555554444", "mastercard"),
    ("2221000000000009", "mastercard"),
    ("2720990000000007", "mastercard"),
    ("2220990000000000", "unknown"),
    ("2721000000000000", "unknown"),
    ("5600000000000000", "unknown"),
    ("378282246310005", "amex"),
    ("341111111111111", "amex"),
    ("3566002020360505", "jcb"),
    ("6011111111111117", "discover"),
    ("6500000000000002", "discover"),
    ("6440000000000000", "discover"),
    ("6490000000000000", "discover"),
    ("6430000000000000", "unknown"),
    ("6012000000000000", "unknown"),
    ("3528000000000000", "jcb"),
    ("3589000000000000", "jcb"),
    ("3527000000000000", "unknown"),
    ("3590000000000000", "unknown"),
    ("6200000000000005", "unionpay"),
    ("30569309025904", "unknown"),  # Diners Club
    ("", "unknown"),
    ("abcd", "unknown"),
    (None, "unknown"),
])
def test_brand_of(number, brand):
    assert brand_of(number) == brand


# --- sealing ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("number", TEST_CARDS + ["5555 5555 5555 4444", "3782-822463-10005"])
def test_seal_unseal_round_trip(number):
    kek = KeyEncryptionKey(KEY_A)
    sealed = seal(kek, number, 12, 2030)
    digits = normalize_number(number)
    assert unseal(kek, sealed) == digits
    assert (sealed.key_id, sealed.brand, sealed.last4, sealed.exp_month, sealed.exp_year) == (
        kek.key_id, brand_of(digits), digits[-4:], 12, 2030)


def test_a_sealed_card_has_no_number_or_cvc_field():
    assert SealedCard.__struct_fields__ == ("key_id", "wrapped_data_key", "nonce", "ciphertext", "brand", "last4",
                                            "exp_month", "exp_year")


def test_two_seals_of_one_card_share_no_key_or_nonce():
    kek = KeyEncryptionKey(KEY_A)
    first, second = seal(kek, VISA, 12, 2030), seal(kek, VISA, 12, 2030)
    assert first.wrapped_data_key[:12] != second.wrapped_data_key[:12]  # wrapping nonces
    assert first.wrapped_data_key != second.wrapped_data_key
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    # each data key opens only its own card
    mixed = msgspec.structs.replace(first, wrapped_data_key=second.wrapped_data_key)
    with pytest.raises(CardUnavailable):
        unseal(kek, mixed)


@pytest.mark.parametrize("number", TEST_CARDS + [MASTERCARD])
def test_encoded_sealed_card_never_holds_the_number(number):
    kek = KeyEncryptionKey(KEY_A)
    encoded = msgspec.msgpack.encode(seal(kek, number, 12, 2030))
    for secret in (number, number[-12:], number[:-4]):
        assert secret.encode() not in encoded
    assert unseal(kek, msgspec.msgpack.decode(encoded, type=SealedCard)) == number


@pytest.mark.parametrize("tamper", [
    lambda s: {"ciphertext": flip(s.ciphertext)},
    lambda s: {"ciphertext": flip(s.ciphertext, 0)},
    lambda s: {"ciphertext": s.ciphertext[:-1]},
    lambda s: {"ciphertext": b""},
    lambda s: {"wrapped_data_key": flip(s.wrapped_data_key)},  # the wrapped key's tag
    lambda s: {"wrapped_data_key": flip(s.wrapped_data_key, 0)},  # its nonce
    lambda s: {"wrapped_data_key": s.wrapped_data_key[:12]},
    lambda s: {"wrapped_data_key": b""},
    lambda s: {"nonce": flip(s.nonce)},
    lambda s: {"nonce": s.nonce[:-1]},
    lambda s: {"nonce": b""},
    lambda s: {"brand": "mastercard"},
    lambda s: {"last4": "4444"},
    lambda s: {"exp_month": 11},
    lambda s: {"exp_year": 2031},
], ids=["ciphertext-tag", "ciphertext-body", "ciphertext-truncated", "ciphertext-empty", "wrapped-key-tag",
        "wrapped-key-nonce", "wrapped-key-nonce-only", "wrapped-key-empty", "nonce", "nonce-short", "nonce-empty",
        "brand", "last4", "exp-month", "exp-year"])
def test_any_alteration_makes_the_card_unavailable(tamper):
    kek = KeyEncryptionKey(KEY_A)
    sealed = seal(kek, VISA, 12, 2030)
    with pytest.raises(CardUnavailable):
        unseal(kek, msgspec.structs.replace(sealed, **tamper(sealed)))


@pytest.mark.parametrize("fields", [("last4",), ("brand",), ("brand", "last4"), ("nonce", "ciphertext")])
def test_fields_swapped_between_two_cards_make_it_unavailable(fields):
    kek = KeyEncryptionKey(KEY_A)
    visa, mastercard = seal(kek, VISA, 12, 2030), seal(kek, MASTERCARD, 12, 2030)
    swapped = msgspec.structs.replace(visa, **{field: getattr(mastercard, field) for field in fields})
    with pytest.raises(CardUnavailable):
        unseal(kek, swapped)


def test_another_kek_cannot_unseal_even_under_a_forged_key_id():
    sealed = seal(KeyEncryptionKey(KEY_A), VISA, 12, 2030)
    other = KeyEncryptionKey(KEY_B)
    with pytest.raises(CardUnavailable):
        unseal(other, sealed)
    with pytest.raises(CardUnavailable):
        unseal(other, msgspec.structs.replace(sealed, key_id=other.key_id))


@pytest.mark.parametrize("number, exp_month, exp_year", [
    ("4242424242424241", 12, 2030),  # fails Luhn
    ("4242x4242424242424242", 12, 2030),
    ("424242", 12, 2030),
    (VISA, 0, 2030),
    (VISA, 13, 2030),
    (VISA, 12, 30),
    (VISA, "12", 2030),
    (VISA, True, 2030),
])
def test_seal_refuses_bad_input_without_echoing_the_number(number, exp_month, exp_year):
    with pytest.raises(ValueError) as raised:
        seal(KeyEncryptionKey(KEY_A), number, exp_month, exp_year)
    assert number not in str(raised.value)


# --- the key-encryption key ------------------------------------------------------------------------------------------

def test_kek_file_is_created_once_with_mode_0600_and_reused(tmp_path):
    path = tmp_path / "data" / "card.kek"
    first = KeyEncryptionKey.load_or_create(path)
    key = path.read_bytes()
    assert len(key) == 32 and mode(path) == 0o600
    assert first.key_id == hashlib.sha256(key).hexdigest()[:8]
    second = KeyEncryptionKey.load_or_create(path)
    assert path.read_bytes() == key and second.key_id == first.key_id
    assert unseal(second, seal(first, VISA, 12, 2030)) == VISA
    assert [p.name for p in path.parent.iterdir()] == ["card.kek"]  # no temporary file left behind


def test_kek_file_that_exists_is_used_not_overwritten(tmp_path):
    path = tmp_path / "card.kek"
    path.write_bytes(KEY_A)
    assert KeyEncryptionKey.load_or_create(path).key_id == KeyEncryptionKey(KEY_A).key_id
    assert path.read_bytes() == KEY_A


def test_kek_file_of_the_wrong_size_is_refused(tmp_path):
    path = tmp_path / "card.kek"
    path.write_bytes(KEY_A[:16])
    with pytest.raises(ValueError):
        KeyEncryptionKey.load_or_create(path)


def test_kek_from_hex_matches_the_raw_key():
    kek = KeyEncryptionKey.from_hex(KEY_A.hex().upper() + "\n")
    assert kek.key_id == KeyEncryptionKey(KEY_A).key_id
    assert unseal(KeyEncryptionKey(KEY_A), seal(kek, VISA, 1, 2030)) == VISA


@pytest.mark.parametrize("value", ["", "zz" * 32, KEY_A.hex()[:-2], KEY_A.hex() + "00", None])
def test_kek_from_bad_hex_is_refused_without_echoing_it(value):
    with pytest.raises(ValueError) as raised:
        KeyEncryptionKey.from_hex(value)
    assert not value or value not in str(raised.value)


def test_kek_repr_shows_only_the_key_id():
    kek = KeyEncryptionKey(KEY_A)
    assert KEY_A.hex() not in repr(kek) and kek.key_id in repr(kek)


def test_token_ids_are_random_and_well_formed():
    tokens = {new_token_id() for _ in range(100)}
    assert len(tokens) == 100
    assert all(re.fullmatch(r"tok_[0-9a-f]{24}", token) for token in tokens)


# --- redaction -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("4242424242424242", "************4242"),
    ("card 4242424242424242 declined", "card ************4242 declined"),
    ("card 4242 4242 4242 4242 declined", "card ************4242 declined"),
    ("card 4000-0000-0000-3220 needs 3ds", "card ************3220 needs 3ds"),
    ('{"number":"4000000000009995","cvc":"123"}', '{"number":"************9995","cvc":"123"}'),
    ("amex 3782 822463 10005.", "amex ***********0005."),
    ("a=4242424242424242,b=5555555555554444", "a=************4242,b=************4444"),
    ("4242 4242 4242 4242 12 2030", "************4242 12 2030"),  # followed by its expiry
    ("qty 3 4242424242424242", "qty 3 ************4242"),  # preceded by another number
])
def test_redact_masks_card_numbers(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "amount 100000000000 VND",
    "at 1700000000123 ms",
    "order 2024-05-01 12:30:45",
    "20240501123045",
    "card 4242424242424241 is not a card",  # one digit off
    "phone 0912 345 678",
    "id 42424242424242424242",  # 20 digits
    "",
])
def test_redact_leaves_other_digit_runs_alone(text):
    assert not any(luhn_valid(run) for run in re.findall(r"[0-9]{12,19}", text.replace(" ", "").replace("-", "")))
    assert redact(text) == text


def redacting_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream


def test_filter_masks_a_number_passed_through_a_logger():
    logger, stream = redacting_logger("test.cards.filter")
    logger.info("charging %s for %d VND", "4242 4242 4242 4242", 100000000000)
    logging.getLogger("test.cards.filter.child").info("retrying 4000000000000119")
    assert stream.getvalue() == ("charging ************4242 for 100000000000 VND\n"
                                 "retrying ************0119\n")


def test_filter_masks_tracebacks_and_bad_format_strings():
    logger, stream = redacting_logger("test.cards.filter.errors")
    try:
        raise ValueError("bad card 4242424242424242")
    except ValueError:
        logger.exception("failed for %s", "5555555555554444")
    logger.info("card %d", "4000000000000002")  # a format error would otherwise dump the args to stderr
    output = stream.getvalue()
    for number in ("4242424242424242", "5555555555554444", "4000000000000002"):
        assert number not in output and "*" * 12 + number[-4:] in output
    assert "Traceback" in output
