"""Adapters: NEW-model queries encoded straight into the OLD embedding space; save, load, share.

Every adapter honours one contract: ``encode_text`` / ``encode_image`` (small inputs) and
``embed_texts`` / ``embed_images`` (large, cached) return float32 [n, d_old] unit rows that
search a gallery embedded by the old model; ``from_new_embeddings`` maps the bare new model's own
embeddings when the adapter's query path starts from them (else ``None``; a subclass that changes
``embed_*`` must change it too); ``query_cost`` and ``requires_old_encoder`` say which encoders a
query runs.

- ``Adapter``: the new model (untouched), a projection head per query modality (``heads``) and
  optionally a LoRA copy of the new model that the ``lora_modalities`` queries run through.
  ``merge()`` folds LoRA in for serving; ``export("onnx", folder)`` writes the query path as ONNX.
- ``FusionAdapter``: blends the OLD model's query with a base adapter's (SLERP/NLERP), so the old
  model runs on every query.

``ADAPTER_CLASSES`` maps the saved ``kind`` to the class; ``load_adapter(path_or_repo, new=...,
old=...)`` reads a folder or Hub repo through it. The new model itself is never saved.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..core.errors import XBTError
from ..models.embedding import CacheSpec, embed_images, embed_texts
from ..models.encoders import CLIPEncoder, as_encoder
from ..models.head import Projection
from ..models.lora import load_lora, lora_state, merged_copy, save_lora
from ..serving.export import export_adapter
from .card import LICENSE, model_card
from .config import LORA_DIR, MODALITIES, AdapterConfig, ModelRef
from .folder import content_id, read_heads, write_folder
from .hub import push_folder
from .registry import load_adapter, register_adapter
from .verdict import Verdict, verdicts


@register_adapter
class Adapter:
    """New-model encoders whose outputs land in the old model's embedding space.

    Args:
        new: the NEW model (``CLIPEncoder`` or raw CLIP model); never modified.
        projection: one head for both query modalities, or ``heads={"text": ..., "image": ...}``.
        method: how it was made (recorded, and the default row name in reports).
        old: the OLD model (encoder) or its ``ModelRef``; ``None`` records an unknown old model.
        training: training options, data sizes and metrics (JSON values).
        lora: a LoRA copy of the new model (``xbt.lora``); ``lora_modalities`` run through it.
    """

    #: the ``kind`` saved in ``xbt_config.json`` (the key of ``ADAPTER_CLASSES``)
    adapter_kind = "adapter"
    #: True for adapters that also run the OLD encoder on every query
    requires_old_encoder = False

    def __init__(
        self,
        new: Any,
        projection: Projection | None = None,
        *,
        heads: dict[str, Projection] | None = None,
        method: str = "xbt",
        old: Any = None,
        training: dict[str, Any] | None = None,
        lora: CLIPEncoder | None = None,
        lora_modalities: Sequence[str] = MODALITIES,
        new_ref: ModelRef | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> None:
        self.new = as_encoder(new)
        if (projection is None) == (heads is None):
            raise XBTError(
                "pass exactly one of projection= (one head for both modalities) or heads={'text': ..., 'image': ...}"
            )
        heads = heads if heads is not None else {m: projection for m in MODALITIES}
        if set(heads) != set(MODALITIES):
            raise XBTError(
                f"heads must have one projection per query modality {list(MODALITIES)}, got {sorted(heads)}"
            )
        for modality, head in heads.items():
            if head.d_new != self.new.embed_dim:
                raise XBTError(
                    f"the {modality} head expects {head.d_new}-d new embeddings but {self.new.name} gives "
                    f"{self.new.embed_dim}-d; use the new model the adapter was trained for"
                )
        if heads["text"].d_old != heads["image"].d_old:
            raise XBTError(
                f"the text and image heads map into different widths ({heads['text'].d_old} vs "
                f"{heads['image'].d_old}); both must output the old model's width"
            )
        self.heads = {m: h.eval() for m, h in heads.items()}
        if not set(lora_modalities) <= set(MODALITIES):
            raise XBTError(f"lora_modalities must be a subset of {list(MODALITIES)}, got {list(lora_modalities)}")
        self.lora, self.lora_modalities, self._merged = lora, tuple(lora_modalities), None
        self.method = method
        if isinstance(old, ModelRef) or old is None:
            self.old_ref = old or ModelRef(name="unknown old model", embed_dim=self.embed_dim)
        else:
            self.old_ref = ModelRef.of(as_encoder(old))
        if self.old_ref.embed_dim not in (None, self.embed_dim):
            raise XBTError(
                f"the heads map into {self.embed_dim}-d but the old model {self.old_ref.label!r} is "
                f"{self.old_ref.embed_dim}-d; give heads whose output width is the old model's"
            )
        self.new_ref = new_ref or ModelRef.of(self.new)
        self.training = dict(training or {})
        self.evaluation = evaluation

    def __repr__(self) -> str:
        return (
            f"Adapter(method={self.method!r}, new={self.new.name!r} [{self.new.embed_dim}-d] -> "
            f"old={self.old_ref.label!r} [{self.embed_dim}-d])"
        )

    @property
    def embed_dim(self) -> int:
        """Width of the output (the old model's embedding width)."""
        return self.heads["text"].d_old

    @property
    def projection(self) -> Projection:
        """The projection head shared by both query modalities (read-only alias of ``heads``)."""
        if self.heads["text"] is not self.heads["image"]:
            raise XBTError(
                "this adapter has separate text and image heads; use adapter.heads['text'] / adapter.heads['image']"
            )
        return self.heads["text"]

    # ------------------------------------------------------------------ the query path
    @property
    def query_encoders(self) -> dict[str, CLIPEncoder]:
        """Modality -> the encoder whose outputs its head maps: the new model, its LoRA copy or the merged copy."""
        lora = self._merged if self._merged is not None else self.lora
        return {m: lora if lora is not None and m in self.lora_modalities else self.new for m in MODALITIES}

    @property
    def query_cost(self) -> dict[str, list[str]]:
        """Which models each query runs, by query modality (``["new"]``: the new model's cost)."""
        return {m: ["new"] for m in MODALITIES}

    @property
    def merged(self) -> bool:
        """True once ``merge()`` folded the LoRA weights into a plain copy of the new model."""
        return self._merged is not None

    def merge(self) -> Adapter:
        """Fold the LoRA weights into a plain copy of the new model for serving; returns self.

        The merged query path then runs the bare new model plus the small head. The LoRA weights are kept
        (``save_pretrained`` still writes them); without LoRA this is a no-op.
        """
        if self.lora is not None and self._merged is None:
            self._merged = merged_copy(self.lora)
        return self

    @torch.no_grad()
    def _apply(self, modality: str, raw: torch.Tensor) -> torch.Tensor:
        head = self.heads[modality]
        return head(raw.float().to(next(head.parameters()).device)).cpu()

    def from_new_embeddings(self, embeddings: torch.Tensor, modality: str) -> torch.Tensor | None:
        """Old-space queries [n, d_old] from the bare NEW model's embeddings [n, d_new] of them.

        ``None`` when this adapter's ``modality`` queries do not start from those embeddings (they
        run through LoRA, or fusion also needs the old model): then use ``embed_texts`` /
        ``embed_images``. Lets an evaluator reuse the new model's embeddings it already has.
        """
        if self.query_encoders[modality] is not self.new:
            return None
        return self._apply(modality, embeddings)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, verbose: bool = False) -> torch.Tensor:
        """Encode ``texts`` into the old space: float32 [n, d_old] unit rows ([0, d_old] for none)."""
        return self.embed_texts(texts, batch_size=batch_size, cache=False, verbose=verbose)

    def encode_image(
        self, images: Sequence[Image.Image] | torch.Tensor, batch_size: int = 128, verbose: bool = False
    ) -> torch.Tensor:
        """Encode PIL images (or a preprocessed batch) into the old space: float32 [n, d_old] unit rows."""
        return self.embed_images(images, batch_size=batch_size, cache=False, verbose=verbose)

    def embed_texts(
        self,
        texts: Sequence[str],
        batch_size: int = 256,
        cache: CacheSpec = None,
        verbose: bool = True,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Like ``encode_text`` but for big inputs: batched, with progress, the encoder's outputs cached on disk."""
        enc = self.query_encoders["text"]
        return self._apply(
            "text", embed_texts(enc, texts, batch_size=batch_size, device=device, cache=cache, verbose=verbose)
        )

    def embed_images(
        self,
        images,
        batch_size: int = 128,
        cache: CacheSpec = None,
        verbose: bool = True,
        device: str | torch.device | None = None,
    ) -> torch.Tensor:
        """Like ``encode_image`` but for big inputs: batched, with progress, the encoder's outputs cached on disk."""
        enc = self.query_encoders["image"]
        return self._apply(
            "image", embed_images(enc, images, batch_size=batch_size, device=device, cache=cache, verbose=verbose)
        )

    def export(self, format: str, folder: str | os.PathLike, **kwargs: Any) -> Path:
        """Write the query encoders (LoRA merged) for serving without torch, e.g. ``"onnx"`` (``xbt.export``);
        returns the folder."""
        return export_adapter(self, format, folder, **kwargs)

    # ------------------------------------------------------------------ description and persistence
    def _head_names(self) -> dict[str, str]:
        shared = self.heads["text"] is self.heads["image"]
        return {m: "shared" if shared else m for m in MODALITIES}

    def config(self) -> AdapterConfig:
        """The ``AdapterConfig`` saved as ``xbt_config.json`` (without ``adapter_id``)."""
        names = self._head_names()
        return AdapterConfig(
            method=self.method,
            new_model=self.new_ref,
            old_model=self.old_ref,
            heads=names,
            head_shapes={names[m]: self.heads[m].config() for m in MODALITIES},
            lora=self.lora is not None,
            lora_modalities=self.lora_modalities,
            training=self.training,
            evaluation=self.evaluation,
        )

    def _tensors(self) -> dict[str, torch.Tensor]:
        """Head weights as saved in ``heads.safetensors``: ``<head name>.<parameter>``."""
        names = self._head_names()
        return {
            f"{names[m]}.{k}": v.detach().cpu().contiguous()
            for m in MODALITIES
            for k, v in self.heads[m].state_dict().items()
        }

    def _lora_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.lora is None else lora_state(self.lora)

    def _save_lora(self, folder: Path) -> None:
        if self.lora is not None:
            save_lora(self.lora, folder)

    def verdicts(self) -> dict[str, Verdict]:
        """Backward compatibility per query modality (``"text"``, ``"image"``) on held-out pairs (``verdict``)."""
        return verdicts(self.training)

    def adapter_id(self) -> str:
        """A content hash of config and weights: two folders hold the same adapter iff ids match.

        The xbt version that wrote it and an attached evaluation are not part of it.
        """
        return content_id(self.config(), self._tensors(), self._lora_tensors())

    def attach_report(self, report: Any, name: str | None = None) -> Adapter:
        """Keep this adapter's row of an ``xbt.evaluate`` report for its model card; returns self.

        ``name`` is the row; by default the report's only row, or the one whose method is this one's.
        """
        rows = list(report.methods)
        if name is None:
            mine = [n for n, m in report.methods.items() if m.info.get("method") == self.method]
            name = rows[0] if len(rows) == 1 else mine[0] if len(mine) == 1 else None
            if name is None:
                raise XBTError(f"the report has several rows {rows}; pass name= for this adapter's")
        self.evaluation = report.summary(name)
        return self

    def model_card(self, repo_id: str | None = None, license: str = LICENSE):
        """The ``huggingface_hub.ModelCard`` describing this adapter (what ``save_pretrained`` writes, with the
        default ``license``); ``license`` is a Hub license id for a card published by other means."""
        return model_card(self.config(), repo_id, license=license)

    def save_pretrained(self, path: str | os.PathLike, overwrite: bool = False, repo_id: str | None = None) -> Path:
        """Write the adapter to folder ``path`` atomically: config, head weights, ``lora/``, model card.

        The folder is assembled beside ``path`` and swapped into place, so an interrupted save never
        leaves a half-written adapter. A folder holding a *different* adapter, or files that are not
        an xbt adapter, is refused unless ``overwrite=True``. ``repo_id`` names the card's repo.
        """
        return write_folder(
            path, self.config(), self._tensors(), self._lora_tensors(), self._save_lora, overwrite, repo_id
        )

    def push_to_hub(
        self, repo_id: str, private: bool = False, token: str | None = None, commit_message: str | None = None
    ) -> str:
        """Save the adapter (with its card) to a temporary folder and upload exactly that folder; returns the repo
        URL."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "adapter", repo_id=repo_id)
            return push_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        new: Any,
        old: Any = None,
        revision: str | None = None,
        check_fingerprint: bool = True,
    ) -> Adapter:
        """``load_adapter``, refusing a folder that holds another class of adapter than ``cls``."""
        adapter = load_adapter(path_or_repo, new=new, old=old, revision=revision, check_fingerprint=check_fingerprint)
        if not isinstance(adapter, cls):
            raise XBTError(
                f"{path_or_repo} holds a plain {adapter.method!r} adapter, not a {cls.__name__}; load it with "
                "xbt.load_adapter(path, new=new) (and fuse it with xbt.fit.fuse(...))"
            )
        return adapter

    @classmethod
    def from_config(
        cls, config: AdapterConfig, folder: Path, new: Any, old: Any = None, check_fingerprint: bool = True
    ) -> Adapter:
        """Build the adapter ``config`` describes from the tensors in ``folder`` (checks both models)."""
        enc = as_encoder(new)
        # a ref from an earlier xbt whose model is recognised comes back with today's fingerprint, so a re-save
        # records it
        new_ref = config.new_model.check(enc, "new", f"adapter {folder}", check_fingerprint)
        old_ref = config.old_model
        if old is not None:
            old_ref = config.old_model.check(as_encoder(old), "old", f"adapter {folder}", check_fingerprint)
        lora = load_lora(enc, folder / LORA_DIR) if config.lora else None
        return cls(
            enc,
            heads=read_heads(folder, config),
            method=config.method,
            old=old_ref,
            training=config.training,
            lora=lora,
            lora_modalities=config.lora_modalities,
            new_ref=new_ref,
            evaluation=config.evaluation,
        )
