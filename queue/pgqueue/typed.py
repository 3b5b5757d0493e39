"""Typed job args: a worker declares its args as a dataclass or a pydantic model.

::

    @dataclass
    class Welcome:
        user_id: int
        locale: str = "en"

    class SendWelcome(pgqueue.TypedWorker[Welcome], queue="emails"):
        async def handle(self, args: Welcome, job: pgqueue.Job) -> None:
            ...  # args is a Welcome, decoded from the row

    pgqueue.insert(conn, SendWelcome.new(Welcome(user_id=7)))

``new`` takes the args object, or a mapping that is validated into one: a value of the wrong
type, a missing field or an unknown one raises :class:`ArgsError` naming the field, before
anything is written. The row stores the args as the JSON object of their fields; ``handle``
receives them decoded back into the declared type (a row that no longer decodes fails the attempt
with the same kind of error). Type checkers see ``handle``'s ``args`` as the declared type and
``new``'s argument as that type or a mapping.

A dataclass is checked field by field against its annotations for the JSON types: ``str``,
``int``, ``float``, ``bool``, ``None``, ``list[...]``, ``dict[str, ...]``, unions/``Optional``,
``Literal`` and nested dataclasses (``Any`` or another annotation is taken as it comes). A
pydantic model is validated by pydantic (installed as the ``pydantic`` extra), which covers the
rest: dates, UUIDs, constraints.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .job import Job, NewJob
from .worker import Worker

__all__ = ["ArgsError", "TypedWorker"]

ArgsT = TypeVar("ArgsT")


class ArgsError(ConfigError):
    """Typed args that don't match their declared type; ``field`` names the offending one."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class _Codec:
    """How one args type is validated, encoded to a JSON object and decoded back."""

    def __init__(self, args_type: Any, worker: str) -> None:
        self.type = args_type
        self.worker = worker
        self.pydantic = _is_pydantic_model(args_type)
        if not self.pydantic and not (dataclasses.is_dataclass(args_type) and isinstance(args_type, type)):
            raise ConfigError(
                f"worker {worker}: args must be declared as a dataclass or a pydantic model, "
                f"got {args_type!r}"
            )

    def to_json_object(self, args: object) -> dict[str, Any]:
        """The row's args for ``args`` (an instance, or a mapping validated into one)."""
        if isinstance(args, Mapping):
            args = self.from_json_object(dict(args))
        elif not isinstance(args, self.type):
            raise ArgsError(
                f"args of {self.worker} must be a {self.type.__name__} or a mapping, "
                f"got {type(args).__name__}",
                "",
            )
        elif not self.pydantic:
            _check_dataclass(self.type, dataclasses.asdict(args), self.worker, "")
        if self.pydantic:
            dumped: dict[str, Any] = args.model_dump(mode="json")  # type: ignore[attr-defined]
            return dumped
        return dataclasses.asdict(args)  # type: ignore[call-overload,no-any-return]

    def from_json_object(self, data: dict[str, Any]) -> Any:
        """An instance of the args type from a row's (or a caller's) JSON object."""
        if self.pydantic:
            from pydantic import ValidationError

            try:
                return self.type.model_validate(data)
            except ValidationError as exc:
                error = exc.errors()[0]
                field = ".".join(str(part) for part in error["loc"])
                raise ArgsError(f"args of {self.worker}: field {field!r}: {error['msg']}", field) from None
        return _build_dataclass(self.type, data, self.worker, "")


def _is_pydantic_model(args_type: object) -> bool:
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(args_type, type) and issubclass(args_type, pydantic.BaseModel)


def _path(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _check_dataclass(cls: type[Any], data: object, worker: str, prefix: str) -> None:
    if not isinstance(data, dict):
        where = f"field {prefix!r}" if prefix else "args"
        raise ArgsError(f"args of {worker}: {where} must be an object, got {type(data).__name__}", prefix)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            path = _path(prefix, key)
            raise ArgsError(f"args of {worker}: unknown field {path!r} (expected {sorted(fields)})", path)
    for name, field in fields.items():
        path = _path(prefix, name)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ArgsError(f"args of {worker}: field {path!r} is required", path)
            continue
        _check_value(hints[name], data[name], worker, path)


def _type_name(annotation: object) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check_value(annotation: Any, value: object, worker: str, path: str) -> None:
    origin = get_origin(annotation)
    if annotation is Any:
        return
    if origin in (Union, types.UnionType):
        options = [o for o in get_args(annotation) if o is not type(None) or value is None]
        if len(options) == 1:  # `X | None` given a value: X's own error names the inner field
            _check_value(options[0], value, worker, path)
            return
        for option in options:
            try:
                _check_value(option, value, worker, path)
            except ArgsError:
                continue
            return
        raise _mismatch(annotation, value, worker, path)
    if origin is Literal:
        if value not in get_args(annotation):
            raise ArgsError(
                f"args of {worker}: field {path!r} must be one of {list(get_args(annotation))}, "
                f"got {value!r}",
                path,
            )
        return
    if annotation is None or annotation is type(None):
        if value is not None:
            raise _mismatch(annotation, value, worker, path)
        return
    if origin is list:
        if not isinstance(value, list):
            raise _mismatch(annotation, value, worker, path)
        (item,) = get_args(annotation) or (Any,)
        for index, element in enumerate(value):
            _check_value(item, element, worker, _path(path, index))
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise _mismatch(annotation, value, worker, path)
        _, item = get_args(annotation) or (str, Any)
        for key, element in value.items():
            _check_value(item, element, worker, _path(path, key))
        return
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        _check_dataclass(annotation, value, worker, path)
        return
    simple = {str: (str,), bool: (bool,), int: (int,), float: (int, float)}.get(annotation)
    if simple is None:
        return  # not a JSON type we check: taken as it comes (use pydantic for more)
    if not isinstance(value, simple) or (annotation is not bool and isinstance(value, bool)):
        raise _mismatch(annotation, value, worker, path)


def _mismatch(annotation: object, value: object, worker: str, path: str) -> ArgsError:
    return ArgsError(
        f"args of {worker}: field {path!r} must be {_type_name(annotation)}, got {value!r}"
        f" ({type(value).__name__})",
        path,
    )


def _build_dataclass(cls: type[Any], data: dict[str, Any], worker: str, prefix: str) -> Any:
    _check_dataclass(cls, data, worker, prefix)
    hints = get_type_hints(cls)
    values = {name: _build_value(hints[name], value) for name, value in data.items()}
    return cls(**values)


def _build_value(annotation: Any, value: Any) -> Any:
    """``value`` (already checked) with nested dataclasses built from their objects."""
    origin = get_origin(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        hints = get_type_hints(annotation)
        return annotation(**{k: _build_value(hints[k], v) for k, v in value.items()})
    if origin is list and isinstance(value, list):
        (item,) = get_args(annotation) or (Any,)
        return [_build_value(item, element) for element in value]
    if origin is dict and isinstance(value, dict):
        _, item = get_args(annotation) or (str, Any)
        return {key: _build_value(item, element) for key, element in value.items()}
    if origin in (Union, types.UnionType):
        for option in get_args(annotation):
            if isinstance(option, type) and dataclasses.is_dataclass(option) and isinstance(value, dict):
                try:
                    _check_dataclass(option, value, "", "")
                except ArgsError:
                    continue
                return _build_value(option, value)
    return value


def _declared_args(cls: type[Any]) -> Any:
    """The ``X`` of ``TypedWorker[X]`` among ``cls``'s own bases, else None."""
    for base in getattr(cls, "__orig_bases__", ()):
        if get_origin(base) is TypedWorker:
            return get_args(base)[0]
    return None


class TypedWorker(Worker, Generic[ArgsT], abstract=True):
    """A worker whose args are a dataclass or pydantic model: define ``handle(self, args, job)``.

    See the module doc. Everything else (class options, ``backoff``, ``timeout``) is
    :class:`pgqueue.Worker`'s.
    """

    _codec: ClassVar[_Codec]

    def __init_subclass__(cls, **options: Any) -> None:
        if not options.get("abstract"):
            where = f"worker {cls.__module__}.{cls.__qualname__}"
            declared = _declared_args(cls)
            if declared is not None:
                cls._codec = _Codec(declared, where)
            elif not hasattr(cls, "_codec"):
                raise ConfigError(f"{where}: say the args type, as in TypedWorker[MyArgs]")
            if "perform" in cls.__dict__:
                raise ConfigError(f"{where}: a TypedWorker defines handle(self, args, job), not perform")
            if cls.handle is TypedWorker.handle:
                raise ConfigError(f"{where}: define handle(self, args, job)")
            # Set before Worker's checks, which see a perform and whether it is async.
            perform = _async_perform if inspect.iscoroutinefunction(cls.handle) else _sync_perform
            setattr(cls, "perform", perform)  # noqa: B010 - assigning a method would not type-check
        super().__init_subclass__(**options)

    def handle(self, args: ArgsT, job: Job) -> Any:
        """Do the job's work with its decoded ``args``; return or raise as ``perform`` does."""
        raise NotImplementedError

    @classmethod
    def decode_args(cls, job: Job) -> ArgsT:
        """``job``'s args as the declared type (:class:`ArgsError` naming the field if they don't fit)."""
        data = job.args if isinstance(job.args, dict) else {}
        decoded: ArgsT = cls._codec.from_json_object(data)
        return decoded

    @classmethod
    def new(cls, args: ArgsT | Mapping[str, Any] | None = None, **options: Any) -> NewJob:
        """Build an unsaved job from ``args`` (validated; see the module doc)."""
        if args is None:
            raise ArgsError(f"args of {cls.name} are required (a {cls._codec.type.__name__})", "")
        return super().new(cls._codec.to_json_object(args), **options)


def _sync_perform(self: TypedWorker[Any], job: Job) -> Any:
    return self.handle(self.decode_args(job), job)


async def _async_perform(self: TypedWorker[Any], job: Job) -> Any:
    return await self.handle(self.decode_args(job), job)
