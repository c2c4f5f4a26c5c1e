"""Card numbers at the edge: validation (Luhn, brand), envelope encryption under a key-encryption key, token ids,
and redaction of card numbers from log text.

The full number exists in clear only between the request and `seal`, and again after `unseal` on its way to the
acquirer. A sealed card keeps brand, last4 and expiry in clear for responses; the number is AES-256-GCM encrypted
under a fresh data key per card, and that data key is AES-256-GCM encrypted ("wrapped") under the KEK. The CVC is
never sealed: it goes to the acquirer once and is dropped.

Nothing here puts a card number into an exception message or a repr.
"""

import hashlib
import logging
import os
import pathlib
import re
import secrets

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.auth import _create_once

KEY_BYTES = 32
NONCE_BYTES = 12  # 96 bits, the size AES-GCM is built for
MIN_DIGITS, MAX_DIGITS = 12, 19
CARD_NUMBER = re.compile(rf"[0-9]{{{MIN_DIGITS},{MAX_DIGITS}}}")
WRAP_CONTEXT = b"paygate/card-data-key/v1"
CARD_CONTEXT = b"paygate/card-number/v1"

# (brand, prefix length, lowest prefix, highest prefix), checked in order
BRAND_RANGES = (
    ("visa", 1, 4, 4),
    ("mastercard", 2, 51, 55),
    ("mastercard", 4, 2221, 2720),
    ("amex", 2, 34, 34),
    ("amex", 2, 37, 37),
    ("discover", 4, 6011, 6011),
    ("discover", 2, 65, 65),
    ("discover", 3, 644, 649),
    ("jcb", 4, 3528, 3589),
    ("unionpay", 2, 62, 62),
)


class CardUnavailable(Exception):
    """A sealed card that cannot be opened: another key wrapped it, or it was altered."""


def normalize_number(raw: str) -> str | None:
    """The digits of `raw` without spaces and dashes; None if anything else remains or it is not 12–19 digits."""
    if not isinstance(raw, str):
        return None
    digits = raw.replace(" ", "").replace("-", "")
    return digits if CARD_NUMBER.fullmatch(digits) else None


def luhn_valid(number: str) -> bool:
    """Whether 12–19 ASCII digits pass the Luhn check; False for anything else."""
    if not isinstance(number, str) or not CARD_NUMBER.fullmatch(number):
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def brand_of(number: str) -> str:
    if not isinstance(number, str) or not number.isascii() or not number.isdigit():
        return "unknown"
    for brand, length, low, high in BRAND_RANGES:
        if len(number) >= length and low <= int(number[:length]) <= high:
            return brand
    return "unknown"


class KeyEncryptionKey:
    """The 256-bit key that wraps every card's data key; `key_id` names it in each sealed card."""

    __slots__ = ("_aead", "key_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise ValueError(f"a key-encryption key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:8]

    @classmethod
    def load_or_create(cls, path: pathlib.Path) -> "KeyEncryptionKey":
        """The key in `path`, first written there (0600, atomically, never over an existing file) if missing."""
        _create_once(path, os.urandom(KEY_BYTES))
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise ValueError(f"{path} does not hold a {KEY_BYTES}-byte key")
        return cls(key)

    @classmethod
    def from_hex(cls, hex_string: str) -> "KeyEncryptionKey":
        """A key given as 64 hex digits, e.g. from an environment variable."""
        try:
            key = bytes.fromhex(hex_string.strip())
        except (AttributeError, ValueError):
            key = b""
        if len(key) != KEY_BYTES:  # the message never echoes the value: it is a secret
            raise ValueError(f"a key-encryption key is {2 * KEY_BYTES} hex digits")
        return cls(key)

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(key_id={self.key_id!r})"


class SealedCard(msgspec.Struct, array_like=True, frozen=True):
    """What is stored for a card. No number, no CVC."""

    key_id: str
    wrapped_data_key: bytes  # nonce + AES-GCM(KEK, data key)
    nonce: bytes
    ciphertext: bytes  # AES-GCM(data key, number), authenticated with key_id, brand, last4 and expiry
    brand: str
    last4: str
    exp_month: int
    exp_year: int


def _card_aad(key_id: str, brand: str, last4: str, exp_month: int, exp_year: int) -> bytes:
    # msgpack keeps the fields unambiguous (no "12"+"3" == "1"+"23"), so none can be swapped or edited in clear
    return CARD_CONTEXT + msgspec.msgpack.encode([key_id, brand, last4, exp_month, exp_year])


def seal(kek: KeyEncryptionKey, number: str, exp_month: int, exp_year: int) -> SealedCard:
    """Envelope-encrypts a Luhn-valid card number (spaces and dashes allowed) with a fresh data key and nonces."""
    digits = normalize_number(number)
    if digits is None or not luhn_valid(digits):
        raise ValueError("not a valid card number")
    if type(exp_month) is not int or type(exp_year) is not int or not (1 <= exp_month <= 12 and 999 < exp_year < 10000):
        raise ValueError("expiry must be a month 1-12 and a four-digit year")
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = wrap_nonce + kek._aead.encrypt(wrap_nonce, data_key, WRAP_CONTEXT + kek.key_id.encode())
    brand, last4 = brand_of(digits), digits[-4:]
    nonce = os.urandom(NONCE_BYTES)
    aad = _card_aad(kek.key_id, brand, last4, exp_month, exp_year)
    ciphertext = AESGCM(data_key).encrypt(nonce, digits.encode("ascii"), aad)
    return SealedCard(kek.key_id, wrapped, nonce, ciphertext, brand, last4, exp_month, exp_year)


def unseal(kek: KeyEncryptionKey, sealed: SealedCard) -> str:
    """The card number; CardUnavailable if `kek` did not wrap it or any part of it was altered."""
    if sealed.key_id != kek.key_id:
        raise CardUnavailable(f"card sealed under key {sealed.key_id!r}, not {kek.key_id!r}")
    wrap_nonce, wrapped_key = sealed.wrapped_data_key[:NONCE_BYTES], sealed.wrapped_data_key[NONCE_BYTES:]
    aad = _card_aad(sealed.key_id, sealed.brand, sealed.last4, sealed.exp_month, sealed.exp_year)
    try:
        data_key = kek._aead.decrypt(wrap_nonce, wrapped_key, WRAP_CONTEXT + kek.key_id.encode())
        number = AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad).decode("ascii")
    except (InvalidTag, ValueError, TypeError, OverflowError):  # ValueError: a nonce or key of the wrong size
        raise CardUnavailable("sealed card failed authentication") from None
    return number


def new_token_id() -> str:
    return f"tok_{secrets.token_hex(12)}"


# A run of digit groups joined by single spaces or dashes, not touching other digits.
DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])")


def _mask(digits: str) -> str:
    return "*" * (len(digits) - 4) + digits[-4:]


def _redact_run(run: str) -> str:
    """Masks, from left to right, the longest stretches of whole groups that read as a Luhn-valid card number."""
    parts = re.split(r"([ -])", run)  # groups at even indexes, separators at odd ones
    out, start = [], 0
    while start < len(parts):
        best, digits = None, ""
        for end in range(start, len(parts), 2):
            digits += parts[end]
            if len(digits) > MAX_DIGITS:
                break
            if luhn_valid(digits):
                best = (end, digits)
        end, text = best if best else (start, parts[start])
        out.append(_mask(text) if best else text)
        out.append(parts[end + 1] if end + 1 < len(parts) else "")
        start = end + 2
    return "".join(out)


def redact(text: str) -> str:
    """`text` with every Luhn-valid 12–19 digit number (digits may be grouped by spaces or dashes) masked to its
    last four, as in "************4242". Other digit runs (amounts, timestamps, ids) are left as they are."""
    return DIGIT_RUN.sub(lambda match: _redact_run(match.group()), text)


class RedactingFilter(logging.Filter):
    """Masks card numbers in a record's rendered message, traceback and stack. Attach it to handlers: a filter on a
    logger does not see records propagated from its children."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep its parts, masked, rather than let handleError print them
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
