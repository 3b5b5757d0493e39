"""POST each delivery as JSON to an HTTP endpoint and classify the answer.

Config (per channel):

=================  ============================================================================
``url``            where to POST (required)
``timeout``        seconds the whole call may take: connecting, sending, and the answer's
                   status, headers and (capped) body together (default 10)
``headers``        extra request headers
``token``          sent as ``Authorization: Bearer <token>``
``secret``         signs each request per Standard Webhooks (:mod:`chimeway.webhooks`): a
                   ``whsec_`` secret, or a list of them while rotating (one signature each).
                   Adds ``webhook-id`` (the delivery id: the same on every retry),
                   ``webhook-timestamp`` (fresh on each attempt) and ``webhook-signature:
                   v1,<base64 HMAC-SHA256>``; receivers check them with
                   :func:`chimeway.webhooks.verify`
``legacy_secret``  the previous scheme, for receivers not yet upgraded: any string, sent as
                   ``X-Chimeway-Signature: sha256=<hex HMAC-SHA256 of the body>`` (no
                   timestamp, so a captured request verifies forever: only while migrating)
=================  ============================================================================

Every request carries ``Idempotency-Key: <delivery_id>:<attempt_number>``. If the worker dies
after the POST but before the attempt is recorded, the retry re-sends with the same key (the
attempt number was never used), so the receiver can drop the duplicate.

Answers: 2xx → delivered (the JSON answer's ``id`` or ``message_id`` becomes the provider
message id); 408, 425, 429, 5xx, timeouts and connection errors → temporary; 410 Gone →
bounced; any other answer → permanent (redirects are not followed). Once the status has decided,
nothing about the body changes the outcome: only the first 64 KiB of a 2xx answer are read (the
rest is dropped with the connection), and a body that isn't JSON, nests too deep or carries an
unusable id just means no message id. A message id with a control character is dropped; one
longer than 255 characters is stored as its SHA-256. Neither the config, the URL nor the answer's
body reaches the provider response or chimeway's logs. Keep credentials out of the URL all the
same (use ``token``, ``secret`` or ``headers``): httpx logs request URLs at INFO on its own
``httpx`` logger.

``deliver`` is ``async``: the dispatch worker runs many at once on its event loop over one shared
``httpx.AsyncClient`` per loop (keep-alive, at most 100 connections per receiving origin), opened
and closed with the dispatcher (:meth:`WebhookAdapter.open`, :meth:`WebhookAdapter.aclose`).
Called outside an opened dispatcher, each call uses a client of its own. The client's transport is
:class:`~chimeway.adapters.transport.KeepAliveTransport` (HTTP/1.1, no proxies): httpx's default
pool costs a millisecond of CPU per request once a hundred are in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import weakref
from collections.abc import Mapping
from typing import Any, Final

import httpx
import orjson

from ..states import FailureKind
from ..webhooks import parse_secrets, signed_headers
from .base import Delivered, DeliveryContext, Failed, message_id
from .transport import KeepAliveTransport

__all__ = ["DEFAULT_TIMEOUT", "MAX_ANSWER_BYTES", "MAX_CONNECTIONS", "WebhookAdapter"]

DEFAULT_TIMEOUT: Final = 10.0
#: How much of a 2xx answer is read, for its message id; the rest is never read.
MAX_ANSWER_BYTES: Final = 64 * 1024
#: The dispatcher's own deadline on a call exceeds the adapter's by this much, so the adapter's
#: answer (a timeout it classifies itself) normally wins.
DEADLINE_GRACE: Final = 1.0
# The answers that mean "not now": request timeout, too early, too many requests.
_TEMPORARY_STATUSES: Final = frozenset({408, 425, 429})
_GONE: Final = 410
_MAX_RETRY_AFTER: Final = 64
_MAX_URLS: Final = 1_000
#: Connections per receiving origin that one worker keeps open at most.
MAX_CONNECTIONS: Final = 100

_log = logging.getLogger("chimeway.adapters.webhook")


class WebhookAdapter:
    """Sends deliveries with httpx; pass a ``client`` to use yours for every call (it stays yours)."""

    name = "webhook"

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client
        self._urls: dict[str, httpx.URL] = {}
        self._keys: dict[object, tuple[bytes, ...]] = {}
        self._shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    async def open(self) -> None:
        """Create the client this event loop's calls share (a no-op if there is one)."""
        loop = asyncio.get_running_loop()
        if self._client is None and loop not in self._shared:
            self._shared[loop] = _new_client()

    async def aclose(self) -> None:
        """Close the client this event loop's calls shared, if any."""
        client = self._shared.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def attempt_timeout(self, config: Mapping[str, Any]) -> float:
        """How long one call may take with ``config``: its ``timeout`` and a little grace."""
        timeout = _timeout(config)
        return (timeout if timeout is not None else DEFAULT_TIMEOUT) + DEADLINE_GRACE

    async def deliver(self, delivery: DeliveryContext, config: Mapping[str, Any]) -> Delivered | Failed:
        url = config.get("url")
        if not isinstance(url, str) or not url:
            return Failed("permanent", {"error": "the webhook channel has no url configured"})
        timeout = _timeout(config)
        if timeout is None:
            return Failed("permanent", {"error": "the webhook timeout must be a positive number of seconds"})
        body = _body(delivery)
        try:
            keys = self._signing_keys(config.get("secret"))
        except ValueError:
            return self._failed(delivery, "permanent", {"error": "invalid_secret"})
        try:
            headers = _headers(delivery, config, body)
        except (TypeError, ValueError):
            return self._failed(delivery, "permanent", {"error": "invalid_headers"})
        if keys:
            headers.update(signed_headers(body, message_id=str(delivery.delivery_id), keys=keys))
        client = self._client or self._shared.get(asyncio.get_running_loop())
        if client is not None:
            return await self._send(client, delivery, url, body, headers, timeout)
        async with _new_client() as own:  # no dispatcher opened in this loop: a client of its own
            return await self._send(own, delivery, url, body, headers, timeout)

    async def _send(
        self,
        client: httpx.AsyncClient,
        delivery: DeliveryContext,
        url: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
    ) -> Delivered | Failed:
        answer = _Answer()
        try:
            # One deadline for the whole call: httpx's timeout applies to each read separately,
            # so a receiver dripping one byte a second would otherwise hold the call forever.
            async with asyncio.timeout(timeout):
                request = client.build_request(
                    "POST", self._parsed(url), content=body, headers=headers, timeout=timeout
                )
                response = await client.send(request, stream=True)
                try:
                    answer.status = response.status_code
                    answer.retry_after = response.headers.get("Retry-After")
                    if 200 <= answer.status < 300:
                        answer.body = await _read_capped(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            pass  # the status, if it came, decides; else a timeout, below
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            if answer.status is None:
                return self._failed(delivery, "permanent", {"error": "invalid_url"})
        except httpx.LocalProtocolError:  # a configured header with CR, LF or NUL in it
            if answer.status is None:
                return self._failed(delivery, "permanent", {"error": "invalid_headers"})
        except httpx.TransportError as exc:
            if answer.status is None:
                detail = {"error": "connection_failed", "exception": type(exc).__name__}
                return self._failed(delivery, "temporary", detail)
        if answer.status is None:
            return self._failed(delivery, "temporary", {"error": "timeout", "timeout": timeout})
        if _log.isEnabledFor(logging.INFO):
            _log.info(
                "webhook delivery %s on channel %s (attempt %d): HTTP %d",
                delivery.delivery_id,
                delivery.channel,
                delivery.attempt_number,
                answer.status,
            )
        return _classify(answer)

    def _signing_keys(self, secret: object) -> tuple[bytes, ...]:
        """The keys of the channel's ``secret`` (none when unset), decoded once per secret."""
        if secret is None or secret == "":
            return ()
        cache_key = tuple(secret) if isinstance(secret, list | tuple) else secret
        try:
            keys = self._keys.get(cache_key)
        except TypeError:  # unhashable: not a secret parse_secrets accepts either
            keys = None
        if keys is None:
            keys = parse_secrets(secret)
            if len(self._keys) >= _MAX_URLS:
                self._keys.clear()
            self._keys[cache_key] = keys
        return keys

    def _parsed(self, url: str) -> httpx.URL:
        # Parsing a URL is a tenth of a request's cost in httpx; a channel has one URL.
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _MAX_URLS:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    def _failed(self, delivery: DeliveryContext, kind: FailureKind, detail: dict[str, Any]) -> Failed:
        _log.info(
            "webhook delivery %s on channel %s (attempt %d) failed: %s",
            delivery.delivery_id,
            delivery.channel,
            delivery.attempt_number,
            detail.get("exception", detail["error"]),
        )
        return Failed(kind, detail)


class _Answer:
    __slots__ = ("body", "retry_after", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.retry_after: str | None = None
        self.body: bytes | None = None


def _new_client() -> httpx.AsyncClient:
    transport = KeepAliveTransport(max_connections=MAX_CONNECTIONS, keepalive_expiry=30.0)
    return httpx.AsyncClient(follow_redirects=False, transport=transport)


def _timeout(config: Mapping[str, Any]) -> float | None:
    timeout = config.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 1e6:
        return None
    return float(timeout)


async def _read_capped(response: httpx.Response) -> bytes | None:
    """The answer's body if it fits in :data:`MAX_ANSWER_BYTES`, else None (reading stops there).

    Any problem reading it is None too: the status has already decided the outcome."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                return None
            chunks.append(chunk)
    except Exception:
        return None
    return b"".join(chunks)


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
    try:
        return orjson.dumps(document, default=str)
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate, a non-string key, …
        return json.dumps(document, separators=(",", ":"), default=str).encode("utf-8", "replace")


def _headers(delivery: DeliveryContext, config: Mapping[str, Any], body: bytes) -> dict[str, str]:
    headers = {str(k): str(v) for k, v in (config.get("headers") or {}).items()}
    headers["Content-Type"] = "application/json"
    # The raw body is read (capped) for the message id; a compressed one would only be noise.
    headers["Accept-Encoding"] = "identity"
    headers["Idempotency-Key"] = delivery.idempotency_key
    token = config.get("token")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    legacy = config.get("legacy_secret")
    if legacy:
        digest = hmac.new(str(legacy).encode(), body, hashlib.sha256).hexdigest()
        headers["X-Chimeway-Signature"] = f"sha256={digest}"
    return headers


def _classify(answer: _Answer) -> Delivered | Failed:
    status = answer.status
    assert status is not None
    if 200 <= status < 300:
        meta: dict[str, Any] = {"adapter": "webhook", "status_code": status}
        found = _message_id(answer.body)
        if found is not None:
            meta["provider_message_id"] = found
        return Delivered(meta)
    detail: dict[str, Any] = {"status_code": status}
    if status in _TEMPORARY_STATUSES or status >= 500:
        retry_after = answer.retry_after
        if retry_after is not None and retry_after.isprintable():
            detail["retry_after"] = retry_after[:_MAX_RETRY_AFTER]
        return Failed("temporary", detail)
    if status == _GONE:
        return Failed("bounced", detail)
    if 300 <= status < 400:
        detail["error"] = "redirects are not followed; configure the final url"
    return Failed("permanent", detail)


def _message_id(body: bytes | None) -> str | None:
    if not body:
        return None
    try:
        document = orjson.loads(body)
    except Exception:  # not JSON, or nested deeper than a parser should follow: no id, still delivered
        return None
    if not isinstance(document, dict):
        return None
    for key in ("id", "message_id"):
        found = message_id(document.get(key))
        if found is not None:
            return found
    return None
