"""Who may use the dashboard: a token, basic auth or the host application's callable; CSRF.

Authentication is required unless the app is built with ``insecure_no_auth=True``. A browser signs
in once at ``/login`` and gets a session cookie signed with the app's secret; scripts may send the
token as ``Authorization: Bearer …`` or basic credentials on every request. A failed check is a
bare 401: it never says which part was wrong.

Every state-changing request (POST) must carry the CSRF token of its session: an HMAC of the
session under the app's secret, put into every form the dashboard renders. A page on another
origin can make a browser send the cookie, but cannot read the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from ..errors import ConfigError

__all__ = ["SESSION_COOKIE", "Authenticator", "Credentials", "Sessions"]

#: the host application's check: the signed-in user's name, or None to refuse
Authenticator = Callable[[HTTPConnection], "Awaitable[str | None] | str | None"]

SESSION_COOKIE = "pgqueue_session"
#: a session cookie is good for this many seconds
SESSION_SECONDS = 12 * 3600


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class Credentials:
    """The configured ways in; at least one unless the dashboard is deliberately left open."""

    token: str | None = None
    basic_user: str | None = None
    basic_password: str | None = None
    authenticate: Authenticator | None = None
    insecure_no_auth: bool = False

    def __post_init__(self) -> None:
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("token must be at least 16 characters long")
        if (self.basic_user is None) != (self.basic_password is None):
            raise ConfigError("basic_auth needs both a user and a password (user:password)")
        if self.basic_user is not None and (not self.basic_user or ":" in self.basic_user):
            raise ConfigError("basic_auth user must be non-empty and hold no ':'")
        configured = self.token is not None or self.basic_user is not None or self.authenticate is not None
        if not configured and not self.insecure_no_auth:
            raise ConfigError(
                "the dashboard requires authentication: give a token, basic_auth or an authenticate "
                "callable (or insecure_no_auth=True for a dashboard anyone who can reach it may use)"
            )

    @classmethod
    def parse_basic(cls, value: str) -> tuple[str, str]:
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ConfigError("basic_auth must look like user:password")
        return user, password

    def check_secret(self, user: str | None, secret: str) -> str | None:
        """The principal for a login form's fields, or None."""
        if self.token is not None and user in (None, "") and _equal(secret, self.token):
            return "token"
        if (
            self.basic_user is not None
            and self.basic_password is not None
            and user is not None
            and _equal(user, self.basic_user)
            and _equal(secret, self.basic_password)
        ):
            return self.basic_user
        return None

    def from_header(self, header: str | None) -> str | None:
        """The principal for an ``Authorization`` header, or None."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token is not None:
            return "token" if _equal(value.strip(), self.token) else None
        if scheme == "basic" and self.basic_user is not None:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except ValueError:
                return None
            user, _, password = decoded.partition(":")
            return self.check_secret(user, password)
        return None

    async def from_callable(self, conn: HTTPConnection) -> str | None:
        if self.authenticate is None:
            return None
        result = self.authenticate(conn)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, str) and result else None


class Sessions:
    """Signs session cookies and derives each session's CSRF token from the app's secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        # A fresh secret per process unless given: restarting the dashboard signs everyone out.
        self._key = secret or secrets.token_bytes(32)

    def _sign(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def issue(self, principal: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        body = f"{base64.urlsafe_b64encode(principal.encode()).decode()}.{expires}"
        return f"{body}.{self._sign(body)}"

    def principal(self, cookie: str | None, now: float | None = None) -> str | None:
        """The principal of a valid, unexpired session cookie, or None."""
        if not cookie or cookie.count(".") != 2:
            return None
        encoded, expires, signature = cookie.split(".")
        if not _equal(signature, self._sign(f"{encoded}.{expires}")):
            return None
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        try:
            return base64.urlsafe_b64decode(encoded.encode()).decode("utf-8")
        except ValueError:
            return None

    def csrf_token(self, principal: str) -> str:
        return self._sign(f"csrf:{principal}")

    def check_csrf(self, principal: str, given: str | None) -> bool:
        return given is not None and _equal(given, self.csrf_token(principal))
