"""Content hashes: one for a list of texts, one for a batch of images, one per image, 64-bit keys per text.

``hash_texts`` / ``hash_images`` key the embedding cache, stage-2 checkpoints and the text shards
(their values are part of file names on disk, so they never change); ``image_key`` tells which
rows of a table hold the same image; ``text_keys`` are the 64-bit keys the streaming corpus
de-duplicates by.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def hash_texts(texts: Sequence[str]) -> str:
    """Hex SHA-256 of a list of strings (order matters)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _image_bytes(image: Image.Image) -> bytes:
    return f"{image.mode}{image.size}".encode() + image.tobytes()


def hash_images(images: Sequence[Image.Image] | torch.Tensor) -> str:
    """Hex SHA-256 of PIL images' mode, size and pixels (or of a tensor batch's values)."""
    h = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        h.update(b"tensor")
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    for im in images:
        h.update(_image_bytes(im))
    return h.hexdigest()


def image_key(image: Image.Image) -> str:
    """A content hash of one image (mode, size, pixels): equal images, and only they, share a key."""
    return hashlib.sha256(_image_bytes(image)).hexdigest()[:24]


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """64-bit BLAKE2b hash of each text: uint64 [len(texts)]."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little") for t in texts],
        dtype=np.uint64,
    )


def image_ids(images: Sequence[Image.Image]) -> np.ndarray:
    """Int ids [n]: rows holding an identical image (same mode, size and pixels) share an id, the
    row index of its first occurrence. One-row-per-caption datasets repeat each image."""
    first: dict[str, int] = {}
    return np.array([first.setdefault(image_key(im), i) for i, im in enumerate(images)], dtype=np.int64)


def file_digest(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks (adapter and gallery folders record these).

    ``xbt.serving.runtime`` has its own copy: it is shipped into exports and imports nothing from xbt.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
