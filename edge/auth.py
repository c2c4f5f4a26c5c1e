"""Credentials at the edge: the admin token, signed JWTs and their JWKS, request and callback HMAC signatures, and
password hashes (merchants' own secrets, and the webhook signature, are actors/merchant_secrets.py's).

Every check here returns False or None on malformed input rather than raising, so a handler can pass header
values straight in and answer 401 on a falsy result.
"""

import base64
import hashlib
import hmac
import json
import os
import pathlib
import re
import secrets
from collections.abc import Sequence

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from actors.merchant_secrets import hmac_hex, utf8
from journal.auth import create_file_once

MAX_API_KEY_CHARS = 256
API_KEY = re.compile(r"sk_(mer_[a-z0-9]{1,64})_[0-9A-Za-z]{32,64}")
TIMESTAMP = re.compile(r"[0-9]{1,15}")
ISSUER = "paygate"
MAX_TOKEN_CHARS = 8192
MAX_SIGNATURE_VALUES = 16  # v1 values read from one header: a client signs with its live secrets, at most 10
CLOCK_SKEW_S = 60  # edges on other machines may run a little ahead of the one that issued a token
# OWASP's minimum for scrypt; a stored hash names its own parameters, so older ones still verify
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_BYTES = 2**17, 8, 1, 32
SCRYPT_MAX_MEMORY_BYTES = 256 << 20  # twice what 128 * r * N needs; OpenSSL's default allows 32 MiB
SALT_BYTES = 16


def hash_secret(secret: str) -> str:
    """Hex SHA-256: enough for high-entropy random keys and tokens (passwords go through scrypt)."""
    return hashlib.sha256(utf8(secret)).hexdigest()


def merchant_id_from_api_key(key: str) -> str | None:
    """The `mer_...` part of a well-formed `sk_mer_..._secret` key, else None."""
    if not isinstance(key, str) or len(key) > MAX_API_KEY_CHARS:
        return None
    match = API_KEY.fullmatch(key)
    return match.group(1) if match else None


class AdminToken:
    """The operator's bearer token; only its hash is ever kept."""

    def __init__(self, token_hash: str) -> None:
        self._hash = token_hash

    @classmethod
    def load_or_create(cls, path: pathlib.Path, override: str | None) -> tuple["AdminToken", str | None]:
        """The token and, only when this call created it, its plaintext to show the operator once."""
        if override:
            return cls(hash_secret(override)), None
        token = f"adm_{secrets.token_urlsafe(32)}"
        token_hash = hash_secret(token)
        if create_file_once(path, token_hash.encode()):
            return cls(token_hash), token
        stored = path.read_text().strip()
        if not re.fullmatch(r"[0-9a-f]{64}", stored):
            raise ValueError(f"{path} does not hold a hex SHA-256 admin token hash")
        return cls(stored), None

    @property
    def token_hash(self) -> str:
        return self._hash

    def check(self, token: str) -> bool:
        return isinstance(token, str) and hmac.compare_digest(hash_secret(token), self._hash)


def _thumbprint(public_jwk: dict) -> str:
    """RFC 7638 JWK thumbprint: a kid that follows from the key itself."""
    canonical = json.dumps({name: public_jwk[name] for name in ("crv", "kty", "x")}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


class TokenIssuer:
    """Ed25519-signed JWTs (EdDSA), and the JWKS that lets anyone verify them."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_key = private_key.public_key()
        self._public_jwk = OKPAlgorithm.to_jwk(self._public_key, as_dict=True)
        self.kid = _thumbprint(self._public_jwk)

    @classmethod
    def load_or_create(cls, path: pathlib.Path) -> "TokenIssuer":
        pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption())
        create_file_once(path, pem)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    def issue(self, subject: str, audience: str, ttl_s: int, now_s: int, credential_id: str = "") -> str:
        """A token; `credential_id` names the merchant's credential set it was issued under, which it lives with."""
        claims = {"sub": subject, "aud": audience, "iat": now_s, "exp": now_s + ttl_s, "iss": ISSUER,
                  "jti": secrets.token_hex(16)}
        if credential_id:
            claims["cred"] = credential_id
        return jwt.encode(claims, self._private_key, algorithm="EdDSA", headers={"kid": self.kid})

    def verify(self, token: str, audience: str, now_s: int) -> dict | None:
        """The claims of a token this issuer signed for `audience` that has not expired at `now_s`, else None."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            return None
        try:
            # PyJWT reads the wall clock for exp and iat, so those are checked here against now_s instead
            claims = jwt.decode(token, self._public_key, algorithms=["EdDSA"], audience=audience, issuer=ISSUER,
                                options={"require": ["sub", "aud", "iat", "exp", "iss", "jti"], "verify_exp": False,
                                         "verify_iat": False, "verify_nbf": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        return claims if _current(claims, now_s) else None

    def jwks(self) -> dict:
        return {"keys": [{**self._public_jwk, "kid": self.kid, "alg": "EdDSA", "use": "sig"}]}


def _current(claims: dict, now_s: int) -> bool:
    issued, expires = claims["iat"], claims["exp"]
    if type(issued) is not int or type(expires) is not int:  # bool is an int subclass, and floats are not ours
        return False
    return issued - CLOCK_SKEW_S <= now_s < expires


def signed_message(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    """What a request's `Paygate-Signature` signs: `<timestamp>.<METHOD>.<path>.<raw body>`."""
    return utf8(f"{timestamp}.{method.upper()}.{path}.") + body


def signature_valid(signing_secrets: Sequence[str], timestamp: str, signature: str, method: str, path: str,
                    body: bytes, now_s: int, window_s: int = 300) -> bool:
    """Whether `Paygate-Signature: v1=<hex>[,v1=<hex>...]` signs this request, under one of the secrets, at a time
    within `window_s` of now."""
    if not isinstance(signature, str) or not isinstance(timestamp, str) or not TIMESTAMP.fullmatch(timestamp):
        return False
    if abs(int(timestamp) - now_s) > window_s:
        return False
    message = signed_message(timestamp, method, path, body)
    # several v1 values let a merchant sign with both secrets while rotating
    parts = (part.strip() for part in signature.split(",")[:MAX_SIGNATURE_VALUES])
    candidates = [utf8(part[3:].lower()) for part in parts if part.startswith("v1=")]
    expected = [hmac_hex(secret, message).encode() for secret in signing_secrets]
    return any(hmac.compare_digest(candidate, value) for candidate in candidates for value in expected)


def callback_signature(secret: str, header: str, body: bytes, now_s: int, window_s: int = 300) -> str:
    """The signature in one spelling (`t=<unix>,v1=<lower-case hex>`) if the header (as `webhook_signature` makes
    it, give or take case, order and spaces) signs this body at a time near now; else "". One spelling, so a
    replay is known however it is written."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(",")[:8] if "=" in part)
    timestamp = fields.get("t", "")
    if not TIMESTAMP.fullmatch(timestamp) or abs(int(timestamp) - now_s) > window_s:
        return ""
    expected = hmac_hex(secret, utf8(f"{timestamp}.") + body)
    if not hmac.compare_digest(utf8(fields.get("v1", "").lower()), utf8(expected)):
        return ""
    return f"t={timestamp},v1={expected}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(utf8(password), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=SCRYPT_BYTES,
                            maxmem=SCRYPT_MAX_MEMORY_BYTES)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse_scrypt(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    """The n, r, p, salt and hash of a well-formed stored value no costlier than ours, else None."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        n, r, p = int(n), int(r), int(p)
        salt, digest = base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except (AttributeError, ValueError):
        return None
    # refusing costlier parameters keeps a tampered row from making each login burn CPU or memory
    affordable = 1 < n <= SCRYPT_N and 0 < r <= SCRYPT_R and 0 < p <= SCRYPT_P and 0 < len(digest) <= 64
    return (n, r, p, salt, digest) if scheme == "scrypt" and affordable else None


def verify_password(password: str, stored: str) -> bool:
    parsed = _parse_scrypt(stored)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    try:
        computed = hashlib.scrypt(utf8(password), salt=salt, n=n, r=r, p=p, dklen=len(digest),
                                  maxmem=SCRYPT_MAX_MEMORY_BYTES)
    except ValueError:  # n is not a power of two
        return False
    return hmac.compare_digest(computed, digest)
