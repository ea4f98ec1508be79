"""Read image-caption pairs from whatever the user has: a ``datasets.Dataset`` or (image, caption) tuples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PIL import Image

from ..core.checks import check_image
from ..core.errors import XBTError
from ..core.names import CAPTION_COLUMNS, IMAGE_COLUMNS
from .texts import pick_column


def as_pairs(
    pairs: Any, image_column: str | None = None, caption_column: str | None = None
) -> tuple[list[Image.Image], list[str]]:
    """Return ``(images, captions)`` lists from ``pairs``.

    ``pairs`` is a ``datasets.Dataset`` with an image and a caption column (names detected, or given
    with ``image_column`` / ``caption_column``), or any iterable of ``(PIL image, caption)``. A caption
    cell holding a list (several captions per image) contributes its first caption. Each image is
    decoded here, so a truncated or empty one is refused naming its pair index.
    """
    if pairs is None:
        raise XBTError(
            "pairs is None: pass a datasets.Dataset with image and caption columns or a list of (PIL image, caption)"
        )
    column_names = getattr(pairs, "column_names", None)
    if column_names is not None:
        img_col = pick_column(list(column_names), IMAGE_COLUMNS, "image", "pairs", image_column)
        cap_col = pick_column(list(column_names), CAPTION_COLUMNS, "caption", "pairs", caption_column)
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
        check_image(image, f"pairs[{i}] image")
        if not isinstance(caption, str) or not caption.strip():
            raise XBTError(f"pairs[{i}] caption is {caption!r}, expected a non-empty string")
        images.append(image)
        captions.append(caption)
    if not images:
        raise XBTError("pairs is empty: pass at least a few image-caption pairs (stage 2 uses hundreds)")
    return images, captions
