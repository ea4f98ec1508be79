"""``xbt.fit``: from an OLD and a NEW CLIP plus texts (and optionally pairs) to an ``Adapter``.

The orchestration only: check the inputs, embed the texts with both text encoders (cached),
run XBT stage 1 (``projection.train_projection``), then, given pairs, stage 2
(``lora.train_stage2``). Training-free methods are dispatched to ``baselines``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

import torch.nn.functional as F

from .adapter import Adapter, model_info
from .align import orthogonal_procrustes
from .embed import CacheSpec, check_finite, check_texts, embed_images, embed_texts
from .encoders import CLIPEncoder, as_encoder
from .errors import XBTError
from .lora import Stage2Config, train_stage2
from .pairs import as_pairs
from .projection import Projection, Stage1Config, train_projection

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
    stage2: dict[str, Any] | None = None,
    old_image_embeddings: torch.Tensor | None = None,
    checkpoint_dir: str | None = None,
    use_stage1: bool = True,
    **config: Any,
) -> Adapter:
    """Train (or fit) an adapter that maps the NEW model's embeddings into the OLD model's space.

    Args:
        old: the model that embedded the gallery (``xbt.load_clip`` result, open_clip CLIP or
            transformers ``CLIPModel``).
        new: the model to query with; its weights are never changed.
        texts: captions for stage 1 (any iterable of strings: a list, a ``datasets`` column); with
            pairs, up to ``stage2["caption_bank_size"]`` of them also serve as stage 2's caption bank.
        pairs: optional image-caption pairs (a ``datasets.Dataset`` with image and caption columns,
            or an iterable of ``(PIL image, caption)``): XBT stage 2, or the support set of a baseline.
        method: ``"xbt"`` (stage 1, + stage 2 with pairs) or a training-free baseline:
            ``"procrustes"``, ``"linear"``, ``"slerp"``, ``"nlerp"``.
        seed: the one source of randomness; the same seed gives the same adapter.
        device: where to embed and train (CUDA when present by default).
        cache: embedding cache folder, ``None`` for the default, ``False`` to disable.
        verbose: progress bars.
        stage2: stage-2 options, see ``xbt.lora.Stage2Config`` (rank, alpha, towers, epochs...).
        old_image_embeddings: optional float32 [n_pairs, d_old] OLD-model vectors of the pair images
            (your existing gallery vectors): adds a direct alignment term to stage 2.
        checkpoint_dir: stage 2 checkpoints here after every epoch and resumes from a matching one.
        use_stage1: False skips the text-only pretraining (for ablations; needs old_image_embeddings).
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
    if len(items) < 2:
        raise XBTError(f"stage 1 needs at least 2 distinct texts (it contrasts them), got {len(items)}")
    stage1_cfg = Stage1Config.from_kwargs(seed=seed, **config)
    stage2_cfg = Stage2Config.from_kwargs(seed=seed, **(stage2 or {}))
    if pairs is None and (stage2 or old_image_embeddings is not None or checkpoint_dir is not None or not use_stage1):
        raise XBTError("stage2=, old_image_embeddings=, checkpoint_dir= and use_stage1=False only apply to stage 2: pass pairs=...")

    training: dict[str, Any] = {"n_texts": len(items), "metrics": {}}
    if use_stage1:
        old_text = embed_texts(old_enc, items, device=device, cache=cache, verbose=verbose)
        new_text = embed_texts(new_enc, items, device=device, cache=cache, verbose=verbose)
        projection, history = train_projection(new_text, old_text, stage1_cfg, verbose=verbose)
        training["stage1"] = stage1_cfg.to_dict()
        training["metrics"]["stage1"] = history
    if pairs is None:
        return Adapter(new_enc, projection, method=method, old_info=model_info(old_enc), training=training)

    images, captions = as_pairs(pairs)
    if old_image_embeddings is not None:
        old_image_embeddings = check_finite(torch.as_tensor(old_image_embeddings).float(), "old_image_embeddings")
    if not use_stage1:
        projection = _projection_from_old_images(new_enc, images, old_image_embeddings, old_enc, stage1_cfg, device, cache, verbose)
    # The stage-1 texts join the caption bank of stage 2's image->caption ranking (their new-model
    # embeddings are already here); without stage 1 the projection knows no texts to place them.
    bank = dict(bank_captions=items, bank_caption_embeddings=new_text) if use_stage1 else {}
    lora_enc, projection, history2 = train_stage2(
        new_enc, projection, images, captions, stage2_cfg, old_image_embeddings=old_image_embeddings,
        device=device, checkpoint_dir=checkpoint_dir, verbose=verbose, **bank,
    )
    training["stage2"] = stage2_cfg.to_dict()
    training["n_pairs"] = len(images)
    training["used_old_image_embeddings"] = old_image_embeddings is not None
    training["metrics"]["stage2"] = history2
    return Adapter(new_enc, projection, method=method, old_info=model_info(old_enc), training=training, lora=lora_enc)


def _projection_from_old_images(new_enc, images, old_image_embeddings, old_enc, cfg, device, cache, verbose) -> Projection:
    """Without stage 1: start the projection at Procrustes between new and OLD image embeddings of the pairs.

    Only the old gallery vectors of the pair images link the new model to the old space then.
    """
    if old_image_embeddings is None:
        raise XBTError(
            "use_stage1=False leaves nothing that knows the old space: pass old_image_embeddings=... "
            "(your OLD-model vectors of the pair images) or keep stage 1"
        )
    new_img = embed_images(new_enc, images, device=device, cache=cache, verbose=verbose)
    projection = Projection(new_enc.embed_dim, old_enc.embed_dim, cfg.hidden)
    with torch.no_grad():
        projection.linear.weight.copy_(orthogonal_procrustes(new_img, F.normalize(old_image_embeddings, dim=-1)))
    return projection
