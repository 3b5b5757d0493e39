"""POST each delivery as JSON to an HTTP endpoint and classify the answer.

Config (per channel):

===========  ==================================================================================
``url``      where to POST (required)
``timeout``  seconds for connecting, sending and reading the answer (default 10)
``headers``  extra request headers
``token``    sent as ``Authorization: Bearer <token>``
``secret``   signs the body: ``X-Chimeway-Signature: sha256=<hex HMAC-SHA256 of the body>``
===========  ==================================================================================

Every request carries ``Idempotency-Key: <delivery_id>:<attempt_number>``. If the worker dies
after the POST but before the attempt is recorded, the retry re-sends with the same key (the
attempt number was never used), so the receiver can drop the duplicate.

Answers: 2xx → delivered (the JSON answer's ``id`` or ``message_id`` becomes the provider
message id); 408, 425, 429, 5xx, timeouts and connection errors → temporary; 410 Gone →
bounced; any other answer → permanent (redirects are not followed). Neither the config, the URL
nor the answer's body reaches the provider response or chimeway's logs. Keep credentials out of
the URL all the same (use ``token``, ``secret`` or ``headers``): httpx logs request URLs at INFO
on its own ``httpx`` logger.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any, Final

import httpx

from ..states import FailureKind
from .base import Delivered, DeliveryContext, Failed

__all__ = ["DEFAULT_TIMEOUT", "WebhookAdapter"]

DEFAULT_TIMEOUT: Final = 10.0
# The answers that mean "not now": request timeout, too early, too many requests.
_TEMPORARY_STATUSES: Final = frozenset({408, 425, 429})
_GONE: Final = 410

_log = logging.getLogger("chimeway.adapters.webhook")


class WebhookAdapter:
    """Sends deliveries with httpx; pass a ``client`` to reuse its connections (it stays yours)."""

    name = "webhook"

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client
        self._lock = threading.Lock()

    def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
        url = config.get("url")
        if not isinstance(url, str) or not url:
            return Failed("permanent", {"error": "the webhook channel has no url configured"})
        timeout = config.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            return Failed("permanent", {"error": "the webhook timeout must be a positive number of seconds"})
        body = _body(delivery)
        try:
            response = self._post(url, body, _headers(delivery, config, body), float(timeout))
        except httpx.TimeoutException:
            return self._failed(delivery, "temporary", {"error": "timeout", "timeout": float(timeout)})
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            return self._failed(delivery, "permanent", {"error": "invalid_url"})
        except httpx.TransportError as exc:
            detail = {"error": "connection_failed", "exception": type(exc).__name__}
            return self._failed(delivery, "temporary", detail)
        _log.info(
            "webhook delivery %s on channel %s (attempt %d): HTTP %d",
            delivery.delivery_id,
            delivery.channel,
            delivery.attempt_number,
            response.status_code,
        )
        return _classify(response)

    def _post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> httpx.Response:
        return self._shared_client().post(url, content=body, headers=headers, timeout=timeout)

    def _shared_client(self) -> httpx.Client:
        # One client for every call (httpx clients are thread-safe): it keeps connections alive,
        # and building a client per call costs more than most deliveries take.
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(
                        follow_redirects=False,
                        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                    )
        return self._client

    def _failed(self, delivery: DeliveryContext, kind: FailureKind, detail: dict[str, Any]) -> Failed:
        _log.info(
            "webhook delivery %s on channel %s (attempt %d) failed: %s",
            delivery.delivery_id,
            delivery.channel,
            delivery.attempt_number,
            detail.get("exception", detail["error"]),
        )
        return Failed(kind, detail)


def _body(delivery: DeliveryContext) -> bytes:
    document = {
        "delivery_id": str(delivery.delivery_id),
        "notification_id": str(delivery.notification_id),
        "notification_key": delivery.notification_key,
        "channel": delivery.channel,
        "attempt_number": delivery.attempt_number,
        "recipient": delivery.recipient_identity,
        "metadata": delivery.metadata,
    }
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def _headers(delivery: DeliveryContext, config: Mapping[str, Any], body: bytes) -> dict[str, str]:
    headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
    headers["Content-Type"] = "application/json"
    headers["Idempotency-Key"] = delivery.idempotency_key
    token = config.get("token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    secret = config.get("secret")
    if secret:
        digest = hmac.new(str(secret).encode(), body, hashlib.sha256).hexdigest()
        headers["X-Chimeway-Signature"] = f"sha256={digest}"
    return headers


def _classify(response: httpx.Response) -> Delivered | Failed:
    status = response.status_code
    if 200 <= status < 300:
        meta: dict[str, Any] = {"adapter": "webhook", "status_code": status}
        message_id = _message_id(response)
        if message_id is not None:
            meta["provider_message_id"] = message_id
        return Delivered(meta)
    detail: dict[str, Any] = {"status_code": status}
    if status in _TEMPORARY_STATUSES or status >= 500:
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None:
            detail["retry_after"] = retry_after
        return Failed("temporary", detail)
    if status == _GONE:
        return Failed("bounced", detail)
    if 300 <= status < 400:
        detail["error"] = "redirects are not followed; configure the final url"
    return Failed("permanent", detail)


def _message_id(response: httpx.Response) -> str | None:
    try:
        document = response.json()
    except ValueError:  # an empty or non-JSON body is a fine answer
        return None
    if not isinstance(document, dict):
        return None
    for key in ("id", "message_id"):
        value = document.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return None
