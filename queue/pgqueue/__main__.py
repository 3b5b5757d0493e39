"""``python -m pgqueue``: see :mod:`pgqueue.cli`."""

from pgqueue.cli import main

raise SystemExit(main())
