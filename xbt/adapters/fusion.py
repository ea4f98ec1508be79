"""Query fusion: the OLD model's query blended with a base adapter's query (SLERP/NLERP), and the adapter that
serves it.

The math is on [n, d_old] float32 unit rows, no models: ``slerp`` / ``nlerp`` / ``fuse_embeddings``
give the fused query with weight ``alpha`` on the aligned new query (0 gives the old query
exactly, 1 the new one). ``FusionAdapter`` applies a fusion per query modality; its weights are
chosen on pairs by ``xbt.baselines.alpha.select_alpha``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..core.checks import check_images
from ..core.errors import XBTError
from ..models.embedding import CacheSpec, embed_images, embed_texts
from ..models.encoders import CLIPEncoder, as_encoder
from .adapter import Adapter
from .config import FUSION_KINDS, AdapterConfig, check_alpha
from .registry import register_adapter

# Below this sin(angle) between the two queries SLERP's weights are 0/0-like; NLERP is the same
# curve to first order there, so it is used instead.
_PARALLEL_EPS = 1e-4


def _check_fusion_inputs(a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    if a.shape != b.shape:
        raise XBTError(
            f"fusion needs two embeddings of the same shape, got {tuple(a.shape)} (old) and {tuple(b.shape)} "
            "(aligned new); "
            "map the new query into the old space first"
        )
    if not 0.0 <= float(alpha) <= 1.0:
        raise XBTError(f"fusion weight alpha must lie in [0, 1], got {alpha}")


def _fusion_endpoint(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Check the fusion inputs; at ``alpha`` 0 or 1 return a copy of ``a`` or ``b`` exactly, else None."""
    _check_fusion_inputs(a, b, alpha)
    if float(alpha) == 0.0:
        return a.clone()
    if float(alpha) == 1.0:
        return b.clone()
    return None


def nlerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Normalised linear interpolation ``normalize((1 - alpha) a + alpha b)`` of unit rows [n, d].

    ``alpha=0`` returns ``a`` and ``alpha=1`` returns ``b`` exactly (copies, no renormalisation).
    Two antipodal rows at ``alpha=0.5`` have no defined midpoint; the result is then arbitrary.
    """
    end = _fusion_endpoint(a, b, alpha)
    if end is not None:
        return end
    alpha = float(alpha)
    return F.normalize((1.0 - alpha) * a + alpha * b, dim=-1)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical linear interpolation between unit rows ``a`` and ``b`` [n, d]: float32 unit rows.

    ``(sin((1-alpha) theta) a + sin(alpha theta) b) / sin(theta)`` with ``theta`` the angle between
    the rows: the point a fraction ``alpha`` of the way along the great circle from ``a`` to ``b``.
    ``alpha=0`` returns ``a`` and ``alpha=1`` returns ``b`` exactly. Rows that are (nearly) parallel
    fall back to NLERP, which is the same point to first order and has no 0/0.
    """
    end = _fusion_endpoint(a, b, alpha)
    if end is not None:
        return end
    alpha = float(alpha)
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    parallel = sin < _PARALLEL_EPS
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    out = (torch.sin((1 - alpha) * theta) * a64 + torch.sin(alpha * theta) * b64) / safe_sin
    out = torch.where(parallel, (1 - alpha) * a64 + alpha * b64, out)
    # renormalise: removes rounding drift, and makes the NLERP fallback rows unit too
    return F.normalize(out, dim=-1).to(a.dtype)


def fuse_embeddings(old: torch.Tensor, new: torch.Tensor, alpha: float, kind: str = "slerp") -> torch.Tensor:
    """Fuse the old model's query ``old`` with the aligned new query ``new`` ([n, d_old] unit rows).

    ``kind`` is ``"slerp"`` or ``"nlerp"``; ``alpha=0`` gives the old query, ``alpha=1`` the new one.
    """
    if kind == "slerp":
        return slerp(old, new, alpha)
    if kind == "nlerp":
        return nlerp(old, new, alpha)
    raise XBTError(f"unknown fusion kind {kind!r}; choose one of {list(FUSION_KINDS)}")


def models_run(alpha: float) -> list[str]:
    """The models a fused query runs at weight ``alpha``: both inside (0, 1), one at an endpoint."""
    return (["new"] if alpha > 0 else []) + (["old"] if alpha < 1 else [])


@register_adapter
class FusionAdapter(Adapter):
    """Query fusion: the OLD model's query blended with a base adapter's query, in the old space.

    ``encode_text(t) = fuse(old.encode_text(t), base.encode_text(t), alpha_text)`` (the weight for
    text queries, i.e. text->image search), likewise for images with ``alpha_image``; ``fuse`` is
    SLERP or NLERP (``kind``). ``alpha=0`` is exactly the old query, ``alpha=1`` exactly the base
    adapter's. Every interior-weight query also runs the OLD encoder (``query_cost``), so the old
    model must stay deployed. Build one with ``xbt.fit(..., method="slerp")`` or
    ``xbt.fit.fuse(adapter, old, pairs=...)``; load one with ``xbt.load_adapter(path, new=, old=)``.
    """

    adapter_kind = "fusion"
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
        check_fingerprint: bool = True,
        evaluation: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(base, Adapter):
            raise XBTError(f"base must be an xbt.Adapter (e.g. from xbt.fit), got a {type(base).__name__}")
        if isinstance(base, FusionAdapter):
            raise XBTError("base is already a FusionAdapter; fuse its .base adapter instead of fusing twice")
        if kind not in FUSION_KINDS:
            raise XBTError(f"unknown fusion kind {kind!r}; choose one of {list(FUSION_KINDS)}")
        old_enc = as_encoder(old)
        base.old_ref.check(old_enc, "old", f"the {base.method!r} adapter", check_fingerprint)
        super().__init__(
            base.new,
            heads=base.heads,
            method=method or f"{base.method}+{kind}",
            old=base.old_ref,
            training=training,
            new_ref=base.new_ref,
            evaluation=evaluation,
        )
        self.base, self.old, self.kind = base, old_enc, kind
        self.alpha_text = check_alpha("alpha_text", alpha_text)
        self.alpha_image = check_alpha("alpha_image", alpha_image)

    def __repr__(self) -> str:
        return (
            f"FusionAdapter(method={self.method!r}, kind={self.kind!r}, alpha_text={self.alpha_text}, "
            f"alpha_image={self.alpha_image}, base={self.base!r}, old={self.old.name!r})"
        )  # noqa: E501

    @property
    def query_encoders(self) -> dict[str, CLIPEncoder]:
        """The base adapter's query encoders (the old model runs beside them)."""
        return self.base.query_encoders

    @property
    def query_cost(self) -> dict[str, list[str]]:
        """Which models each query runs: both at an interior weight, one at weight 0 or 1."""
        return {"text": models_run(self.alpha_text), "image": models_run(self.alpha_image)}

    @property
    def merged(self) -> bool:  # whether the base adapter's LoRA is merged
        return self.base.merged

    def merge(self) -> FusionAdapter:
        """Merge the base adapter's LoRA weights for serving (a no-op without them); returns self."""
        self.base.merge()
        return self

    def from_new_embeddings(self, embeddings: torch.Tensor, modality: str) -> None:
        return None  # a fused query needs the old model's embedding of the same input too

    def _fused(self, old_fn, new_fn, alpha: float) -> torch.Tensor:
        # The endpoints skip the encoder they do not need: same result, half the cost.
        if alpha == 0.0:
            return old_fn()
        if alpha == 1.0:
            return new_fn()
        return fuse_embeddings(old_fn(), new_fn(), alpha, self.kind)

    def embed_texts(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        cache: CacheSpec = None,
        verbose: bool = True,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Fused text queries [n, d_old] (unit rows): old and base text embeddings, both cached."""
        texts = list(texts) if not isinstance(texts, str) else texts
        opts = {"batch_size": batch_size, "cache": cache, "verbose": verbose, "device": device}
        return self._fused(
            lambda: embed_texts(self.old, texts, **opts), lambda: self.base.embed_texts(texts, **opts), self.alpha_text
        )

    def embed_images(
        self,
        images,
        batch_size: int = 128,
        cache: CacheSpec = None,
        verbose: bool = True,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Fused image queries [n, d_old] (unit rows) from PIL images: old and base embeddings, both cached."""
        if isinstance(images, torch.Tensor):
            raise XBTError(
                "a FusionAdapter runs the old and the new image encoder, each with its own preprocessing, so it "
                "needs PIL images, not a preprocessed tensor batch"
            )
        images = check_images(images)
        opts = {"batch_size": batch_size, "cache": cache, "verbose": verbose, "device": device}
        return self._fused(
            lambda: embed_images(self.old, images, **opts),
            lambda: self.base.embed_images(images, **opts),
            self.alpha_image,
        )

    def config(self) -> AdapterConfig:
        """The base adapter's config with kind ``"fusion"``, this method and record, and a fusion section."""
        base = self.base.config()
        fusion = {
            "kind": self.kind,
            "alpha_text": self.alpha_text,
            "alpha_image": self.alpha_image,
            "base_method": base.method,
            "base_training": base.training,
        }
        return base.replace(
            kind="fusion", method=self.method, training=self.training, fusion=fusion, evaluation=self.evaluation
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        return self.base._tensors()

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        return self.base._lora_tensors()

    def _save_lora(self, folder: Path) -> None:
        self.base._save_lora(folder)

    @classmethod
    def from_config(
        cls, config: AdapterConfig, folder: Path, new: Any, old: Any = None, check_fingerprint: bool = True
    ) -> FusionAdapter:
        """Build the fusion adapter ``config`` describes; ``old`` is required (it runs on every query)."""
        if old is None:
            raise XBTError(
                f"{folder} holds a {config.method!r} fusion adapter, which runs the OLD model on every query: "
                "pass it, xbt.load_adapter(path, new=new, old=old)"
            )
        f = config.fusion
        base_config = config.replace(
            kind="adapter",
            fusion=None,
            method=f["base_method"],
            training=f.get("base_training") or {},
            evaluation=None,
        )
        base = Adapter.from_config(base_config, folder, new, old=old, check_fingerprint=check_fingerprint)
        return cls(
            base,
            old,
            kind=f["kind"],
            alpha_text=f["alpha_text"],
            alpha_image=f["alpha_image"],
            method=config.method,
            training=config.training,
            check_fingerprint=check_fingerprint,
            evaluation=config.evaluation,
        )
