"""``python -m chimeway``: see :mod:`chimeway.cli`."""

from chimeway.cli import main

raise SystemExit(main())
