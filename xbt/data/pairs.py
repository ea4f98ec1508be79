"""Read image-caption pairs from whatever the user has: a ``datasets.Dataset`` or (image, caption) tuples."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..core.checks import check_image
from ..core.errors import XBTError
from ..core.names import CAPTION_COLUMNS, IMAGE_COLUMNS
from .texts import pick_column


def as_pairs(
    pairs: Any, image_column: str | None = None, caption_column: str | None = None
) -> tuple[list[Image.Image], list[str]]:
    """Return ``(images, captions)`` flat lists from ``pairs``, one entry per (image, caption) row.

    ``pairs`` is a ``datasets.Dataset`` with an image and a caption column (names detected, or given
    with ``image_column`` / ``caption_column``), or any iterable of ``(PIL image, caption)``. A caption
    cell holding a list or tuple (several captions per image) contributes all its captions, one row
    each, the same image object repeated (``group_images`` recovers which rows share an image). An
    empty list, or a caption that is not a non-empty string, is refused naming its pair index. Each
    image is decoded here, so a truncated or empty one is refused naming its pair index.
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
        _check_pil(image, f"pairs[{i}] image")
        if isinstance(caption, (list, tuple)):
            if not caption:
                raise XBTError(
                    f"pairs[{i}] caption is an empty {type(caption).__name__}, expected at least one caption"
                )
            cell = [(f"pairs[{i}] caption[{j}]", c) for j, c in enumerate(caption)]
        else:
            cell = [(f"pairs[{i}] caption", caption)]
        for what, c in cell:
            if not isinstance(c, str) or not c.strip():
                raise XBTError(f"{what} is {c!r}, expected a non-empty string")
        images.extend(image for _ in cell)
        captions.extend(c for _, c in cell)
    if not images:
        raise XBTError("pairs is empty: pass at least a few image-caption pairs (stage 2 uses hundreds)")
    return images, captions


def _check_pil(image: Any, what: str) -> None:
    """Refuse anything but a decodable PIL image, naming it (``what``)."""
    if not isinstance(image, Image.Image):
        raise XBTError(f"{what} is a {type(image).__name__}, expected a PIL.Image")
    check_image(image, what)


@dataclass(frozen=True)
class ImageGroups:
    """Which rows of a flat pair list share an image.

    ``first[k]`` is the row index where distinct image ``k`` first appears (images numbered in order of
    first appearance); ``owner`` is an int64 ``[n_rows]`` tensor, ``owner[r]`` the image number of row ``r``.
    """

    first: list[int]
    owner: torch.Tensor

    @property
    def n_images(self) -> int:
        """The number of distinct images."""
        return len(self.first)

    def rows(self, images: torch.Tensor) -> torch.Tensor:
        """The rows of ``images`` (int64 image numbers), image by image in the order given: int64 [n_rows]."""
        return rows_of(self.owner, images)


def rows_of(owner: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The rows whose ``owner`` (int64 [n_rows]) is one of ``images``, image by image in the order given: int64."""
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=int(images.max()) + 1 if len(images) else 0)
    starts = torch.cumsum(counts, 0) - counts
    parts = [order[starts[i] : starts[i] + counts[i]] for i in images.tolist()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def _digest(image: Image.Image) -> bytes:
    """A content digest of ``image``: its mode, size and pixel bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(image.mode.encode())
    h.update(repr(image.size).encode())
    h.update(image.tobytes())
    return h.digest()


def group_images(images: list[Image.Image]) -> ImageGroups:
    """Group the rows of ``images`` (one per caption, as ``as_pairs`` returns) by the image they show.

    Two rows share an image when they hold the same object or identical content (mode, size and pixel
    bytes equal): rows of a ``datasets.Dataset`` decode to new objects each time, so identity alone would
    miss them. Returns an ``ImageGroups`` (``first``: list of ``n_images`` row indices; ``owner``: int64
    ``[len(images)]``). Stage 2 needs it to train each image against all its captions and to hold pairs
    out by image, so a held-out caption's image is never trained on.
    """
    by_id: dict[int, int] = {}
    by_digest: dict[bytes, int] = {}
    first: list[int] = []
    owner: list[int] = []
    for r, image in enumerate(images):
        k = by_id.get(id(image))
        if k is None:
            k = by_digest.setdefault(_digest(image), len(first))
            if k == len(first):
                first.append(r)
            by_id[id(image)] = k
        owner.append(k)
    return ImageGroups(first=first, owner=torch.tensor(owner, dtype=torch.int64))


def as_images(images: Any, what: str = "unlabeled", image_column: str | None = None) -> list[Image.Image]:
    """Return the PIL images of ``images``: a ``datasets.Dataset`` with an image column (detected, or given with
    ``image_column``) or any iterable of PIL images; each is decoded here, so a broken one is refused naming its
    index (``what[i]``)."""
    column_names = getattr(images, "column_names", None)
    if column_names is not None:
        images = images[pick_column(list(column_names), IMAGE_COLUMNS, "image", what, image_column)]
    out = []
    for i, image in enumerate(images):
        _check_pil(image, f"{what}[{i}]")
        out.append(image)
    if not out:
        raise XBTError(f"{what} is empty: pass some images, or leave it out")
    return out


def read_pairs_folder(path: str, flag: str = "--pairs") -> Any:
    """The ``datasets.Dataset`` saved in ``path`` by ``save_to_disk`` (the pair folders the CLI reads), or an
    ``XBTError`` naming ``flag`` and the fix when ``path`` is missing, a file or another kind of folder."""
    import datasets

    try:
        return datasets.load_from_disk(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise XBTError(f"{flag} {path} is not a folder written by datasets.Dataset.save_to_disk ({exc})") from exc
