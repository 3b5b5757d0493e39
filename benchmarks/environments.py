"""Where each system's code lives and the isolated environment it runs in (standard library only).

Every directory ``benchmarks/systems/<name>/`` (names not starting with ``_``) is a system. It runs
in ``benchmarks/.envs/<name>``, a virtual environment that uv builds from the directory's pinned
``requirements.txt`` with the interpreter its optional ``python-version`` file asks for (else the
runner's own Python version). The environment is rebuilt whenever the requirements or the
interpreter change. The runner's own extras (psutil, psycopg, matplotlib) live in
``benchmarks/.envs/runner`` when the invoking interpreter lacks them.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SYSTEMS_DIR = BENCH_DIR / "systems"
KIT_DIR = SYSTEMS_DIR / "_kit"
ENVS_DIR = BENCH_DIR / ".envs"
RUNNER_REQUIREMENTS = BENCH_DIR / "requirements-runner.txt"
STAMP = ".bench-stamp"
# Our own queue goes first and the raw ceiling last; peers in between, alphabetically.
FIRST, LAST = ("pgqueue",), ("raw",)


class EnvironmentFailure(Exception):
    """A system's environment could not be built; the message says why."""


@dataclass(frozen=True)
class SystemSpec:
    name: str
    directory: Path

    @property
    def adapter(self) -> Path:
        return self.directory / "adapter.py"

    @property
    def requirements(self) -> Path:
        return self.directory / "requirements.txt"

    @property
    def python_request(self) -> str | None:
        path = self.directory / "python-version"
        return path.read_text().strip() if path.exists() else None

    def missing(self) -> str | None:
        """Why this system cannot run at all, or None."""
        absent = [p.name for p in (self.adapter, self.requirements) if not p.exists()]
        return f"no {' or '.join(absent)} in {self.directory.relative_to(REPO_DIR)}" if absent else None


def _order(name: str) -> tuple[int, str]:
    if name in FIRST:
        return (0, name)
    if name in LAST:
        return (2, name)
    return (1, name)


def discover_systems() -> list[SystemSpec]:
    found = [
        SystemSpec(path.name, path)
        for path in SYSTEMS_DIR.iterdir()
        if path.is_dir() and not path.name.startswith(("_", "."))
    ]
    return sorted(found, key=lambda spec: _order(spec.name))


def _uv() -> list[str]:
    uv = shutil.which("uv")
    if uv:
        return [uv]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    raise EnvironmentFailure("uv is not installed (pip install uv)")


def _uv_env() -> dict[str, str]:
    env = dict(os.environ)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.pop("VIRTUAL_ENV", None)
    return env


def _version_of(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def find_interpreter(request: str | None) -> str:
    """An interpreter for ``request`` ("3.12"), or the runner's own when None."""
    if request is None:
        return sys.executable
    candidates: list[str] = []
    override = os.environ.get("BENCH_PYTHON_" + request.replace(".", "_"))
    if override:
        candidates.append(override)
    candidates.append(sys.executable)
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{request}.*/bin/python{request}"), reverse=True)
    for name in (f"python{request}", "python3"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    for candidate in candidates:
        if _version_of(candidate) == request:
            return candidate
    try:
        out = subprocess.run(
            [*_uv(), "python", "find", request], capture_output=True, text=True, env=_uv_env(), timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        out = None
    if out is not None and out.returncode == 0 and _version_of(out.stdout.strip()) == request:
        return out.stdout.strip()
    raise EnvironmentFailure(
        f"needs Python {request}, which was not found "
        f"(set BENCH_PYTHON_{request.replace('.', '_')} to an interpreter)"
    )


def env_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def ensure_env(name: str, requirements: Path, python_request: str | None) -> Path:
    """Build (or reuse) ``.envs/<name>`` from ``requirements``; return its interpreter.

    uv runs in the requirements file's directory, so a relative path in it (``-e ../../..`` for
    this repository) means the same thing wherever the runner was started.
    """
    interpreter = find_interpreter(python_request)
    version = _version_of(interpreter) or "?"
    env_dir = ENVS_DIR / name
    digest = hashlib.sha256(
        requirements.read_bytes() + f"\n{Path(interpreter).resolve()}\n{version}".encode()
    ).hexdigest()
    stamp = env_dir / STAMP
    python = env_python(env_dir)
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    shutil.rmtree(env_dir, ignore_errors=True)
    ENVS_DIR.mkdir(parents=True, exist_ok=True)
    steps = [
        [*_uv(), "venv", "--quiet", "--python", interpreter, str(env_dir)],
        [
            *_uv(),
            "pip",
            "install",
            "--quiet",
            "--compile-bytecode",
            "--python",
            str(python),
            "-r",
            str(requirements),
        ],
    ]
    for step in steps:
        done = subprocess.run(
            step, capture_output=True, text=True, env=_uv_env(), timeout=900, cwd=requirements.parent
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise EnvironmentFailure(f"`{' '.join(step[:3])}` failed: {' | '.join(tail)}")
    stamp.write_text(digest)
    return python


def runner_has(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def runner_env_python() -> Path:
    return ensure_env("runner", RUNNER_REQUIREMENTS, None)


def reexec_if_needed() -> None:
    """Re-run ``python -m benchmarks`` in the runner environment when psutil or psycopg is missing."""
    if runner_has("psutil", "psycopg") or os.environ.get("BENCH_REEXECED"):
        return
    python = runner_env_python()
    env = dict(os.environ)
    env["BENCH_REEXECED"] = "1"
    paths = [str(REPO_DIR), str(REPO_DIR / "queue"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    print(f"[bench] psutil/psycopg missing here; running in {python.parent.parent}", file=sys.stderr)
    os.chdir(REPO_DIR)
    os.execve(str(python), [str(python), "-m", "benchmarks", *sys.argv[1:]], env)
