"""Proof that a message between paygate's own processes comes from one of them: an HMAC-SHA256 of the message's
bytes under a key kept in the data folder (0600, made on first start), put before the bytes and checked in constant
time before anything decodes them. A message that fails is dropped, counted, and logged at most once a second."""

import hashlib
import hmac
import logging
import os
import pathlib
import stat
import struct
import tempfile
import time

log = logging.getLogger("paygate.auth")
KEY_FILE = "internal.key"
# The data folder's other key files: merchants' derived secrets, and the key that seals their rotated ones.
GATEWAY_KEY_FILE = "gateway.key"
CREDENTIALS_KEY_FILE = "credentials.key"
KEY_BYTES = 32
TAG_BYTES = 32  # SHA-256
SHA256_BLOCK_BYTES = 64
HEAD_SIZE = struct.Struct(">I")  # the length of a message's head, where its tag covers the head alone
DROP_LOG_INTERVAL_S = 1.0


class KeyFileError(Exception):
    """The key file is missing, of the wrong size, or readable by others; the message names it."""


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, its two padded keys hashed once: a message costs two copies of a hash
    state and its own bytes, not the key schedule and OpenSSL's digest lookup of each hmac.new or hmac.digest."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) > SHA256_BLOCK_BYTES:
            key = hashlib.sha256(key).digest()
        padded = key.ljust(SHA256_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))

    def _outer_of(self, message: bytes | memoryview):
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer

    def digest(self, message: bytes | memoryview) -> bytes:
        return self._outer_of(message).digest()

    def hexdigest(self, message: bytes | memoryview) -> str:
        return self._outer_of(message).hexdigest()


class MessageKey:
    """Seals and opens messages under one key; each receiver holds its own, so its drops are its own."""

    def __init__(self, secret: bytes, receiver: str = "") -> None:
        if len(secret) != KEY_BYTES:
            raise KeyFileError(f"a message key has {KEY_BYTES} bytes, not {len(secret)}")
        self._secret = secret
        self.tag = HmacSha256(secret).digest
        self.receiver = receiver
        self.dropped = 0
        self._logged_at = -DROP_LOG_INTERVAL_S
        self._dropped_at_log = 0

    def for_receiver(self, receiver: str) -> "MessageKey":
        """The same key with a drop count of its own."""
        return MessageKey(self._secret, receiver)

    def seal(self, body: bytes) -> bytes:
        return self.tag(body) + body

    def open(self, message: bytes) -> memoryview | None:
        """The body of a message whose tag proves the key (a view of `message`: a batch's megabyte is not copied);
        None (dropped, counted) otherwise."""
        view = memoryview(message)
        if len(view) >= TAG_BYTES and hmac.compare_digest(view[:TAG_BYTES], self.tag(view[TAG_BYTES:])):
            return view[TAG_BYTES:]
        self.drop()
        return None

    def seal_head(self, head: bytes, rest: list[bytes]) -> bytes:
        """A message whose tag covers its head alone, for a rest that the head binds by a hash its receiver checks
        anyway (a replication message's records, by the hash their chain ends at): the rest is hashed once, not
        once more for the tag."""
        framed = HEAD_SIZE.pack(len(head)) + head
        return b"".join([self.tag(framed), framed, *rest])

    def open_head(self, message: bytes) -> tuple[memoryview, memoryview] | None:
        """The head and the rest of a message from `seal_head` whose tag proves the key (views, not copies); None
        (dropped, counted) otherwise. The receiver drops the message (`drop`) if the rest is not what the head binds."""
        view = memoryview(message)
        start = TAG_BYTES + HEAD_SIZE.size
        if len(view) >= start:
            end = start + HEAD_SIZE.unpack_from(view, TAG_BYTES)[0]
            if end <= len(view) and hmac.compare_digest(view[:TAG_BYTES], self.tag(view[TAG_BYTES:end])):
                return view[start:end], view[end:]
        self.drop()
        return None

    def drop(self) -> None:
        """Count a message without the key's proof, and log the count at most once a second."""
        self.dropped += 1
        now = time.monotonic()
        if now - self._logged_at >= DROP_LOG_INTERVAL_S:
            log.warning("%s: %d message(s) without the data folder's key dropped", self.receiver or "a socket",
                        self.dropped - self._dropped_at_log)
            self._logged_at = now
            self._dropped_at_log = self.dropped

    def __repr__(self) -> str:  # never the secret, in a log line or a traceback
        return f"MessageKey({self.receiver!r})"


def key_path(data: pathlib.Path) -> pathlib.Path:
    return data / KEY_FILE


def create_file_once(path: pathlib.Path, data: bytes) -> bool:
    """Writes `data` to a new 0600 file at `path`, whole or not at all; False when the file already exists (another
    process won: racing processes all end up reading one complete file)."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)  # atomic and never overwrites
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def read_or_create_key(path: pathlib.Path, size: int) -> bytes:
    """The bytes of a key file, made (`size` random bytes, 0600) by whichever process reads it first."""
    create_file_once(path, os.urandom(size))
    return path.read_bytes()


def ensure_key_file(path: pathlib.Path) -> None:
    """Creates the key file (0600) unless it exists."""
    create_file_once(path, os.urandom(KEY_BYTES))


def load_key(path: str | os.PathLike, receiver: str = "") -> MessageKey:
    """The key in `path`; refused when others may read it or it is not a key."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read the message key ({error.strerror})") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise KeyFileError(f"{path}: the message key is readable by others (mode {stat.S_IMODE(mode):o})")
        secret = os.read(descriptor, KEY_BYTES + 1)
    finally:
        os.close(descriptor)
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"{path}: not a message key ({len(secret)} bytes, not {KEY_BYTES})")
    return MessageKey(secret, receiver)
