"""Preferences: opting out per notification and channel, or per category; no row means enabled."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chimeway import preferences
from chimeway.errors import InvalidValue
from chimeway.models import NotificationPreference

from .conftest import SessionFactory


def test_a_recipient_without_preferences_accepts_every_channel_and_category(sa_session: Session) -> None:
    assert preferences.channel_enabled(sa_session, "user:1", "comment_posted", "email") is True
    assert preferences.category_enabled(sa_session, "user:1", "marketing") is True


def test_disabling_a_channel_affects_only_that_notification_and_channel(
    sa_session: Session, new_session: SessionFactory
) -> None:
    preferences.upsert_channel_preference(sa_session, "user:1", "comment_posted", "email", enabled=False)

    reader = new_session()  # the upsert committed on its own
    assert preferences.channel_enabled(reader, "user:1", "comment_posted", "email") is False
    assert preferences.channel_enabled(reader, "user:1", "comment_posted", "in_app") is True
    assert preferences.channel_enabled(reader, "user:1", "invoice_paid", "email") is True
    assert preferences.channel_enabled(reader, "user:2", "comment_posted", "email") is True


def test_the_last_channel_choice_wins_and_stays_one_row(sa_session: Session) -> None:
    preferences.upsert_channel_preference(sa_session, "user:1", "comment_posted", "email", enabled=False)
    preferences.upsert_channel_preference(sa_session, "user:1", "comment_posted", "email", enabled=True)

    assert preferences.channel_enabled(sa_session, "user:1", "comment_posted", "email") is True
    assert sa_session.scalar(select(func.count()).select_from(NotificationPreference)) == 1


def test_disabling_a_category_then_enabling_it_again(sa_session: Session) -> None:
    preferences.upsert_category_preference(sa_session, "user:1", "marketing", enabled=False)
    assert preferences.category_enabled(sa_session, "user:1", "marketing") is False
    assert preferences.category_enabled(sa_session, "user:1", "security") is True

    preferences.upsert_category_preference(sa_session, "user:1", "marketing", enabled=True)
    assert preferences.category_enabled(sa_session, "user:1", "marketing") is True


def test_a_preference_needs_a_recipient(sa_session: Session) -> None:
    with pytest.raises(InvalidValue, match="recipient_id must be a non-empty string, got ''"):
        preferences.upsert_category_preference(sa_session, "", "marketing", enabled=False)
