"""Encryption at rest: the sealing and blind-index primitives (core/privacy/crypto.py)."""

from __future__ import annotations

import base64

import pytest

from core.privacy import crypto
from core.privacy.crypto import EncryptionKeyError, Keyring

KEY = crypto.new_key()
OTHER = crypto.new_key()


def test_seal_opens_back_and_hides_the_value():
    ring = Keyring(KEY)
    token = ring.seal("ada@example.com")
    assert token.startswith(f"enc1:{ring.kid}:")
    assert "ada" not in token and "example" not in token
    assert ring.open(token) == "ada@example.com"
    # A fresh nonce each time: equal values do not show as equal ciphertexts.
    assert ring.seal("ada@example.com") != token


def test_old_key_opens_what_it_sealed_and_new_values_use_the_current_key():
    old = Keyring(OTHER)
    token = old.seal("Ada Lovelace")
    rotated = Keyring(KEY, (OTHER,))
    assert rotated.open(token) == "Ada Lovelace"
    assert rotated.seal("x").startswith(f"enc1:{rotated.kid}:")
    assert rotated.kid != old.kid


def test_missing_key_is_named(monkeypatch):
    token = Keyring(OTHER).seal("x")
    with pytest.raises(EncryptionKeyError, match=Keyring(OTHER).kid):
        Keyring(KEY).open(token)
    monkeypatch.delenv(crypto.KEY_ENV, raising=False)
    monkeypatch.delenv(crypto.OLD_KEYS_ENV, raising=False)
    with pytest.raises(EncryptionKeyError, match="SEGFLOW_ENCRYPTION_KEY is not set"):
        crypto.unseal(token)


def test_tampered_value_is_refused():
    ring = Keyring(KEY)
    token = ring.seal("ada@example.com")
    raw = bytearray(base64.b64decode(token.split(":", 2)[2]))
    raw[-1] ^= 1
    bad = token.rsplit(":", 1)[0] + ":" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(EncryptionKeyError, match="damaged"):
        ring.open(bad)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({crypto.KEY_ENV: "not base64!"}, "SEGFLOW_ENCRYPTION_KEY: not base64"),
        ({crypto.KEY_ENV: base64.b64encode(b"short").decode()}, "5 bytes, want 32"),
        ({crypto.OLD_KEYS_ENV: KEY}, "SEGFLOW_ENCRYPTION_OLD_KEYS is set but"),
        ({crypto.KEY_ENV: KEY, crypto.OLD_KEYS_ENV: f"{OTHER},zz"}, r"OLD_KEYS \(key 2\)"),
    ],
)
def test_malformed_keys_name_the_variable(env, message):
    with pytest.raises(EncryptionKeyError, match=message):
        crypto.keyring(env)


def test_no_key_means_no_sealing():
    assert crypto.keyring({}) is None


def test_blind_index_is_deterministic_normalised_and_keyed():
    ring = Keyring(KEY)
    idx = ring.index("Ada@Example.com ")
    assert idx == ring.index("ada@example.com")
    assert idx.startswith(f"bi1:{ring.kid}:") and "ada" not in idx
    assert Keyring(OTHER).index("ada@example.com") != idx
    both = Keyring(KEY, (OTHER,))
    assert crypto.email_lookups("Ada@example.com", both) == [
        idx,
        Keyring(OTHER).index("ada@example.com"),
        "ada@example.com",
        "Ada@example.com",
    ]


def test_traits_seal_only_the_personal_keys():
    ring = Keyring(KEY)
    traits = {"email": "a@b.c", "first_name": "Ada", "phone": "+44 1", "plan": "pro", "age": 36}
    sealed = crypto.seal_traits(traits, ring)
    assert {k for k, v in sealed.items() if crypto.is_sealed(v)} == {"email", "first_name", "phone"}
    assert sealed["plan"] == "pro" and sealed["age"] == 36
    assert crypto.unseal_traits(sealed, ring) == traits
    # Sealing twice does not seal the ciphertext again.
    assert crypto.seal_traits(sealed, ring) == sealed
