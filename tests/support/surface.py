"""The public surface of `postroom`: what `__all__` names, the signatures of the face's functions and
of the public methods of its classes, and the value types those return.

tests/unit/test_public_surface.py pins it, so a change of the API is a change of that test too.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import postroom

#: The face's classes whose methods are the API (the others in `__all__` are value types).
FACE_CLASSES = ("AsyncSession", "Draft", "Session")


def _annotation(value: Any) -> str:
    if value is inspect.Parameter.empty:
        return ""
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature(fn: Callable[..., Any]) -> str:
    """`(a: int, *, b: str | None = None) -> Thing`, as written in the source (self left out)."""
    sig = inspect.signature(fn)
    parts = []
    star = False
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        star = star or p.kind is p.VAR_POSITIONAL
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        parts.append(text)
    returns = _annotation(sig.return_annotation)
    return f"({', '.join(parts)})" + (f" -> {returns}" if returns else "")


def _members(cls: type) -> Iterator[tuple[str, Any]]:
    for name in sorted(dir(cls)):
        if name.startswith("_") and name not in ("__enter__", "__exit__", "__aenter__", "__aexit__"):
            continue
        yield name, inspect.getattr_static(cls, name)


def surface() -> dict[str, str]:
    """{"__all__": the names, "Session.deliver": its signature, "Session.outbox": "property -> Folder", …}."""
    out = {"__all__": ", ".join(sorted(postroom.__all__))}
    for name in sorted(postroom.__all__):
        value = getattr(postroom, name)
        if inspect.isfunction(value):
            out[name] = signature(value)
    for cls_name in FACE_CLASSES:
        for name, member in _members(getattr(postroom, cls_name)):
            key = f"{cls_name}.{name}"
            if isinstance(member, property):
                assert member.fget is not None
                out[key] = "property -> " + _annotation(inspect.signature(member.fget).return_annotation)
            elif isinstance(member, staticmethod | classmethod):
                out[key] = signature(member.__func__)
            elif inspect.isfunction(member):
                out[key] = signature(member)
    return out


def _classes(hint: Any) -> Iterator[type]:
    """The classes in a type hint: `list[QueueEntry] | None` → QueueEntry."""
    origin = typing.get_origin(hint)
    if origin is type:
        return  # a class handed out (a transport kind's provider), not a value of it
    if origin is not None or isinstance(hint, types.UnionType):
        for arg in typing.get_args(hint):
            yield from _classes(arg)
        if isinstance(origin, type):
            yield origin
    elif isinstance(hint, type):
        yield hint


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    return typing.get_type_hints(fn)


def returned_types() -> set[type]:
    """Every postroom class that a face function or method returns (directly or in a container)."""
    found: set[type] = set()
    functions: list[Callable[..., Any]] = []
    for name in postroom.__all__:
        value = getattr(postroom, name)
        if inspect.isfunction(value):
            functions.append(value)
    for cls_name in FACE_CLASSES:
        for _, member in _members(getattr(postroom, cls_name)):
            if isinstance(member, property) and member.fget is not None:
                functions.append(member.fget)
            elif isinstance(member, staticmethod | classmethod):
                functions.append(member.__func__)
            elif inspect.isfunction(member):
                functions.append(member)
    for fn in functions:
        for cls in _classes(_hints(fn).get("return")):
            if cls.__module__.split(".")[0] == "postroom":
                found.add(cls)
    return found
