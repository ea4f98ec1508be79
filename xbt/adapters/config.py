"""What an adapter saves about itself: ``AdapterConfig`` (``xbt_config.json``) and ``ModelRef``.

- ``ModelRef``: how an adapter names the OLD and NEW models it joins (how to load them, and the
  width and weights fingerprint that recognise them), with the one check that a model given at
  load or evaluation time is that model (``ModelRef.check``);
- ``AdapterConfig``: format version, method, model references, projection heads, LoRA, fusion,
  training options and metrics, attached evaluation; validated on construction. ``read_config``
  reads it from a folder, converting format 1 (``adapter_config.json``) on the way and refusing
  a format from the future.

A saved adapter folder (format 2) holds ``xbt_config.json``, ``heads.safetensors`` (the projection
heads; one copy when text and image share a head), ``lora/`` (PEFT's own format) when the adapter
has LoRA weights, and ``README.md`` (the model card).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..core.errors import XBTError, need
from ..version import __version__

FORMAT = "xbt-adapter"
#: 1: adapter_config.json + projection.safetensors; 2: xbt_config.json + heads.safetensors + README.md
FORMAT_VERSION = 2
CONFIG_NAME = "xbt_config.json"
LEGACY_CONFIG_NAME = "adapter_config.json"  # format 1 (and PEFT's own file name, hence the rename)
HEADS_NAME = "heads.safetensors"
LEGACY_HEADS_NAME = "projection.safetensors"
LORA_DIR = "lora"
CARD_NAME = "README.md"
MODALITIES = ("text", "image")
#: adapter kinds; ``xbt.adapter.ADAPTER_CLASSES`` maps each to its class
ADAPTER_KINDS = ("adapter", "fusion")


FUSION_KINDS = ("slerp", "nlerp")


def check_alpha(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1], or an ``XBTError`` naming ``name``."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise XBTError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise XBTError(f"{name} must lie in [0, 1] (0 = old query, 1 = aligned new query), got {value}")
    return alpha


#: the weights fingerprint ``CLIPEncoder.fingerprint`` computes (``ModelRef.fingerprint_scheme``):
#: 1 summed each tensor in float32 (xbt before commit 5e60fc4; its value depends on torch's thread
#: count), 2 sums in float64. A reference read without the field may hold either.
FINGERPRINT_SCHEME = 2
#: torch thread counts tried, after the current one, to recompute a scheme-1 fingerprint
LEGACY_FINGERPRINT_THREADS = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ModelRef:
    """How an adapter names one of its two CLIP models.

    Attributes:
        name: how to load it: an open_clip architecture, ``hf:<id>``, ``local-dir:<path>`` or a
            toy model name; for a wrapped raw model, a readable label.
        pretrained: the open_clip pretrained tag, if any.
        revision: the Hub revision of an ``hf:`` model, if one was asked for.
        backend, embed_dim, fingerprint: what recognises the model (``CLIPEncoder`` attributes).
        fingerprint_scheme: how ``fingerprint`` was computed (``FINGERPRINT_SCHEME`` for a
            reference made by this xbt); ``None`` for one read from an earlier xbt, which did not
            record it and may hold a float32-sum (scheme 1) fingerprint.
    """

    name: str
    pretrained: str | None = None
    revision: str | None = None
    backend: str | None = None
    embed_dim: int | None = None
    fingerprint: str | None = None
    fingerprint_scheme: int | None = FINGERPRINT_SCHEME

    def __post_init__(self) -> None:
        need(isinstance(self.name, str) and bool(self.name), f"a model reference needs a name, got {self.name!r}")
        need(
            self.embed_dim is None or (isinstance(self.embed_dim, int) and self.embed_dim > 0),
            f"model {self.name!r}: embed_dim must be a positive int, got {self.embed_dim!r}",
        )
        need(
            self.fingerprint_scheme is None
            or (isinstance(self.fingerprint_scheme, int) and not isinstance(self.fingerprint_scheme, bool)),
            f"model {self.name!r}: fingerprint_scheme must be an int or None, got {self.fingerprint_scheme!r}",
        )

    @classmethod
    def of(cls, encoder: Any) -> ModelRef:
        """The reference of a ``CLIPEncoder``."""
        return cls(
            name=encoder.source or encoder.name,
            pretrained=encoder.pretrained,
            revision=encoder.revision,
            backend=encoder.backend,
            embed_dim=encoder.embed_dim,
            fingerprint=encoder.fingerprint,
            fingerprint_scheme=FINGERPRINT_SCHEME,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRef:
        """Inverse of ``asdict``; unknown keys are ignored, so later versions can add some.

        A dict without ``fingerprint_scheme`` was written by an earlier xbt: its scheme is unknown (``None``).
        """
        need(isinstance(d, dict), f"a model reference must be a JSON object, got {d!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{"fingerprint_scheme": None, **{k: v for k, v in d.items() if k in known}})

    @property
    def label(self) -> str:
        """``name`` or ``name/pretrained``: how reports and cards print the model."""
        return self.name if self.pretrained is None else f"{self.name}/{self.pretrained}"

    def check(self, encoder: Any, role: str, where: str, check_fingerprint: bool = True) -> ModelRef:
        """Refuse ``encoder`` as this model when its width differs or, unless opted out, its weights.

        ``role`` is ``"new"`` or ``"old"``; ``where`` names what the model is for in the message.
        A reference from an earlier xbt (``fingerprint_scheme`` None) whose fingerprint is not the
        encoder's current one is compared with the encoder's float32-sum fingerprint at the current
        and at 1, 2, 4 ... 64 torch threads; if none matches (it was computed on other hardware or
        thread count) the encoder is accepted, with a warning, when its name, pretrained tag,
        revision, backend and width are the reference's, and refused otherwise.

        Returns the reference to record for ``encoder`` from now on: this one, or for an accepted
        earlier-xbt reference, this one with the encoder's current fingerprint and scheme (so an
        adapter saved again does not carry the old fingerprint).
        """
        if self.embed_dim is not None and self.embed_dim != encoder.embed_dim:
            raise XBTError(
                f"{where} works with a {self.embed_dim}-d {role} model ({self.label!r}) but the {role} model given "
                f"({encoder.name}) has {encoder.embed_dim}-d embeddings; pass the {role.upper()} model it was made for"
            )
        if not check_fingerprint or not self.fingerprint or self.fingerprint == encoder.fingerprint:
            return self
        refused = (
            f"the {role} model given ({encoder.name}, weights fingerprint {encoder.fingerprint}) is not the one "
            f"{where} was made for ({self.label!r}, fingerprint {self.fingerprint}); pass that {role.upper()} model, "
            "or check_fingerprint=False if you know its weights are equivalent (e.g. the same model in another "
            "precision)"
        )
        if self.fingerprint_scheme is not None:
            raise XBTError(refused)
        refreshed = dataclasses.replace(self, fingerprint=encoder.fingerprint, fingerprint_scheme=FINGERPRINT_SCHEME)
        if self._matches_legacy(encoder):
            return refreshed
        same = {
            "name": (self.name, encoder.source or encoder.name),  # as ModelRef.of records it
            "pretrained tag": (self.pretrained, encoder.pretrained),
            "revision": (self.revision, encoder.revision),
            "backend": (self.backend, encoder.backend),
            "width": (self.embed_dim, encoder.embed_dim),
        }
        differ = [k for k, (mine, theirs) in same.items() if mine != theirs]
        if differ:
            raise XBTError(
                f"{refused} (an earlier xbt saved {where}; its fingerprint cannot be recomputed here, and the model's "
                f"{' and '.join(differ)} differ{'s' if len(differ) == 1 else ''} from the recorded one too)"
            )
        if _first_warning(encoder, self.fingerprint):
            warnings.warn(
                f"{where} was saved by an earlier xbt whose weights fingerprint of the {role} model ({self.label!r}, "
                f"fingerprint {self.fingerprint}) cannot be recomputed here: only the name, backend and width of the "
                f"{role} model given ({encoder.name}) were checked, not its weights. Re-save the adapter with this "
                "xbt (it then records the current fingerprint) to check them from now on, or pass "
                "check_fingerprint=False to silence this",
                UserWarning,
                stacklevel=2,
            )
        return refreshed

    def _matches_legacy(self, encoder: Any) -> bool:
        """Whether ``encoder``'s float32-sum fingerprint (xbt before 5e60fc4) at some thread count is
        ``fingerprint``."""
        legacy = getattr(encoder, "legacy_fingerprint", None)
        if legacy is None:
            return False
        threads = dict.fromkeys((torch.get_num_threads(), *LEGACY_FINGERPRINT_THREADS))
        return any(legacy(n) == self.fingerprint for n in threads)


#: encoder -> the (recorded, current) fingerprint pairs ``ModelRef.check`` already warned about
_WARNED: weakref.WeakKeyDictionary[Any, set[tuple[str, str]]] = weakref.WeakKeyDictionary()


def _first_warning(encoder: Any, recorded: str) -> bool:
    """Whether this is the first unverifiable-fingerprint warning for ``recorded`` on ``encoder`` (as its weights
    are now).

    A fusion adapter, and evaluating an adapter after loading it, check the same reference again;
    one warning per model and reference is enough.
    """
    key = (recorded, encoder.fingerprint)
    try:
        seen = _WARNED.setdefault(encoder, set())
    except TypeError:  # not weakly referenceable: warn every time
        return True
    if key in seen:
        return False
    seen.add(key)
    return True


@dataclass
class AdapterConfig:
    """The content of ``xbt_config.json``: everything about an adapter except its tensors.

    Attributes:
        method: how it was made (``"xbt"``, ``"procrustes"``, ``"slerp"``, a user's name...).
        new_model, old_model: the models it joins.
        heads: query modality (``"text"``, ``"image"``) -> name of its projection head.
        head_shapes: head name -> ``Projection`` arguments (``d_new``, ``d_old``, ``hidden``).
        kind: ``"adapter"`` (heads, optional LoRA) or ``"fusion"`` (also runs the old model).
        lora: whether ``lora/`` holds PEFT LoRA weights of the new model.
        lora_modalities: the query modalities that run through the LoRA copy.
        fusion: for ``kind="fusion"``: ``kind`` (slerp/nlerp), ``alpha_text``, ``alpha_image``,
            ``base_method``, ``base_training`` (the fused base adapter's own method and record).
        training: training options, data sizes and metrics (JSON values).
        evaluation: an attached evaluation summary (see ``xbt.report.Report.summary``), or None.
        format, format_version, xbt_version: what wrote it; a newer format is refused.
        adapter_id: content hash of config and tensors, set when saved.
    """

    method: str
    new_model: ModelRef
    old_model: ModelRef
    heads: dict[str, str]
    head_shapes: dict[str, dict[str, int]]
    kind: str = "adapter"
    lora: bool = False
    lora_modalities: tuple[str, ...] = MODALITIES
    fusion: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    xbt_version: str = __version__
    adapter_id: str | None = None

    def __post_init__(self) -> None:
        need(self.format == FORMAT, f"not an xbt adapter config (format {self.format!r}, expected {FORMAT!r})")
        _check_version(self.format_version, "this config")
        need(
            isinstance(self.method, str) and bool(self.method),
            f"method must be a non-empty string, got {self.method!r}",
        )
        need(
            self.kind in ADAPTER_KINDS,
            f"unknown adapter kind {self.kind!r}; this xbt knows {list(ADAPTER_KINDS)} (upgrade xbt?)",
        )
        need(
            isinstance(self.new_model, ModelRef) and isinstance(self.old_model, ModelRef),
            "new_model and old_model must be ModelRef",
        )
        need(
            set(self.heads) == set(MODALITIES),
            f"heads must name one head per modality {list(MODALITIES)}, got {sorted(self.heads)}",
        )
        for modality, head in self.heads.items():
            shape = self.head_shapes.get(head)
            need(
                isinstance(shape, dict) and {"d_new", "d_old", "hidden"} <= set(shape),
                f"head {head!r} of the {modality} queries has no shape (d_new, d_old, hidden) in head_shapes",
            )
        self.lora_modalities = tuple(self.lora_modalities)
        need(
            set(self.lora_modalities) <= set(MODALITIES),
            f"lora_modalities must be a subset of {list(MODALITIES)}, got {self.lora_modalities}",
        )
        need(
            (self.fusion is not None) == (self.kind == "fusion"),
            f"a {self.kind!r} adapter config must {'' if self.kind == 'fusion' else 'not '}have a fusion section",
        )
        if self.fusion is not None:
            need(
                self.fusion.get("kind") in FUSION_KINDS,
                f"fusion kind must be one of {list(FUSION_KINDS)}, got {self.fusion.get('kind')!r}",
            )
            for name in ("alpha_text", "alpha_image"):
                check_alpha(name, self.fusion.get(name))
            need(isinstance(self.fusion.get("base_method"), str), "the fusion section must name its base_method")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``xbt_config.json`` holds)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["new_model"], out["old_model"] = asdict(self.new_model), asdict(self.old_model)
        out["lora_modalities"] = list(self.lora_modalities)
        first = ("format", "format_version", "xbt_version", "adapter_id", "kind", "method")
        return {**{k: out[k] for k in first}, **{k: v for k, v in out.items() if k not in first}}

    def content(self) -> dict[str, Any]:
        """``to_dict`` without what does not describe the adapter itself (writer version, id)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("xbt_version", "adapter_id")}

    def replace(self, **changes: Any) -> AdapterConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Any, where: str = "the config") -> AdapterConfig:
        """Read a format-2 dict, or convert a format-1 one; a format from the future is refused."""
        need(
            isinstance(d, dict) and d.get("format") == FORMAT,
            f'{where} is not an xbt adapter config (no "format": "{FORMAT}"); point at a folder written by '
            "save_pretrained",
        )
        version = _check_version(d.get("format_version"), where)
        if version == 1:
            d = _from_v1(d)
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in d.items() if k in known}
            values["new_model"] = ModelRef.from_dict(values["new_model"])
            values["old_model"] = ModelRef.from_dict(values["old_model"])
            values["format_version"] = FORMAT_VERSION
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise XBTError(
                f"{where} is incomplete or malformed ({type(exc).__name__}: {exc}); re-save the adapter"
            ) from exc


def _check_version(version: Any, where: str) -> int:
    need(
        isinstance(version, int) and not isinstance(version, bool) and version >= 1,
        f"{where} has format_version {version!r}; expected an integer >= 1",
    )
    if version > FORMAT_VERSION:
        raise XBTError(
            f"{where} uses adapter format version {version}, newer than this xbt {__version__} reads (up to "
            f"{FORMAT_VERSION}); "
            "upgrade xbt (pip install -U xbt)"
        )
    return version


def _ref_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A format-1 model entry (``name`` was the encoder's label, e.g. ``ViT-L-14/openai``)."""
    out = {k: d.get(k) for k in ("backend", "embed_dim", "fingerprint")}
    name = str(d.get("name") or "unknown")
    if "/" in name and not name.startswith(("hf:", "hf-hub:", "local-dir:", "/", ".")):
        name, out["pretrained"] = name.rsplit("/", 1)
    return {**out, "name": name}


def _from_v1(d: dict[str, Any]) -> dict[str, Any]:
    """Format 1 (one projection, ``projection.safetensors``; fusion as an extra section) as format-2 fields."""
    fusion = d.get("fusion")
    return {
        "format": FORMAT,
        "xbt_version": d.get("xbt_version", "0.1.0"),
        "method": d["method"],
        "kind": "fusion" if isinstance(fusion, dict) else "adapter",
        "new_model": _ref_v1(d["new_model"]),
        "old_model": _ref_v1(d["old_model"]),
        "heads": {m: "shared" for m in MODALITIES},
        "head_shapes": {"shared": dict(d["projection"])},
        "lora": bool(d.get("lora")),
        "training": d.get("training") or {},
        "fusion": None
        if not isinstance(fusion, dict)
        else {k: fusion.get(k) for k in ("kind", "alpha_text", "alpha_image", "base_method", "base_training")},
    }


def read_config(folder: str | Path) -> AdapterConfig:
    """The ``AdapterConfig`` of an adapter folder (``xbt_config.json``, or format 1's ``adapter_config.json``).

    Raises an ``XBTError`` for a folder that is not an xbt adapter, a corrupt config, or a format
    newer than this xbt reads.
    """
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file() and (folder / LEGACY_CONFIG_NAME).is_file():
        path = folder / LEGACY_CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XBTError(
            f"{folder} is not an xbt adapter: cannot read {CONFIG_NAME} ({exc}); save one with Adapter.save_pretrained"
        ) from exc
    return AdapterConfig.from_dict(data, where=str(path))
