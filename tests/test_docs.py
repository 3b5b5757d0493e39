"""The documentation's examples hold against the code: they parse, every pgqueue and chimeway
name they import or use exists, and the runnable ones run on a real database."""

from __future__ import annotations

import ast
import asyncio
import importlib
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

import pgqueue

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_OURS = ("pgqueue", "chimeway")


def _blocks() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for index, match in enumerate(_BLOCK.finditer(page.read_text())):
            found.append((f"{page.relative_to(DOCS)}#{index + 1}", match.group(1)))
    return found


def _block(page: str, marker: str) -> str:
    (code,) = [code for where, code in _blocks() if where.startswith(page) and marker in code]
    return code


def _resolve(dotted: str) -> object:
    """Import the longest importable prefix of ``dotted``, then follow the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ModuleNotFoundError(dotted)


def _dotted(node: ast.expr) -> str | None:
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(names)])
    return None


def test_the_site_has_python_examples() -> None:
    assert len(_blocks()) > 30


@pytest.mark.parametrize(("where", "code"), _blocks(), ids=[where for where, _ in _blocks()])
def test_every_example_parses_and_names_only_what_exists(where: str, code: str) -> None:
    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(_OURS):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{where}: from {node.module} import {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(_OURS):
                    importlib.import_module(alias.name)
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.split(".")[0] in _OURS:
                _resolve(dotted)  # e.g. pgqueue.Runtime, chimeway.redaction.allow_names
    # Worker classes are checked when they are defined (options, a perform method): define them.
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(_dotted(base) == "pgqueue.Worker" for base in node.bases):
            module = ast.Module(body=[node], type_ignores=[])
            exec(compile(module, where, "exec"), {"pgqueue": pgqueue, "__name__": f"docs.{uuid.uuid4().hex}"})


@pytest.fixture
def fresh_database(dsn: str) -> Iterator[str]:
    """A database of its own: the examples use the schema "public", as a reader's would."""
    name = f"docs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_all_in_one_first_job_runs_to_completed(fresh_database: str, tmp_path: Path) -> None:
    script = tmp_path / "first_job.py"
    script.write_text(_block("queue/first-job.md", "asyncio.run(main())"))
    env = {**os.environ, "DATABASE_URL": fresh_database}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    greeting, final = done.stdout.splitlines()
    assert greeting == "hello, Ada"
    assert final.startswith("completed 1 ")


def test_the_workflow_example_runs_its_steps_in_order_and_releases_on_the_signal(
    fresh_database: str, tmp_path: Path
) -> None:
    script = tmp_path / "workflow.py"
    script.write_text(_block("queue/workflows.md", "asyncio.run(main())"))
    env = {**os.environ, "DATABASE_URL": fresh_database}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "fetch 7"
    assert sorted(lines[1:4]) == ["resize 1024", "resize 256", "resize 64"]
    assert lines[4:] == [
        "publish, approved by ada",
        "publish ran after ['resize-1024', 'resize-256', 'resize-64'] completed",
    ]


def test_the_custom_adapter_example_delivers_and_explains(fresh_database: str) -> None:
    from chimeway.explain import explain_delivery
    from chimeway.migrations import migrate_all
    from chimeway.notifier import Notifier, Recipient
    from chimeway.testing import ScriptedWebhookServer
    from chimeway.trigger import trigger

    class OrderShipped(Notifier):
        notification_key = "order_shipped"

        def recipients(self, params: Any) -> list[Recipient]:
            return [Recipient(f"user:{params['user_id']}")]

        def channels(self, params: Any, recipient: Recipient) -> list[str]:
            return ["sms", "in_app"]

        def build(self, params: Any, recipient: Recipient) -> dict[str, Any]:
            return {"text": f"Order {params['order_id']} shipped"}

    with psycopg.connect(fresh_database) as conn:
        migrate_all(conn)
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(fresh_database))
    try:
        with Session(engine) as session:
            result = trigger(session, OrderShipped(), {"user_id": 7, "order_id": 42}, idempotency_key="o-42")
            session.commit()
        with ScriptedWebhookServer() as receiver:
            namespace: dict[str, Any] = {}
            exec(_block("chimeway/channels.md", "class SmsAdapter"), namespace)
            runner = _block("chimeway/channels.md", "async def run_deliveries")
            runner = runner.replace('"https://sms.internal/send"', repr(receiver.url))
            runner = runner.replace("asyncio.run(run_deliveries(", "# asyncio.run(run_deliveries(")
            exec(runner, namespace)

            async def deliver_all() -> list[Any]:
                task = asyncio.create_task(namespace["run_deliveries"](fresh_database))
                try:
                    deadline = asyncio.get_running_loop().time() + 30
                    while True:
                        with Session(engine) as session:
                            stories = [explain_delivery(session, d) for d in result.delivery_ids]
                        if all(story.status == "succeeded" for story in stories):
                            return stories
                        assert asyncio.get_running_loop().time() < deadline, [s.status for s in stories]
                        await asyncio.sleep(0.05)
                finally:
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task

            stories = asyncio.run(deliver_all())
        assert {story.channel: story.why for story in stories} == {
            "sms": "succeeded on attempt 1",
            "in_app": "succeeded on attempt 1",
        }
        (sms,) = [story for story in stories if story.channel == "sms"]
        assert sms.attempts[0].adapter == "sms"
        (request,) = receiver.requests
        assert request.idempotency_key == f"{sms.delivery_id}:1"
    finally:
        engine.dispose()


def _shell_commands(program: str) -> list[tuple[str, list[str]]]:
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split("#", 1)[0].strip()
                if command.startswith(program):
                    found.append(
                        (f"{page.relative_to(DOCS)}: {command}", shlex.split(command)[len(program.split()) :])
                    )
    return found


@pytest.mark.parametrize(("where", "argv"), _shell_commands("python -m pgqueue"), ids=lambda v: str(v))
def test_every_documented_pgqueue_command_parses(where: str, argv: list[str]) -> None:
    from pgqueue.cli import build_parser

    build_parser().parse_args(argv)  # an unknown command or flag, or a bad value, raises


def test_the_documented_commands_include_each_subcommand() -> None:
    documented = {argv[0] for _, argv in _shell_commands("python -m pgqueue")}
    assert documented >= {"migrate", "version", "start", "status", "retry", "cancel", "prune"}


def test_the_documented_chimeway_toml_is_valid_and_routes_its_channels() -> None:
    import tomllib

    from chimeway.config import parse_settings

    (document,) = re.findall(
        r"^```toml\n(.*?)^```", (DOCS / "chimeway" / "channels.md").read_text(), re.S | re.M
    )
    settings = parse_settings(tomllib.loads(document), {"DATABASE_URL": "postgresql://app@localhost/app"})
    assert settings.queue_limit == 200
    assert {name: channel.adapter for name, channel in settings.channels.items()} == {
        "email": "webhook",
        "in_app": "logger",
    }


def test_the_results_example_awaits_a_value_and_a_failure(fresh_database: str, tmp_path: Path) -> None:
    script = tmp_path / "results.py"
    script.write_text(_block("queue/results.md", "asyncio.run(main())"))
    env = {**os.environ, "DATABASE_URL": fresh_database}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["sum 42", "discarded ValueError: no", "again 42"]
