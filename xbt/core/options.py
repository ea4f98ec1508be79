"""The mechanism behind every method's options: dataclass fields with help texts, ``from_kwargs``, ``to_dict``.

Each method's own options live beside the method (``xbt.method.config``, ``xbt.baselines.config``);
the CLI generates its flags from their fields (``metadata["help"]``).
"""

from __future__ import annotations

import numbers
import types
import typing
from dataclasses import asdict, field, fields
from typing import Any, ClassVar

from .errors import XBTError


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (the CLI's flag help)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults need default_factory")
    return field(default=default, metadata={"help": help, **kw})


def _matches(value: Any, kind: Any) -> bool:
    """Whether ``value`` fits the annotation ``kind``: ints refuse floats and bools, floats accept ints (not
    bools), ``X | None`` accepts None, ``tuple[X, ...]`` accepts a tuple or list of X; other kinds pass."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if kind is type(None):
        return value is None
    if origin is tuple:
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, (tuple, list)) and all(_matches(v, items[0]) for v in value) if items else True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return True


def _type_name(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        items = [a for a in args if a is not Ellipsis]
        return f"a tuple of {_type_name(items[0])}" if items else "a tuple"
    return "None" if kind is type(None) else getattr(kind, "__name__", str(kind))


class Options:
    """Shared behaviour of the option dataclasses: type checks, ``from_kwargs`` and ``to_dict``."""

    #: how error messages name this set of options
    what: ClassVar[str] = "option"

    def __post_init__(self) -> None:
        self.check_types()

    def check_types(self) -> None:
        """Refuse a field whose value does not fit its annotation, naming the field, the value and the type.

        Subclasses call it (through ``super().__post_init__()``) before their range checks.
        """
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value, kind = getattr(self, f.name), hints.get(f.name, Any)
            if not _matches(value, kind):
                raise XBTError(
                    f"{self.what} option {f.name}={value!r:.60} has type {type(value).__name__}; "
                    f"it must be {_type_name(kind)}: pass e.g. {f.name}={f.default!r}"
                )

    @classmethod
    def from_kwargs(cls, **kwargs: Any):
        """Build from keyword arguments, rejecting unknown names with the list of valid ones."""
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise XBTError(f"unknown {cls.what} option(s) {unknown}; valid options are {sorted(valid)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
