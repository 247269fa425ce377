"""Encryption at rest of personal fields, and blind indexes to find people by email.

Keys come from the environment, never from a file in the repository:
``SEGFLOW_ENCRYPTION_KEY`` (the key new values are sealed with) and
``SEGFLOW_ENCRYPTION_OLD_KEYS`` (comma-separated keys that still open values
written before a rotation). A key is 32 random bytes, base64-encoded
(``segflow privacy new-key`` prints one).

A sealed value is ``enc1:<key id>:<base64 of nonce + AES-GCM ciphertext>``:
it names the key that sealed it, so values under an old and a new key can
coexist while a rotation runs, and a rotation interrupted at any point can be
run again. The key id is a fingerprint of the key, not a name to keep in step.

A blind index is ``bi1:<key id>:<HMAC-SHA256 of the trimmed, lower-cased
address>``: deterministic, so an address is found (and kept unique) by an
equality lookup, but it does not give the address back. Lookups try the index
under every key of the ring, and the plain address (a store not encrypted yet).

Without a key nothing is sealed (see docs/privacy.md): values already sealed
still need their key to be read, and asking for them without it is an error
that says which key is missing.

Pure: imports nothing from ``core`` but the standard library and cryptography,
so the column types in ``core.db.models`` can use it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ENV = "SEGFLOW_ENCRYPTION_KEY"
OLD_KEYS_ENV = "SEGFLOW_ENCRYPTION_OLD_KEYS"
SEALED = "enc1:"
INDEX = "bi1:"
# The traits (profile attributes, identify events' traits) that name a person.
PII_TRAITS = frozenset({"email", "name", "first_name", "last_name", "phone"})
# Authenticated with each value, so a ciphertext made by something else for
# another purpose under the same key does not open as one of ours.
_AAD = b"segflow pii v1"


class EncryptionKeyError(ValueError):
    """A key in the environment is malformed, or a sealed value's key is missing."""


@dataclass(frozen=True)
class _Key:
    kid: str
    aead: AESGCM
    index_key: bytes


def _derive(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def _parse_key(text: str, where: str) -> _Key:
    try:
        master = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(f"{where}: not base64 (want 32 random bytes, base64)") from None
    if len(master) != 32:
        raise EncryptionKeyError(f"{where}: {len(master)} bytes, want 32 (base64 of 32 bytes)")
    kid = hashlib.sha256(b"segflow key id" + master).hexdigest()[:8]
    return _Key(kid, AESGCM(_derive(master, b"segflow aes-gcm")), _derive(master, b"segflow index"))


def new_key() -> str:
    """A fresh key, as the environment variable wants it."""
    return base64.b64encode(os.urandom(32)).decode()


class Keyring:
    """The current key (seals and indexes) and old keys (only open)."""

    def __init__(self, current: str, old: tuple[str, ...] = ()) -> None:
        self.current = _parse_key(current, KEY_ENV)
        self.keys: dict[str, _Key] = {self.current.kid: self.current}
        for i, text in enumerate(old):
            key = _parse_key(text, f"{OLD_KEYS_ENV} (key {i + 1})")
            self.keys.setdefault(key.kid, key)

    @property
    def kid(self) -> str:
        return self.current.kid

    def seal(self, text: str) -> str:
        nonce = os.urandom(12)
        data = self.current.aead.encrypt(nonce, text.encode(), _AAD)
        return f"{SEALED}{self.current.kid}:{base64.b64encode(nonce + data).decode()}"

    def open(self, token: str) -> str:
        kid, _, body = token[len(SEALED) :].partition(":")
        key = self.keys.get(kid)
        if key is None:
            raise EncryptionKeyError(
                f"a value is sealed with key {kid!r}, which is neither {KEY_ENV} nor in "
                f"{OLD_KEYS_ENV}"
            )
        try:
            raw = base64.b64decode(body, validate=True)
            return key.aead.decrypt(raw[:12], raw[12:], _AAD).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise EncryptionKeyError(f"a value sealed with key {kid!r} is damaged") from None

    def index(self, address: str, key: _Key | None = None) -> str:
        key = key or self.current
        digest = hmac.new(key.index_key, normalise(address).encode(), hashlib.sha256).hexdigest()
        return f"{INDEX}{key.kid}:{digest}"

    def indexes(self, address: str) -> list[str]:
        """The address's index under every key, the current one first."""
        return [self.index(address, k) for k in self.keys.values()]


def normalise(address: str) -> str:
    return address.strip().lower()


@functools.cache
def _ring(current: str, old: str) -> Keyring:
    return Keyring(current, tuple(k for k in old.split(",") if k.strip()))


def keyring(env: Mapping[str, str] | None = None) -> Keyring | None:
    """The keyring the environment gives, or None when no key is set.

    Read at each call (parsed once per distinct value), so a process, or a
    test, that sets the variable later is seen.
    """
    env = os.environ if env is None else env
    current = env.get(KEY_ENV, "").strip()
    if not current:
        if env.get(OLD_KEYS_ENV, "").strip():
            raise EncryptionKeyError(f"{OLD_KEYS_ENV} is set but {KEY_ENV} is not")
        return None
    return _ring(current, env.get(OLD_KEYS_ENV, ""))


def require_key(policy: str) -> None:
    """Refuse to go on without a key when the settings require encryption."""
    if policy == "required" and keyring() is None:
        raise EncryptionKeyError(
            f'[privacy] encryption = "required" in the settings, but {KEY_ENV} is not set '
            "(segflow privacy new-key makes one)"
        )


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SEALED)


def seal(value: str | None, ring: Keyring | None = None) -> str | None:
    """``value`` sealed under the current key; as it is without a key."""
    ring = ring or keyring()
    if ring is None or value is None or is_sealed(value):
        return value
    return ring.seal(value)


def unseal(value: Any, ring: Keyring | None = None) -> Any:
    """A sealed value opened; anything else as it is."""
    if not is_sealed(value):
        return value
    ring = ring or keyring()
    if ring is None:
        kid = value[len(SEALED) :].partition(":")[0]
        raise EncryptionKeyError(f"a value is sealed with key {kid!r} but {KEY_ENV} is not set")
    return ring.open(value)


def seal_traits(traits: dict[str, Any] | None, ring: Keyring | None = None) -> Any:
    """``traits`` with the values of PII_TRAITS (strings) sealed."""
    if not traits:
        return traits
    ring = ring or keyring()
    if ring is None or not any(k in PII_TRAITS for k in traits):
        return traits
    return {
        k: ring.seal(v) if k in PII_TRAITS and isinstance(v, str) and not is_sealed(v) else v
        for k, v in traits.items()
    }


def unseal_traits(values: Any, ring: Keyring | None = None) -> Any:
    """A JSON object with its sealed (top-level) values opened."""
    if not isinstance(values, dict) or not any(is_sealed(v) for v in values.values()):
        return values
    return {k: unseal(v, ring) for k, v in values.items()}


def email_identity(address: str, ring: Keyring | None = None) -> str:
    """What an identity of kind ``email`` stores for ``address``: its blind
    index under the current key, or the address without a key."""
    ring = ring or keyring()
    return address if ring is None else ring.index(address)


def email_lookups(address: str, ring: Keyring | None = None) -> list[str]:
    """Every stored form an identity of kind ``email`` may have for
    ``address``: indexes under each key, then the address itself (not
    encrypted yet), trimmed and lower-cased and as given."""
    ring = ring or keyring()
    plain = list(dict.fromkeys([normalise(address), address]))
    return plain if ring is None else [*ring.indexes(address), *plain]
