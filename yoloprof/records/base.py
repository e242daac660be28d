"""JSON for the typed record chain: TrialSpec -> rank records -> TrialResult -> Ranking -> report.

Every record is a dataclass that round-trips through JSON (`to_dict` / `from_dict`), so a scan
folder can be re-analysed and re-rendered without the hardware it was measured on. Units live in
field names. A value that could not be measured is None ("n/a"), never a made-up number.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import types
import typing
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

T = typing.TypeVar("T")


class RecordError(ValueError):
    """A saved record that cannot be read back (corrupt, truncated, or from another schema)."""


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(args[0], value) if len(args) == 1 else value
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            allowed = ", ".join(map(repr, typing.get_args(tp)))
            raise RecordError(f"{value!r} is not one of {allowed}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_decode(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp) or (Any, Any)
        return {k: _decode(item, v) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    """Each field's name and resolved type, once per class: get_type_hints evaluates every annotation anew, and
    a scan's report decodes thousands of step records."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def from_dict(cls: type[T], data: dict) -> T:
    """Build a record from its dict, ignoring unknown keys so older readers survive newer fields."""
    if not isinstance(data, dict):
        raise RecordError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    kwargs = {}
    for name, hint in _fields(cls):
        if name in data:
            try:
                kwargs[name] = _decode(hint, data[name])
            except RecordError as exc:
                raise RecordError(f"{cls.__name__}.{name}: {exc}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise RecordError(f"{cls.__name__}: {exc}") from None


def to_dict(record: Any) -> dict:
    return dataclasses.asdict(record)


def write_json(path: Path, payload: Any) -> None:
    """Write atomically (temp file + rename) so an interrupted scan never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(payload) if dataclasses.is_dataclass(payload) else payload
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, cls: type[T] | None = None) -> Any:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path} cannot be read ({exc}); the file is corrupt or truncated") from None
    return from_dict(cls, data) if cls is not None else data
