"""Chimeway: durable, explainable notification delivery on top of pgqueue."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
