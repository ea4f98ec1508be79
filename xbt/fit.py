"""``xbt.fit``: from an OLD and a NEW CLIP plus texts (and optionally pairs) to an ``Adapter``.

The orchestration only: check the inputs, embed the texts with both text encoders (cached),
then run XBT stage 1 (``projection.train_projection``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .adapter import Adapter, model_info
from .embed import CacheSpec, check_texts, embed_texts
from .encoders import CLIPEncoder, as_encoder
from .errors import XBTError
from .projection import Stage1Config, train_projection

#: every method ``fit`` knows; all but "xbt" are training-free baselines from ``xbt.baselines``.
METHODS = ("xbt", "procrustes", "linear", "slerp", "nlerp")


def check_model_pair(old: CLIPEncoder, new: CLIPEncoder) -> None:
    """Refuse to fit an adapter from a model to itself: there is nothing to upgrade."""
    if old.model is new.model or old.fingerprint == new.fingerprint:
        raise XBTError(
            f"old and new are the same model ({old.name}); pass the OLD model that embedded your gallery "
            "and the NEW model you want to query with"
        )


def unique_texts(texts: list[str]) -> list[str]:
    """``texts`` without repeats, first occurrence order kept.

    Repeated captions would be false negatives for each other inside an InfoNCE batch.
    """
    return list(dict.fromkeys(texts))


def fit(
    old: Any,
    new: Any,
    texts: Iterable[str],
    pairs: Any = None,
    method: str = "xbt",
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
    **config: Any,
) -> Adapter:
    """Train (or fit) an adapter that maps the NEW model's embeddings into the OLD model's space.

    Args:
        old: the model that embedded the gallery (``xbt.load_clip`` result, open_clip CLIP or
            transformers ``CLIPModel``).
        new: the model to query with; its weights are never changed.
        texts: captions for stage 1 (any iterable of strings: a list, a ``datasets`` column).
        pairs: optional image-caption pairs (a ``datasets.Dataset`` with image and caption columns,
            or an iterable of ``(PIL image, caption)``): XBT stage 2, or the support set of a baseline.
        method: ``"xbt"`` (stage 1, + stage 2 with pairs) or a training-free baseline:
            ``"procrustes"``, ``"linear"``, ``"slerp"``, ``"nlerp"``.
        seed: the one source of randomness; the same seed gives the same adapter.
        device: where to embed and train (CUDA when present by default).
        cache: embedding cache folder, ``None`` for the default, ``False`` to disable.
        verbose: progress bars.
        **config: stage-1 options, see ``xbt.projection.Stage1Config`` (noise_std, hidden, epochs...).

    Returns:
        An ``Adapter`` whose ``encode_text`` / ``encode_image`` give float32 [n, d_old] unit vectors.
    """
    if method not in METHODS:
        raise XBTError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    check_model_pair(old_enc, new_enc)
    items = unique_texts(check_texts(texts))
    if method != "xbt":
        from .baselines import fit_baseline

        return fit_baseline(method, old_enc, new_enc, items, pairs=pairs, seed=seed, device=device, cache=cache, verbose=verbose, **config)
    if pairs is not None:
        raise XBTError("XBT stage 2 (pairs=...) is not available in this version yet; fit without pairs")
    if len(items) < 2:
        raise XBTError(f"stage 1 needs at least 2 distinct texts (it contrasts them), got {len(items)}")
    stage1 = Stage1Config.from_kwargs(seed=seed, **config)

    old_text = embed_texts(old_enc, items, device=device, cache=cache, verbose=verbose)
    new_text = embed_texts(new_enc, items, device=device, cache=cache, verbose=verbose)
    projection, history = train_projection(new_text, old_text, stage1, verbose=verbose)
    training = {"stage1": stage1.to_dict(), "n_texts": len(items), "metrics": {"stage1": history}}
    return Adapter(new_enc, projection, method=method, old_info=model_info(old_enc), training=training)
