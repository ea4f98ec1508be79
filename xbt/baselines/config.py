"""The options of the training-free methods (Procrustes, ridge map, SLERP/NLERP fusion).

``BASELINE_OPTIONS`` says which ``BaselineConfig`` fields apply to which method; an option that
does not apply is refused, naming the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..adapters.config import check_alpha
from ..core.errors import XBTError, need
from ..core.options import Options, option
from .alpha import ALPHA_GRID
from .maps import DEFAULT_RIDGE

#: the training-free methods and which ``BaselineConfig`` fields apply to each
BASELINE_OPTIONS = {
    "procrustes": ("support",),
    "linear": ("support", "ridge"),
    "slerp": ("support", "base", "ridge", "alpha", "alpha_text", "alpha_image", "grid"),
    "nlerp": ("support", "base", "ridge", "alpha", "alpha_text", "alpha_image", "grid"),
}


#: closed-form maps new -> old
MAP_KINDS = ("procrustes", "linear")


#: where a map's (new, old) support embeddings come from
SUPPORTS = ("text", "image", "joint")


@dataclass
class BaselineConfig(Options):
    """Options of the training-free methods; ``BASELINE_OPTIONS`` says which apply to which method."""

    what: ClassVar[str] = "baseline"

    support: str = option(
        "text",
        "what the map is fitted on: text (the stage-1 texts), image (the pair images) or joint",
        choices=SUPPORTS,
    )
    ridge: float = option(
        DEFAULT_RIDGE, "relative ridge of the linear map (a fraction of the mean eigenvalue of X^T X)"
    )
    base: str = option("procrustes", "the map fusion blends with: procrustes or linear", choices=MAP_KINDS)
    alpha: float | None = option(
        None, "fixed fusion weight of the new query for both directions (default: chosen on the pairs)"
    )
    alpha_text: float | None = option(None, "fixed fusion weight for text queries (overrides alpha)")
    alpha_image: float | None = option(None, "fixed fusion weight for image queries (overrides alpha)")
    grid: tuple[float, ...] = option(ALPHA_GRID, "the fusion weights tried when choosing on the pairs")

    def __post_init__(self) -> None:
        super().__post_init__()  # the type of each field, before its range
        need(self.support in SUPPORTS, f"unknown support {self.support!r}; choose one of {list(SUPPORTS)}")
        need(self.ridge >= 0, f"ridge must be >= 0, got {self.ridge}; use a small positive value such as 0.1")
        need(
            self.base in MAP_KINDS,
            f"base={self.base!r} is not a map xbt can fit without training; choose one of "
            f"{list(MAP_KINDS)}, or fuse an XBT adapter with xbt.fit.fuse",
        )
        for name in ("alpha", "alpha_text", "alpha_image"):
            if getattr(self, name) is not None:
                setattr(self, name, check_alpha(name, getattr(self, name)))
        self.grid = tuple(check_alpha("grid value", a) for a in self.grid)

    @classmethod
    def for_method(cls, method: str, **kwargs: Any) -> BaselineConfig:
        """The options of ``method``, refusing those that do not apply to it (naming the method)."""
        if method not in BASELINE_OPTIONS:
            raise XBTError(f"unknown baseline {method!r}; choose one of {list(BASELINE_OPTIONS)}")
        valid = BASELINE_OPTIONS[method]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise XBTError(f"unknown option(s) {unknown} for method {method!r}; valid options are {sorted(valid)}")
        return cls(**kwargs)
