"""Drop secrets from anything chimeway stores or logs: every key whose name looks like a secret.

A key is sensitive when its name, case-folded with ``-`` and ``_`` removed, *contains* one of the
policy's fragments (:data:`SENSITIVE_FRAGMENTS`: ``password``, ``token``, ``apikey``, …), so
``access_token``, ``X-Api-Key``, ``client_secret`` and ``Authorization`` all go; or when one of
its *words* is one of the policy's words (:data:`SENSITIVE_WORDS`: ``auth``). Short names are
matched as words on purpose: as a substring ``auth`` would also drop ``author``, ``authority`` or
``authenticated`` from a notification's content, so ``auth``, ``basic_auth``, ``X-Auth`` and
``authKey`` go while ``author`` stays. Words are split at ``-``, ``_``, any other punctuation and
camelCase boundaries (``HTTPAuth`` is ``http`` + ``auth``).

Some false positives remain by design (``secretary`` contains ``secret``, ``session_title``
contains ``session``): a key that must survive is exempted by name. An application extends the
policy once, at import time of its own code (the module that defines its notifiers or adapters,
which the worker process imports too)::

    from chimeway import redaction

    redaction.add_sensitive_names("ssn", "iban", words=["pin"])  # drop these too
    redaction.allow_names("session_title")                       # keep this one

Dropped keys vanish (they are not masked), at any depth, inside lists too. The event payload,
each notification's content, delivery metadata and every stored provider response pass through
:func:`redact`.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "SENSITIVE_FRAGMENTS",
    "SENSITIVE_WORDS",
    "RedactionPolicy",
    "add_sensitive_names",
    "allow_names",
    "current_policy",
    "is_sensitive",
    "redact",
    "set_policy",
]

#: Matched as substrings of the normalised key (case-folded, ``-`` and ``_`` removed).
SENSITIVE_FRAGMENTS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "cookie",
    "session",
    "oauth",
)
#: Matched as whole words of the key: too short to match as substrings without false positives.
SENSITIVE_WORDS: Final = ("auth",)

# Where a key splits into words: punctuation, lower→upper ("authKey") and the end of an acronym
# ("HTTPAuth").
_WORD_BREAK = re.compile(r"[^0-9A-Za-z]+|(?<=[0-9a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# Keys are looked up once per policy; a notification's build() repeats the same few keys for
# every recipient. The cache is cleared when full, so hostile key names can't grow it forever.
_CACHE_LIMIT = 4096
# Values that hold no keys, copied as they are.
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})


def _normalise(name: str) -> str:
    return name.casefold().replace("-", "").replace("_", "")


def _names(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{what} must be a list of names, not one string: {values!r}")
    names = tuple(values)
    for name in names:
        if not isinstance(name, str) or not _normalise(name):
            raise ValueError(f"{what} must be non-empty strings, got {name!r}")
    return names


@dataclass(frozen=True)
class RedactionPolicy:
    """Which key names are secrets: fragments (substrings), words, and names exempted outright."""

    fragments: tuple[str, ...] = SENSITIVE_FRAGMENTS
    words: tuple[str, ...] = SENSITIVE_WORDS
    #: normalised key names never dropped, whatever they contain
    allowed: frozenset[str] = frozenset()
    _cache: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fragments", tuple(_normalise(f) for f in self.fragments))
        object.__setattr__(self, "words", tuple(w.casefold() for w in self.words))
        object.__setattr__(self, "allowed", frozenset(_normalise(a) for a in self.allowed))

    def sensitive(self, key: object) -> bool:
        """Whether ``key`` names a secret (only strings do)."""
        if not isinstance(key, str):
            return False
        known = self._cache.get(key)
        if known is not None:
            return known
        normalised = _normalise(key)
        verdict = normalised not in self.allowed and (
            any(fragment in normalised for fragment in self.fragments)
            or any(word.casefold() in self.words for word in _WORD_BREAK.split(key) if word)
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = verdict
        return verdict

    def redact(self, mapping: Mapping[Any, Any]) -> dict[Any, Any]:
        """A copy of ``mapping`` without sensitive keys, at any depth (inside lists too)."""
        # Called for every recipient of a fan-out: the cache is read inline and plain values are
        # copied without a call.
        cache = self._cache
        result: dict[Any, Any] = {}
        for key, value in mapping.items():
            verdict = cache.get(key)
            if verdict is None:
                verdict = self.sensitive(key)
            if not verdict:
                result[key] = value if value.__class__ in _PLAIN else self._value(value)
        return result

    def _value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self.redact(value)
        if isinstance(value, list | tuple):
            return [item if item.__class__ in _PLAIN else self._value(item) for item in value]
        return value

    def extended(
        self, fragments: Iterable[str] = (), words: Iterable[str] = (), allowed: Iterable[str] = ()
    ) -> RedactionPolicy:
        """This policy with more sensitive fragments and words, and more exempted names."""
        new_words = _names(words, "words")
        for word in new_words:
            if not word.isalnum():
                raise ValueError(f"words are matched whole, so they can't hold punctuation: {word!r}")
        return RedactionPolicy(
            (*self.fragments, *_names(fragments, "fragments")),
            (*self.words, *new_words),
            self.allowed | frozenset(_names(allowed, "allowed names")),
        )


_policy = RedactionPolicy()
_policy_lock = threading.Lock()


def current_policy() -> RedactionPolicy:
    """The policy :func:`redact` applies in this process."""
    return _policy


def set_policy(policy: RedactionPolicy) -> RedactionPolicy:
    """Make ``policy`` the process's policy; returns the one it replaces (to restore it later)."""
    global _policy
    if not isinstance(policy, RedactionPolicy):
        raise TypeError(f"policy must be a RedactionPolicy, got {type(policy).__name__}")
    with _policy_lock:
        previous, _policy = _policy, policy
    return previous


def add_sensitive_names(*fragments: str, words: Iterable[str] = ()) -> None:
    """Also drop every key that contains one of ``fragments`` or has one of ``words`` as a word."""
    global _policy
    with _policy_lock:
        _policy = _policy.extended(fragments=fragments, words=words)


def allow_names(*names: str) -> None:
    """Never drop keys named ``names`` (compared normalised: ``Session-Title`` is ``session_title``)."""
    global _policy
    with _policy_lock:
        _policy = _policy.extended(allowed=names)


def is_sensitive(key: object) -> bool:
    """Whether the current policy drops a key named ``key``."""
    return _policy.sensitive(key)


def redact(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    """Return a copy of ``mapping`` without sensitive keys, at any depth (inside lists too)."""
    return _policy.redact(mapping)
