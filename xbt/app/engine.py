"""``SearchEngine``: one old gallery searched side by side, old→old, new→old per adapter and new→new.

- a caption query gives the top-k gallery images of ``old→old`` (old text tower), ``new→old`` per
  adapter (``adapter.encode_text`` on the OLD image vectors) and ``new→new`` (the bare new model on
  the new model's vectors of the same images) when the adapters' new model is known; when the query
  is one of the gallery's captions, the images it describes are marked as hits (✓);
- an image query gives the top-k captions in the same columns, hits marked when the image is a
  gallery image (pixel-identical).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..adapters.adapter import Adapter
from ..core.errors import XBTError
from ..evaluation.evaluate import evaluate
from ..evaluation.report import NEW_NEW, OLD_OLD, Report
from ..gallery.static import StaticGallery
from ..models.embedding import embed_images, embed_texts
from ..models.encoders import CLIPEncoder

#: the mark of a hit (the column names are the report's rows: ``OLD_OLD``, ``NEW_NEW``)
HIT = "✓"


class SearchEngine:
    """Side-by-side search of one old gallery: old→old, new→old per adapter, new→new.

    Args:
        old: the OLD model (its text/image towers answer the old→old column).
        adapters: column name -> adapter (``xbt.fit`` / ``xbt.load_adapter`` result); at least one.
        gallery: the old gallery (``StaticGallery.build(old, dataset)`` or ``StaticGallery.load(folder)``).
        new_new: add the new→new column (embeds the gallery with the adapters' bare new model once).
        verbose: progress bars while embedding.
    """

    def __init__(
        self,
        old: CLIPEncoder,
        adapters: dict[str, Adapter],
        gallery: StaticGallery,
        new_new: bool = True,
        verbose: bool = False,
    ) -> None:
        if not adapters:
            raise XBTError("give at least one adapter (column name -> adapter) to compare with old→old")
        if old.embed_dim != gallery.embed_dim:
            raise XBTError(
                f"the gallery holds {gallery.embed_dim}-d vectors but the old model {old.name} is {old.embed_dim}-d; "
                "pass the old model that embedded the gallery"
            )
        for name, a in adapters.items():
            if a.embed_dim != gallery.embed_dim:
                raise XBTError(
                    f"adapter {name!r} maps into {a.embed_dim}-d, the gallery is {gallery.embed_dim}-d; "
                    "pass adapters made for the gallery's old model"
                )
        self.old, self.adapters, self.gallery = old, dict(adapters), gallery
        self.new = next(iter(adapters.values())).new if new_new else None
        if self.new is not None:
            self.new_images = embed_images(self.new, gallery.dataset.images, verbose=verbose)
            self.new_captions = embed_texts(self.new, gallery.flat_captions, verbose=verbose)

    @property
    def columns(self) -> list[str]:
        """The column names, in page order."""
        return [OLD_OLD, *(f"new→old ({n})" for n in self.adapters), *([NEW_NEW] if self.new is not None else [])]

    def _encoders(self, modality: str) -> list[tuple[Callable, Any]]:
        """Per column: (query encoder, gallery vectors override or None)."""
        encode = "encode_text" if modality == "text" else "encode_image"
        new_gallery = None
        if self.new is not None:
            new_gallery = self.new_images if modality == "text" else self.new_captions
        return (
            [(getattr(self.old, encode), None)]
            + [(getattr(a, encode), None) for a in self.adapters.values()]
            + ([(getattr(self.new, encode), new_gallery)] if self.new is not None else [])
        )

    def text_query(self, text: str, k: int = 5) -> dict[str, list[dict[str, Any]]]:
        """Column -> the top-``k`` images for caption ``text``: dicts of index, score, image, hit."""
        text = (text or "").strip()
        if not text:
            raise XBTError("type a caption to search the gallery's images")
        hits = self.gallery.owners_of_caption(text)
        out = {}
        for column, (encode, vectors) in zip(self.columns, self._encoders("text")):
            scores, ids = self.gallery.top_k(encode([text]), "images", k, vectors)
            out[column] = [
                {
                    "index": int(i),
                    "score": float(s),
                    "image": self.gallery.dataset.images[int(i)],
                    "hit": int(i) in hits,
                }
                for s, i in zip(scores[0], ids[0])
            ]
        return out

    def image_query(self, image, k: int = 5) -> dict[str, list[dict[str, Any]]]:
        """Column -> the top-``k`` captions for PIL ``image``: dicts of index, score, caption, owner, hit."""
        if image is None:
            raise XBTError("upload an image to search the gallery's captions")
        image = image.convert("RGB")
        known = self.gallery.find_image(image)
        out = {}
        for column, (encode, vectors) in zip(self.columns, self._encoders("image")):
            scores, ids = self.gallery.top_k(encode([image]), "captions", k, vectors)
            out[column] = [
                {
                    "index": int(j),
                    "score": float(s),
                    "caption": self.gallery.flat_captions[int(j)],
                    "owner": int(self.gallery.caption_owner[int(j)]),
                    "hit": known is not None and int(self.gallery.caption_owner[int(j)]) == known,
                }
                for s, j in zip(scores[0], ids[0])
            ]
        return out

    def evaluate(self) -> Report:
        """Evaluate every adapter on the gallery's dataset (old→old, new→old, new→new, flips)."""
        return evaluate(self.old, self.adapters, dataset=self.gallery.dataset, query_cost=False, verbose=False)
