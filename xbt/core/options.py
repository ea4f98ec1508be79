"""The mechanism behind every method's options: dataclass fields with help texts, ``from_kwargs``, ``to_dict``.

Each method's own options live beside the method (``xbt.method.config``, ``xbt.baselines.config``);
the CLI generates its flags from their fields (``metadata["help"]``).
"""

from __future__ import annotations

from dataclasses import asdict, field, fields
from typing import Any, ClassVar

from .errors import XBTError


def option(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help text (the CLI's flag help)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults need default_factory")
    return field(default=default, metadata={"help": help, **kw})


class Options:
    """Shared behaviour of the option dataclasses: ``from_kwargs`` and ``to_dict``."""

    #: how error messages name this set of options
    what: ClassVar[str] = "option"

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
