"""Input checks shared by every entry point: lists of texts, lists of images, finite embeddings, stored vectors.

Each raises ``XBTError`` naming the first bad item and the fix, before any work is done.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from .errors import XBTError


def check_texts(texts: Iterable[str], what: str = "texts", allow_empty: bool = False) -> list[str]:
    """``texts`` as a list of strings, or an ``XBTError`` naming the first bad item.

    An empty list is refused (training needs data) unless ``allow_empty`` (encoding an empty batch).
    """
    if isinstance(texts, str):
        raise XBTError(f"{what} must be a list of strings, got a single string; wrap it: [{texts[:40]!r}]")
    if texts is None or not isinstance(texts, Iterable):
        raise XBTError(f"{what} must be a list of strings, got {type(texts).__name__}; pass e.g. ['a photo of a dog']")
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

    Raises an ``XBTError`` naming the first item that is not a PIL image, whose file does not decode
    (truncated or corrupt) or that has no pixels (a zero width or height).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise XBTError(f"{what}: an image tensor batch must be [n, 3, H, W], got shape {tuple(images.shape)}")
        return images
    if isinstance(images, (str, bytes, Image.Image)):
        raise XBTError(f"{what} must be a list of PIL images, got a single {type(images).__name__}; wrap it in a list")
    if images is None or not isinstance(images, Iterable):
        raise XBTError(
            f"{what} must be a list of PIL images, got {type(images).__name__}; pass e.g. [PIL.Image.open(path)]"
        )
    items = list(images)
    for i, im in enumerate(items):
        if not isinstance(im, Image.Image):
            raise XBTError(
                f"{what}[{i}] is a {type(im).__name__} ({im!r:.60}), not a PIL.Image; open it with PIL.Image.open "
                "(or pass a preprocessed [n, 3, H, W] tensor batch)"
            )
        check_image(im, f"{what}[{i}]")
    return items


def check_image(image: Image.Image, what: str) -> Image.Image:
    """Decode a (lazily opened) PIL ``image`` now and refuse one without pixels, naming ``what`` and the fix.

    A truncated or corrupt file would otherwise fail later inside PIL, with no hint of which item it was.
    """
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for truncated or corrupt files
        raise XBTError(
            f"{what} does not decode ({exc}); the image file is truncated or corrupt: re-download or drop it"
        ) from None
    if image.width < 1 or image.height < 1:
        raise XBTError(f"{what} has size {image.width}x{image.height}, no pixels; drop it or pass the real image")
    return image


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


def check_vectors(vectors, what: str, width: int | None = None) -> torch.Tensor:
    """Stored embeddings given by a caller (e.g. the OLD gallery vectors of the pair images) as a float32
    ``[n, d]`` tensor, or an ``XBTError`` naming the problem and the fix.

    Training on such vectors needs each row to point somewhere: so a file path (not yet loaded), a
    non-float dtype (an int or bool tensor is a cast by mistake and holds no directions), a shape
    other than ``[n, width]``, NaN or inf, rows of zero norm and rows that all point the same way
    (a constant fill) are refused before any work is done.
    """
    if isinstance(vectors, (str, bytes, os.PathLike)):
        raise XBTError(
            f"{what} is a path ({vectors!r:.80}), not vectors; load it first, e.g. "
            "torch.from_numpy(numpy.load(path)) for a .npy file or safetensors.torch.load_file(path)[name]"
        )
    if not isinstance(vectors, torch.Tensor):
        try:
            vectors = torch.from_numpy(np.asarray(vectors))
        except (TypeError, ValueError) as exc:
            raise XBTError(
                f"{what} must be a float tensor or array [n, d], got a {type(vectors).__name__} ({exc})"
            ) from None
    if not vectors.is_floating_point():
        raise XBTError(
            f"{what} holds {str(vectors.dtype).removeprefix('torch.')} values; pass the float embeddings your "
            "gallery stores (float32 [n, d]), not a cast or an id array"
        )
    expected = f"[n, {width}]" if width else "[n, d]"
    if vectors.ndim != 2 or (width is not None and vectors.shape[1] != width) or len(vectors) == 0:
        raise XBTError(f"{what} must be {expected} float vectors, one per row, got shape {tuple(vectors.shape)}")
    vectors = check_finite(vectors.detach().to("cpu", torch.float32), what)
    zero = vectors.norm(dim=-1) <= 1e-12
    if zero.any():
        rows = zero.nonzero().flatten()[:5].tolist()
        raise XBTError(
            f"{what}: {int(zero.sum())} of {len(vectors)} vectors are all zeros (first rows {rows}); an embedding "
            "has a direction: pass the real stored vectors, or drop the items that have none"
        )
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    if len(unit) > 1 and (unit - unit[0]).abs().max() <= 1e-6:
        raise XBTError(
            f"{what}: all {len(vectors)} vectors point the same way (a constant fill, not embeddings); pass the "
            "vectors your gallery stores for these items"
        )
    return vectors
