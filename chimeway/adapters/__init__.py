"""Channel adapters: the built-ins by name, and the protocol a custom adapter implements.

``resolve_adapter(name)`` returns a built-in: ``"logger"`` (the default), ``"test"`` (in memory;
one shared instance), ``"webhook"`` or ``"email"`` (SMTP). Names come from configuration, so
they are looked up in this fixed table; no module is ever imported because a row or a config
file names it. Use a custom adapter by passing the object itself to whatever takes an adapter.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from ..errors import UnknownAdapter
from .base import Adapter, Classification, Delivered, DeliveryContext, Failed, classify, redact
from .logger import LoggerAdapter
from .smtp import EmailAdapter
from .test import TestAdapter
from .webhook import WebhookAdapter

__all__ = [
    "DEFAULT_ADAPTER",
    "Adapter",
    "Classification",
    "Delivered",
    "DeliveryContext",
    "EmailAdapter",
    "Failed",
    "LoggerAdapter",
    "TestAdapter",
    "WebhookAdapter",
    "adapter_names",
    "classify",
    "redact",
    "resolve_adapter",
]

DEFAULT_ADAPTER: Final = "logger"

_BUILTINS: Final[MappingProxyType[str, Adapter]] = MappingProxyType(
    {"logger": LoggerAdapter(), "test": TestAdapter(), "webhook": WebhookAdapter(), "email": EmailAdapter()}
)


def adapter_names() -> tuple[str, ...]:
    """The names :func:`resolve_adapter` knows."""
    return tuple(_BUILTINS)


def resolve_adapter(name: str = DEFAULT_ADAPTER) -> Adapter:
    """The built-in adapter called ``name``; raises UnknownAdapter naming the valid ones."""
    try:
        return _BUILTINS[name]
    except (KeyError, TypeError):
        raise UnknownAdapter(name, _BUILTINS) from None
