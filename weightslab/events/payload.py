"""How a typed event's fields map to its JSON payload, and the checks that make decoding strict.

Each field of an event class declares (with :func:`field`) its value type, its place
in the payload (at the top, under ``args`` or under ``result``) and whether a None is
left out. :func:`encode` and :func:`fields_of` turn an event into its payload and back;
a key the class does not declare, a missing field or a value of the wrong type is
refused with :class:`~weightslab.errors.EventPayloadError`. Pure: no torch, no SQL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from weightslab.errors import EventPayloadError

__all__ = ["ARGS", "BOOL", "FLOAT", "HASHES", "INT", "INTS", "JSON", "OBJ", "RESULT", "STR", "STRS", "TOP",
           "encode", "field", "fields_of", "is_int"]

# Where a field lives in the payload: at the top, under "args" or under "result".
TOP, ARGS, RESULT = "", "args", "result"
# Value types, checked when decoding ("?" suffix: may be null).
INT, FLOAT, STR, BOOL, INTS, STRS, HASHES, OBJ, JSON = (
    "int", "float", "str", "bool", "ints", "strs", "hashes", "obj", "json")


def field(kind: str, where: str = TOP, *, default: Any = dataclasses.MISSING, omit_none: bool = False) -> Any:
    """A payload field: its value type, its place (top, args, result), and whether a None is left out."""
    meta = {"type": kind.rstrip("?"), "optional": kind.endswith("?"), "where": where, "omit_none": omit_none}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, dict | list):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def encode(event: Any, version: int) -> dict[str, Any]:
    """The JSON payload of an event (a dataclass of :func:`field` fields)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if f.name in ("state", "blobs") and not value:
            continue
        if value is None and f.metadata["omit_none"]:
            continue
        where = f.metadata["where"]
        (out.setdefault(where, {}) if where else out)[f.name] = _plain(value)
    for where in (ARGS, RESULT):
        if _places(type(event)).get(where):
            out.setdefault(where, {})
    if version > 1:
        out["v"] = version
    return out


def fields_of(cls: type, kind: str, version: int, body: Mapping[str, Any]) -> dict[str, Any]:
    """The checked field values of an event of class ``cls`` from its payload (at ``version``).

    Raises:
        EventPayloadError: an unknown key, a missing field or a value of the wrong type.
    """
    places = _places(cls)
    values: dict[str, Any] = {}
    for where in (TOP, ARGS, RESULT):
        part = body if not where else body.get(where, {})
        if not isinstance(part, Mapping):
            raise EventPayloadError(f"{kind} event: {where!r} must be an object, got {type(part).__name__}")
        for key, value in part.items():
            if not where and key in (ARGS, RESULT) and places.get(key):
                continue
            f = places.get(where, {}).get(key)
            if f is None:
                raise EventPayloadError(
                    f"{kind} event (version {version}) has an unknown key "
                    f"{(where + '.' if where else '') + key!r}: it was written by another version of "
                    "WeightsLab, or changed outside it")
            values[key] = _check(kind, key, value, f.metadata)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise EventPayloadError(f"{kind} event lacks {', '.join(missing)}; the store is damaged")
    return values


def _places(cls: type) -> dict[str, dict[str, dataclasses.Field[Any]]]:
    out: dict[str, dict[str, dataclasses.Field[Any]]] = {}
    for f in dataclasses.fields(cls):
        out.setdefault(f.metadata["where"], {})[f.name] = f
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_CHECKS: dict[str, Callable[[Any], bool]] = {
    INT: is_int,
    FLOAT: lambda v: isinstance(v, int | float) and not isinstance(v, bool),  # JSONB may give 1e16 as an int
    STR: lambda v: isinstance(v, str),
    BOOL: lambda v: isinstance(v, bool),
    INTS: lambda v: isinstance(v, list) and all(is_int(x) for x in v),
    STRS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    HASHES: lambda v: isinstance(v, Mapping) and all(isinstance(x, str) for x in v.values()),
    OBJ: lambda v: isinstance(v, Mapping),
    JSON: lambda v: True,
}


def _check(kind: str, key: str, value: Any, meta: Mapping[str, Any]) -> Any:
    t = meta["type"]
    if value is None:
        if meta["optional"]:
            return None
        raise EventPayloadError(f"{kind} event: {key} is null, expected {t}")
    if not _CHECKS[t](value):
        raise EventPayloadError(f"{kind} event: {key} is {str(value)[:80]!r}, expected {t}")
    if t == FLOAT:
        return float(value)
    if t in (INTS, STRS):
        return tuple(value)
    if t in (HASHES, OBJ):
        return dict(value)
    return value


