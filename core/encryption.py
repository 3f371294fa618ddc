"""Encryption at rest in Temporal: a payload codec (AES-256-GCM) that encrypts every payload
Keel's clients write (workflow inputs and results, activity arguments, updates, summaries,
failure messages) so Temporal's history holds ciphertext only. Each payload names the key
that encrypted it, so old keys keep decrypting after the current one changes (rotation)."""

import base64
import binascii
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from core.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32


class EncryptionConfigError(ValueError):
    """KEEL_ENCRYPTION_KEYS or KEEL_ENCRYPTION_KEY_ID is malformed."""


class UndecryptablePayload(ValueError):
    """A payload names a key this process does not have, or its ciphertext does not verify."""


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded as KEEL_ENCRYPTION_KEYS expects it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_keys(spec: str) -> dict[str, bytes]:
    """`id:base64key,id2:base64key2` -> {id: key}; every key must be 256 bits."""
    keys: dict[str, bytes] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        key_id, separator, encoded = entry.partition(":")
        if not separator or not key_id:
            raise EncryptionConfigError(
                "KEEL_ENCRYPTION_KEYS: each entry is `id:base64key`, e.g. `k1:...`"
            )
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise EncryptionConfigError(
                f"KEEL_ENCRYPTION_KEYS: key {key_id!r} is not valid base64"
            ) from None
        if len(key) != KEY_BYTES:
            raise EncryptionConfigError(
                f"KEEL_ENCRYPTION_KEYS: key {key_id!r} has {len(key)} bytes; AES-256 needs {KEY_BYTES}"
            )
        keys[key_id] = key
    return keys


class EncryptionCodec(PayloadCodec):
    """Encrypts with the current key; decrypts with whichever key a payload names. The key
    id is bound to the ciphertext as associated data, so it cannot be swapped."""

    def __init__(self, keys: dict[str, bytes], current_key_id: str) -> None:
        if current_key_id not in keys:
            raise EncryptionConfigError(
                f"KEEL_ENCRYPTION_KEY_ID: {current_key_id!r} is not among KEEL_ENCRYPTION_KEYS "
                f"({', '.join(sorted(keys))})"
            )
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._current_key_id = current_key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        cipher = self._ciphers[self._current_key_id]
        key_id = self._current_key_id.encode()
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), key_id)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id},
                    data=nonce + sealed,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self._decode_one(payload) for payload in payloads]

    def _decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # written before encryption was turned on
        key_id = payload.metadata.get(KEY_ID_METADATA, b"")
        cipher = self._ciphers.get(key_id.decode())
        if cipher is None:
            raise UndecryptablePayload(
                f"payload encrypted with key {key_id.decode()!r}, which is not in KEEL_ENCRYPTION_KEYS"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            return Payload.FromString(cipher.decrypt(nonce, sealed, key_id))
        except InvalidTag:
            raise UndecryptablePayload(
                f"payload under key {key_id.decode()!r} does not verify: wrong key or tampered data"
            ) from None


def encryption_codec(settings: Settings) -> EncryptionCodec | None:
    """The codec the settings ask for, or None when encryption is off (the default)."""
    if settings.encryption_keys is None:
        return None
    keys = parse_keys(settings.encryption_keys.get_secret_value())
    if not keys:
        return None
    if settings.encryption_key_id is None:
        raise EncryptionConfigError(
            "KEEL_ENCRYPTION_KEY_ID must name the key (from KEEL_ENCRYPTION_KEYS) for new payloads"
        )
    return EncryptionCodec(keys, settings.encryption_key_id)
