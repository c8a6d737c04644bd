"""Canonical JSON for event payloads and the SHA-256 hash chain over events.

The canonical form is the one byte string an event hashes to: keys sorted,
no insignificant whitespace, UTF-8, no NaN/Infinity (JSON has none; a NaN
would make two readers disagree). Tuples and sets are not accepted silently:
sets are encoded sorted so that ``{2, 0}`` and ``{0, 2}`` hash alike.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from weightslab.errors import EventPayloadError

__all__ = ["canonical_json", "chain_hash", "decode_payload", "normalise"]


def normalise(value: Any, path: str = "payload") -> Any:
    """Return ``value`` as plain JSON types (dict/list/str/int/float/bool/None).

    Sets and frozensets become sorted lists, tuples become lists, numpy/torch
    scalars become Python numbers (anything with ``.item()`` and no length).

    Every backend must give the value back as it hashed: PostgreSQL's JSONB keeps
    numbers as decimals, so ``-0.0`` becomes ``0.0`` here and a float of magnitude
    ``>= 1e16`` (which JSON writes without a fraction, and JSONB returns as an
    integer) becomes that integer; strings holding NUL or lone surrogates (which
    JSONB and UTF-8 cannot hold) and integers too long for JSON are refused.

    Raises:
        EventPayloadError: naming the offending key path, for anything else
            (objects, non-finite floats, non-string keys).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _check_text(value, path)
    if isinstance(value, int):
        if not -_MAX_INT < value < _MAX_INT:
            raise EventPayloadError(f"{path} is an integer of more than 4000 digits; store it as a blob.")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EventPayloadError(
                f"{path} is {value!r}; event payloads must hold finite numbers only "
                "(encode missing values as null)."
            )
        if value == 0.0:
            return 0.0
        return int(value) if abs(value) >= 1e16 else float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise EventPayloadError(
                    f"{path} has key {k!r} of type {type(k).__name__}; payload keys must be strings."
                )
            out[_check_text(k, path)] = normalise(v, f"{path}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [normalise(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [normalise(v, f"{path}{{}}") for v in value]
        try:
            return sorted(items)
        except TypeError as e:
            raise EventPayloadError(f"{path} is a set of mixed types; use a list.") from e
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 0) == 0:
        return normalise(item(), path)
    raise EventPayloadError(
        f"{path} is a {type(value).__name__}, which is not JSON-serialisable; "
        "event payloads hold only dicts, lists, strings, numbers, booleans and null "
        "(store tensors as blobs and put their hash in the payload)."
    )


_MAX_INT = 10**4000  # Python's json refuses to read integers of more than 4300 digits


def _check_text(text: str, path: str) -> str:
    if "\x00" in text:
        raise EventPayloadError(f"{path} holds a NUL character, which PostgreSQL cannot store; remove it.")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise EventPayloadError(f"{path} is not valid Unicode ({e.reason}); pass proper text.") from e
    return text


def canonical_json(value: Any, *, normalised: bool = False) -> str:
    """Encode ``value`` as canonical JSON text (sorted keys, compact, finite numbers).

    ``normalised=True`` says ``value`` is already what :func:`normalise` returns (it is
    idempotent), so the walk over it is skipped; the text is the same.

    Example:
        >>> canonical_json({"b": 1, "a": {3, 1}})
        '{"a":[1,3],"b":1}'
    """
    return json.dumps(
        value if normalised else normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    )


def decode_payload(text: str | Mapping[str, Any]) -> dict[str, Any]:
    """Decode a stored payload (JSON text, or a dict when the driver already parsed it)."""
    if isinstance(text, Mapping):
        return dict(text)
    value = json.loads(text)
    if not isinstance(value, dict):
        raise EventPayloadError(f"stored payload is a {type(value).__name__}, expected an object")
    return value


def chain_hash(fields: Mapping[str, Any], prev_hash: str | None, *, normalised: bool = False) -> str:
    """SHA-256 (hex) over an event's canonical content and the previous event's hash.

    ``fields`` are the event's recorded columns (seq, kind, payload, time, ...);
    changing any of them, or the order of events, changes every later hash.
    ``normalised=True``: ``fields`` already went through :func:`normalise`.
    """
    body = canonical_json({"event": dict(fields), "prev_hash": prev_hash},
                          normalised=normalised and (prev_hash is None or isinstance(prev_hash, str)))
    return hashlib.sha256(body.encode("utf-8")).hexdigest()
