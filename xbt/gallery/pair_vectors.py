"""Image-caption pairs for a gallery in migration: read, embedded in every space it needs, matched to its items.

The score calibration (``xbt.gallery.calibration``) and the backfill planner's disagreement model
(``xbt.gallery.planner``) are fitted on these vectors, and ``layout_verdict`` judges the adapter's image queries
on them, laid out as the caption gallery is; ``known_hits`` finds which gallery items the pairs
name as the right answer to a query (``known_hits.json``, the ✓ of ``xbt gallery search``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..adapters.verdict import Verdict
from ..core.errors import XBTError
from ..core.hashing import image_ids, image_key
from ..data.pairs import read_pairs_folder
from ..method.guard import owned_ranks, versus_old_model
from ..models.embedding import embed_images, embed_texts
from .folder import item_keys


def load_pairs(path: str, flag: str = "--pairs") -> tuple[list, list[str]]:
    """``(RGB images, captions)`` of a ``datasets.Dataset.save_to_disk`` folder with ``image`` and ``caption``."""
    ds = read_pairs_folder(path, flag)
    if not {"image", "caption"} <= set(ds.column_names):
        raise XBTError(f"{flag} {path} needs 'image' and 'caption' columns, has {ds.column_names}")
    return [im.convert("RGB") for im in ds["image"]], list(ds["caption"])


def pair_vectors(adapter, old, pairs) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every row's vectors and which rows share an image: ``(vectors, image_ids)``.

    ``pairs``: ``(images, captions)``. ``vectors``: float32 numpy, ``new_img``/``ad_img``/``old_img``
    [n_images, d] and ``new_txt``/``ad_txt``/``old_txt`` [n_captions, d] (the ``old_*`` only with
    an ``old`` model); ``image_ids``: int [n_images] (``xbt.core.hashing.image_ids``). Each distinct image is
    embedded once (one-row-per-caption pairs repeat it) and spread back to its rows.
    """
    images, caps = pairs
    ids = image_ids(images)
    distinct, rows = np.unique(ids, return_inverse=True)
    images = [images[i] for i in distinct]
    new_img, new_txt = embed_images(adapter.new, images, verbose=False), embed_texts(adapter.new, caps, verbose=False)
    ad_img, ad_txt = adapter.from_new_embeddings(new_img, "image"), adapter.from_new_embeddings(new_txt, "text")
    out = {
        "new_img": new_img,
        "new_txt": new_txt,
        "ad_img": ad_img if ad_img is not None else adapter.embed_images(images, verbose=False),
        "ad_txt": ad_txt if ad_txt is not None else adapter.embed_texts(caps, verbose=False),
    }
    if old is not None:
        out.update(old_img=embed_images(old, images, verbose=False), old_txt=embed_texts(old, caps, verbose=False))
    return {k: (v.numpy()[rows] if k.endswith("_img") else v.numpy()) for k, v in out.items()}, ids


def query_key(query: Any, modality: str) -> str:
    """The key a query is known by in ``known_hits``: a caption's casefolded words (no final full stop), an image's
    ``image_key``."""
    return image_key(query) if modality == "image" else " ".join(str(query).casefold().split()).rstrip(" .")


#: fewer distinct pair images than this and a gallery keeps the adapter's own verdict
MIN_LAYOUT_IMAGES = 50


def layout_verdict(vectors: dict[str, np.ndarray], image_ids: np.ndarray, query_modality: str) -> Verdict | None:
    """The adapter's image queries against the old model's own, on pairs laid out as the caption gallery is.

    ``vectors``, ``image_ids``: ``pair_vectors``' output (one row per caption, all of an image's captions). Each
    distinct pair image queries the OLD vectors of all the pairs' captions (``ad_img`` against ``old_img``) and is
    right on any of its own; the paired log-rank gain and its verdict are the fit's (``versus_old_model``). Fitted
    on one caption per image, image queries were judged on finding that one, which can go the other way from
    finding any of five (docs/method.md, "Before you fit: the advisor"). Caption queries have one right image in
    any layout, so the fit's held-out check already judged the gallery's search: None for ``"text"``. Pairs the
    adapter did not train on are the fair judge. None also with fewer than ``MIN_LAYOUT_IMAGES`` distinct images
    or without OLD vectors.
    """
    if query_modality not in ("text", "image"):
        raise XBTError(f"query modality is 'text' or 'image', got {query_modality!r}")
    distinct, first, owner = np.unique(np.asarray(image_ids), return_index=True, return_inverse=True)
    if query_modality == "text" or "old_img" not in vectors or len(distinct) < MIN_LAYOUT_IMAGES:
        return None
    t = {k: torch.from_numpy(np.ascontiguousarray(vectors[k], np.float32)) for k in ("ad_img", "old_img", "old_txt")}
    owner = torch.from_numpy(owner.reshape(-1).astype(np.int64))
    ranks = [owned_ranks(t[k][first], t["old_txt"], owner) for k in ("ad_img", "old_img")]
    rec = versus_old_model("image", ranks[0], ranks[1], "I2T: the pairs' images search all the pairs' captions")
    per_image = len(owner) / len(distinct)
    return Verdict.from_record("image", rec, on=f"images of the gallery's pairs ({per_image:.1f} captions each)")


def known_hits(
    keys: np.ndarray, modality: str, images: Sequence[Any], captions: Sequence[str]
) -> dict[str, list[int]]:
    """Which gallery items answer which query, from image–caption pairs whose items the gallery holds.

    ``keys`` are the gallery's item keys [n, 12] (its items are ``modality``); a pair counts when its
    gallery-side half (its image for an image gallery, its caption for a caption gallery) has the content hash
    of a gallery item. Returns {query_key of the pair's other half: sorted item ids}; ``{}`` when no pair matches.
    """
    ids_of: dict[bytes, list[int]] = {}
    for i, key in enumerate(np.asarray(keys, np.uint8)):
        ids_of.setdefault(key.tobytes(), []).append(i)
    sides = (images, captions) if modality == "image" else (captions, images)
    hits: dict[str, set[int]] = {}
    for item, query in zip(*sides):
        ids = ids_of.get(item_keys([item if modality == "image" else str(item).strip()], modality)[0].tobytes())
        if ids:
            hits.setdefault(query_key(query, "text" if modality == "image" else "image"), set()).update(ids)
    return {q: sorted(ids) for q, ids in hits.items()}
