"""Card numbers at the edge: validation (Luhn, brand), envelope encryption under a key-encryption key, token ids,
and redaction of card numbers from log text.

The full number exists in clear only between the request and `seal`, and again after `unseal` on its way to the
acquirer. A sealed card keeps brand, last4 and expiry in clear for responses; the number is AES-256-GCM encrypted
under a fresh data key per card, and that data key is AES-256-GCM encrypted ("wrapped") under a KEK of the data
folder's key ring, whose id the sealed card records. The CVC is never sealed: it goes to the acquirer once and is
dropped.

Nothing here puts a card number into an exception message or a repr.
"""

import asyncio
import contextlib
import hashlib
import logging
import os
import pathlib
import re
import secrets

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from journal.auth import create_file_once

KEY_BYTES = 32
NONCE_BYTES = 12  # 96 bits, the size AES-GCM is built for
MIN_DIGITS, MAX_DIGITS = 12, 19
CARD_NUMBER = re.compile(rf"[0-9]{{{MIN_DIGITS},{MAX_DIGITS}}}")
WRAP_CONTEXT = b"paygate/card-data-key/v1"
CARD_CONTEXT = b"paygate/card-number/v1"
FIRST_KEY_FILE = "card_kek.key"
KEY_RING_FOLDER = "card_keys"
KEY_FILE_NAME = re.compile(r"([0-9]{8})\.key")
MAX_KEYS = 64  # a rotation retires the keys it replaced: more than a few means rotations left half done
KEY_RING_RELOAD_S = 1.0

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
        create_file_once(path, os.urandom(KEY_BYTES))
        return cls.load(path)

    @classmethod
    def load(cls, path: pathlib.Path) -> "KeyEncryptionKey":
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


class KeyRing:
    """Every key-encryption key the data folder holds, by id; new cards are sealed under the newest.

    The first key is `card_kek.key` (generation 0, as older versions kept it); `paygate rotate-kek` adds
    `card_keys/<generation>.key`, seals every card again under it, then deletes the keys no card uses any more.
    Key files are written once and never changed, so their names say all that changed.
    """

    __slots__ = ("_by_id", "current", "names")

    def __init__(self, keys: list[tuple[int, KeyEncryptionKey]], names: tuple[str, ...] = ()) -> None:
        self._take(keys, names)

    def _take(self, keys: list[tuple[int, KeyEncryptionKey]], names: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("a key ring holds at least one key")
        self._by_id = {kek.key_id: kek for _, kek in keys}
        self.current = max(keys, key=lambda generation_and_key: generation_and_key[0])[1]
        self.names = names

    @classmethod
    def load(cls, data: pathlib.Path) -> "KeyRing":
        """The data folder's keys, the first one created (0600, once, whichever worker comes first) if none is."""
        return cls(*_read_ring(data))

    def refresh(self, data: pathlib.Path) -> None:
        """Takes up the data folder's keys, if their files changed since this ring read them."""
        if tuple(path.name for _, path in key_files(data)) != self.names:
            self._take(*_read_ring(data))

    def get(self, key_id: str) -> KeyEncryptionKey | None:
        return self._by_id.get(key_id)

    def key_ids(self) -> list[str]:
        return list(self._by_id)


def _read_ring(data: pathlib.Path) -> tuple[list[tuple[int, KeyEncryptionKey]], tuple[str, ...]]:
    files = key_files(data)
    if not files:
        KeyEncryptionKey.load_or_create(data / FIRST_KEY_FILE)
        files = key_files(data)
    return [(generation, KeyEncryptionKey.load(path)) for generation, path in files], tuple(p.name for _, p in files)


def key_files(data: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    """(generation, path) of every key file of the data folder's ring, oldest first."""
    files = [(0, data / FIRST_KEY_FILE)] if (data / FIRST_KEY_FILE).exists() else []
    folder = data / KEY_RING_FOLDER
    if folder.is_dir():
        for path in folder.iterdir():
            match = KEY_FILE_NAME.fullmatch(path.name)
            if match:
                files.append((int(match.group(1)), path))
    if len(files) > MAX_KEYS:
        raise ValueError(f"{data}: more than {MAX_KEYS} card keys: run `paygate rotate-kek` to retire old ones")
    return sorted(files)


def add_key(data: pathlib.Path) -> KeyEncryptionKey:
    """A new newest key in the ring (0600), with an id no key of the ring has."""
    files = key_files(data)
    generation = files[-1][0] + 1 if files else 0
    taken = {KeyEncryptionKey.load(path).key_id for _, path in files}
    key = os.urandom(KEY_BYTES)
    while KeyEncryptionKey(key).key_id in taken:  # ids are 32 bits: a clash is rare, and one key would hide another
        key = os.urandom(KEY_BYTES)
    path = data / FIRST_KEY_FILE if generation == 0 else data / KEY_RING_FOLDER / f"{generation:08d}.key"
    if not create_file_once(path, key):
        raise FileExistsError(f"{path} appeared meanwhile: is another rotation running?")
    return KeyEncryptionKey(key)


def retire_keys(data: pathlib.Path, keep: KeyEncryptionKey) -> list[str]:
    """Deletes every key file of the ring but `keep`'s; the ids of the keys deleted."""
    retired = []
    for _, path in key_files(data):
        kek = KeyEncryptionKey.load(path)
        if kek.key_id != keep.key_id:
            path.unlink()
            retired.append(kek.key_id)
    return retired


async def watch_key_ring(app):
    """aiohttp cleanup context: the worker's ring follows the data folder's, looked at once a second off the
    request path, so new cards are sealed under a key `rotate-kek` added and retired keys are let go."""
    data = pathlib.Path(app["settings"].data)
    task = asyncio.get_running_loop().create_task(_follow_key_ring(app, data))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _follow_key_ring(app, data: pathlib.Path) -> None:
    while True:
        await asyncio.sleep(KEY_RING_RELOAD_S)
        try:
            app["card_keys"].refresh(data)
        except (OSError, ValueError) as error:  # a half-made ring: the keys held so far keep serving
            logging.getLogger("paygate.edge").warning("card keys not reloaded: %s", error)


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


def open_card(ring: KeyRing, sealed: SealedCard) -> str:
    """The card number; CardUnavailable if the ring no longer holds its key, or it was altered."""
    kek = ring.get(sealed.key_id)
    if kek is None:
        raise CardUnavailable(f"card sealed under key {sealed.key_id!r}, which paygate no longer holds")
    return unseal(kek, sealed)


def reseal(ring: KeyRing, sealed: SealedCard) -> SealedCard:
    """The same card sealed under the ring's newest key, with a fresh data key; CardUnavailable as `open_card`."""
    return seal(ring.current, open_card(ring, sealed), sealed.exp_month, sealed.exp_year)


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
