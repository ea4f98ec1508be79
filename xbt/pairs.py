"""Read image-caption pairs from whatever the user has: a ``datasets.Dataset`` or (image, caption) tuples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PIL import Image

from .errors import XBTError

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp")
CAPTION_COLUMNS = ("caption", "text", "txt", "sentence", "captions")


def _pick(columns: list[str], wanted: tuple[str, ...], what: str, given: str | None) -> str:
    if given is not None:
        if given not in columns:
            raise XBTError(f"pairs have no {what} column {given!r}; columns are {columns}")
        return given
    for name in wanted:
        if name in columns:
            return name
    raise XBTError(
        f"cannot find the {what} column in pairs with columns {columns}; name it one of {list(wanted)} "
        f"or pass {what}_column=..."
    )


def as_pairs(
    pairs: Any, image_column: str | None = None, caption_column: str | None = None
) -> tuple[list[Image.Image], list[str]]:
    """Return ``(images, captions)`` lists from ``pairs``.

    ``pairs`` is a ``datasets.Dataset`` with an image and a caption column (names detected, or given
    with ``image_column`` / ``caption_column``), or any iterable of ``(PIL image, caption)``. A caption
    cell holding a list (several captions per image) contributes its first caption.
    """
    if pairs is None:
        raise XBTError("pairs is None: pass a datasets.Dataset with image and caption columns or a list of (PIL image, caption)")
    column_names = getattr(pairs, "column_names", None)
    if column_names is not None:
        img_col = _pick(list(column_names), IMAGE_COLUMNS, "image", image_column)
        cap_col = _pick(list(column_names), CAPTION_COLUMNS, "caption", caption_column)
        rows: Iterable = zip(pairs[img_col], pairs[cap_col])
    else:
        rows = pairs
    images, captions = [], []
    for i, row in enumerate(rows):
        try:
            image, caption = row
        except (TypeError, ValueError):
            raise XBTError(f"pairs[{i}] is not an (image, caption) pair: {type(row).__name__}") from None
        if isinstance(caption, (list, tuple)):
            caption = caption[0] if caption else None
        if not isinstance(image, Image.Image):
            raise XBTError(f"pairs[{i}] image is a {type(image).__name__}, expected a PIL.Image")
        if not isinstance(caption, str) or not caption.strip():
            raise XBTError(f"pairs[{i}] caption is {caption!r}, expected a non-empty string")
        images.append(image)
        captions.append(caption)
    if not images:
        raise XBTError("pairs is empty: pass at least a few image-caption pairs (stage 2 uses hundreds)")
    return images, captions
