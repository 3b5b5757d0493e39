"""Drop secrets from anything chimeway stores or logs: keys named password, token or secret."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["SENSITIVE_KEYS", "redact"]

#: Compared case-insensitively with whole key names, as Elixir Chimeway does. Adapters must drop
#: their own provider-specific secrets (``api_key``, ``auth``, …) from what they return.
SENSITIVE_KEYS: Final = frozenset({"password", "token", "secret"})


def redact(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """Return a copy of ``mapping`` without sensitive keys, at any depth (inside lists too)."""
    return {key: _redact_value(value) for key, value in mapping.items() if not _sensitive(key)}


def _sensitive(key: object) -> bool:
    return isinstance(key, str) and key.casefold() in SENSITIVE_KEYS


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value
