"""Redaction: key names that look like secrets are dropped, matched after normalisation; the
policy's false positives are deliberate, and an application can extend it either way."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chimeway import redaction
from chimeway.redaction import RedactionPolicy, redact


@pytest.fixture
def restore_policy() -> Iterator[None]:
    previous = redaction.current_policy()
    yield
    redaction.set_policy(previous)


def test_the_names_the_review_found_leaking_are_all_dropped() -> None:
    leaked = {
        "password": "p",
        "Token": "t",
        "access_token": "AT-123",
        "api_key": "AK-456",
        "client_secret": "CS-789",
        "Authorization": "Bearer xyz",
        "user_password": "hunter2",
        "headers": {"X-Api-Key": "k"},
        "reset_token": "RT-789",
    }

    assert redact(leaked) == {"headers": {}}


@pytest.mark.parametrize(
    "key",
    [
        "PASS-WORD",
        "pass_word",
        "db_passwd",
        "Passphrase",
        "aws_secret_access_key",
        "refreshToken",
        "x-api-key",
        "Proxy-Authorization",
        "oauth_state",
        "credentials",
        "PRIVATE_KEY",
        "Set-Cookie",
        "session_id",
    ],
)
def test_a_fragment_matches_inside_the_normalised_name(key: str) -> None:
    assert redaction.is_sensitive(key)
    assert redact({key: "x", "kept": 1}) == {"kept": 1}


@pytest.mark.parametrize("key", ["auth", "basic_auth", "X-Auth", "authKey", "HTTPAuth", "auth.header"])
def test_auth_is_dropped_where_it_is_a_word_of_the_name(key: str) -> None:
    assert redaction.is_sensitive(key)


@pytest.mark.parametrize(
    "key", ["author", "authorName", "author_id", "authored_at", "authority", "authenticated"]
)
def test_auth_inside_another_word_is_kept_so_a_comments_author_survives(key: str) -> None:
    assert not redaction.is_sensitive(key)
    assert redact({key: "Ada"}) == {key: "Ada"}


def test_known_false_positives_of_the_substring_rule_are_dropped_as_documented() -> None:
    # The price of matching inside names: these go too, unless the application allows them.
    assert redact({"secretary": "Bo", "session_title": "Keynote", "title": "Keynote"}) == {"title": "Keynote"}


def test_redaction_reaches_every_depth_inside_lists_and_tuples_and_leaves_the_input_alone() -> None:
    original = {
        "nested": {"secret": "s", "kept": {"Token": "t2", "value": 2}},
        "items": [{"password": "p3", "name": "x"}, "plain", ({"api_key": "k", "n": 1},)],
        7: "a non-string key is kept",
    }

    assert redact(original) == {
        "nested": {"kept": {"value": 2}},
        "items": [{"name": "x"}, "plain", [{"n": 1}]],
        7: "a non-string key is kept",
    }
    assert original["nested"]["secret"] == "s"  # type: ignore[index]


@pytest.mark.usefixtures("restore_policy")
def test_an_application_adds_fragments_and_words() -> None:
    redaction.add_sensitive_names("ssn", words=["pin"])

    assert redact({"user_ssn": 1, "pin": 2, "card-pin": 3, "pinned": 4, "name": 5}) == {
        "pinned": 4,
        "name": 5,
    }


@pytest.mark.usefixtures("restore_policy")
def test_an_application_exempts_a_name_by_its_normalised_form() -> None:
    redaction.allow_names("Session-Title")

    assert redact({"session_title": "Keynote", "session_id": "s-1"}) == {"session_title": "Keynote"}


@pytest.mark.usefixtures("restore_policy")
def test_set_policy_replaces_the_process_policy_and_returns_the_previous_one() -> None:
    only_pins = RedactionPolicy(fragments=(), words=("pin",))

    previous = redaction.set_policy(only_pins)

    assert redact({"pin": 1, "password": 2}) == {"password": 2}
    assert redaction.set_policy(previous) is only_pins
    assert redact({"pin": 1, "password": 2}) == {"pin": 1}


def test_a_malformed_extension_is_refused_with_the_offending_value() -> None:
    policy = RedactionPolicy()
    with pytest.raises(ValueError, match="can't hold punctuation: 'x-pin'"):
        policy.extended(words=["x-pin"])
    with pytest.raises(TypeError, match="not one string: 'pin'"):
        policy.extended(words="pin")
    with pytest.raises(ValueError, match="non-empty strings, got '-_'"):
        policy.extended(fragments=["-_"])
    with pytest.raises(TypeError, match="RedactionPolicy"):
        redaction.set_policy({"password"})  # type: ignore[arg-type]


def test_the_verdict_cache_stays_bounded_under_many_distinct_key_names() -> None:
    policy = RedactionPolicy()
    keys = {f"field_{i}": i for i in range(3 * redaction._CACHE_LIMIT)}

    assert policy.redact({**keys, "token": "t"}) == keys
    assert len(policy._cache) <= redaction._CACHE_LIMIT
