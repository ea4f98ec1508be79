"""Image-caption pairs embedded in every space a gallery in migration needs: old, new and the adapter's.

The score calibration (``xbt.gallery.calibration``) and the backfill planner's disagreement model
(``xbt.gallery.planner``) are fitted on these vectors.
"""

from __future__ import annotations

import numpy as np

from ..core.hashing import image_ids
from ..models.embedding import embed_images, embed_texts


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
