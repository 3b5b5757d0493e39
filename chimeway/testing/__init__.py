"""Helpers for testing applications, and adapters, against Chimeway.

- :class:`AdapterContract`: the contract every channel adapter must keep, as a pytest test class
  to subclass in your own tests (Elixir Chimeway's ``ContractTest``); see
  :mod:`chimeway.testing.contract`.
- :class:`ScriptedWebhookServer`: a real HTTP receiver whose answers are scripted per recipient.
"""

from __future__ import annotations

from .contract import AdapterContract
from .webhook_receiver import ReceivedRequest, ScriptedWebhookServer, scripted_webhook

__all__ = ["AdapterContract", "ReceivedRequest", "ScriptedWebhookServer", "scripted_webhook"]
