"""``pgqueue.toml``: what ``python -m pgqueue start`` runs, so cron and limits need no Python.

::

    dsn = "postgresql://app@db/app"        # or --dsn / DATABASE_URL (both win over the file)
    schema = "public"
    node = "worker-1"
    workers = ["myapp.workers"]
    shutdown_grace = 15

    [queues]                                # omit to run the queues declared with `queues add`
    default = 10
    media = { limit = 5, global_limit = 3, rate_limit = 50, rate_period = 1 }

    [[cron]]
    name = "nightly-report"
    expression = "0 3 * * *"
    timezone = "Europe/Berlin"
    worker = "myapp.workers.Report"         # the worker's registry name
    args = { kind = "daily" }

    [plugins]
    lifeline = { rescue_window = 30 }
    pruner = { max_age = 604800 }
    reindexer = { schedule = "@weekly" }
    cron = { database = true }              # false: ignore the entries of `cron add`

Every mistake is a :class:`~pgqueue.errors.ConfigError` that names the file and the key
(``pgqueue.toml: queues.media: global_limit must be …``), raised before anything starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cron_entries import CronRow
from .errors import ConfigError
from .plugins import Plugin
from .plugins.cron import Cron, CronEntry
from .plugins.lifeline import Lifeline
from .plugins.pruner import Pruner
from .plugins.reindexer import Reindexer
from .plugins.stager import Stager
from .queue_config import QueueConfig
from .worker import load_worker_modules, registry

__all__ = ["DEFAULT_FILE", "StartFile", "load_start_file"]

DEFAULT_FILE = "pgqueue.toml"
_KEYS = frozenset({"dsn", "schema", "node", "workers", "shutdown_grace", "queues", "cron", "plugins"})
_PLUGINS: dict[str, type[Any]] = {"lifeline": Lifeline, "pruner": Pruner, "reindexer": Reindexer}


@dataclass
class StartFile:
    """The settings of a ``pgqueue.toml``, checked."""

    path: str = DEFAULT_FILE
    dsn: str | None = None
    schema: str | None = None
    node: str | None = None
    workers: list[str] = field(default_factory=list)
    shutdown_grace: float | None = None
    queues: dict[str, QueueConfig] | None = None
    cron: list[CronRow] = field(default_factory=list)
    plugins: dict[str, Any] = field(default_factory=dict)

    def error(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}")

    def plugin_list(self, *, rescue_window: float | None, prune_after: float | None) -> list[Plugin]:
        """The node's plugins: the stager, the lifeline, cron, and the pruner and reindexer when
        configured. ``rescue_window`` / ``prune_after`` (command-line flags) win over the file."""
        options = {name: dict(self.plugins.get(name) or {}) for name in _PLUGINS}
        if rescue_window is not None:
            options["lifeline"]["rescue_window"] = rescue_window
        if prune_after is not None:
            options["pruner"]["max_age"] = prune_after
        plugins: list[Plugin] = [Stager(), self._build("lifeline", options["lifeline"])]
        for name in ("pruner", "reindexer"):
            if name in self.plugins or options[name]:
                plugins.append(self._build(name, options[name]))
        cron = self.plugins.get("cron", {})
        database = cron.get("database", True) if isinstance(cron, Mapping) else bool(cron)
        entries = self.cron_entries()
        if entries or database:
            plugins.append(Cron(entries, database=database))
        return plugins

    def cron_entries(self) -> list[CronEntry]:
        """The file's cron entries, their workers looked up in the registry (load ``workers`` first)."""
        entries = []
        for index, row in enumerate(self.cron):
            where = f"cron[{index}] ({row.name!r})"
            worker = registry.get(row.worker)
            if worker is None:
                raise self.error(
                    where, f"worker {row.worker!r} is not registered (is its module in workers?)"
                )
            try:
                entries.append(
                    CronEntry(row.expression, worker, row.args, row.timezone, row.options(), row.name)
                )
            except (ConfigError, TypeError) as exc:
                raise self.error(where, str(exc)) from None
        return entries

    def _build(self, name: str, options: dict[str, Any]) -> Plugin:
        try:
            plugin: Plugin = _PLUGINS[name](**options)
        except TypeError as exc:
            raise self.error(f"plugins.{name}", f"unknown option ({exc})") from None
        except ConfigError as exc:
            raise self.error(f"plugins.{name}", str(exc)) from None
        return plugin


def load_start_file(path: str | Path, *, load_workers: bool = True) -> StartFile:
    """Read and check ``path``; with ``load_workers`` import its worker modules (cron needs them)."""
    name = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{name}: can't read it ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML ({exc})") from None
    result = StartFile(path=name)
    unknown = set(data) - _KEYS
    if unknown:
        raise result.error(repr(sorted(unknown)[0]), f"unknown key (valid: {', '.join(sorted(_KEYS))})")
    for key in ("dsn", "schema", "node"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise result.error(key, f"must be a string, got {value!r}")
        setattr(result, key, value)
    workers = data.get("workers", [])
    if not isinstance(workers, list) or not all(isinstance(w, str) for w in workers):
        raise result.error("workers", f"must be a list of module names, got {workers!r}")
    result.workers = workers
    grace = data.get("shutdown_grace")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0):
        raise result.error("shutdown_grace", f"must be a number of seconds of at least 0, got {grace!r}")
    result.shutdown_grace = None if grace is None else float(grace)
    result.queues = _queues(result, data.get("queues"))
    result.cron = _cron(result, data.get("cron", []))
    plugins = data.get("plugins", {})
    if not isinstance(plugins, dict) or set(plugins) - {*_PLUGINS, "cron"}:
        raise result.error("plugins", f"must be a table of {', '.join([*_PLUGINS, 'cron'])}, got {plugins!r}")
    result.plugins = plugins
    if load_workers:
        load_worker_modules(result.workers)
        result.cron_entries()  # every cron worker must exist now, not at the first minute
        result.plugin_list(rescue_window=None, prune_after=None)  # and every plugin option
    return result


def _queues(result: StartFile, value: Any) -> dict[str, QueueConfig] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise result.error(
            "queues", f"must be a table of queue = limit or queue = {{ limit = … }}, got {value!r}"
        )
    queues = {}
    for queue, config in value.items():
        try:
            queues[queue] = QueueConfig.parse(queue, config)
        except ConfigError as exc:
            raise result.error(f"queues.{queue}", str(exc).removeprefix(f"queue {queue!r}: ")) from None
    return queues


def _cron(result: StartFile, value: Any) -> list[CronRow]:
    if not isinstance(value, list):
        raise result.error("cron", "must be an array of tables ([[cron]])")
    rows = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise result.error(f"cron[{index}]", f"must be a table, got {item!r}")
        where = f"cron[{index}] ({item.get('name')!r})"
        unknown = set(item) - {"name", "expression", "worker", "args", "timezone", "queue", "priority",
                               "max_attempts", "enabled"}  # fmt: skip
        if unknown:
            raise result.error(where, f"unknown key {sorted(unknown)[0]!r}")
        for required in ("name", "expression", "worker"):
            if required not in item:
                raise result.error(where, f"{required} is required")
        try:
            row = CronRow(**item).validated()
        except ConfigError as exc:
            raise result.error(where, str(exc).removeprefix(f"cron entry {item['name']!r}: ")) from None
        if row.enabled:
            rows.append(row)
    names = [row.name for row in rows]
    if len(set(names)) != len(names):
        raise result.error("cron", "two entries have the same name")
    return rows
