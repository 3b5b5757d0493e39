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


@pytest.mark.slow
def test_the_wheel_contains_both_packages_and_the_sql(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pgqueue/__init__.py" in names
    assert "pgqueue/py.typed" in names
    assert "chimeway/__init__.py" in names
    assert "pgqueue/queries/fetch_jobs.sql" in names
    assert "chimeway/queries/count_open_deliveries.sql" in names
    assert "pgqueue/_sql/0001_jobs.up.sql" in names
    assert "pgqueue/_sql/0001_jobs.down.sql" in names
    assert not any(n.startswith("queue/") for n in names)
    sql_files = {n for n in names if n.startswith("chimeway/_sql/") and n.endswith(".sql")}
    expected = {f"chimeway/_sql/{p.name}" for p in (ROOT / "sql" / "chimeway").glob("*.sql")}
    assert sql_files == expected
