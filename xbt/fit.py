"""``xbt.fit``: from an OLD and a NEW CLIP plus texts (and optionally pairs) to an adapter.

The orchestration of every method. ``"xbt"``: check the inputs, embed the texts with both text
encoders (cached), run stage 1 (``xbt.stage1.train_projection``), then, given pairs, stage 2
(``xbt.stage2.train_stage2``). The training-free methods: ``"procrustes"`` / ``"linear"`` fit a
closed-form map (``xbt.maps``) on a support set (``support_embeddings``) into a ``hidden=0`` head;
``"slerp"`` / ``"nlerp"`` put query fusion on top of such a map (``fuse``), its weights chosen on
the pairs by ``xbt.fusion.select_alpha``. ``fuse`` also fuses any adapter, e.g. an XBT one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .adapter import Adapter, FusionAdapter
from .distributed import broadcast_module
from .config import BASELINE_OPTIONS, MAP_KINDS, SUPPORTS, BaselineConfig, Stage1Config, Stage2Config
from .embed import CacheSpec, check_finite, check_texts, embed_images, embed_texts
from .encoders import CLIPEncoder, as_encoder
from .errors import XBTError
from .fusion import ALPHA_GRID, FUSION_KINDS, check_alpha, pair_groups, select_alpha
from .maps import DEFAULT_RIDGE, orthogonal_procrustes, ridge_map
from .pairs import as_pairs
from .shards import corpus_shards
from .stream import iter_texts
from .stage1 import Projection, seeded, train_projection
from .stage2 import PairData, train_stage2

#: every method ``fit`` knows; all but "xbt" are training-free
METHODS = ("xbt", *BASELINE_OPTIONS)
#: the first distinct stage-1 texts stage 2 keeps in memory (with their embeddings) to draw its caption bank and
#: distillation captions from: above its defaults (20,000 + 50,000), bounded for corpora of millions
STAGE2_TEXTS = 200_000


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
    old_caption_embeddings: torch.Tensor | None = None,
    embed_pairs_with_old: bool = True,
    checkpoint_dir: str | None = None,
    use_stage1: bool = True,
    stage1: Adapter | None = None,
    **config: Any,
) -> Adapter:
    """Train (or fit) an adapter that maps the NEW model's embeddings into the OLD model's space.

    Args:
        old: the model that embedded the gallery (``xbt.load_clip`` result, open_clip CLIP or
            transformers ``CLIPModel``).
        new: the model to query with; its weights are never changed.
        texts: captions for stage 1: any stream ``xbt.stream.iter_texts`` reads (list, generator,
            ``datasets`` table or streaming dataset, ``pathlib.Path`` of a text file), embedded
            into the sharded cache (``xbt.shards``); with pairs, the first ``STAGE2_TEXTS`` also
            feed stage 2's caption bank.
        pairs: optional image-caption pairs (a ``datasets.Dataset`` with image and caption columns,
            or an iterable of ``(PIL image, caption)``): XBT stage 2, or the support set of a baseline.
        method: ``"xbt"`` (stage 1, + stage 2 with pairs) or a training-free baseline:
            ``"procrustes"``, ``"linear"``, ``"slerp"``, ``"nlerp"``.
        seed: the one source of randomness; the same seed gives the same adapter. The caller's
            global torch RNG is left as it was.
        device: where to embed and train (CUDA when present by default).
        cache: embedding cache folder, ``None`` for the default, ``False`` to disable.
        verbose: progress bars.
        stage2: (xbt) stage-2 options, see ``xbt.config.Stage2Config`` (rank, epochs, text_head,
            val_fraction...).
        old_image_embeddings: (xbt) your stored OLD gallery vectors of the pair images, float32
            [n_pairs, d_old]. By default ``fit`` embeds the pair images with ``old`` itself; stage 2
            distils the text head onto these vectors and validates both query paths against them.
        old_caption_embeddings: (xbt) likewise for the pair captions (default: embedded with ``old``).
        embed_pairs_with_old: (xbt) False: do not embed the pairs with ``old`` (vectors you pass are
            still used); without old vectors the text head is not trained and image queries are
            validated against stage-1 places. ``training["pair_old_vectors"]`` records what was done.
        checkpoint_dir: (xbt) stage 2 checkpoints here after every epoch and resumes a matching run.
        use_stage1: (xbt) False skips the text-only pretraining (for ablations: stage 2 then starts
            from Procrustes on the pairs' OLD image vectors).
        stage1: (xbt) a stage-1 adapter from an earlier ``fit(old, new, texts)`` of these same
            models: its head is used as it is, so one stage 1 on a large corpus can serve several
            stage-2 runs (``texts`` still feed the caption bank and the text head).
        **config: options of the method: stage-1 options for ``"xbt"`` (``xbt.config.Stage1Config``:
            noise_std, hidden, epochs...); ``xbt.config.BaselineConfig`` fields for the others.

    Returns:
        An ``Adapter`` whose ``encode_text`` / ``encode_image`` give float32 [n, d_old] unit vectors
        (a ``FusionAdapter`` for ``"slerp"`` / ``"nlerp"``).
    """
    if method not in METHODS:
        raise XBTError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    check_model_pair(old_enc, new_enc)
    xbt_only = {"stage2": stage2 is not None, "stage1": stage1 is not None, "old_image_embeddings": old_image_embeddings is not None,
                "old_caption_embeddings": old_caption_embeddings is not None,
                "embed_pairs_with_old": not embed_pairs_with_old,
                "checkpoint_dir": checkpoint_dir is not None, "use_stage1": not use_stage1}
    if method != "xbt":
        given = [name for name, on in xbt_only.items() if on]
        if given:
            raise XBTError(f"{given} only apply to method 'xbt' (stage 2); method {method!r} is training-free and would "
                           "ignore them: drop them, or use method='xbt'")
        items = unique_texts(check_texts(iter_texts(texts)))
        return fit_baseline(method, old_enc, new_enc, items, pairs=pairs, seed=seed, device=device, cache=cache, verbose=verbose, **config)
    stage1_cfg = Stage1Config.from_kwargs(**{"seed": seed, **config})
    stage2_cfg = Stage2Config.from_kwargs(**{"seed": seed, **(stage2 or {})})
    if pairs is None and any(xbt_only.values()):
        given = [name for name, on in xbt_only.items() if on]
        raise XBTError(f"{given} only apply to stage 2, which trains on image-caption pairs: pass pairs=...")

    if stage1 is not None:
        _check_stage1(stage1, old_enc, new_enc, use_stage1, config)
    if use_stage1:  # the texts stream through a sharded embedding cache: memory does not grow with their number
        with corpus_shards(new_enc, old_enc, texts, cache, device=device, verbose=verbose,
                           keep_texts=STAGE2_TEXTS if pairs is not None else 0) as shards:
            n_texts, items = len(shards), shards.texts
            if n_texts < 2:
                raise XBTError(f"stage 1 needs at least 2 distinct texts (it contrasts them), got {n_texts}")
            if stage1 is None:
                projection, history = train_projection(shards, None, stage1_cfg, verbose=verbose)
                broadcast_module(projection)  # several processes: rank 0's stage 1 is everyone's
                training_stage1 = stage1_cfg.to_dict()
            else:
                projection, history = stage1.projection, stage1.training["metrics"]["stage1"]
                training_stage1 = stage1.training["stage1"]
            new_text, old_text = shards.head(len(items)) if items else (None, None)
        training: dict[str, Any] = {"n_texts": n_texts, "metrics": {"stage1": history}, "stage1": training_stage1}
    else:
        items = unique_texts(check_texts(iter_texts(texts)))
        if len(items) < 2:
            raise XBTError(f"stage 1 needs at least 2 distinct texts (it contrasts them), got {len(items)}")
        training = {"n_texts": len(items), "metrics": {}}
    if pairs is None:
        return Adapter(new_enc, projection, method=method, old=old_enc, training=training)

    images, captions = as_pairs(pairs)
    old_vectors, sources = {}, {}
    for kind, given in (("images", old_image_embeddings), ("captions", old_caption_embeddings)):
        name = f"old_{kind[:-1]}_embeddings"
        if given is not None:
            given = check_finite(torch.as_tensor(given).float(), name)
            if tuple(given.shape) != (len(images), old_enc.embed_dim):
                raise XBTError(f"{name} must be [{len(images)}, {old_enc.embed_dim}] (one OLD-model vector per pair "
                               f"{kind[:-1]}), got {tuple(given.shape)}")
            old_vectors[kind], sources[kind] = given, "given"
        elif embed_pairs_with_old:
            embed = embed_images if kind == "images" else embed_texts
            old_vectors[kind] = embed(old_enc, images if kind == "images" else captions, device=device, cache=cache, verbose=verbose)
            sources[kind] = "embedded with the old model"
        else:
            old_vectors[kind], sources[kind] = None, "none"
    training["pair_old_vectors"] = sources
    if verbose:
        print(f"xbt stage 2: OLD vectors of the {len(images)} pair images: {sources['images']}; of their captions: {sources['captions']}")
    if not use_stage1:
        projection = _projection_from_old_images(new_enc, images, old_vectors["images"], old_enc, stage1_cfg, device, cache, verbose)
    data = PairData(images, captions, old_images=old_vectors["images"], old_captions=old_vectors["captions"],
                    **(dict(texts=items, texts_new=new_text, texts_old=old_text) if use_stage1 else {}))
    result = train_stage2(new_enc, projection, data, stage2_cfg, device=device, checkpoint_dir=checkpoint_dir, verbose=verbose)
    training["stage2"] = stage2_cfg.to_dict()
    training["n_pairs"] = len(images)
    training["metrics"]["stage2"] = result.record
    training["kept"] = {m: _kept(result.record[m]) for m in ("text", "image")}
    return Adapter(new_enc, heads=result.heads, method=method, old=old_enc, training=training, lora=result.lora,
                   lora_modalities=("image",))


def _check_stage1(stage1: Any, old: CLIPEncoder, new: CLIPEncoder, use_stage1: bool, config: dict) -> None:
    """Refuse a ``stage1=`` adapter that is not a stage-1 XBT adapter of these same two models."""
    if not isinstance(stage1, Adapter) or stage1.method != "xbt" or stage1.lora is not None or "stage1" not in stage1.training \
            or stage1.heads["text"] is not stage1.heads["image"]:
        raise XBTError("stage1= takes the adapter of a text-only fit, xbt.fit(old, new, texts), with no pairs")
    if not use_stage1 or config:
        raise XBTError(f"stage1= reuses a trained stage 1: drop {'use_stage1=False' if not use_stage1 else sorted(config)}, "
                       "which would configure another one")
    for role, ref, enc in (("old", stage1.old_ref, old), ("new", stage1.new_ref, new)):
        if ref.fingerprint != enc.fingerprint:
            raise XBTError(f"the stage1= adapter was trained for another {role} model ({ref.label}, fingerprint {ref.fingerprint}) "
                           f"than the one given ({enc.name}, {enc.fingerprint}); pass the models it was trained on")


def _kept(path_record: dict) -> dict[str, str]:
    """What a query path kept and why, in words (training record and model card)."""
    choice = path_record.get("choice")
    if choice is None:
        return {"kept": path_record.get("kept", "last stage-2 epoch (no held-out pairs)"),
                "reason": path_record.get("reason", "too few pairs to hold any out (or val_fraction=0): no guard")}
    return {"kept": choice["chosen"], "reason": choice["reason"]}


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
    with seeded(cfg.seed):  # the MLP's initialisation
        projection = Projection(new_enc.embed_dim, old_enc.embed_dim, cfg.hidden)
    with torch.no_grad():
        projection.linear.weight.copy_(orthogonal_procrustes(new_img, F.normalize(old_image_embeddings, dim=-1)))
    return projection


# ---------------------------------------------------------------------- training-free methods


def support_embeddings(old: Any, new: Any, texts: Sequence[str] | None = None, pairs: Any = None, support: str = "text",
                       device: str | torch.device | None = None, cache: CacheSpec = None,
                       verbose: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
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
            raise XBTError(f"support={support!r} needs texts to embed with both text encoders; pass texts or use support='image' with pairs")
        texts = list(texts)
        olds.append(embed_texts(old_enc, texts, **opts))
        news.append(embed_texts(new_enc, texts, **opts))
        info["n_texts"] = len(texts)
    if support in ("image", "joint"):
        if pairs is None:
            raise XBTError(f"support={support!r} needs image-caption pairs (their images are embedded by both models); pass pairs=... or use support='text'")
        images, _ = as_pairs(pairs)
        olds.append(embed_images(old_enc, images, **opts))
        news.append(embed_images(new_enc, images, **opts))
        info["n_pairs"] = len(images)
    new_emb, old_emb = torch.cat(news), torch.cat(olds)
    info["n_support"] = len(new_emb)
    return new_emb, old_emb, info


def fit_map(old: Any, new: Any, texts: Sequence[str] | None = None, pairs: Any = None, kind: str = "procrustes",
            support: str = "text", ridge: float | None = None, seed: int = 0, device: str | torch.device | None = None,
            cache: CacheSpec = None, verbose: bool = True) -> Adapter:
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


def fuse(adapter: Adapter, old: Any, pairs: Any = None, kind: str = "slerp", alpha: float | None = None,
         alpha_text: float | None = None, alpha_image: float | None = None, grid: Sequence[float] = ALPHA_GRID,
         method: str | None = None, device: str | torch.device | None = None, cache: CacheSpec = None,
         verbose: bool = True, check_fingerprint: bool = True) -> FusionAdapter:
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
    fixed = {"text": alpha_text if alpha_text is not None else alpha, "image": alpha_image if alpha_image is not None else alpha}
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
        old_emb = {"image": embed_images(old_enc, images, device=device, **opts),
                   "text": embed_texts(old_enc, captions, device=device, **opts)}
        for modality, gallery, direction in (("image", "text", "I2T"), ("text", "image", "T2I")):
            if modality not in todo:
                continue
            new_q = adapter.embed_images(images, **opts) if modality == "image" else adapter.embed_texts(captions, **opts)
            a, curve = select_alpha(old_emb[modality], new_q, old_emb[gallery], groups, groups, kind=kind, grid=grid)
            chosen[modality] = a
            selection[f"{modality}_query"] = {"alpha": a, "source": "support_recall_at_1", "direction": direction, "curve": curve}
    metrics = {f"support_recall_at_1_{m}_query": selection[f"{m}_query"]["curve"][str(chosen[m])]["recall_at_1"]
               for m in ("text", "image") if "curve" in selection[f"{m}_query"]}
    training = {"base_method": adapter.method, "alpha_text": chosen["text"], "alpha_image": chosen["image"],
                "alpha_selection": selection, "metrics": metrics}
    return FusionAdapter(adapter, old_enc, kind=kind, alpha_text=chosen["text"], alpha_image=chosen["image"], method=method,
                         training=training, check_fingerprint=check_fingerprint)


def fit_baseline(method: str, old: Any, new: Any, texts: Sequence[str] | None, pairs: Any = None, seed: int = 0,
                 device: str | torch.device | None = None, cache: CacheSpec = None, verbose: bool = True,
                 **config: Any) -> Adapter:
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
    opts = {"support": cfg.support, "ridge": cfg.ridge, "seed": seed, "device": device, "cache": cache, "verbose": verbose}
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
    fused = fuse(base, old_enc, pairs, kind=method, alpha=cfg.alpha, alpha_text=cfg.alpha_text, alpha_image=cfg.alpha_image,
                 grid=cfg.grid, method=method if cfg.base == "procrustes" else f"{cfg.base}+{method}", device=device,
                 cache=cache, verbose=verbose)
    fused.training["seed"] = seed
    return fused
