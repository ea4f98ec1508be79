"""Input checks shared by every entry point: lists of texts, lists of images, finite embeddings.

Each raises ``XBTError`` naming the first bad item and the fix, before any work is done.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from PIL import Image

from .errors import XBTError


def check_texts(texts: Iterable[str], what: str = "texts", allow_empty: bool = False) -> list[str]:
    """``texts`` as a list of strings, or an ``XBTError`` naming the first bad item.

    An empty list is refused (training needs data) unless ``allow_empty`` (encoding an empty batch).
    """
    if isinstance(texts, str):
        raise XBTError(f"{what} must be a list of strings, got a single string; wrap it: [{texts[:40]!r}]")
    items = list(texts)
    if not items and not allow_empty:
        raise XBTError(f"{what} is empty: pass at least one caption (stage 1 needs a few hundred or more)")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise XBTError(f"{what}[{i}] is a {type(t).__name__} ({t!r:.60}), not a string; convert or drop it")
    return items


def check_images(
    images: Iterable[Image.Image] | torch.Tensor, what: str = "images"
) -> list[Image.Image] | torch.Tensor:
    """``images`` as a list of PIL images (or the preprocessed [n, 3, H, W] tensor batch as is).

    Raises an ``XBTError`` naming the first item that is not a PIL image.
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise XBTError(f"{what}: an image tensor batch must be [n, 3, H, W], got shape {tuple(images.shape)}")
        return images
    if isinstance(images, (str, bytes, Image.Image)):
        raise XBTError(f"{what} must be a list of PIL images, got a single {type(images).__name__}; wrap it in a list")
    items = list(images)
    for i, im in enumerate(items):
        if not isinstance(im, Image.Image):
            raise XBTError(
                f"{what}[{i}] is a {type(im).__name__} ({im!r:.60}), not a PIL.Image; open it with PIL.Image.open "
                "(or pass a preprocessed [n, 3, H, W] tensor batch)"
            )
    return items


def check_finite(emb: torch.Tensor, what: str) -> torch.Tensor:
    """Raise if ``emb`` holds NaN or infinite values (a broken model, fp16 overflow, bad pixels)."""
    bad = ~torch.isfinite(emb).all(dim=-1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise XBTError(
            f"{what}: {int(bad.sum())} of {len(emb)} embeddings contain NaN or inf (first rows {rows}); "
            "check the model weights and inputs, and run in float32 if you used half precision"
        )
    return emb
