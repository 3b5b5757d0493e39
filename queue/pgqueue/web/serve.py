"""``python -m pgqueue web``: serve the dashboard with uvicorn (the CLI parses the options)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .context import Extension, Redactor, default_redact

__all__ = ["build_app", "load_extension", "serve"]


def load_extension(path: str) -> Extension:
    """The extension at ``module:attribute`` (an extension, or a callable returning one).

    Only the operator names these, on the command line; nothing read from the database does.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not all(part.isidentifier() for part in [*module_name.split("."), attribute]):
        raise ConfigError(f"extension must look like package.module:attribute, got {path!r}")
    try:
        target: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load extension {path!r}: {exc}") from None
    extension = target() if callable(target) and not hasattr(target, "routes") else target
    if not all(
        hasattr(extension, name) for name in ("name", "title", "routes", "template_dir", "collectors")
    ):
        raise ConfigError(f"{path!r} is not a dashboard extension")
    return extension  # type: ignore[no-any-return]


def serve(
    *,
    dsn: str,
    schema: str,
    host: str,
    port: int,
    token: str | None,
    basic_auth: str | None,
    insecure_no_auth: bool,
    read_only: bool,
    extensions: Sequence[str],
    log_level: str,
) -> None:
    import uvicorn

    app = build_app(
        dsn=dsn,
        schema=schema,
        token=token,
        basic_auth=basic_auth,
        insecure_no_auth=insecure_no_auth,
        read_only=read_only,
        extensions=extensions,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, access_log=False)


def build_app(
    *,
    dsn: str,
    schema: str,
    token: str | None,
    basic_auth: str | None,
    insecure_no_auth: bool,
    read_only: bool,
    extensions: Sequence[str],
) -> Any:
    """The app ``python -m pgqueue web`` serves: an extension that brings a redaction policy of
    its own (Chimeway's) has args and meta shown through it."""
    from .app import create_app

    loaded = [load_extension(path) for path in extensions]
    redact: Redactor = default_redact
    for extension in loaded:
        policy = getattr(extension, "redact", None)
        if callable(policy):
            redact = policy
    return create_app(
        dsn,
        schema=schema,
        token=token,
        basic_auth=basic_auth,
        insecure_no_auth=insecure_no_auth,
        read_only=read_only,
        redact=redact,
        extensions=loaded,
    )
