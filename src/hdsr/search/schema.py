"""A small schema language for the search space file, and its one validator.

A schema is a dataclass of :class:`Schema`: a field's annotation is the type of its key's
value (``int``, ``float``, ``bool``, ``str``, a ``Literal``, ``list[...]``,
``dict[str, ...]``, a union with ``None`` or ``Literal[...]``, or a union of schemas told
apart by their ``TAG`` key), its metadata (:func:`key`) the rest: a message of its own, a
pattern, a lower bound, the checks that compare it with the fields before it.
:func:`check_schema` checks ``yaml.safe_load``'s result against a schema and raises
:class:`SpaceError` naming the key of the first mistake; nothing is converted.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


class SpaceError(ValueError):
    """A bad search space; the message names the key (exit status 2)."""


#: a check of a field against the fields checked before it: (where, values so far)
After = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Check:
    """A schema field's metadata: what its annotation does not say."""

    message: str | None = None  # for any wrong value ({where}, {value}); else by type
    pattern: re.Pattern[str] | None = None  # a string's form
    minimum: float | None = None  # a number's lower bound
    exclusive: bool = False  # the bound itself is refused
    nonempty: bool = False  # a list or mapping
    keys: Callable[[str, Any], Any] | None = None  # checks each key of a mapping
    after: After | None = None
    empty_is_default: bool = False  # null, false, 0 or an empty value mean the default


def key(default: Any = dataclasses.MISSING, **check: Any) -> Any:
    """A schema field: its default (none: the key is required, except in
    :attr:`Schema.ARGUMENTS`, where any may be left out) and its :class:`Check`."""
    return field(default=default, metadata={"check": Check(**check)})


class Schema:
    """A mapping of the file. Subclasses are dataclasses; their ClassVars say how they are
    told apart (``TAG``, ``NAME``) and word their mistakes."""

    TAG: ClassVar[str | None] = None  # the key choosing the class among others (a union)
    NAME: ClassVar[str] = ""  # this class's value of TAG
    NOUN: ClassVar[str] = ""  # what TAG chooses, in "unknown <NOUN> 'x'"
    NOT_A_MAPPING: ClassVar[str] = "{where} must be a mapping with a {tag}, got {value!r}"
    UNKNOWN: ClassVar[str] = "{where}: unknown key {key!r} (allowed: {allowed})"
    #: keyword arguments (pruners, samplers): the keys given are checked in the file's
    #: order and only they are kept; otherwise every field is, in the schema's order
    ARGUMENTS: ClassVar[bool] = False


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------
# The validator
# --------------------------------------------------------------------------------------

_NO_CHECK = Check()


def _join(where: str, name: Any) -> str:
    return f"{where}.{name}" if where else str(name)


@functools.cache
def _fields(schema: type) -> dict[str, tuple[Any, dataclasses.Field[Any]]]:
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(schema)}


def check_schema(
    schema: type[Schema], data: Any, where: str = "", defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``data`` checked against ``schema``: its values by key (``TAG`` first, then the
    fields), the defaults of absent keys filled in (``defaults`` overriding the schema's).
    Raises :class:`SpaceError` on the first mistake, in this order: not a mapping, an
    unknown key, a missing key, then each field's value."""
    if not isinstance(data, Mapping):
        raise SpaceError(schema.NOT_A_MAPPING.format(where=where, tag=schema.TAG, value=data))
    fields = _fields(schema)
    defaults = defaults or {}
    given = [name for name in data if name != schema.TAG]
    if not schema.ARGUMENTS:
        unknown = [name for name in given if name not in fields]
        if unknown:
            raise _unknown(schema, where, unknown[0])
        for name, (_, f) in fields.items():
            if f.default is dataclasses.MISSING and name not in data and name not in defaults:
                raise SpaceError(f"{_join(where, name)} is missing")
    values: dict[str, Any] = {schema.TAG: schema.NAME} if schema.TAG else {}
    for name in given if schema.ARGUMENTS else fields:
        if name not in fields:
            raise _unknown(schema, where, name)
        annotation, f = fields[name]
        check = f.metadata.get("check", _NO_CHECK)
        default = defaults.get(name, f.default)
        value = data.get(name, default)
        if check.empty_is_default and not value:
            value = default
        values[name] = _check_value(annotation, value, _join(where, name), check)
        if check.after is not None and values[name] is not None:
            check.after(where, values)
    return values


def _unknown(schema: type[Schema], where: str, name: Any) -> SpaceError:
    allowed = ", ".join(_fields(schema)) or "none"
    return SpaceError(
        schema.UNKNOWN.format(where=where, key=name, tag=schema.NAME, allowed=allowed)
    )


def _check_value(annotation: Any, value: Any, where: str, check: Check) -> Any:
    """``value`` checked against a field's annotation and :class:`Check`."""

    def wrong(message: str) -> SpaceError:
        return SpaceError((check.message or message).format(where=where, value=value))

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        schemas = [a for a in options if dataclasses.is_dataclass(a)]
        if schemas:
            return _check_one_of(schemas, value, where)
        literals = [a for a in options if typing.get_origin(a) is Literal]
        if any(value in typing.get_args(a) for a in literals):
            return value
        (annotation,) = [a for a in options if a not in literals]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value not in args:
            raise wrong(f"{{where}} must be one of {', '.join(map(repr, args))}, got {{value!r}}")
    elif annotation is bool:
        if not isinstance(value, bool):
            raise wrong("{where} must be true or false, got {value!r}")
    elif annotation is int:
        if not (isinstance(value, int) and not isinstance(value, bool)):
            raise wrong("{where} must be an integer, got {value!r}")
    elif annotation is float:
        if not is_number(value):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
                hint = f" (YAML reads {value} as a string: write it with a dot, e.g. 1.0e-5)"
            raise wrong("{where} must be a number, got {value!r}" + hint)
        if not math.isfinite(value):
            raise wrong("{where} must be finite, got {value!r}")
    elif annotation is str:
        if not isinstance(value, str) or (check.pattern and not check.pattern.fullmatch(value)):
            raise wrong("{where} must be a string, got {value!r}")
    elif origin is list:
        (item,) = args
        if (
            not isinstance(value, list)
            or (check.nonempty and not value)
            or not (item is Any or all(isinstance(v, item) for v in value))
        ):
            raise wrong("{where} must be a list, got {value!r}")
    elif origin is dict:
        if not isinstance(value, Mapping) or (check.nonempty and not value):
            raise wrong("{where} must be a mapping, got {value!r}")
        checked = {}
        for name, item in value.items():
            if check.keys is not None:
                check.keys(where, name)
            checked[name] = _check_value(args[1], item, _join(where, name), _NO_CHECK)
        return checked
    else:  # a schema annotation the validator does not know: a mistake in the schema
        raise TypeError(f"{where}: cannot check a value of type {annotation!r}")
    if check.minimum is not None and (
        value < check.minimum or (check.exclusive and value == check.minimum)
    ):
        if check.exclusive and check.minimum == 0:
            raise SpaceError(f"{where} must be positive, got {value}")
        if check.minimum == 0:
            raise SpaceError(f"{where} must not be negative, got {value}")
        raise SpaceError(f"{where} must be at least {check.minimum}, got {value}")
    return value


def _check_one_of(schemas: list[type[Schema]], value: Any, where: str) -> dict[str, Any]:
    """``value`` checked against the schema its ``TAG`` names."""
    first = schemas[0]
    if not isinstance(value, Mapping):
        raise SpaceError(first.NOT_A_MAPPING.format(where=where, tag=first.TAG, value=value))
    name = value.get(first.TAG)
    chosen = next((s for s in schemas if s.NAME == name), None)
    if chosen is None:
        names = ", ".join(s.NAME for s in schemas)
        raise SpaceError(
            f"{where}.{first.TAG}: unknown {first.NOUN} {name!r} (use one of: {names})"
        )
    return check_schema(chosen, value, where)
