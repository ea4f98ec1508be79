"""The OLD gallery a search page serves: images, captions and their old-model vectors; saved and loaded.

A ``StaticGallery`` is a ``RetrievalDataset`` plus the OLD model's vectors of its images and of its
flattened captions (float32 [n, d_old], unit rows): what a deployed system has already computed
and will not recompute. ``StaticGallery.build(old, dataset)`` embeds them once (cached through
``xbt.embed``); ``save(folder)`` writes ``gallery.json`` (captions, image files, the old model's
name and fingerprint), ``images/`` (PNG) and ``embeddings.safetensors``, atomically;
``StaticGallery.load(folder)`` reads it back with images opened lazily, so a saved gallery is served
without the old model's image tower ever running again. ``top_k`` searches it with FAISS.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from ..core.errors import XBTError
from ..core.files import atomic_path, save_tensors, write_json
from ..core.hashing import image_key
from ..core.names import GALLERY_FILE, MIXED_GALLERY, STATIC_GALLERY, gallery_kind
from ..data.retrieval import RetrievalDataset
from ..data.sources import LazyImages
from ..evaluation.search import search
from ..models.embedding import embed_images, embed_texts
from ..models.encoders import CLIPEncoder

EMBEDDINGS_FILE, IMAGE_DIR = "embeddings.safetensors", "images"


@dataclass
class StaticGallery:
    """A searchable old gallery.

    Attributes:
        dataset: the images and, per image, its captions.
        old_images: float32 [n_images, d_old]: the old model's image vectors.
        old_captions: float32 [n_captions, d_old]: the old model's vectors of ``dataset.flat_captions()``.
        old_model: the old model's name; ``old_fingerprint`` its weights fingerprint (``CLIPEncoder.fingerprint``).
    """

    dataset: RetrievalDataset
    old_images: torch.Tensor
    old_captions: torch.Tensor
    old_model: str
    old_fingerprint: str
    _keys: dict[str, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.old_images.shape[0] != self.dataset.n_images or self.old_captions.shape[0] != self.dataset.n_captions:
            raise XBTError(
                f"the gallery has {self.dataset.n_images} images and {self.dataset.n_captions} captions but "
                f"{self.old_images.shape[0]} image and {self.old_captions.shape[0]} caption vectors; rebuild it "
                "with Gallery.build(old, dataset)"
            )
        self.flat_captions = self.dataset.flat_captions()
        self.caption_owner = self.dataset.caption_owner()

    @classmethod
    def build(cls, old: CLIPEncoder, dataset: RetrievalDataset, verbose: bool = True) -> StaticGallery:
        """Embed ``dataset``'s images and captions with the old model (batched, cached)."""
        return cls(
            dataset,
            embed_images(old, dataset.images, verbose=verbose),
            embed_texts(old, dataset.flat_captions(), verbose=verbose),
            old.name,
            old.fingerprint,
        )

    def __len__(self) -> int:
        return self.dataset.n_images

    @property
    def embed_dim(self) -> int:
        """The old model's width."""
        return int(self.old_images.shape[1])

    def top_k(
        self, queries: torch.Tensor, kind: str, k: int, gallery: torch.Tensor | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) [n, k] of ``kind`` (``"images"`` or ``"captions"``) for old-space ``queries``
        [n, d_old].

        ``gallery`` replaces the old vectors (e.g. the new model's, for new->new).
        """
        if kind not in ("images", "captions"):
            raise XBTError(f"kind must be 'images' or 'captions', got {kind!r}")
        vectors = gallery if gallery is not None else (self.old_images if kind == "images" else self.old_captions)
        return search(queries.float().numpy(), vectors.float().numpy(), k)

    def owners_of_caption(self, text: str) -> set[int]:
        """The images that ``text`` is a caption of (exact match after stripping; empty when none)."""
        text = text.strip()
        return {int(self.caption_owner[j]) for j, c in enumerate(self.flat_captions) if c == text}

    def find_image(self, image: Image.Image) -> int | None:
        """The index of the gallery image with exactly ``image``'s pixels, or ``None``."""
        if self._keys is None:
            self._keys = {image_key(self.dataset.images[i].convert("RGB")): i for i in range(len(self))}
        return self._keys.get(image_key(image.convert("RGB")))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the gallery to ``folder`` (gallery.json, images/*.png, embeddings.safetensors) atomically."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not (folder / GALLERY_FILE).is_file():
            raise XBTError(f"{folder} exists and is not a saved gallery; choose an empty or new folder")
        with atomic_path(folder, folder=True) as tmp:
            (tmp / IMAGE_DIR).mkdir(parents=True)
            files = []
            for i in range(len(self)):
                files.append(f"{IMAGE_DIR}/{i:07d}.png")
                self.dataset.images[i].save(tmp / files[-1])
            save_tensors(tmp / EMBEDDINGS_FILE, {"images": self.old_images, "captions": self.old_captions})
            write_json(
                tmp / GALLERY_FILE,
                {
                    "format": 1,
                    "kind": STATIC_GALLERY,
                    "name": self.dataset.name,
                    "split": self.dataset.split,
                    "old_model": self.old_model,
                    "old_fingerprint": self.old_fingerprint,
                    "images": files,
                    "captions": self.dataset.captions,
                },
            )
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, old: CLIPEncoder | None = None) -> StaticGallery:
        """Read a saved gallery; with ``old``, refuse it when it was embedded by another model."""
        folder = Path(folder)
        if not (folder / GALLERY_FILE).is_file():
            raise XBTError(
                f"{folder} has no {GALLERY_FILE}; save a gallery with StaticGallery.build(old, dataset).save(folder)"
            )
        meta = json.loads((folder / GALLERY_FILE).read_text(encoding="utf-8"))
        if gallery_kind(meta) == MIXED_GALLERY:
            raise XBTError(
                f"{folder} is a gallery in migration (xbt gallery build), not a search page's gallery; "
                "search it with xbt gallery search, or save one with StaticGallery.build(old, dataset).save(folder)"
            )
        if old is not None and old.fingerprint != meta["old_fingerprint"]:
            raise XBTError(
                f"{folder} was embedded by {meta['old_model']} (fingerprint {meta['old_fingerprint']}), not by "
                f"{old.name} ({old.fingerprint}); pass the old model that embedded it"
            )
        vectors = load_file(str(folder / EMBEDDINGS_FILE))
        dataset = RetrievalDataset(
            LazyImages([folder / f for f in meta["images"]]),
            meta["captions"],
            meta["name"],
            meta["split"],
            f"gallery:{folder}",
        )
        return cls(dataset, vectors["images"], vectors["captions"], meta["old_model"], meta["old_fingerprint"])


#: the name of ``StaticGallery`` before galleries had kinds (``xbt.old_gallery.Gallery``)
Gallery = StaticGallery
