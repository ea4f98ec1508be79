"""The training-free methods: a closed-form map new -> old on a support set, and query fusion on top of an adapter.

``"procrustes"`` / ``"linear"`` fit a closed-form map (``xbt.baselines.maps``) on a support set
(``support_embeddings``) into a ``hidden=0`` head; ``"slerp"`` / ``"nlerp"`` put query fusion on
top of such a map (``fuse``), its weights chosen on the pairs by ``xbt.baselines.alpha.select_alpha``.
``fuse`` also fuses any plain adapter, e.g. an XBT one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..adapters.adapter import Adapter
from ..adapters.config import FUSION_KINDS, check_alpha
from ..adapters.fusion import FusionAdapter
from ..core.errors import XBTError
from ..data.pairs import as_pairs
from ..models.embedding import CacheSpec, embed_images, embed_texts
from ..models.encoders import as_encoder
from ..models.head import Projection
from .alpha import ALPHA_GRID, pair_groups, select_alpha
from .config import MAP_KINDS, SUPPORTS, BaselineConfig
from .maps import DEFAULT_RIDGE, orthogonal_procrustes, ridge_map


def support_embeddings(
    old: Any,
    new: Any,
    texts: Sequence[str] | None = None,
    pairs: Any = None,
    support: str = "text",
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The paired embeddings a map is fitted on: ``(new [n, d_new], old [n, d_old], info)``.

    ``support="text"``: ``texts`` through both text encoders; ``"image"``: the images of ``pairs``
    through both image encoders; ``"joint"``: text rows then image rows. All float32 unit rows,
    computed through the embedding cache. ``info`` records the support kind and its sizes.
    """
    if support not in SUPPORTS:
        raise XBTError(f"unknown support {support!r}; choose one of {list(SUPPORTS)}")
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    news, olds = [], []
    info: dict[str, Any] = {"support": support, "n_texts": 0, "n_pairs": 0}
    opts = {"device": device, "cache": cache, "verbose": verbose}
    if support in ("text", "joint"):
        if not texts:
            raise XBTError(
                f"support={support!r} needs texts to embed with both text encoders; pass texts or use "
                "support='image' with pairs"
            )
        texts = list(texts)
        olds.append(embed_texts(old_enc, texts, **opts))
        news.append(embed_texts(new_enc, texts, **opts))
        info["n_texts"] = len(texts)
    if support in ("image", "joint"):
        if pairs is None:
            raise XBTError(
                f"support={support!r} needs image-caption pairs (their images are embedded by both models); pass "
                "pairs=... or use support='text'"
            )
        images, _ = as_pairs(pairs)
        olds.append(embed_images(old_enc, images, **opts))
        news.append(embed_images(new_enc, images, **opts))
        info["n_pairs"] = len(images)
    new_emb, old_emb = torch.cat(news), torch.cat(olds)
    info["n_support"] = len(new_emb)
    return new_emb, old_emb, info


def fit_map(
    old: Any,
    new: Any,
    texts: Sequence[str] | None = None,
    pairs: Any = None,
    kind: str = "procrustes",
    support: str = "text",
    ridge: float | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> Adapter:
    """A training-free ``Adapter`` whose head is a closed-form map new -> old.

    ``kind``: ``"procrustes"`` (``xbt.maps.orthogonal_procrustes``) or ``"linear"``
    (``xbt.maps.ridge_map`` with relative ``ridge``, default ``xbt.maps.DEFAULT_RIDGE``), fitted on
    the ``support`` set (see ``support_embeddings``). ``seed`` is recorded only: the fit is
    deterministic. ``training["metrics"]["support_cosine"]`` is the mean cosine between mapped new
    and old support embeddings. Outputs are float32 [n, d_old] unit rows.
    """
    if kind not in MAP_KINDS:
        raise XBTError(f"unknown map kind {kind!r}; choose one of {list(MAP_KINDS)}")
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    new_emb, old_emb, info = support_embeddings(old_enc, new_enc, texts, pairs, support, device, cache, verbose)
    if kind == "procrustes":
        weight = orthogonal_procrustes(new_emb, old_emb)
    else:
        ridge = DEFAULT_RIDGE if ridge is None else ridge
        weight = ridge_map(new_emb, old_emb, ridge=ridge)
        info["ridge"] = ridge
    projection = Projection.from_linear(weight)
    with torch.no_grad():
        cosine = (projection(new_emb) * old_emb).sum(-1).mean().item()
    training = {**info, "kind": kind, "seed": seed, "metrics": {"support_cosine": cosine}}
    return Adapter(new_enc, projection, method=kind, old=old_enc, training=training)


def fuse(
    adapter: Adapter,
    old: Any,
    pairs: Any = None,
    kind: str = "slerp",
    alpha: float | None = None,
    alpha_text: float | None = None,
    alpha_image: float | None = None,
    grid: Sequence[float] = ALPHA_GRID,
    method: str | None = None,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
    check_fingerprint: bool = True,
) -> FusionAdapter:
    """Put SLERP/NLERP query fusion on top of ``adapter`` (any plain adapter: XBT, Procrustes...).

    The weight of each direction is chosen on the support ``pairs`` by ``xbt.fusion.select_alpha``:
    image queries (I2T) are the fused embeddings of the pair images searched among the OLD text
    embeddings of the pair captions; text queries (T2I) the fused captions searched among the OLD
    image embeddings. Pairs sharing a caption or an image count as matches of each other
    (``pair_groups``). Only the support pairs are ever embedded or scored, so the choice cannot see
    evaluation data (it is in-sample, optimistic when the base map was fitted on those images).

    Without pairs there is nothing honest to choose by (text-only retrieval against old captions is
    won by alpha=0, and says nothing about images): ``pairs=None`` needs fixed weights: ``alpha``
    for both directions, ``alpha_text`` / ``alpha_image`` for one (taking precedence).

    Returns:
        A ``FusionAdapter`` (``method`` default ``f"{adapter.method}+{kind}"``);
        ``training["alpha_selection"]`` holds the chosen alphas and the support curve per direction.
    """
    if kind not in FUSION_KINDS:
        raise XBTError(f"unknown fusion kind {kind!r}; choose one of {list(FUSION_KINDS)}")
    if not isinstance(adapter, Adapter) or isinstance(adapter, FusionAdapter):
        raise XBTError("fuse needs a plain xbt.Adapter as its base (from xbt.fit or xbt.load_adapter)")
    old_enc = as_encoder(old)
    adapter.old_ref.check(old_enc, "old", f"the {adapter.method!r} adapter", check_fingerprint)
    fixed = {
        "text": alpha_text if alpha_text is not None else alpha,
        "image": alpha_image if alpha_image is not None else alpha,
    }
    fixed = {k: (None if v is None else check_alpha(f"alpha_{k}", v)) for k, v in fixed.items()}
    grid = tuple(check_alpha("grid value", a) for a in grid)
    selection: dict[str, Any] = {"kind": kind}
    chosen = {m: v for m, v in fixed.items() if v is not None}
    selection.update({f"{m}_query": {"alpha": v, "source": "given"} for m, v in chosen.items()})
    todo = [m for m, v in fixed.items() if v is None]
    if todo:
        if pairs is None:
            raise XBTError(
                f"choosing the {kind} weight needs image-caption pairs: it is picked per direction by Recall@1 "
                "between images and captions, which texts alone cannot measure; pass pairs=..., or fix the weights "
                "with alpha=0.5 (or alpha_text=..., alpha_image=...)"
            )
        images, captions = as_pairs(pairs)
        groups = pair_groups(images, captions)
        selection.update(support="pairs", n_pairs=len(images), grid=list(grid))
        opts = {"cache": cache, "verbose": verbose}
        # Each direction searches one modality's OLD embeddings with the other's fused queries, so
        # both old embeddings are needed (once each) whichever directions are chosen here.
        old_emb = {
            "image": embed_images(old_enc, images, device=device, **opts),
            "text": embed_texts(old_enc, captions, device=device, **opts),
        }
        for modality, gallery, direction in (("image", "text", "I2T"), ("text", "image", "T2I")):
            if modality not in todo:
                continue
            new_q = (
                adapter.embed_images(images, **opts) if modality == "image" else adapter.embed_texts(captions, **opts)
            )
            a, curve = select_alpha(old_emb[modality], new_q, old_emb[gallery], groups, groups, kind=kind, grid=grid)
            chosen[modality] = a
            selection[f"{modality}_query"] = {
                "alpha": a,
                "source": "support_recall_at_1",
                "direction": direction,
                "curve": curve,
            }
    metrics = {
        f"support_recall_at_1_{m}_query": selection[f"{m}_query"]["curve"][str(chosen[m])]["recall_at_1"]
        for m in ("text", "image")
        if "curve" in selection[f"{m}_query"]
    }
    training = {
        "base_method": adapter.method,
        "alpha_text": chosen["text"],
        "alpha_image": chosen["image"],
        "alpha_selection": selection,
        "metrics": metrics,
    }
    return FusionAdapter(
        adapter,
        old_enc,
        kind=kind,
        alpha_text=chosen["text"],
        alpha_image=chosen["image"],
        method=method,
        training=training,
        check_fingerprint=check_fingerprint,
    )


def fit_baseline(
    method: str,
    old: Any,
    new: Any,
    texts: Sequence[str] | None,
    pairs: Any = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
    **config: Any,
) -> Adapter:
    """Build the training-free adapter ``method`` (what ``xbt.fit(method=...)`` calls).

    ``config`` holds the method's ``xbt.config.BaselineConfig`` options (``BASELINE_OPTIONS`` says
    which apply): ``support`` for all; ``ridge`` for ``"linear"`` and fusion's base map; ``base``,
    ``alpha`` / ``alpha_text`` / ``alpha_image`` and ``grid`` for ``"slerp"`` / ``"nlerp"``, which
    need ``pairs`` to choose their weights unless they are fixed (see ``fuse``).

    Returns:
        A plain ``Adapter`` for the maps; a ``FusionAdapter`` (``requires_old_encoder``) for fusion.
    """
    cfg = BaselineConfig.for_method(method, **config)
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    opts = {
        "support": cfg.support,
        "ridge": cfg.ridge,
        "seed": seed,
        "device": device,
        "cache": cache,
        "verbose": verbose,
    }
    if method in MAP_KINDS:
        return fit_map(old_enc, new_enc, texts, pairs, kind=method, **opts)
    needs_pairs = cfg.alpha is None and (cfg.alpha_text is None or cfg.alpha_image is None)
    if needs_pairs and pairs is None:
        # fail before embedding anything (fuse would raise too, but only after fitting the base map)
        raise XBTError(
            f"method={method!r} chooses its fusion weights on image-caption pairs: pass pairs=..., or fix them "
            "with alpha=0.5 (or alpha_text=..., alpha_image=...)"
        )
    base = fit_map(old_enc, new_enc, texts, pairs, kind=cfg.base, **opts)
    fused = fuse(
        base,
        old_enc,
        pairs,
        kind=method,
        alpha=cfg.alpha,
        alpha_text=cfg.alpha_text,
        alpha_image=cfg.alpha_image,
        grid=cfg.grid,
        method=method if cfg.base == "procrustes" else f"{cfg.base}+{method}",
        device=device,
        cache=cache,
        verbose=verbose,
    )
    fused.training["seed"] = seed
    return fused
