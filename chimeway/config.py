"""Settings for ``python -m chimeway.worker``: ``DATABASE_URL`` and an optional ``chimeway.toml``.

Everything is validated once, at start, and every mistake is reported with the key that holds it::

    schema = "public"          # where chimeway's tables and pgqueue's jobs table live
    node = "worker-1"          # default: host:pid
    queue_limit = 200          # deliveries in flight at once in this process (1..10000)
    shutdown_grace = 15        # seconds running deliveries get on SIGTERM
    rescue_window = 15         # seconds of silence after which a dead worker's jobs are rescued
    retry_backoff = 1.0        # seconds between retries (default: the queue's exponential backoff)
    prune_after = 604800       # delete finished jobs older than this many seconds (default: keep)
    recover_after = 300        # seconds a delivery may stay dispatched with no live job before
                               # it is re-driven (chimeway.recovery)

    [channels.email]
    adapter = "webhook"        # logger (default), webhook, email or test
    config = { url = "https://hooks.example.com/notify", timeout = 5 }
    rate_limit = 10            # sends started per rate_period, across every worker (optional)
    rate_period = 1            # seconds (default 1)
    concurrency = 5            # sends in flight at once, across every worker (optional)
    account = "provider-main"  # channels naming one provider account share its limits
                               # (default: the channel's own name)

``DATABASE_URL`` wins over ``database_url`` in the file. Durations are seconds, at most 1e10.
Secrets in adapter configs (keys named like password, token, secret) are never logged, and the
settings' ``repr`` shows neither the database password nor any adapter config value.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgqueue.migrate import validate_schema_name

from .adapters import adapter_names
from .channel_limits import ChannelLimits
from .errors import ChimewayError
from .webhooks import parse_secrets

__all__ = ["MAX_DURATION", "MAX_QUEUE_LIMIT", "ChannelSettings", "ConfigError", "Settings", "load_settings"]

_TOP_LEVEL = {
    "database_url",
    "direct_database_url",
    "schema",
    "node",
    "queue_limit",
    "shutdown_grace",
    "rescue_window",
    "recover_after",
    "retry_backoff",
    "prune_after",
    "channels",
}


#: The longest duration a setting may hold, in seconds (as pgqueue's own options): beyond it a
#: timestamp computed from it overflows PostgreSQL's range.
MAX_DURATION = 1e10
MAX_QUEUE_LIMIT = 10_000
_ACCOUNT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ConfigError(ChimewayError, ValueError):
    """The configuration is invalid; the message names the key and what would be valid."""


@dataclass(frozen=True)
class ChannelSettings:
    adapter: str = "logger"
    config: Mapping[str, Any] = field(default_factory=dict)
    #: the provider's limits, enforced across every worker by pgqueue (see chimeway.dispatch.limits)
    limits: ChannelLimits | None = None

    def __repr__(self) -> str:
        # Config values may be secrets (tokens, signing keys, auth headers): keys only.
        return (
            f"ChannelSettings(adapter={self.adapter!r}, config keys={sorted(map(str, self.config))}, "
            f"limits={self.limits!r})"
        )


@dataclass(frozen=True)
class Settings:
    database_url: str
    schema: str = "public"
    node: str | None = None
    #: Two batches of 100 in flight: one being claimed and sent while the other is recorded.
    queue_limit: int = 200
    shutdown_grace: float = 15.0
    rescue_window: float = 15.0
    retry_backoff: float | None = None
    prune_after: float | None = None
    recover_after: float = 300.0
    channels: Mapping[str, ChannelSettings] = field(default_factory=dict)
    #: Behind a transaction pooler (PgBouncer): PostgreSQL itself, for the worker's LISTEN.
    direct_database_url: str | None = None

    def __repr__(self) -> str:
        names = ("schema", "node", "queue_limit", "shutdown_grace", "rescue_window", "retry_backoff")
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}" for name in (*names, "prune_after", "recover_after", "channels")
        )
        direct = "" if self.direct_database_url is None else _describe_dsn(self.direct_database_url)
        return (
            f"Settings(database_url={_describe_dsn(self.database_url)!r}, {fields}, "
            f"direct_database_url={direct or None!r})"
        )


def _describe_dsn(dsn: str) -> str:
    """Where a DSN points, without its password (or anything, when it can't be parsed)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "<a DSN that does not parse>"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host') or ''}{port}/{info.get('dbname') or ''}"


def _number(
    data: Mapping[str, Any],
    key: str,
    *,
    integer: bool = False,
    minimum: float = 0,
    maximum: float = MAX_DURATION,
) -> Any:
    value = data[key]
    kinds = (int,) if integer else (int, float)
    kind = "an integer" if integer else "a number"
    # TOML has inf and nan; neither is a duration (nan even passes the comparison below).
    not_finite = isinstance(value, float) and not math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, kinds) or not_finite or value < minimum:
        raise ConfigError(f"{key} must be {kind} >= {minimum:g}, got {value!r}")
    if value > maximum:
        raise ConfigError(f"{key} must be {kind} <= {maximum:g}, got {value!r}")
    return value


def _channels(raw: Any) -> dict[str, ChannelSettings]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"channels must be a table of [channels.<name>] sections, got {raw!r}")
    channels: dict[str, ChannelSettings] = {}
    for name, section in raw.items():
        where = f"channels.{name}"
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a table, got {section!r}")
        unknown = set(section) - {"adapter", "config", *_LIMIT_KEYS}
        if unknown:
            valid = ", ".join(("adapter", "config", *_LIMIT_KEYS))
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (valid: {valid})")
        adapter = section.get("adapter", "logger")
        if adapter not in adapter_names():
            raise ConfigError(f"{where}.adapter must be one of {list(adapter_names())}, got {adapter!r}")
        config = section.get("config", {})
        if not isinstance(config, Mapping):
            raise ConfigError(f"{where}.config must be a table, got {config!r}")
        if adapter == "webhook":
            _check_webhook(where, config)
        elif adapter == "email":
            for key in ("host", "from"):
                if not isinstance(config.get(key), str) or not config[key]:
                    raise ConfigError(f"{where}.config.{key} is required for the email adapter")
            security = config.get("security", "starttls")
            if security not in ("starttls", "tls", "none"):
                raise ConfigError(f"{where}.config.security must be starttls, tls or none, got {security!r}")
            if security == "none" and ("username" in config or "password" in config):
                raise ConfigError(f"{where}.config.username and password need security starttls or tls")
        channels[str(name)] = ChannelSettings(adapter, dict(config), _limits(str(name), section))
    _check_shared_accounts(channels)
    return channels


def _check_webhook(where: str, config: Mapping[str, Any]) -> None:
    if not isinstance(config.get("url"), str):
        raise ConfigError(f"{where}.config.url is required for the webhook adapter")
    if "secret" in config:
        try:
            parse_secrets(config["secret"], f"{where}.config.secret")
        except ValueError as exc:
            raise ConfigError(f"{exc}; for the old X-Chimeway-Signature header use legacy_secret") from None
    legacy = config.get("legacy_secret")
    if legacy is not None and (not isinstance(legacy, str) or not legacy):
        raise ConfigError(f"{where}.config.legacy_secret must be a non-empty string")


_LIMIT_KEYS = ("rate_limit", "rate_period", "concurrency", "account")


def _limits(name: str, section: Mapping[str, Any]) -> ChannelLimits | None:
    where = f"channels.{name}"
    if not any(key in section for key in _LIMIT_KEYS):
        return None
    values: dict[str, Any] = {}
    for key in ("rate_limit", "concurrency"):
        if key in section:
            values[key] = _number(section, key, integer=True, minimum=1, maximum=1_000_000)
    if "rate_period" in section:
        if "rate_limit" not in section:
            raise ConfigError(f"{where}.rate_period needs a rate_limit")
        values["rate_period"] = float(_number(section, "rate_period", minimum=0.001, maximum=86_400))
    if "rate_limit" not in values and "concurrency" not in values:
        raise ConfigError(f"{where}: account needs a rate_limit or a concurrency to share")
    account = section.get("account", name)
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise ConfigError(f"{where}.account must be 1..64 letters, digits, '_', '-' or '.', got {account!r}")
    return ChannelLimits(account=account, **values)


def _check_shared_accounts(channels: Mapping[str, ChannelSettings]) -> None:
    seen: dict[str, tuple[str, ChannelLimits]] = {}
    for name, channel in channels.items():
        if channel.limits is None:
            continue
        first = seen.setdefault(channel.limits.account, (name, channel.limits))
        if first[1] != channel.limits:
            raise ConfigError(
                f"channels.{name} and channels.{first[0]} share the account {channel.limits.account!r} "
                "but declare different limits"
            )
    return None


def parse_settings(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """Validate a parsed configuration (the TOML file's contents) plus the environment."""
    unknown = set(data) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}; valid: {sorted(_TOP_LEVEL)}")
    url = env.get("DATABASE_URL") or data.get("database_url")
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("no database: set DATABASE_URL or database_url in the config file")
    options: dict[str, Any] = {"database_url": url}
    direct = env.get("DIRECT_DATABASE_URL") or data.get("direct_database_url")
    if direct is not None:
        if not isinstance(direct, str) or not direct.strip():
            raise ConfigError("direct_database_url must be a non-blank connection string")
        options["direct_database_url"] = direct
    if "schema" in data:
        try:
            options["schema"] = validate_schema_name(data["schema"])
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if "node" in data:
        if not isinstance(data["node"], str) or not data["node"].strip():
            raise ConfigError(f"node must be a non-blank string, got {data['node']!r}")
        options["node"] = data["node"]
    if "queue_limit" in data:
        options["queue_limit"] = _number(
            data, "queue_limit", integer=True, minimum=1, maximum=MAX_QUEUE_LIMIT
        )
    for key in ("shutdown_grace", "rescue_window", "retry_backoff", "prune_after", "recover_after"):
        if key in data:
            options[key] = float(_number(data, key, minimum=0.001 if key != "shutdown_grace" else 0))
    if "channels" in data:
        options["channels"] = _channels(data["channels"])
    return Settings(**options)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read ``path`` (or ``$CHIMEWAY_CONFIG``; none is fine) and the environment, and validate."""
    env = os.environ if env is None else env
    chosen = path or env.get("CHIMEWAY_CONFIG")
    data: dict[str, Any] = {}
    if chosen:
        file = Path(chosen)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"can't read config file {file}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
        except ValueError as exc:  # a path the OS can't take, such as one with a NUL in it
            raise ConfigError(f"can't read config file {str(file)!r}: {exc}") from None
    return parse_settings(data, env)
