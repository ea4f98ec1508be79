"""Retrieval datasets: images plus grouped captions (image ``i`` <-> the captions of ``i``).

Every loader returns a ``RetrievalDataset``. The evaluator turns it into two searches: each image
queries the flat caption list (a hit when *any* of its captions is in the top K) and each caption
queries the images (a hit when its *own* image is in the top K).

Sources:

* ``"toy"``: the offline toy worlds' test galleries, registered by ``xbt.toy`` (``register_dataset``).
* ``"flickr30k"`` / ``"coco"`` with ``source="local"``: Karpathy's split files
  (``dataset_flickr30k.json``, ``dataset_coco.json``) plus an image folder. Splits: ``"test"`` (the
  1K Flickr30k / 5K COCO Karpathy test set), ``"val"``, ``"train"``, ``"restval"`` (COCO), and
  ``"full"``: Flickr30k's union of all splits (31,014 images) or COCO's val+restval (35,504 images),
  the protocol of the XBT paper.
* ``"flickr30k"`` / ``"coco"`` with ``source="hf"``: the clip-benchmark webdataset repositories
  (``clip-benchmark/wds_flickr30k``, ``clip-benchmark/wds_mscoco_captions``) read by Hugging Face
  ``datasets``: tar shards under ``<split>/`` holding ``<key>.webp`` (or ``.jpg``/``.png``) and
  ``<key>.txt`` (captions one per line). Pass ``root=`` to read a downloaded copy offline. These
  repositories carry the Karpathy ``test`` and ``train`` splits only, so ``"full"`` needs local files.
* ``"nocaps"`` (local only): the official ``nocaps_val_4500_captions.json`` (COCO-style ``images``
  and ``annotations``) plus the image folder; split ``"val"`` or one domain (``"in-domain"``,
  ``"near-domain"``, ``"out-domain"``).

The file formats themselves are read by ``xbt.sources``; images of real datasets open lazily
(``LazyImages``), so a 31K-image gallery is never all in memory. This module knows nothing of
models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import XBTError
from .sources import NOCAPS_FILE, LazyImages, read_karpathy, read_nocaps, read_webdataset

__all__ = ["ALIASES", "DEFAULT_SPLIT", "LOADERS", "LazyImages", "RetrievalDataset", "load_dataset", "register_dataset"]

#: canonical dataset names and their accepted aliases
ALIASES = {
    "flickr30k": "flickr30k",
    "flickr": "flickr30k",
    "f30k": "flickr30k",
    "coco": "coco",
    "mscoco": "coco",
    "coco2014": "coco",
    "nocaps": "nocaps",
}
#: the default split of each dataset
DEFAULT_SPLIT = {"flickr30k": "test", "coco": "test", "nocaps": "val"}
#: datasets a higher package supplies (``xbt.toy`` registers ``"toy"``): name -> loader(split, n, **kwargs)
LOADERS: dict[str, Callable[..., RetrievalDataset]] = {}


def register_dataset(
    name: str, loader: Callable[..., RetrievalDataset], default_split: str = "test", aliases: tuple[str, ...] = ()
) -> None:
    """Serve ``load_dataset(name, split, limit=n, **kwargs)`` (or by an alias) by ``loader(split=split, n=n,
    **kwargs)``, ``default_split`` when no split is given."""
    LOADERS[name] = loader
    ALIASES.update({alias: name for alias in (name, *aliases)})
    DEFAULT_SPLIT[name] = default_split


# ---------------------------------------------------------------------- the dataset type


@dataclass
class RetrievalDataset:
    """A retrieval gallery: ``images[i]`` is described by the captions ``captions[i]``.

    Args:
        images: PIL images, or a lazy sequence of them (``LazyImages``); slicing must work.
        captions: one non-empty list of caption strings per image.
        name: the dataset's name for reports (``"flickr30k"``...).
        split: the split's name for reports (``"test"``, ``"full"``...).
    """

    images: Sequence[Image.Image]
    captions: list[list[str]]
    name: str = "custom"
    split: str = ""
    source: str = field(default="memory")

    def __post_init__(self) -> None:
        if isinstance(self.captions, (str, bytes)) or not isinstance(self.captions, Sequence):
            raise XBTError("captions must be a list with one list of strings per image")
        self.captions = [list(c) if not isinstance(c, str) else c for c in self.captions]
        if len(self.images) != len(self.captions):
            raise XBTError(
                f"{self.name}: {len(self.images)} images but {len(self.captions)} caption lists; "
                "pass one list of captions per image, in the same order"
            )
        if len(self.images) == 0:
            raise XBTError(
                f"{self.name} ({self.split or 'no split'}) has no images; check the split and the source files"
            )
        for i, caps in enumerate(self.captions):
            if isinstance(caps, str):
                raise XBTError(f"captions[{i}] is a single string; wrap it in a list: [{caps[:40]!r}]")
            if not caps:
                raise XBTError(
                    f"image {i} of {self.name} has no captions; every image needs at least one (drop it or add "
                    "captions)"
                )
            for j, c in enumerate(caps):
                if not isinstance(c, str):
                    raise XBTError(f"captions[{i}][{j}] is a {type(c).__name__}, not a string")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset(name={self.name!r}, split={self.split!r}, images={self.n_images}, "
            f"captions={self.n_captions}, source={self.source!r})"
        )

    @property
    def n_images(self) -> int:
        """Number of images."""
        return len(self.images)

    @property
    def n_captions(self) -> int:
        """Number of captions over all images."""
        return sum(len(c) for c in self.captions)

    def flat_captions(self) -> list[str]:
        """All captions in one list, image by image (image 0's captions first)."""
        return [c for caps in self.captions for c in caps]

    def caption_owner(self) -> np.ndarray:
        """int64 array [n_captions]: entry ``j`` is the index of the image flat caption ``j`` describes."""
        return np.repeat(np.arange(self.n_images, dtype=np.int64), [len(c) for c in self.captions])

    def head(self, n: int) -> RetrievalDataset:
        """The first ``n`` images with their captions (a quick evaluation); ``n`` >= the size gives self."""
        if n < 1:
            raise XBTError(f"head/limit needs n >= 1, got {n}")
        if n >= self.n_images:
            return self
        return RetrievalDataset(self.images[:n], self.captions[:n], self.name, self.split, self.source)


# ---------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    split: str | None = None,
    root: str | os.PathLike | None = None,
    source: str = "local",
    limit: int | None = None,
    max_captions: int | None = None,
    **kwargs: Any,
) -> RetrievalDataset:
    """Load a retrieval dataset by name.

    Args:
        name: ``"toy"``, ``"flickr30k"``, ``"coco"`` or ``"nocaps"``.
        split: see the module docstring; default ``"test"`` (``"val"`` for NoCaps).
        root: the folder holding the files. Local Karpathy: ``dataset_<name>.json`` plus images
            (Flickr30k: ``flickr30k-images/`` or ``images/``; COCO: ``val2014/``, ``train2014/`` under
            ``root`` or ``root/images``). NoCaps: ``nocaps_val_4500_captions.json`` plus ``val/`` or
            ``images/``. HF: a downloaded copy of the webdataset repository (``<split>/*.tar``);
            omit it to fetch from the Hub.
        source: ``"local"`` or ``"hf"`` (Flickr30k and COCO only).
        limit: keep only the first ``limit`` images (quick runs).
        max_captions: keep at most this many captions per image (COCO has 5 to 7).
        **kwargs: per-loader options: ``annotations=`` (path of the JSON), ``image_dir=`` (image
            folder), ``repo=`` / ``revision=`` / ``cache_dir=`` (HF), ``seed=`` and ``world=`` (toy).
    """
    key = ALIASES.get(str(name).lower())
    if key is None:
        raise XBTError(
            f"unknown dataset {name!r}; choose one of {sorted(set(ALIASES.values()))} or pass a RetrievalDataset"
        )
    split = (split or DEFAULT_SPLIT[key]).lower()
    if source not in ("local", "hf"):
        raise XBTError(f"unknown source {source!r}; use 'local' (files on disk) or 'hf' (Hugging Face datasets)")
    if key in LOADERS:
        ds = LOADERS[key](split=split, n=limit, **kwargs)
    elif source == "hf":
        if key == "nocaps":
            raise XBTError(
                "NoCaps is read from local files only: pass source='local' and root=<folder with "
                f"{NOCAPS_FILE} and the images>"
            )
        images, captions, where = read_webdataset(key, split=split, root=root, **kwargs)
        ds = RetrievalDataset(images, captions, key, split, where)
    elif key == "nocaps":
        images, captions, where = read_nocaps(root, split=split, **kwargs)
        ds = RetrievalDataset(images, captions, key, split, where)
    else:
        images, captions, where = read_karpathy(key, root, split=split, **kwargs)
        ds = RetrievalDataset(images, captions, key, split, where)
    if max_captions is not None:
        if max_captions < 1:
            raise XBTError(f"max_captions must be >= 1, got {max_captions}")
        ds = RetrievalDataset(ds.images, [c[:max_captions] for c in ds.captions], ds.name, ds.split, ds.source)
    return ds.head(limit) if limit is not None else ds
