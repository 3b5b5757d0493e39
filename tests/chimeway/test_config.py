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
