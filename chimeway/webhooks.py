"""Standard Webhooks signatures: :func:`sign` what you send, :func:`verify` what you receive.

The format is the one at https://www.standardwebhooks.com (also Svix's): three headers,

=====================  =======================================================================
``webhook-id``         the message's id: the same on every retry of one message
``webhook-timestamp``  when this attempt was signed, in whole seconds since the epoch
``webhook-signature``  ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``; several,
                       separated by spaces, while a secret is being rotated
=====================  =======================================================================

A secret is ``whsec_`` followed by the base64 of a 24 to 64 byte key (:func:`generate_secret`
makes one). :func:`verify` accepts a message when one of its signatures matches one of the given
secrets (compared in constant time) and its timestamp is within ``tolerance`` seconds of now, so a
captured request can't be replayed later. The webhook adapter signs with the channel's ``secret``
(one, or a list during rotation); provider feedback (:mod:`chimeway.feedback`) is verified here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .errors import ChimewayError

__all__ = [
    "DEFAULT_TOLERANCE",
    "SECRET_PREFIX",
    "VerifiedWebhook",
    "WebhookVerificationError",
    "generate_secret",
    "parse_secrets",
    "sign",
    "signed_headers",
    "verify",
]

SECRET_PREFIX: Final = "whsec_"
#: Seconds a message's timestamp may differ from now (either way) and still be accepted.
DEFAULT_TOLERANCE: Final = 300
_MIN_KEY: Final = 24
_MAX_KEY: Final = 64
# Bounds on what a sender may make us parse or hash: an id, the signature header, its entries.
_MAX_ID: Final = 256
_MAX_SIGNATURE_HEADER: Final = 4_096
_MAX_SECRETS: Final = 10


class WebhookVerificationError(ChimewayError, ValueError):
    """A received webhook is unsigned, malformed, signed by no known secret, or outside the window."""


@dataclass(frozen=True, slots=True)
class VerifiedWebhook:
    """What :func:`verify` vouches for: the message id and the time it was signed."""

    message_id: str
    timestamp: int


def generate_secret() -> str:
    """A new random secret in the ``whsec_`` format (a 32-byte key)."""
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(32)).decode()


def _key(secret: object, name: str) -> bytes:
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"{name} must be a Standard Webhooks secret ('whsec_' followed by base64)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} must be 'whsec_' followed by valid base64") from None
    if not _MIN_KEY <= len(key) <= _MAX_KEY:
        raise ValueError(f"{name} must decode to a key of {_MIN_KEY} to {_MAX_KEY} bytes, got {len(key)}")
    return key


def parse_secrets(value: object, name: str = "secret") -> tuple[bytes, ...]:
    """The keys of one ``whsec_`` secret or a list of them; ValueError naming ``name`` if invalid.

    The messages never quote the secret itself."""
    if isinstance(value, str):
        return (_key(value, name),)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if not 1 <= len(value) <= _MAX_SECRETS:
            raise ValueError(f"{name} must list 1 to {_MAX_SECRETS} secrets, got {len(value)}")
        return tuple(_key(item, f"{name}[{index}]") for index, item in enumerate(value))
    raise ValueError(f"{name} must be a 'whsec_' secret or a list of them, got a {type(value).__name__}")


def _signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> bytes:
    signed = b"%s.%d.%s" % (message_id.encode(), timestamp, body)
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(body: bytes, *, message_id: str, timestamp: int, secret: str | Sequence[str]) -> str:
    """The ``webhook-signature`` value of ``body``: one ``v1,<base64>`` per secret, space-separated."""
    return " ".join(
        "v1," + base64.b64encode(_signature(key, message_id, timestamp, body)).decode()
        for key in parse_secrets(secret)
    )


def signed_headers(
    body: bytes, *, message_id: str, keys: Sequence[bytes], timestamp: int | None = None
) -> dict[str, str]:
    """The three headers for ``body`` signed with already-parsed ``keys`` (:func:`parse_secrets`)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(
        "v1," + base64.b64encode(_signature(key, message_id, stamp, body)).decode() for key in keys
    )
    return {"webhook-id": message_id, "webhook-timestamp": str(stamp), "webhook-signature": signatures}


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        for key, found in headers.items():
            if key.lower() == name:
                value = found
                break
    if value is None or not value.strip():
        raise WebhookVerificationError(f"the {name} header is missing")
    return value.strip()


def verify(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str | Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> VerifiedWebhook:
    """Check ``body``'s Standard Webhooks signature; raises WebhookVerificationError if it fails.

    ``headers`` is the request's headers (any mapping; names are matched case-insensitively),
    ``body`` its raw bytes exactly as received, ``secret`` one ``whsec_`` secret or several (any
    one matching is enough, for rotation). A timestamp more than ``tolerance`` seconds away from
    ``now`` (default: the clock) is refused, so a captured request can't be replayed later;
    deduplicating by ``webhook-id`` inside that window is the receiver's part.
    """
    keys = parse_secrets(secret)
    raw = body.encode() if isinstance(body, str) else bytes(body)
    message_id = _header(headers, "webhook-id")
    if len(message_id) > _MAX_ID or not message_id.isprintable():
        raise WebhookVerificationError(
            f"the webhook-id header must be at most {_MAX_ID} printable characters"
        )
    stamp_text = _header(headers, "webhook-timestamp")
    if not stamp_text.isascii() or not stamp_text.isdigit() or len(stamp_text) > 12:
        raise WebhookVerificationError("the webhook-timestamp header must be whole seconds since the epoch")
    timestamp = int(stamp_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"the webhook-timestamp is {int(current - timestamp)} s away from now, "
            f"outside the {tolerance:g} s tolerance"
        )
    header = _header(headers, "webhook-signature")
    if len(header) > _MAX_SIGNATURE_HEADER:
        raise WebhookVerificationError("the webhook-signature header is too long")
    expected = [_signature(key, message_id, timestamp, raw) for key in keys]
    for entry in header.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # another scheme (v1a, …): not ours to check
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # Every expected signature is compared, so the time taken doesn't say which one matched.
        matches = sum(hmac.compare_digest(candidate, signature) for signature in expected)
        if matches:
            return VerifiedWebhook(message_id, timestamp)
    raise WebhookVerificationError("no webhook-signature matches the secret")
