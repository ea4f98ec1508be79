"""``ForwardMap``: stored OLD gallery vectors moved into the NEW model's space, without touching an item.

The other way round from an adapter. An adapter maps NEW queries into the OLD space (backward
compatibility); a forward map maps each stored OLD vector into the NEW space (forward compatibility,
as FCT and BiCT do for classifiers), so the gallery is searched with the bare new model's queries and
re-embedded items land in the same space as the rest. One ``Projection`` (``models.head``) per gallery
modality, ``"text"`` (captions) and ``"image"``: OLD vectors float32 [n, d_old] in, unit NEW-space
vectors float32 [n, d_new] out.

A map is identified by ``map_id``, a hash of its config and weights: every vector it upgrades carries
that id (``forward.job``), and a gallery upgraded by one map refuses to be searched through another.
Saved as ``forward_config.json`` and ``forward.safetensors``, each written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..adapters.config import ModelRef
from ..core.errors import XBTError
from ..core.files import save_tensors, write_json
from ..models.head import Projection

CONFIG_FILE, WEIGHTS_FILE = "forward_config.json", "forward.safetensors"
MODALITIES = ("text", "image")
FORMAT = 1


class ForwardMap:
    """OLD gallery vectors -> the NEW model's space, one head per gallery modality (module docstring).

    Args:
        maps: ``{"text": Projection, "image": Projection}`` each mapping d_old -> d_new (a ``Projection`` built
            with ``d_new=d_old_model, d_old=d_new_model``: its input side is the OLD space here).
        old_ref, new_ref: the two models (their fingerprints guard ``upgrade`` and the gallery).
        training: the training record (JSON-ready).
    """

    def __init__(
        self, maps: dict[str, Projection], old_ref: ModelRef, new_ref: ModelRef, training: dict | None = None
    ) -> None:
        if set(maps) != set(MODALITIES):
            raise XBTError(f"a forward map has one head per gallery modality {MODALITIES}, got {sorted(maps)}")
        for modality, head in maps.items():
            if (head.d_new, head.d_old) != (old_ref.embed_dim, new_ref.embed_dim):
                raise XBTError(
                    f"the {modality} head maps {head.d_new}-d -> {head.d_old}-d, but the models are "
                    f"{old_ref.embed_dim}-d (old) and {new_ref.embed_dim}-d (new)"
                )
        self.maps = {m: h.eval().requires_grad_(False) for m, h in maps.items()}
        self.old_ref, self.new_ref, self.training = old_ref, new_ref, dict(training or {})

    def __repr__(self) -> str:
        return f"ForwardMap({self.old_ref.label!r} -> {self.new_ref.label!r}, id {self.map_id})"

    @property
    def map_id(self) -> str:
        """Hex id of the map's models and weights: what every upgraded vector records."""
        h = hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode())
        for key, tensor in sorted(self._tensors().items()):
            h.update(key.encode())
            h.update(tensor.contiguous().numpy().tobytes())
        return h.hexdigest()[:24]

    def upgrade(self, old_vectors: torch.Tensor, modality: str, batch_size: int = 65_536) -> torch.Tensor:
        """float32 [n, d_new] unit rows: the NEW-space vectors of stored OLD vectors [n, d_old] of ``modality``."""
        if modality not in MODALITIES:
            raise XBTError(f"gallery vectors are 'text' or 'image', got {modality!r}")
        x = torch.as_tensor(old_vectors, dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self.old_ref.embed_dim:
            raise XBTError(
                f"old vectors must be [n, {self.old_ref.embed_dim}] (the old model's width), got {tuple(x.shape)}"
            )
        head = self.maps[modality]
        with torch.no_grad():
            return (
                torch.cat([head(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
                if len(x)
                else (x.new_zeros(0, self.new_ref.embed_dim))
            )

    # ------------------------------------------------------------------ files
    def _config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "old_model": asdict(self.old_ref),
            "new_model": asdict(self.new_ref),
            "heads": {m: h.config() for m, h in self.maps.items()},
        }

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {f"{m}.{k}": v.detach().cpu() for m, h in self.maps.items() for k, v in h.state_dict().items()}

    def save(self, folder: str | Path) -> Path:
        """Write ``forward_config.json`` (models, head shapes, id, training record) and ``forward.safetensors``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / WEIGHTS_FILE, self._tensors())
        write_json(folder / CONFIG_FILE, {**self._config(), "map_id": self.map_id, "training": self.training})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ForwardMap:
        """A map ``save`` wrote (weights read with safetensors; nothing is unpickled)."""
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise XBTError(f"{folder} holds no forward map ({CONFIG_FILE}, {WEIGHTS_FILE}); save one with .save()")
        config = json.loads((folder / CONFIG_FILE).read_text())
        if config.get("format") != FORMAT:
            raise XBTError(f"{folder / CONFIG_FILE} has format {config.get('format')!r}; this xbt reads {FORMAT}")
        state = load_file(str(folder / WEIGHTS_FILE))
        maps = {}
        for m, shape in config["heads"].items():
            maps[m] = Projection(**shape)
            maps[m].load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{m}.")})
        out = cls(
            maps, ModelRef.from_dict(config["old_model"]), ModelRef.from_dict(config["new_model"]), config["training"]
        )
        if out.map_id != config.get("map_id"):
            raise XBTError(
                f"{folder}'s weights do not match its recorded map id {config.get('map_id')}: a damaged copy"
            )
        return out
