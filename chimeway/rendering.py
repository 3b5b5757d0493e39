"""Versioned templates per channel, rendered in jinja2's sandbox with a bounded cost.

A delivery names its template by key and version (``render_key``, ``render_version``) and carries
the data it is rendered from (``render_data``), all fixed when it is planned: a retry renders
exactly what the first attempt rendered, even after a newer version is deployed. Keep every
version that deliveries in flight may still name registered.

::

    templates = chimeway.Templates([
        chimeway.Template("welcome", 1, "email", {"subject": "Hi {{ name }}", "html": "<p>{{ body }}</p>"},
                          html=True),
        chimeway.Template("welcome", 1, "sms", {"body": "Hi {{ name }}"}),
    ])
    dispatcher = chimeway.dispatch.Dispatcher(dsn, templates=templates)

The rendered parts are merged into the content the adapter gets (``context.metadata``): the email
adapters read ``subject``, ``text`` and ``html``. Templates run in a
``jinja2.sandbox.SandboxedEnvironment`` with ``StrictUndefined`` (a missing variable is an error,
not an empty string), HTML autoescaping for ``html=True`` templates, and a budget per render: loop
iterations, output size, the size of integers handed to functions and filters, and a deadline
checked on every loop iteration and every piece of output. A template that breaks any of these,
is missing, names a missing variable or reaches outside the sandbox raises :class:`RenderError`;
the dispatcher records that as a permanent failure of that one delivery.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from .errors import ChimewayError

__all__ = ["RenderError", "Rendered", "Template", "TemplateError", "Templates"]

#: Defaults of one render's budget.
DEFAULT_TIMEOUT: Final = 1.0
DEFAULT_MAX_ITERATIONS: Final = 100_000
DEFAULT_MAX_OUTPUT: Final = 256_000
#: the largest exponent ``**`` may take (a huge power is one uninterruptible C call)
_MAX_EXPONENT: Final = 64
#: how many iterations pass between two looks at the clock
_CLOCK_EVERY: Final = 64


class TemplateError(ChimewayError, ValueError):
    """A template set is invalid at definition: a bad key, version, duplicate or syntax error."""


class RenderError(ChimewayError):
    """One delivery's render failed; ``reason`` is a short class (``template_missing``,
    ``undefined_variable``, ``sandbox_violation``, ``render_limit``, ``render_error``)."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class _LimitExceeded(Exception):
    pass


@dataclass(slots=True)
class _Budget:
    deadline: float
    iterations_left: int
    output_left: int
    max_int: int
    ticks: int = 0

    def tick(self) -> None:
        self.iterations_left -= 1
        if self.iterations_left < 0:
            raise _LimitExceeded("too many loop iterations")
        self.ticks += 1
        if self.ticks % _CLOCK_EVERY == 0 and time.monotonic() > self.deadline:
            raise _LimitExceeded("render took too long")

    def check_int(self, value: object) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > self.max_int:
            raise _LimitExceeded(f"an integer argument of {value} is over the limit of {self.max_int}")


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("chimeway_render_budget")


def _bounded(iterable: Any) -> Iterator[Any]:
    """Every ``{% for %}`` iterates through this: each iteration costs one tick of the budget."""
    budget = _budget.get()
    for item in iterable:
        budget.tick()
        yield item


def _bounded_range(*args: int) -> range:
    budget = _budget.get()
    for value in args:
        budget.check_int(value)
    return range(*args)


def _guard(filter_fn: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that refuses huge integer arguments (``center(10**9)``, ``indent(10**9)``)."""

    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        for value in (*args, *kwargs.values()):
            budget.check_int(value)
        return filter_fn(*args, **kwargs)

    for attr in ("jinja_pass_arg",):
        if hasattr(filter_fn, attr):
            setattr(guarded, attr, getattr(filter_fn, attr))
    return guarded


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, with every loop, call, filter and repetition charged to the render's budget."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *, autoescape: bool) -> None:
        super().__init__(autoescape=autoescape, undefined=jinja2.StrictUndefined)
        self.globals.pop("lipsum", None)
        self.globals["range"] = _bounded_range
        self.filters = {name: _guard(fn) for name, fn in self.filters.items()}
        self.filters["_chimeway_bounded"] = _bounded

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, "_chimeway_bounded", [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget.get()
        if operator == "**":
            budget.check_int(left)
            if isinstance(right, int) and right > _MAX_EXPONENT:
                raise _LimitExceeded(f"an exponent of {right} is over the limit of {_MAX_EXPONENT}")
        elif operator == "*":
            for sized, count in ((left, right), (right, left)):
                if (
                    isinstance(sized, str | list | tuple)
                    and isinstance(count, int)
                    and len(sized) * count > budget.output_left
                ):
                    raise _LimitExceeded("a repetition is larger than the output limit")
        return super().call_binop(context, operator, left, right)

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget.get()
        for value in (*args, *kwargs.values()):
            budget.check_int(value)
        return super().call(__context, __obj, *args, **kwargs)


@dataclass(frozen=True, slots=True)
class Template:
    """One version of one template for one channel: named parts (``subject``, ``text``, ``html``,
    ``body``, …), each a jinja2 source. ``html=True`` autoescapes every part (HTML email)."""

    key: str
    version: int
    channel: str
    parts: Mapping[str, str]
    html: bool = False


@dataclass(frozen=True, slots=True)
class Rendered:
    """What a render produced: part name → text."""

    key: str
    version: int
    parts: Mapping[str, str] = field(default_factory=dict)


class Templates:
    """The registered template versions, compiled once, looked up by (key, version, channel).

    ``timeout`` (seconds), ``max_iterations`` (loop iterations across the render) and
    ``max_output`` (characters across all parts; also the largest integer a function or filter
    may be handed) bound one render.
    """

    def __init__(
        self,
        templates: Iterable[Template] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_iterations: int = DEFAULT_MAX_ITERATIONS,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ) -> None:
        for name, value in (("max_iterations", max_iterations), ("max_output", max_output)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TemplateError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise TemplateError(f"timeout must be a number of seconds in (0, 60], got {timeout!r}")
        self.timeout = float(timeout)
        self.max_iterations = max_iterations
        self.max_output = max_output
        self._environments = {flag: _BoundedEnvironment(autoescape=flag) for flag in (False, True)}
        self._compiled: dict[tuple[str, int, str], dict[str, jinja2.Template]] = {}
        for template in templates:
            self.add(template)

    def __len__(self) -> int:
        return len(self._compiled)

    def add(self, template: Template) -> None:
        """Register one template version; refuses a duplicate or a source that does not compile."""
        if not isinstance(template, Template):
            raise TemplateError(f"expected a chimeway.Template, got {template!r}")
        key, version, channel = template.key, template.version, template.channel
        if not isinstance(key, str) or not key.strip():
            raise TemplateError(f"template key must be a non-blank string, got {key!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise TemplateError(f"template {key!r}: version must be an integer >= 1, got {version!r}")
        if not isinstance(channel, str) or not channel.strip():
            raise TemplateError(f"template {key!r} v{version}: channel must be a non-blank string")
        ident = (key, version, channel)
        if ident in self._compiled:
            raise TemplateError(f"template {key!r} v{version} for channel {channel!r} is registered twice")
        if not isinstance(template.parts, Mapping) or not template.parts:
            raise TemplateError(f"template {key!r} v{version} ({channel}): parts must be a non-empty mapping")
        environment = self._environments[bool(template.html)]
        compiled: dict[str, jinja2.Template] = {}
        for part, source in template.parts.items():
            if not isinstance(part, str) or not isinstance(source, str):
                raise TemplateError(f"template {key!r} v{version} ({channel}): parts map names to sources")
            try:
                compiled[part] = environment.from_string(source)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template {key!r} v{version} ({channel}), part {part!r}: "
                    f"line {exc.lineno}: {exc.message}"
                ) from None
        self._compiled[ident] = compiled

    def render(self, key: str, version: int, channel: str, data: Mapping[str, Any]) -> Rendered:
        """Render every part of a template version for ``channel`` from ``data``; raises
        :class:`RenderError` (never anything else) when it can't."""
        where = f"template {key!r} v{version} ({channel})"
        compiled = self._compiled.get((key, version, channel))
        if compiled is None:
            raise RenderError("template_missing", f"{where} is not registered")
        budget = _Budget(
            deadline=time.monotonic() + self.timeout,
            iterations_left=self.max_iterations,
            output_left=self.max_output,
            max_int=self.max_output,
        )
        token = _budget.set(budget)
        parts: dict[str, str] = {}
        try:
            for part, template in compiled.items():
                pieces: list[str] = []
                for piece in template.generate(**data):
                    budget.output_left -= len(piece)
                    if budget.output_left < 0:
                        raise _LimitExceeded(f"output over {self.max_output} characters")
                    if time.monotonic() > budget.deadline:
                        raise _LimitExceeded("render took too long")
                    pieces.append(piece)
                parts[part] = "".join(pieces)
        except _LimitExceeded as exc:
            raise RenderError("render_limit", f"{where}: {exc}") from None
        except jinja2.UndefinedError as exc:
            raise RenderError("undefined_variable", f"{where}: {exc.message}") from None
        except jinja2.exceptions.SecurityError as exc:
            raise RenderError("sandbox_violation", f"{where}: {exc}") from None
        except RecursionError:
            raise RenderError("render_limit", f"{where}: recursion too deep") from None
        except Exception as exc:
            raise RenderError("render_error", f"{where}: {type(exc).__name__}: {str(exc)[:300]}") from None
        finally:
            _budget.reset(token)
        return Rendered(key, version, parts)
