"""Put the queue's versioned SQL into the wheel as ``pgqueue/_sql``.

From the repository the files live in ``sql/pgqueue/`` at its root, one level above this project;
an sdist already carries them in ``pgqueue/_sql`` (its force-include), so there is nothing to add.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        in_repository = root.parent / "sql" / "pgqueue"
        if in_repository.is_dir():
            build_data["force_include"][str(in_repository)] = "pgqueue/_sql"
        elif not (root / "pgqueue" / "_sql").is_dir():
            raise FileNotFoundError(
                "the queue's SQL is missing: neither ../sql/pgqueue nor pgqueue/_sql exists"
            )
