"""Chimeway: durable, explainable notification delivery on top of pgqueue.

The delivery state machine is :mod:`chimeway.deliveries`; adapters are in
:mod:`chimeway.adapters`; the tables are created by :mod:`chimeway.migrations`.
"""

from __future__ import annotations

from .errors import ChimewayError

__version__ = "0.1.0"

__all__ = ["ChimewayError", "__version__"]
