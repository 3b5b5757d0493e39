"""Worker settings: the file, the environment, and one clear error for every mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimeway.config import ConfigError, load_settings, parse_settings

ENV = {"DATABASE_URL": "postgresql://localhost/db"}


def test_defaults_and_environment() -> None:
    s = parse_settings({}, ENV)
    assert (s.database_url, s.schema, s.queue_limit, s.shutdown_grace, s.channels) == (
        ENV["DATABASE_URL"],
        "public",
        200,
        15.0,
        {},
    )


def test_a_full_file(tmp_path: Path) -> None:
    path = tmp_path / "chimeway.toml"
    path.write_text(
        'schema = "notify"\nqueue_limit = 5\nretry_backoff = 0.5\n'
        '[channels.email]\nadapter = "webhook"\nconfig = { url = "http://x", timeout = 3, token = "t" }\n'
    )
    s = load_settings(path, ENV)
    assert (s.schema, s.queue_limit, s.retry_backoff) == ("notify", 5, 0.5)
    assert s.channels["email"].adapter == "webhook"
    assert s.channels["email"].config["timeout"] == 3


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"queue_limt": 5}, "unknown setting 'queue_limt'"),
        ({"queue_limit": 0}, "queue_limit must be an integer >= 1"),
        ({"queue_limit": "5"}, "queue_limit must be an integer"),
        ({"schema": "x" * 80}, "schema must be at most 63 bytes"),
        ({"channels": {"email": {"adapter": "carrier-pigeon"}}}, "channels.email.adapter must be one of"),
        ({"channels": {"email": {"adapter": "webhook"}}}, "channels.email.config.url is required"),
        ({"channels": {"email": {"adaptor": "logger"}}}, "unknown key 'adaptor'"),
        ({"shutdown_grace": -1}, "shutdown_grace must be a number >= 0"),
    ],
)
def test_mistakes_name_the_key(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_settings(data, ENV)


def test_no_database_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no database"):
        parse_settings({}, {})


def test_file_problems_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("queue_limit = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, ENV)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["schema", "node", "queue_limit", "retry_backoff", "channels", "x"]),
        st.one_of(st.none(), st.integers(), st.floats(), st.text(), st.dictionaries(st.text(), st.text())),
    )
)
def test_any_input_is_accepted_or_refused_with_a_config_error(data: dict[str, Any]) -> None:
    data = {k: v for k, v in data.items() if v is not None}
    try:
        parse_settings(data, ENV)
    except ConfigError as exc:
        assert str(exc)


def run_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CHIMEWAY_CONFIG")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "chimeway.worker", *args], capture_output=True, text=True, env=full, timeout=60
    )


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("queue_limit = 0\n")
    result = run_worker("--config", str(path), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "chimeway.worker: queue_limit must be an integer >= 1, got 0"
    ]
    missing = run_worker(env={})
    assert missing.returncode == 2
    assert "no database" in missing.stderr
    assert "Traceback" not in missing.stderr + result.stderr


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"queue_limit": 10_001}, "queue_limit must be an integer <= 10000, got 10001"),
        ({"retry_backoff": 1e15}, "retry_backoff must be a number <= 1e+10"),
        ({"rescue_window": 1e300}, "rescue_window must be a number <= 1e+10"),
        ({"shutdown_grace": 2e10}, "shutdown_grace must be a number <= 1e+10"),
        ({"prune_after": 1e11}, "prune_after must be a number <= 1e+10"),
        ({"recover_after": 0}, "recover_after must be a number >= 0.001"),
        ({"recover_after": "5m"}, "recover_after must be a number"),
    ],
)
def test_values_past_their_range_are_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        parse_settings(data, ENV)


def test_a_queue_limit_past_its_range_is_the_config_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("queue_limit = 100000\n")
    result = run_worker("--config", str(path), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "chimeway.worker: queue_limit must be an integer <= 10000, got 100000"
    ]


def test_the_settings_repr_shows_no_password_and_no_channel_secret() -> None:
    from chimeway.adapters import resolve_adapter
    from chimeway.dispatch import ChannelRoute

    config = {
        "url": "http://x",
        "token": "T0K3N",
        "legacy_secret": "S1GN",
        "headers": {"Authorization": "B3AR"},
    }
    settings = parse_settings(
        {"channels": {"email": {"adapter": "webhook", "config": config}}},
        {"DATABASE_URL": "postgresql://app:S3cret@db.internal:6432/notify"},
    )
    route = ChannelRoute(resolve_adapter("webhook"), config)

    shown = repr(settings) + repr(settings.channels["email"]) + repr(route)
    assert "postgresql://app@db.internal:6432/notify" in repr(settings)
    assert "webhook" in shown
    for secret in ("S3cret", "T0K3N", "S1GN", "B3AR"):
        assert secret not in shown


def test_an_unparsable_dsn_is_not_echoed_by_the_repr() -> None:
    settings = parse_settings({}, {"DATABASE_URL": "postgresql://app:S3cret PW@db/x ?="})
    assert "S3cret" not in repr(settings)


def test_the_recovery_of_stuck_deliveries_is_tuned_by_recover_after() -> None:
    from chimeway.recovery import Recovery
    from chimeway.worker import build_runtime

    assert parse_settings({}, ENV).recover_after == 300.0
    settings = parse_settings({"recover_after": 90}, ENV)
    runtime = build_runtime(settings)
    (recovery,) = [p for p in runtime.plugins if isinstance(p, Recovery)]
    assert recovery.stuck_after == 90.0


def test_a_direct_database_url_comes_from_the_environment_or_the_file_and_hides_its_password() -> None:
    from_file = parse_settings({"direct_database_url": "postgresql://app:hunter2@db:5432/notify"}, ENV)
    assert from_file.direct_database_url == "postgresql://app:hunter2@db:5432/notify"
    assert "hunter2" not in repr(from_file)
    assert "direct_database_url='postgresql://app@db:5432/notify'" in repr(from_file)
    env = {**ENV, "DIRECT_DATABASE_URL": "host=db port=5432 dbname=notify"}
    assert (
        parse_settings({"direct_database_url": "ignored"}, env).direct_database_url
        == env["DIRECT_DATABASE_URL"]
    )
    assert parse_settings({}, ENV).direct_database_url is None
    with pytest.raises(ConfigError, match="direct_database_url"):
        parse_settings({"direct_database_url": "  "}, ENV)
