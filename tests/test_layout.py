"""Packaging: the stdlib ``queue`` is never shadowed, and the wheel carries code and SQL."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_there_is_no_queue_package_at_the_root() -> None:
    assert not (ROOT / "queue" / "__init__.py").exists()


def test_import_queue_from_the_repository_root_is_the_standard_library() -> None:
    code = "import queue, sys; print(queue.__file__); print(hasattr(queue, 'SimpleQueue'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[1] == "True"
    assert not out[0].startswith(str(ROOT / "queue")), out[0]
    # and the engine is importable under its own name
    out2 = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pgqueue, concurrent.futures, logging.handlers; print(pgqueue.__name__)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out2.stdout.strip() == "pgqueue"


def _build(project: Path, outdir: Path, *only: str) -> Path:
    """Build ``project`` without isolation (sdist then a wheel from it, unless ``only`` says)."""
    subprocess.run(
        [sys.executable, "-m", "build", *only, "--no-isolation", "--outdir", str(outdir), str(project)],
        check=True,
        capture_output=True,
    )
    (wheel,) = outdir.glob("*.whl")
    return wheel


def _files_under(directory: Path, prefix: str) -> set[str]:
    return {f"{prefix}/{p.relative_to(directory).as_posix()}" for p in directory.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_the_queue_wheel_built_from_its_sdist_carries_code_queries_and_migrations(tmp_path: Path) -> None:
    wheel = _build(ROOT / "queue", tmp_path)
    assert wheel.name.startswith("chimeway_pgqueue-")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "queue" / "pgqueue"
    expected = {
        n for n in _files_under(package, "pgqueue") if "__pycache__" not in n and not n.endswith(".pyc")
    }
    assert expected <= names, sorted(expected - names)
    assert "pgqueue/py.typed" in names
    assert _files_under(ROOT / "sql" / "pgqueue", "pgqueue/_sql") <= names
    assert not any(n.startswith(("queue/", "chimeway/", "sql/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-')[0]}-0.1.0.dist-info/METADATA").decode()
    assert "Name: chimeway-pgqueue" in metadata
    assert "Requires-Dist: tzdata" in metadata
    assert "License-Expression: Apache-2.0" in metadata
    # SQLAlchemy is an extra of the queue: a queue user on plain psycopg doesn't install it.
    sqlalchemy = [
        line for line in metadata.splitlines() if line.lower().startswith("requires-dist: sqlalchemy")
    ]
    assert sqlalchemy, metadata
    assert all("extra == 'sqlalchemy'" in line for line in sqlalchemy), sqlalchemy


@pytest.mark.slow
def test_the_chimeway_wheel_carries_its_package_and_sql_and_needs_the_queue(tmp_path: Path) -> None:
    wheel = _build(ROOT, tmp_path, "--wheel")
    assert wheel.name.startswith("chimeway-")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        n
        for n in _files_under(ROOT / "chimeway", "chimeway")
        if "__pycache__" not in n and not n.endswith(".pyc")
    }
    assert expected <= names, sorted(expected - names)
    assert "chimeway/py.typed" in names
    assert _files_under(ROOT / "sql" / "chimeway", "chimeway/_sql") <= names
    assert not any(n.startswith(("pgqueue/", "queue/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read("chimeway-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: chimeway-pgqueue[sqlalchemy]==0.1.0" in metadata


def test_every_public_name_is_importable_from_the_package() -> None:
    import chimeway
    import pgqueue

    assert pgqueue.Runtime.__module__ == "pgqueue.runtime"  # the README's `pgqueue.Runtime(...)`
    for package in (pgqueue, chimeway):
        missing = [name for name in package.__all__ if not hasattr(package, name)]
        assert missing == [], (package.__name__, missing)
