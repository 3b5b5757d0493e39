"""The adapter contract as a test class: subclass :class:`AdapterContract` to check your adapter.

::

    from chimeway.testing import AdapterContract

    class TestSmsAdapter(AdapterContract):
        failure_kinds = ("temporary", "permanent")

        def make_adapter(self):
            return SmsAdapter()

        def success_config(self):
            return {"url": self.gateway.url, "api_key": "k-123"}

        def failure_config(self, kind):
            return {"url": self.gateway.url + ("/busy" if kind == "temporary" else "/reject"), "api_key": "k"}

pytest collects the ``test_*`` methods below for each subclass whose name starts with ``Test``
(use an autouse fixture in the subclass to start whatever the adapter talks to). They check what
the dispatcher relies on and can't check for you at run time:

* ``name`` is a short non-empty string and ``deliver`` is callable, plain or ``async def``;
* a send under ``success_config`` returns :class:`~chimeway.adapters.Delivered` whose ``meta``
  is a JSON-able mapping with no key the redaction policy drops (strip secrets yourself: the core
  drops only what the policy names) and, if given, a usable ``provider_message_id``;
* each kind in ``failure_kinds`` comes back as :class:`~chimeway.adapters.Failed` of that kind with
  a small JSON-able ``detail`` holding no secret and not the recipient's address;
* a configuration that can never work returns a result (a permanent failure, usually) instead of
  raising;
* several sends at once all return valid results (the dispatcher runs many concurrently);
* no log line of the adapter (or its libraries) carries a secret of the config, at DEBUG level;
* ``attempt_timeout(config)``, if defined, is a positive number of seconds.

The module needs nothing but the standard library at import: plain ``assert``s, so it runs under
pytest without importing it (pytest shows the compared values).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, TypeVar

from ..adapters.base import MAX_MESSAGE_ID, Adapter, Delivered, DeliveryContext, Failed, classify
from ..redaction import is_sensitive, redact
from ..states import FailureKind

__all__ = ["AdapterContract"]

T = TypeVar("T")

#: The address the sample delivery is sent to; it must never appear in a failure's detail.
SAMPLE_ADDRESS = "contract-recipient@example.test"
_MAX_DETAIL_BYTES = 4_096
_CONCURRENT_SENDS = 5


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # a record whose arguments don't format: still a line to look at
            self.lines.append(str(record.msg))


def _secrets(config: Mapping[str, Any]) -> list[str]:
    """The string values of ``config`` (at any depth) under keys the redaction policy drops."""
    found: list[str] = []

    def walk(value: Any, sensitive: bool) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, sensitive or is_sensitive(key))
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, sensitive)
        elif sensitive and isinstance(value, str) and len(value) >= 4:
            found.append(value)

    walk(config, False)
    return found


class AdapterContract:
    """Subclass as ``Test<YourAdapter>``; implement :meth:`make_adapter` (and the config hooks)."""

    __test__ = False  # the base class itself is not a test; subclasses named Test* are
    #: the failure kinds :meth:`failure_config` can produce ("temporary", "permanent", "bounced")
    failure_kinds: ClassVar[tuple[FailureKind, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # pytest collects any class whose __test__ is true: only the subclasses named Test*.
        cls.__test__ = cls.__name__.startswith("Test")

    # ---- hooks ---------------------------------------------------------------------------------

    def make_adapter(self) -> Adapter:
        """A fresh instance of the adapter under test."""
        raise NotImplementedError(f"{type(self).__name__} must define make_adapter()")

    def success_config(self) -> Mapping[str, Any]:
        """A channel config under which a send succeeds."""
        return {}

    def failure_config(self, kind: FailureKind) -> Mapping[str, Any]:
        """A channel config under which a send fails with ``kind`` (one per ``failure_kinds``)."""
        raise NotImplementedError(f"{type(self).__name__} lists failure_kinds, so define failure_config()")

    def unusable_config(self) -> Mapping[str, Any]:
        """A config that can never work (default: empty); the adapter must answer, not raise."""
        return {}

    def sample_delivery(self, attempt_number: int = 1) -> DeliveryContext:
        """The delivery sent in every check; its content carries :data:`SAMPLE_ADDRESS`."""
        return DeliveryContext(
            delivery_id=uuid.uuid4(),
            notification_id=uuid.uuid4(),
            channel="contract",
            attempt_number=attempt_number,
            notification_key="contract_check",
            recipient_identity="user:contract",
            metadata={
                "to": SAMPLE_ADDRESS,
                "subject": "Contract check ✓",
                "text": "Hello from the adapter contract.",
                "html": "<p>Hello from the adapter contract.</p>",
            },
        )

    # ---- running -------------------------------------------------------------------------------

    def _run(self, calls: Callable[[Adapter], Awaitable[T]]) -> tuple[T, list[str]]:
        """Run ``calls`` in a fresh event loop between the adapter's open and aclose (if it has
        them), with every log record at DEBUG captured."""
        adapter = self.make_adapter()

        async def main() -> T:
            opener = getattr(adapter, "open", None)
            if opener is not None:
                await opener()
            try:
                return await calls(adapter)
            finally:
                closer = getattr(adapter, "aclose", None)
                if closer is not None:
                    await closer()

        capture = _Capture()
        root = logging.getLogger()
        level = root.level
        root.addHandler(capture)
        root.setLevel(logging.DEBUG)
        try:
            return asyncio.run(main()), capture.lines
        finally:
            root.removeHandler(capture)
            root.setLevel(level)

    @staticmethod
    async def _send(adapter: Adapter, delivery: DeliveryContext, config: Mapping[str, Any]) -> object:
        if inspect.iscoroutinefunction(adapter.deliver):
            return await adapter.deliver(delivery, config)
        return await asyncio.to_thread(adapter.deliver, delivery, config)

    def _send_one(self, config: Mapping[str, Any]) -> tuple[object, list[str]]:
        delivery = self.sample_delivery()
        return self._run(lambda adapter: self._send(adapter, delivery, config))

    # ---- checks --------------------------------------------------------------------------------

    def _assert_small_json(self, value: object, what: str) -> None:
        assert isinstance(value, Mapping), f"{what} must be a mapping, got {type(value).__name__}"
        try:
            encoded = json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise AssertionError(f"{what} must be JSON-able: {exc}") from None
        assert len(encoded) <= _MAX_DETAIL_BYTES, f"{what} must stay small, got {len(encoded)} bytes"
        assert redact(value) == value, f"{what} holds keys the redaction policy drops: {value!r}"

    def _assert_no_secret(self, text: str, config: Mapping[str, Any], what: str) -> None:
        for secret in _secrets(config):
            assert secret not in text, f"{what} carries a secret of the config"

    def test_it_has_a_name_and_a_deliver_method(self) -> None:
        adapter = self.make_adapter()
        name = getattr(adapter, "name", None)
        assert isinstance(name, str), f"name must be a string, got {name!r}"
        assert name.strip(), "name must not be blank"
        assert len(name) <= 64, f"name must be short (it is stored on every attempt), got {len(name)}"
        assert callable(getattr(adapter, "deliver", None)), "deliver must be a method"

    def test_a_successful_send_returns_delivered_with_a_small_redacted_meta(self) -> None:
        config = self.success_config()
        result, lines = self._send_one(config)
        assert isinstance(result, Delivered), (
            f"a send under success_config() must be Delivered, got {result!r}"
        )
        self._assert_small_json(result.meta, "Delivered.meta")
        message_id = result.meta.get("provider_message_id")
        if message_id is not None:
            assert isinstance(message_id, str | int), "provider_message_id must be a string or an integer"
            text = str(message_id)
            assert text.isprintable(), "provider_message_id must be printable"
            assert 0 < len(text) <= MAX_MESSAGE_ID, f"provider_message_id must be 1..{MAX_MESSAGE_ID} long"
            assert classify(result).provider_message_id == text
        assert classify(result).outcome == "succeeded"
        self._assert_no_secret(json.dumps(result.meta), config, "Delivered.meta")
        self._assert_no_secret("\n".join(lines), config, "a log line")

    def test_each_declared_failure_has_its_kind_and_a_small_detail_without_secrets_or_address(self) -> None:
        for kind in self.failure_kinds:
            config = self.failure_config(kind)
            result, lines = self._send_one(config)
            assert isinstance(result, Failed), f"failure_config({kind!r}) must give Failed, got {result!r}"
            assert result.kind == kind, f"failure_config({kind!r}) gave a {result.kind!r} failure"
            self._assert_small_json(result.detail, f"the {kind} Failed.detail")
            shown = json.dumps(result.detail)
            assert SAMPLE_ADDRESS not in shown, f"the {kind} detail carries the recipient's address"
            self._assert_no_secret(shown, config, f"the {kind} detail")
            self._assert_no_secret("\n".join(lines), config, "a log line")

    def test_a_configuration_that_can_never_work_is_answered_not_raised(self) -> None:
        result, _lines = self._send_one(self.unusable_config())
        assert isinstance(result, Delivered | Failed), f"expected Delivered or Failed, got {result!r}"
        if isinstance(result, Failed):
            assert result.kind in ("temporary", "permanent", "bounced")
            self._assert_small_json(result.detail, "Failed.detail")

    def test_concurrent_sends_all_return_valid_results(self) -> None:
        config = self.success_config()
        deliveries = [self.sample_delivery(attempt_number=1) for _ in range(_CONCURRENT_SENDS)]

        async def many(adapter: Adapter) -> list[object]:
            return list(await asyncio.gather(*(self._send(adapter, d, config) for d in deliveries)))

        results, _lines = self._run(many)
        assert all(isinstance(r, Delivered) for r in results), (
            f"every concurrent send must succeed: {results!r}"
        )

    def test_the_attempt_timeout_if_any_is_a_positive_number_of_seconds(self) -> None:
        adapter = self.make_adapter()
        timeout_of = getattr(adapter, "attempt_timeout", None)
        if timeout_of is None:
            return  # optional: the dispatcher's default deadline applies
        for config in (self.success_config(), self.unusable_config()):
            seconds = timeout_of(config)
            assert isinstance(seconds, int | float), f"attempt_timeout must be a number, got {seconds!r}"
            assert not isinstance(seconds, bool), "attempt_timeout must be a number, not a bool"
            assert 0 < seconds < float("inf"), f"attempt_timeout must be positive and finite, got {seconds}"
