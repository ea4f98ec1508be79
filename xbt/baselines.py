"""Training-free baselines behind the same ``Adapter`` interface: Procrustes, linear maps, query fusion.

``xbt.fit(old, new, texts, method=...)`` sends every method other than ``"xbt"`` here
(``fit_baseline``). Each result is an ``Adapter``, so encoding, saving, loading and evaluation work
the same for all methods:

- ``"procrustes"`` / ``"linear"``: a closed-form map new -> old (``xbt.align``) stored as a
  ``Projection`` with ``hidden=0`` (its ``linear.weight`` is the map; outputs are L2-normalised).
  A plain ``Adapter``; the query path costs what the new model costs.
- ``"slerp"`` / ``"nlerp"``: a ``FusionAdapter`` that blends the OLD model's query with the
  aligned new query (Procrustes by default). It runs the old encoder on every query as well as the
  new one (``requires_old_encoder = True``, ``query_cost``). ``fuse`` puts the same fusion on top
  of any adapter, e.g. an XBT one.

The map's support set (``support=``): ``"text"`` (default: the ``texts`` embedded by both text
encoders - the same data XBT stage 1 uses, so the methods are compared on equal terms),
``"image"`` (the images of ``pairs`` embedded by both image encoders) or ``"joint"`` (both stacked).

Fusion weights are chosen per direction on the *pairs* given at fit time, never on evaluation data.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from . import align
from .adapter import Adapter, model_info
from .embed import CacheSpec, embed_images, embed_texts
from .encoders import CLIPEncoder, as_encoder
from .errors import XBTError
from .pairs import as_pairs
from .projection import Projection

#: the training-free methods ``fit_baseline`` builds.
BASELINES = ("procrustes", "linear", "slerp", "nlerp")
#: closed-form maps new -> old.
MAP_KINDS = ("procrustes", "linear")
#: where a map's (new, old) support embeddings come from.
SUPPORTS = ("text", "image", "joint")
#: default relative ridge of the ``"linear"`` map (see ``xbt.align.ridge_map``): 10% of the mean
#: eigenvalue of X^T X. A map fitted on text alone must still carry *images* across, and images
#: differ from texts along directions the captions barely span; without shrinkage the map blows
#: those up. Toy world (20k texts, 1k test images), new->old I2T / T2I R@1 by ridge:
#: 0 -> 0.0 / 18.4, 1e-3 -> 22.4 / 18.2, 1e-2 -> 25.1 / 18.0, 1e-1 -> 25.9 / 18.1, 1 -> 21.3 / 17.7.
DEFAULT_RIDGE = 0.1

_OPTIONS = {
    "procrustes": {"support"},
    "linear": {"support", "ridge"},
    "slerp": {"support", "base", "ridge", "alpha", "alpha_text", "alpha_image", "grid"},
    "nlerp": {"support", "base", "ridge", "alpha", "alpha_text", "alpha_image", "grid"},
}


# ---------------------------------------------------------------------- support sets and maps


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
    if support in ("text", "joint"):
        if not texts:
            raise XBTError(f"support={support!r} needs texts to embed with both text encoders; pass texts or use support='image' with pairs")
        texts = list(texts)
        olds.append(embed_texts(old_enc, texts, device=device, cache=cache, verbose=verbose))
        news.append(embed_texts(new_enc, texts, device=device, cache=cache, verbose=verbose))
        info["n_texts"] = len(texts)
    if support in ("image", "joint"):
        if pairs is None:
            raise XBTError(f"support={support!r} needs image-caption pairs (their images are embedded by both models); pass pairs=... or use support='text'")
        images, _ = as_pairs(pairs)
        olds.append(embed_images(old_enc, images, device=device, cache=cache, verbose=verbose))
        news.append(embed_images(new_enc, images, device=device, cache=cache, verbose=verbose))
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
    ridge: float = DEFAULT_RIDGE,
    seed: int = 0,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> Adapter:
    """A training-free ``Adapter`` whose projection is a closed-form map new -> old.

    Args:
        old, new: the OLD and NEW models (``xbt.load_clip`` results or raw CLIP models).
        texts: captions for ``support="text"`` / ``"joint"``.
        pairs: image-caption pairs for ``support="image"`` / ``"joint"``.
        kind: ``"procrustes"`` (orthogonal, ``xbt.align.orthogonal_procrustes``) or ``"linear"``
            (ridge least squares, ``xbt.align.ridge_map``).
        support: ``"text"`` (default), ``"image"`` or ``"joint"``; see ``support_embeddings``.
        ridge: relative ridge of the linear map (ignored by Procrustes); default ``DEFAULT_RIDGE``.
        seed: recorded only; the fit is deterministic.

    Returns:
        ``Adapter(method=kind)`` with a ``Projection(hidden=0)`` holding the map; outputs are
        float32 [n, d_old] unit rows. ``training["metrics"]["support_cosine"]`` is the mean cosine
        between mapped new and old support embeddings.
    """
    if kind not in MAP_KINDS:
        raise XBTError(f"unknown map kind {kind!r}; choose one of {list(MAP_KINDS)}")
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    new_emb, old_emb, info = support_embeddings(old_enc, new_enc, texts, pairs, support, device, cache, verbose)
    if kind == "procrustes":
        weight = align.orthogonal_procrustes(new_emb, old_emb)
    else:
        weight = align.ridge_map(new_emb, old_emb, ridge=ridge)
        info["ridge"] = ridge
    projection = Projection(new_enc.embed_dim, old_enc.embed_dim, hidden=0)
    with torch.no_grad():
        projection.linear.weight.copy_(weight)
    projection.eval()
    with torch.no_grad():
        cosine = (projection(new_emb) * old_emb).sum(-1).mean().item()
    training = {**info, "kind": kind, "seed": seed, "metrics": {"support_cosine": cosine}}
    return Adapter(new_enc, projection, method=kind, old_info=model_info(old_enc), training=training)


# ---------------------------------------------------------------------- fusion


def _check_old(old_info: dict[str, Any], old: CLIPEncoder, where: str) -> None:
    """Refuse an old model of the wrong width; warn when its weights differ from the recorded ones."""
    dim = old_info.get("embed_dim")
    if dim is not None and int(dim) != old.embed_dim:
        raise XBTError(
            f"{where} maps into a {dim}-d old space ({old_info.get('name')!r}) but the old model given has "
            f"{old.embed_dim}-d embeddings; pass the OLD model that embedded your gallery"
        )
    fingerprint = old_info.get("fingerprint")
    if fingerprint and fingerprint != old.fingerprint:
        warnings.warn(
            f"the old model's weights differ from those {where} was fitted against ({old_info.get('name')!r}); "
            "fused queries may not match your gallery",
            stacklevel=3,
        )


def _check_alpha(name: str, value: Any) -> float:
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise XBTError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise XBTError(f"{name} must lie in [0, 1] (0 = old query, 1 = aligned new query), got {value}")
    return alpha


def _runs(alpha: float) -> list[str]:
    """Encoders a query runs at weight ``alpha``: the endpoints need only one of them."""
    return (["new"] if alpha > 0 else []) + (["old"] if alpha < 1 else [])


class FusionAdapter(Adapter):
    """Query fusion: the OLD model's query blended with an aligned new query, in the old space.

    ``encode_text(t) = fuse(old.encode_text(t), base.encode_text(t), alpha_text)`` (the weight for
    text queries, i.e. text->image search), and likewise for images with ``alpha_image``; ``fuse``
    is SLERP or NLERP (``kind``). ``alpha=0`` is exactly the old query, ``alpha=1`` exactly the
    base adapter's query. Outputs: float32 [n, d_old] unit rows.

    The price: every query also runs the OLD encoder (``requires_old_encoder``; ``query_cost``
    lists the encoders per query modality), so the old model must stay deployed. Build one with
    ``xbt.fit(..., method="slerp")`` or ``xbt.baselines.fuse(adapter, old, pairs=...)``; load one
    with ``FusionAdapter.from_pretrained(folder, new=new, old=old)``.
    """

    requires_old_encoder = True

    def __init__(
        self,
        base: Adapter,
        old: Any,
        kind: str = "slerp",
        alpha_text: float = 0.5,
        alpha_image: float = 0.5,
        method: str | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(base, Adapter):
            raise XBTError(f"base must be an xbt.Adapter (e.g. from xbt.fit), got a {type(base).__name__}")
        if isinstance(base, FusionAdapter):
            raise XBTError("base is already a FusionAdapter; fuse its .base adapter instead of fusing twice")
        if kind not in align.FUSION_KINDS:
            raise XBTError(f"unknown fusion kind {kind!r}; choose one of {list(align.FUSION_KINDS)}")
        old_enc = as_encoder(old)
        _check_old(base.old_info, old_enc, f"the {base.method!r} adapter")
        super().__init__(base.new, base.projection, method=method or f"{base.method}+{kind}", old_info=base.old_info, training=training)
        self.base = base
        self.old = old_enc
        self.kind = kind
        self.alpha_text = _check_alpha("alpha_text", alpha_text)
        self.alpha_image = _check_alpha("alpha_image", alpha_image)

    def __repr__(self) -> str:
        return (
            f"FusionAdapter(method={self.method!r}, kind={self.kind!r}, alpha_text={self.alpha_text}, "
            f"alpha_image={self.alpha_image}, base={self.base!r}, old={self.old.name!r})"
        )

    @property
    def query_cost(self) -> dict[str, list[str]]:
        """Which encoders each query runs, by query modality: e.g. ``{"text": ["new", "old"], ...}``.

        A plain adapter runs ``["new"]``; fusion at an interior alpha runs both, roughly the new
        model's cost plus the old model's. At alpha 0 or 1 only one encoder is needed and run.
        """
        return {"text": _runs(self.alpha_text), "image": _runs(self.alpha_image)}

    @property
    def query_encoder(self) -> CLIPEncoder:
        """The base adapter's query encoder (the new model, or its LoRA copy)."""
        return self.base.query_encoder

    def merge(self) -> FusionAdapter:
        """Merge the base adapter's LoRA weights for serving (a no-op without them); returns self."""
        merge = getattr(self.base, "merge", None)
        if merge is not None:
            merge()
        return self

    def project(self, new_embeddings: torch.Tensor) -> torch.Tensor:
        """Not available: fusion needs the old model's embeddings of the same inputs too."""
        raise XBTError(
            "a FusionAdapter cannot map new-model embeddings alone: it also needs the old model's embedding of "
            "each query; use encode_text/encode_image (or embed_texts/embed_images), or "
            "xbt.align.fuse_embeddings(old_emb, adapter.base.project(new_emb), alpha, kind)"
        )

    def _fused(self, old_fn, new_fn, alpha: float) -> torch.Tensor:
        # The endpoints skip the encoder they do not need: same result, half the cost.
        if alpha == 0.0:
            return old_fn()
        if alpha == 1.0:
            return new_fn()
        return align.fuse_embeddings(old_fn(), new_fn(), alpha, self.kind)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256, cache=None, verbose: bool = True) -> torch.Tensor:
        """Fused text queries [n, d_old] (unit rows): old and base text embeddings, both cached."""
        texts = list(texts) if not isinstance(texts, str) else texts
        return self._fused(
            lambda: embed_texts(self.old, texts, batch_size=batch_size, cache=cache, verbose=verbose),
            lambda: self.base.embed_texts(texts, batch_size=batch_size, cache=cache, verbose=verbose),
            self.alpha_text,
        )

    def embed_images(self, images, batch_size: int = 128, cache=None, verbose: bool = True) -> torch.Tensor:
        """Fused image queries [n, d_old] (unit rows) from PIL images: old and base embeddings, both cached."""
        if isinstance(images, torch.Tensor):
            raise XBTError(
                "a FusionAdapter runs the old and the new image encoder, each with its own preprocessing, so it "
                "needs PIL images, not a preprocessed tensor batch"
            )
        images = list(images)
        return self._fused(
            lambda: embed_images(self.old, images, batch_size=batch_size, cache=cache, verbose=verbose),
            lambda: self.base.embed_images(images, batch_size=batch_size, cache=cache, verbose=verbose),
            self.alpha_image,
        )

    # ------------------------------------------------------------------ persistence
    # On disk a fusion adapter is its base adapter's folder (config, projection, LoRA if any) with a
    # "fusion" section in the config and the fusion's own method and training metadata on top.
    def config(self) -> dict[str, Any]:
        """The base adapter's config, with this method, training metadata and a ``fusion`` section."""
        cfg = self.base.config()
        cfg["fusion"] = {
            "kind": self.kind,
            "alpha_text": self.alpha_text,
            "alpha_image": self.alpha_image,
            "query_cost": self.query_cost,
            "base_method": cfg["method"],
            "base_training": cfg["training"],
            "base_class": f"{type(self.base).__module__}:{type(self.base).__qualname__}",
        }
        cfg["method"] = self.method
        cfg["training"] = self.training
        cfg["requires_old_encoder"] = True
        cfg["load_with"] = "xbt.baselines.FusionAdapter.from_pretrained(path, new=new, old=old)"
        return cfg

    def _tensors(self) -> dict[str, torch.Tensor]:
        return self.base._tensors()

    def adapter_id(self) -> str:
        """Content hash of the fusion config and the base adapter (its id covers all its weights)."""
        h = hashlib.sha256(json.dumps(self.config(), sort_keys=True, default=str).encode())
        h.update(self.base.adapter_id().encode())
        return h.hexdigest()[:24]

    def _save_extra(self, folder: Path) -> None:
        self.base._save_extra(folder)  # e.g. the base's LoRA weights

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, path_or_repo: str | os.PathLike, new: Any, old: Any = None, revision: str | None = None
    ) -> FusionAdapter:
        """Load a fusion adapter saved by ``save_pretrained`` (folder or Hub repo).

        Args:
            new: the NEW model the base adapter was fitted for.
            old: the OLD model: fusion runs it on every query, so it is required.
        """
        if old is None:
            raise XBTError(
                "a fusion adapter runs the OLD model on every query: pass it, "
                "FusionAdapter.from_pretrained(path, new=new, old=old)"
            )
        # Adapter.from_pretrained does the checked loading (config, dims, weights) and then calls
        # cls._build, whose signature has no room for the old model: hand it over in a context var.
        token = _LOADING_OLD.set(as_encoder(old))
        try:
            return super().from_pretrained(path_or_repo, new=new, revision=revision)
        finally:
            _LOADING_OLD.reset(token)

    @classmethod
    def _build(cls, new: CLIPEncoder, projection: Projection, config: dict, folder: Path) -> FusionAdapter:
        old = _LOADING_OLD.get()
        if old is None:
            raise XBTError("load fusion adapters with FusionAdapter.from_pretrained(path, new=new, old=old)")
        fusion = config.get("fusion")
        if not isinstance(fusion, dict):
            raise XBTError(
                f"{folder} holds a plain {config.get('method')!r} adapter, not a fusion one; load it with "
                "xbt.Adapter.from_pretrained(path, new=new) and fuse it with xbt.baselines.fuse(...)"
            )
        base_cls = _adapter_class(fusion.get("base_class", "xbt.adapter:Adapter"))
        base_config = {k: v for k, v in config.items() if k not in ("fusion", "requires_old_encoder", "load_with")}
        base_config["method"] = fusion["base_method"]
        base_config["training"] = fusion["base_training"]
        base = base_cls._build(new, projection, base_config, folder)
        _check_old(config.get("old_model", {}), old, f"adapter {folder}")
        return cls(
            base, old, kind=fusion["kind"], alpha_text=fusion["alpha_text"], alpha_image=fusion["alpha_image"],
            method=config["method"], training=config["training"],
        )

    def model_card(self, repo_id: str = "") -> str:
        """The base model card with the fusion loading code and its query cost."""
        card = super().model_card(repo_id)
        card = card.replace(
            f"adapter = xbt.Adapter.from_pretrained({repo_id!r}, new=new)",
            f"old = xbt.load_clip({self.old_info.get('name')!r})  # fusion runs the old model on every query\n"
            f"adapter = xbt.baselines.FusionAdapter.from_pretrained({repo_id!r}, new=new, old=old)",
        )
        return card + (
            f"\n## Query cost\n\n{self.kind.upper()} fusion (alpha_text={self.alpha_text}, alpha_image={self.alpha_image}): "
            f"encoders run per query: {json.dumps(self.query_cost)}.\n"
        )


_LOADING_OLD: contextvars.ContextVar[CLIPEncoder | None] = contextvars.ContextVar("xbt_fusion_old", default=None)


def _adapter_class(spec: str) -> type[Adapter]:
    """The saved base adapter class, imported only from xbt's own modules (a config never names code elsewhere)."""
    module_name, _, qualname = str(spec).partition(":")
    if not (module_name == "xbt" or module_name.startswith("xbt.")) or not qualname:
        raise XBTError(f"fusion config names base class {spec!r}, which is not an xbt adapter class; the config is corrupt")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise XBTError(f"fusion config names base class {spec!r}, which this xbt does not have ({exc}); upgrade xbt") from exc
    if not (isinstance(obj, type) and issubclass(obj, Adapter)) or issubclass(obj, FusionAdapter):
        raise XBTError(f"fusion config names base class {spec!r}, which is not a plain xbt adapter class; the config is corrupt")
    return obj


def pair_groups(images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
    """Group ids [n] for support pairs: pairs sharing a caption (case/space-insensitive) or an
    identical image get one id, so retrieving any of them counts as a hit.

    Datasets with one row per (image, caption) repeat images, and short captions repeat across
    images; without grouping those would count as misses and bias the alpha choice.
    """
    parent = list(range(len(captions)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (image, caption) in enumerate(zip(images, captions)):
        image_key = hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
        for key in (("caption", " ".join(caption.lower().split())), ("image", image_key)):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    return torch.tensor([find(i) for i in range(len(captions))])


def fuse(
    adapter: Adapter,
    old: Any,
    pairs: Any = None,
    kind: str = "slerp",
    alpha: float | None = None,
    alpha_text: float | None = None,
    alpha_image: float | None = None,
    grid: Sequence[float] = align.ALPHA_GRID,
    method: str | None = None,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> FusionAdapter:
    """Put SLERP/NLERP query fusion on top of ``adapter`` (any ``Adapter``: XBT, Procrustes...).

    The weight of each direction is chosen on the support ``pairs`` by Recall@1 over ``grid``
    (``xbt.align.select_alpha``):

    - image queries (I2T): fused image embedding of pair image i searched among the OLD text
      embeddings of the pair captions;
    - text queries (T2I): fused caption i searched among the OLD image embeddings of the pair images.

    Pairs sharing a caption or an image count as matches of each other (``pair_groups``). Only the
    support pairs are ever embedded or scored, so the choice cannot see evaluation data; but
    measured on the pairs it is an in-sample choice, optimistic when the base map was also fitted
    on those images (``support="image"``/``"joint"``).

    Without pairs there is nothing honest to choose by: text-only retrieval against old captions
    is won by alpha=0 (the old caption embedding is itself in the gallery), and it says nothing
    about images. So ``pairs=None`` raises unless the weights are given: ``alpha`` sets both
    directions, ``alpha_text`` / ``alpha_image`` set one (and take precedence over ``alpha``).

    Args:
        adapter: the base adapter producing the aligned new query.
        old: the OLD model (the one ``adapter`` maps into); it runs on every fused query.
        pairs: image-caption pairs (``datasets.Dataset`` or iterable of (PIL image, caption)).
        kind: ``"slerp"`` or ``"nlerp"``.
        method: the adapter's method name; default ``f"{adapter.method}+{kind}"``.

    Returns:
        A ``FusionAdapter``; ``training["alpha_selection"]`` holds the chosen alphas and the
        support Recall@1/MRR curve per direction.
    """
    if kind not in align.FUSION_KINDS:
        raise XBTError(f"unknown fusion kind {kind!r}; choose one of {list(align.FUSION_KINDS)}")
    if not isinstance(adapter, Adapter) or isinstance(adapter, FusionAdapter):
        raise XBTError("fuse needs a plain xbt.Adapter as its base (from xbt.fit or Adapter.from_pretrained)")
    old_enc = as_encoder(old)
    _check_old(adapter.old_info, old_enc, f"the {adapter.method!r} adapter")
    fixed = {
        "text": alpha_text if alpha_text is not None else alpha,
        "image": alpha_image if alpha_image is not None else alpha,
    }
    fixed = {k: (None if v is None else _check_alpha(f"alpha_{k}", v)) for k, v in fixed.items()}
    grid = tuple(_check_alpha("grid value", a) for a in grid)
    selection: dict[str, Any] = {"kind": kind}
    chosen: dict[str, float] = {}
    for modality, value in fixed.items():
        if value is not None:
            chosen[modality] = value
            selection[f"{modality}_query"] = {"alpha": value, "source": "given"}
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
        # Each direction searches one modality's OLD embeddings with the other's fused queries, so
        # both old embeddings are needed (once each) whichever directions are chosen here.
        old_emb = {
            "image": embed_images(old_enc, images, device=device, cache=cache, verbose=verbose),
            "text": embed_texts(old_enc, captions, device=device, cache=cache, verbose=verbose),
        }
        for modality, gallery, direction in (("image", "text", "I2T"), ("text", "image", "T2I")):
            if modality not in todo:
                continue
            if modality == "image":
                new_q = adapter.embed_images(images, cache=cache, verbose=verbose)
            else:
                new_q = adapter.embed_texts(captions, cache=cache, verbose=verbose)
            a, curve = align.select_alpha(old_emb[modality], new_q, old_emb[gallery], groups, groups, kind=kind, grid=grid)
            chosen[modality] = a
            selection[f"{modality}_query"] = {"alpha": a, "source": "support_recall_at_1", "direction": direction, "curve": curve}
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
        adapter, old_enc, kind=kind, alpha_text=chosen["text"], alpha_image=chosen["image"], method=method, training=training
    )


# ---------------------------------------------------------------------- the fit entry point


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

    Options (``**config``), by method:

    - ``"procrustes"``: ``support`` (``"text"`` default, ``"image"``, ``"joint"``).
    - ``"linear"``: ``support``, ``ridge`` (relative, default ``DEFAULT_RIDGE``).
    - ``"slerp"`` / ``"nlerp"``: ``support`` and ``ridge`` of the base map, ``base``
      (``"procrustes"`` default or ``"linear"``), fixed weights ``alpha`` / ``alpha_text`` /
      ``alpha_image``, and ``grid`` (alphas tried). Needs ``pairs`` to choose the weights unless
      they are fixed (see ``fuse``).

    Returns:
        A plain ``Adapter`` for the maps; a ``FusionAdapter`` (``requires_old_encoder``) for fusion.
    """
    if method not in BASELINES:
        raise XBTError(f"unknown baseline {method!r}; choose one of {list(BASELINES)}")
    unknown = sorted(set(config) - _OPTIONS[method])
    if unknown:
        raise XBTError(f"unknown option(s) {unknown} for method {method!r}; valid options are {sorted(_OPTIONS[method])}")
    support = config.get("support", "text")
    ridge = config.get("ridge", DEFAULT_RIDGE)
    old_enc, new_enc = as_encoder(old), as_encoder(new)
    if method in MAP_KINDS:
        return fit_map(old_enc, new_enc, texts, pairs, kind=method, support=support, ridge=ridge, seed=seed, device=device, cache=cache, verbose=verbose)
    base_kind = config.get("base", "procrustes")
    if base_kind not in MAP_KINDS:
        raise XBTError(f"base={base_kind!r} is not a map xbt can fit without training; choose one of {list(MAP_KINDS)}, or fuse an XBT adapter with xbt.baselines.fuse")
    needs_pairs = config.get("alpha") is None and (config.get("alpha_text") is None or config.get("alpha_image") is None)
    if needs_pairs and pairs is None:
        # fail before embedding anything (fuse would raise too, but only after fitting the base map)
        raise XBTError(
            f"method={method!r} chooses its fusion weights on image-caption pairs: pass pairs=..., or fix them "
            "with alpha=0.5 (or alpha_text=..., alpha_image=...)"
        )
    base = fit_map(old_enc, new_enc, texts, pairs, kind=base_kind, support=support, ridge=ridge, seed=seed, device=device, cache=cache, verbose=verbose)
    fused = fuse(
        base, old_enc, pairs, kind=method, alpha=config.get("alpha"), alpha_text=config.get("alpha_text"),
        alpha_image=config.get("alpha_image"), grid=config.get("grid", align.ALPHA_GRID),
        method=method if base_kind == "procrustes" else f"{base_kind}+{method}", device=device, cache=cache, verbose=verbose,
    )
    fused.training["seed"] = seed
    return fused
