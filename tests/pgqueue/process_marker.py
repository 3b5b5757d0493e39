"""A module no worker process may ever import: importing it creates the file named in
``PROCESS_TESTS_MARKER``. The tests name it in job rows and check that the file never appears."""

from __future__ import annotations

import os
from pathlib import Path

Path(os.environ["PROCESS_TESTS_MARKER"]).write_text(f"imported by {os.getpid()}\n")
