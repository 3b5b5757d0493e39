"""Versioned rendering: templates fixed on the delivery, rendered in the sandbox at send time; a
template that can't render is a permanent failure of that delivery, explained on its attempt."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from chimeway import dispatch, explain_delivery
from chimeway.adapters import Failed, TestAdapter
from chimeway.cli import _explanation_text
from chimeway.dispatch import Dispatcher
from chimeway.journeys import Journey, Step
from chimeway.models import Delivery, DeliveryAttempt
from chimeway.rendering import RenderError, Template, TemplateError, Templates
from pgqueue.testing import drain_queue

from .conftest import SessionFactory
from .journey_fixtures import (
    TEMPLATES,
    drain,
    notifier,
    sql,
    trigger,
)


def test_templates_are_checked_when_registered() -> None:
    with pytest.raises(TemplateError, match="'welcome' v1 for channel 'email' is registered twice"):
        Templates([*TEMPLATES, TEMPLATES[0]])
    with pytest.raises(TemplateError, match=r"'broken' v1 \(sms\), part 'body': line 1: "):
        Templates([Template("broken", 1, "sms", {"body": "{% for %}"})])
    with pytest.raises(TemplateError, match="version must be an integer >= 1, got 0"):
        Templates([Template("t", 0, "sms", {"body": "x"})])


@pytest.mark.parametrize(
    ("source", "reason", "detail"),
    [
        ("{{ missing }}", "undefined_variable", "'missing' is undefined"),
        ("{{ name.__class__.__mro__ }}", "sandbox_violation", "access to attribute '__class__'"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "render_limit",
            "too many loop iterations",
        ),
        (
            "{% for a in name %}{% for b in name %}{% for c in name %}{% endfor %}{% endfor %}{% endfor %}",
            "render_limit",
            "too many loop iterations",
        ),
        ("{{ 'x' * 1000000000 }}", "render_limit", "larger than the output limit"),
        ("{{ 'x'|center(1000000000) }}", "render_limit", "integer argument of 1000000000"),
        ("{{ 9 ** 9 ** 9 }}", "render_limit", "over the limit"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "render_limit", "recursion too deep"),
        ("{% for i in range(100000) %}0123456789{% endfor %}", "render_limit", "output over 256000"),
    ],
)
def test_a_hostile_or_broken_template_is_stopped_with_a_reason(source: str, reason: str, detail: str) -> None:
    templates = Templates([Template("t", 1, "sms", {"body": source})])
    with pytest.raises(RenderError) as caught:
        templates.render("t", 1, "sms", {"name": "x" * 5000})
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_a_render_past_its_deadline_is_stopped_however_many_iterations_it_may_take() -> None:
    templates = Templates(
        [
            Template(
                "slow", 1, "sms", {"body": "{% for a in s %}{% for b in s %}{{ b }}{% endfor %}{% endfor %}"}
            )
        ],
        timeout=0.05,
        max_iterations=10**12,
        max_output=10**12,
    )
    started = time.monotonic()
    with pytest.raises(RenderError, match="render took too long"):
        templates.render("slow", 1, "sms", {"s": "ab" * 100_000})
    assert time.monotonic() - started < 5  # stopped, not run to its end (hours)


def test_html_email_is_autoescaped_and_plain_channels_are_not() -> None:
    templates = Templates(TEMPLATES)
    email = templates.render("welcome", 1, "email", {"name": "<Ann>", "body": "<script>x</script>"})
    assert email.parts == {"subject": "Hi &lt;Ann&gt;", "html": "<p>&lt;script&gt;x&lt;/script&gt;</p>"}
    sms = templates.render("welcome", 1, "sms", {"name": "<Ann>", "body": "b"})
    assert sms.parts == {"body": "Hi <Ann>: b"}
    with pytest.raises(RenderError, match="template_missing: template 'welcome' v2 \\(email\\)"):
        templates.render("welcome", 2, "email", {})


def _one_step(template: tuple[str, int], channel: str = "email", key: str = "rendered") -> Journey:
    return Journey(key, 1, [Step(1, channel, template=template)])


def _delivery(new_session: SessionFactory, run_id: uuid.UUID) -> Delivery:
    with new_session() as session:
        delivery = session.scalars(select(Delivery).where(Delivery.journey_run_id == run_id)).one()
        session.expunge(delivery)
        return delivery


def _attempts(new_session: SessionFactory, delivery_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with new_session() as session:
        rows = session.execute(
            select(DeliveryAttempt.outcome, DeliveryAttempt.error_class, DeliveryAttempt.provider_response)
            .where(DeliveryAttempt.delivery_id == delivery_id)
            .order_by(DeliveryAttempt.attempt_number)
        ).all()
        return [tuple(r) for r in rows]


def test_a_delivery_keeps_its_template_and_data_and_a_retry_renders_the_same(
    new_session: SessionFactory,
    dsn: str,
    schema: str,
    test_adapter: TestAdapter,
    journey_dispatcher: Dispatcher,
) -> None:
    test_adapter.script(Failed("temporary", {"status_code": 503}))
    with new_session() as session:
        (run_id,) = trigger(
            session, notifier(_one_step(("welcome", 1))), ["user:1"], body="<b>v1</b>"
        ).run_ids
    drain(dsn, schema)
    delivery = _delivery(new_session, run_id)
    assert (delivery.render_key, delivery.render_version) == ("welcome", 1)
    assert delivery.render_data == {"name": "user:1", "body": "<b>v1</b>"}
    # the notification's content changes and a new version is deployed: the retry still renders v1
    with new_session() as session:
        session.execute(
            sql(session, 'UPDATE {s}.chimeway_notifications SET metadata = \'{"name": "changed"}\'')
        )
        session.commit()
    journey_dispatcher.templates.add(Template("welcome", 2, "email", {"subject": "v2 {{ name }}"}))
    drain_queue(dsn, dispatch.QUEUE, schema=schema, with_scheduled=True, with_recursion=True)
    first, second = (c.delivery for c in test_adapter.calls())
    assert first.metadata["subject"] == second.metadata["subject"] == "Hi user:1"
    assert first.metadata["html"] == second.metadata["html"] == "<p>&lt;b&gt;v1&lt;/b&gt;</p>"
    assert (first.attempt_number, second.attempt_number) == (1, 2)
    explanation = explain_delivery(new_session(), delivery.id)
    assert (explanation.render_key, explanation.render_version) == ("welcome", 1)
    assert explanation.journey is not None
    assert [t[4] for t in explanation.journey.transitions] == [
        "started",
        "step_emitted",
        "step_settled",
        "completed",
    ]
    assert any(entry.event == "journey_step_emitted" for entry in explanation.timeline)
    told = _explanation_text(explanation)  # what `python -m chimeway explain` prints
    assert "rendered with template welcome v1" in told
    assert "run completed / completed, outcomes {'1': 'delivered'}" in told


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        (("welcome", 9), "template_missing"),
        (("missing_var", 1), "undefined_variable"),
        (("loops", 1), "render_limit"),
        (("escapes", 1), "sandbox_violation"),
    ],
)
def test_a_template_that_cannot_render_fails_its_delivery_for_good_and_the_worker_goes_on(
    new_session: SessionFactory,
    dsn: str,
    schema: str,
    test_adapter: TestAdapter,
    journey_dispatcher: Dispatcher,
    template: tuple[str, int],
    reason: str,
) -> None:
    for bad in (
        Template("missing_var", 1, "email", {"subject": "{{ nobody }}"}),
        Template(
            "loops",
            1,
            "email",
            {"text": "{% for i in range(10**5) %}{% for j in range(10**5) %}{% endfor %}{% endfor %}"},
        ),
        Template("escapes", 1, "email", {"text": "{{ name.__class__.__base__.__subclasses__() }}"}),
    ):
        journey_dispatcher.templates.add(bad)
    good = Journey("good", 1, [Step(1, "sms", template=("welcome", 1))])
    with new_session() as session:
        (run_id,) = trigger(session, notifier(_one_step(template, key=f"bad_{reason}")), ["user:1"]).run_ids
        (good_run,) = trigger(session, notifier(good, "good"), ["user:2"]).run_ids
    drain(dsn, schema)
    delivery = _delivery(new_session, run_id)
    assert (delivery.status, delivery.suppression_reason) == ("cancelled", "permanent_failure")
    ((outcome, error_class, response),) = _attempts(new_session, delivery.id)
    assert (outcome, error_class) == ("rejected", "permanent")
    assert response["error"] == "render_failed"
    assert response["reason"] == reason
    assert f"v{template[1]} (email)" in response["detail"]
    # the adapter was never called for it; the other delivery went out
    assert [c.delivery.channel for c in test_adapter.calls()] == ["sms"]
    assert _delivery(new_session, good_run).status == "succeeded"
