"""Fuzzed command lines and configuration files: every mistake is one clear line, never a traceback.

Hypothesis generates flags for ``python -m pgqueue`` and ``chimeway.toml`` files (and flags) for
``python -m chimeway.worker``; each is run through the program's own ``main`` in this process,
with every database out of reach (``DATABASE_URL``, ``PGHOST``/``PGPORT`` and every ``--dsn``
point at a closed port) and the runtime's ``run`` replaced by a stub, so a command that is valid
would start a node and instead returns at once. The claims, per example: ``main`` returns an exit
status (nothing escapes it); a failure prints exactly one line on stderr and no traceback; a
configuration the worker accepts holds only finite numbers. A few of the cases then run as real
processes, to check the same contract end to end.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .context import Context
from .processes import REPOSITORY
from .report import ScenarioResult

__all__ = ["fuzzed_config"]

UNREACHABLE = "postgresql://chaos@127.0.0.1:1/nowhere?connect_timeout=2"
DSNS = [UNREACHABLE, "", " ", "not a dsn", "postgresql://", "host=127.0.0.1 port=1 dbname=x", "a=b=c", "\x00"]
NASTY = [
    "", " ", "-", "--", "-1", "0", "1", "nan", "inf", "-inf", "1e309", "10001", "2147483648",
    "default", "default:10", "default:0", "default:-1", "default:1e3", ":5", "a:b", "x,y", ",", "é:1",
    "q'); DROP TABLE jobs; --:3", 'x"; DROP SCHEMA public; --', "%(queue)s", "{jobs}", "\x00", "\n",
    "a" * 300, "public", "myapp.workers", ".relative", "os.path", "1.2.3", "json",
]  # fmt: skip
PGQUEUE_FLAGS = [
    "--dsn", "--schema", "--queues", "--workers", "--node", "--shutdown-grace", "--rescue-window",
    "--heartbeat-interval", "--prune-after", "--log-format", "--log-level", "--id", "--queue", "--worker",
    "--state", "--max-age", "--limit", "--all", "--down", "--to", "--bogus", "-x",
]  # fmt: skip
PGQUEUE_COMMANDS = ["start", "migrate", "status", "retry", "cancel", "prune", "version", "bogus", ""]
VALID_CONFIG: dict[str, Any] = {
    "schema": "public",
    "queue_limit": 5,
    "shutdown_grace": 1.0,
    "rescue_window": 15,
    "channels": {"hooks": {"adapter": "webhook", "config": {"url": "http://127.0.0.1:1/hook", "timeout": 2}}},
}


@dataclass
class _Outcome:
    examples: int = 0
    accepted: int = 0
    failures: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _sandbox() -> Iterator[None]:
    """No database reachable, ``Runtime.run`` stubbed, logging and Chimeway's dispatcher restored."""
    from chimeway import dispatch
    from pgqueue.runtime import Runtime

    saved_env = {k: os.environ.get(k) for k in ("DATABASE_URL", "PGHOST", "PGPORT", "CHIMEWAY_CONFIG")}
    os.environ.update({"DATABASE_URL": UNREACHABLE, "PGHOST": "127.0.0.1", "PGPORT": "1"})
    os.environ.pop("CHIMEWAY_CONFIG", None)
    original_run = Runtime.run
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def stub(self: Runtime) -> None:
        return None

    Runtime.run = stub  # type: ignore[method-assign]
    try:
        yield
    finally:
        Runtime.run = original_run  # type: ignore[method-assign]
        root.handlers[:], root.level = handlers, level
        dispatch.configure(None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _call(main: Callable[[Sequence[str]], int], argv: list[str]) -> tuple[Any, str]:
    """Run ``main(argv)``; (its exit status or the exception that escaped, what it wrote to stderr)."""
    err, out = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            status: Any = main(argv)
    except SystemExit as exc:  # argparse's --help: prints usage and exits 0
        status = exc.code if isinstance(exc.code, int) else 2
    except BaseException as exc:
        status = exc
    finally:
        root.handlers[:], root.level = handlers, level
    return status, err.getvalue()


def _judge_call(outcome: _Outcome, program: str, argv: list[str], status: Any, stderr: str) -> None:
    outcome.examples += 1
    # Split on newlines only: str.splitlines() also breaks on \x1c-\x1e and \x85, which fuzzed values carry.
    lines = [line for line in stderr.split("\n") if line.strip()]
    if isinstance(status, BaseException):
        problem = f"{type(status).__name__} escaped: {status}"
    elif not isinstance(status, int):
        problem = f"returned {status!r}, not an exit status"
    elif status != 0 and (len(lines) != 1 or "Traceback" in stderr):
        problem = f"exit {status} with {len(lines)} lines on stderr: {stderr[:200]!r}"
    else:
        outcome.accepted += status == 0
        return
    outcome.failures.append(f"{program} {argv!r}: {problem}")
    raise AssertionError(outcome.failures[-1])


def _run_property(test: Callable[[], None], outcome: _Outcome) -> None:
    try:
        test()
    except Exception as exc:
        if not outcome.failures:
            outcome.failures.append(f"{type(exc).__name__}: {str(exc)[:300]}")


# -- python -m pgqueue ----------------------------------------------------------------------------


def _values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(NASTY),
        st.text(max_size=24),
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )


def _pgqueue_argv() -> st.SearchStrategy[list[str]]:
    def flatten(command: str, pairs: list[tuple[str, str | None]]) -> list[str]:
        argv = [command] if command else []
        for flag, value in pairs:
            argv.append(flag)
            if value is not None:
                argv.append(value)
        return argv

    pair = st.tuples(st.sampled_from(PGQUEUE_FLAGS), st.one_of(st.none(), _values()))
    dsn_pair = st.tuples(st.just("--dsn"), st.sampled_from(DSNS))
    pairs = st.lists(st.one_of(pair, dsn_pair), max_size=7).map(
        # Only the DSNs above may reach a connection: a fuzzed one could name a real server.
        lambda ps: [(f, v if f != "--dsn" or v in DSNS else UNREACHABLE) for f, v in ps]
    )
    # A valid start with one flag fuzzed: most of these parse, so the runtime's own checks are reached.
    valid = ["start", "--dsn", UNREACHABLE, "--queues", "default:5", "--rescue-window", "5"]
    one_flag_off = st.tuples(
        st.sampled_from(PGQUEUE_FLAGS[1:11]), st.one_of(_values(), st.sampled_from(["0.5", "2", "json"]))
    ).map(lambda p: [*valid, p[0], p[1]])
    return st.one_of(st.builds(flatten, st.sampled_from(PGQUEUE_COMMANDS), pairs), one_flag_off)


def _fuzz_pgqueue_cli(examples: int, run_seed: int) -> _Outcome:
    from pgqueue.cli import main

    outcome = _Outcome()

    @seed(run_seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(argv=_pgqueue_argv())
    def pgqueue_flags(argv: list[str]) -> None:
        status, stderr = _call(main, argv)
        _judge_call(outcome, "python -m pgqueue", argv, status, stderr)

    with _sandbox():
        _run_property(pgqueue_flags, outcome)
    return outcome


# -- python -m chimeway.worker --------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(type(value))


def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F or 0xD800 <= ord(char) <= 0xDFFF:
            escaped.append(f"\\u{ord(char):04x}" if not 0xD800 <= ord(char) <= 0xDFFF else "\\ufffd")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def render_toml(document: Mapping[str, Any]) -> str:
    """A TOML document: top-level scalars first, then one ``[channels.<name>]`` table per channel."""
    lines = [f"{_toml_string(k)} = {_toml_value(v)}" for k, v in document.items() if k != "channels"]
    channels = document.get("channels")
    if isinstance(channels, dict):
        for name, section in channels.items():
            lines.append(f"[channels.{_toml_string(str(name))}]")
            if isinstance(section, dict):
                lines += [f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in section.items()]
    elif "channels" in document:
        lines.append(f'"channels" = {_toml_value(channels)}')
    return "\n".join(lines) + "\n"


def _config_documents() -> st.SearchStrategy[str | bytes]:
    scalars = st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(NASTY),
    )
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
    # TOML spells inf and nan: a duration must refuse them as surely as a negative one.
    durations = st.one_of(
        st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-9, 1e308, 0, 3]),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    plausible = {
        "schema": st.one_of(st.sampled_from(["public", "chaos", 'x"; DROP SCHEMA public; --']), values),
        "queue_limit": st.one_of(st.integers(-5, 20_000), values),
        "shutdown_grace": st.one_of(durations, values),
        "rescue_window": st.one_of(durations, values),
        "retry_backoff": st.one_of(durations, values),
        "prune_after": st.one_of(durations, values),
        "node": values,
        "database_url": st.sampled_from(DSNS),
        "bogus": values,
    }
    section = st.fixed_dictionaries(
        {},
        optional={
            "adapter": st.one_of(st.sampled_from(["logger", "webhook", "test", "smtp"]), values),
            "config": st.one_of(
                st.dictionaries(
                    st.sampled_from(["url", "timeout", "token", "headers", "secret"]), values, max_size=3
                ),
                st.fixed_dictionaries({"url": st.sampled_from(["http://127.0.0.1:1/hook", "ftp://x", ""])}),
                values,
            ),
            "bogus": values,
        },
    )
    channels = st.one_of(st.dictionaries(st.text(max_size=8), section, max_size=3), values)
    plausible["channels"] = channels
    documents = st.fixed_dictionaries({}, optional=plausible).map(render_toml)
    # A valid file with one key fuzzed: most of these get past TOML, so the settings' checks are reached.
    one_key_off = st.one_of(*(st.tuples(st.just(k), v) for k, v in plausible.items())).map(
        lambda kv: render_toml({**VALID_CONFIG, kv[0]: kv[1]})
    )
    return st.one_of(documents, one_key_off, one_key_off, st.text(max_size=200), st.binary(max_size=200))


def _chimeway_extra_flags() -> st.SearchStrategy[list[str]]:
    flag = st.sampled_from(["--migrate", "--log-format", "--log-level", "--bogus", "--config"])
    return st.lists(st.tuples(flag, st.one_of(st.none(), _values())), max_size=3).map(
        lambda ps: [x for f, v in ps for x in ([f] if v is None else [f, v])]
    )


def _fuzz_chimeway(examples: int, run_seed: int, scratch: Path) -> _Outcome:
    from chimeway.config import load_settings
    from chimeway.worker import main

    outcome = _Outcome()
    path = scratch / "chimeway.toml"

    @seed(run_seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(document=_config_documents(), extra=_chimeway_extra_flags())
    def chimeway_config(document: str | bytes, extra: list[str]) -> None:
        if isinstance(document, bytes):
            path.write_bytes(document)
        else:
            path.write_text(document, encoding="utf-8", errors="surrogatepass")
        argv = ["--config", str(path), *extra]
        status, stderr = _call(main, argv)
        _judge_call(outcome, "python -m chimeway.worker", argv, status, stderr)
        if status == 0 and "--config" not in extra:
            settings_ = load_settings(path)
            numbers = [
                settings_.shutdown_grace,
                settings_.rescue_window,
                settings_.retry_backoff,
                settings_.prune_after,
            ]
            if not all(n is None or math.isfinite(n) for n in numbers):
                outcome.failures.append(f"accepted non-finite numbers: {document!r} → {numbers}")
                raise AssertionError(outcome.failures[-1])

    with _sandbox():
        _run_property(chimeway_config, outcome)
    return outcome


# -- real processes -------------------------------------------------------------------------------


def _real_processes(scratch: Path) -> list[str]:
    """A few bad invocations as real processes: each must exit non-zero with one line, no traceback."""
    garbage = scratch / "garbage.toml"
    garbage.write_bytes(b"schema = \xff\xfe [[[\n")
    nan = scratch / "nan.toml"
    nan.write_text("rescue_window = nan\n", encoding="utf-8")
    cases = [
        ["-m", "pgqueue", "start", "--queues", "default:0"],
        ["-m", "pgqueue", "start", "--queues", "default:5", "--rescue-window", "inf"],
        ["-m", "pgqueue", "migrate", "--dsn", UNREACHABLE],
        ["-m", "pgqueue", "status", "--dsn", "not a dsn"],
        ["-m", "chimeway.worker", "--config", str(garbage)],
        ["-m", "chimeway.worker", "--config", str(scratch / "missing.toml")],
        ["-m", "chimeway.worker", "--config", str(nan)],
    ]
    env = {**os.environ, "DATABASE_URL": UNREACHABLE, "PGHOST": "127.0.0.1", "PGPORT": "1"}
    problems = []
    for case in cases:
        done = subprocess.run(
            [sys.executable, *case], cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=60
        )
        lines = [line for line in done.stderr.split("\n") if line.strip()]
        if done.returncode == 0 or len(lines) != 1 or "Traceback" in done.stderr:
            problems.append(f"{' '.join(case[1:])}: exit {done.returncode}, stderr {done.stderr[:200]!r}")
    return problems


def fuzzed_config(ctx: Context) -> ScenarioResult:
    name = "fuzzed-config"
    examples = 150 if ctx.short else 1_000
    result = ScenarioResult(
        name,
        f"Hypothesis generates {examples:,} command lines for `python -m pgqueue` and {examples:,} "
        "`chimeway.toml` files (with flags) for `python -m chimeway.worker`, run through their `main`; "
        "then a few bad invocations run as real processes.",
    )
    with tempfile.TemporaryDirectory(prefix="chaos-fuzz-") as tmp:
        scratch = Path(tmp)
        cli = _fuzz_pgqueue_cli(examples, ctx.seed)
        config = _fuzz_chimeway(examples, ctx.seed, scratch)
        real = _real_processes(scratch)
    result.jobs = 0
    result.check(
        "every `python -m pgqueue` command line ends in one clear line or a start, never a traceback",
        not cli.failures,
        "; ".join(cli.failures[:2]) or f"{cli.examples:,} command lines, {cli.accepted:,} valid",
    )
    result.check(
        "every `chimeway.toml` and flag set ends in one clear line or a start, never a traceback",
        not config.failures,
        "; ".join(config.failures[:2]) or f"{config.examples:,} configurations, {config.accepted:,} valid",
    )
    result.check(
        "bad invocations of the real processes exit non-zero with one line on stderr",
        not real,
        "; ".join(real) or "7 invocations",
    )
    result.figures.update(
        {
            "pgqueue command lines": cli.examples,
            "of which valid": cli.accepted,
            "chimeway configurations": config.examples,
            "of which accepted": config.accepted,
        }
    )
    return result
