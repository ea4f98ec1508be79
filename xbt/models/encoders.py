"""One small wrapper over open_clip and transformers CLIP models.

Everything downstream (embedding, both training stages, the adapter, the evaluator) talks to a
``CLIPEncoder`` and never to a backend directly. The wrapper knows how to tokenize, preprocess,
run each tower with or without gradients, and give a stable identity (``fingerprint``) used as the
embedding-cache key and to check that an adapter is loaded onto the model it was trained for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..core.errors import XBTError

HF_PREFIX = "hf:"


def best_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class CLIPEncoder:
    """A CLIP model behind one interface, whichever library built it.

    Attributes:
        model: the underlying ``open_clip`` CLIP or transformers ``CLIPModel`` (an ``nn.Module``).
        backend: ``"open_clip"`` or ``"transformers"``.
        name: a human-readable name (the model id when known).
        source: how ``load_clip`` loaded it (its ``name`` argument: an open_clip architecture,
            ``hf:<id>``, ``local-dir:<path>``), or ``None`` for a wrapped raw model; recorded in
            adapters so that tools can load the same model again.
        pretrained: the open_clip pretrained tag it was loaded with, if any.
        revision: the Hub revision of an ``hf:`` model, if one was asked for.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[[list[str]], Any],
        preprocess: Callable[[Image.Image], torch.Tensor],
        name: str,
        backend: str,
        source: str | None = None,
        pretrained: str | None = None,
        revision: str | None = None,
    ) -> None:
        if backend not in ("open_clip", "transformers"):
            raise XBTError(f"unknown backend {backend!r}; expected 'open_clip' or 'transformers'")
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.name = name
        self.backend = backend
        self.source, self.pretrained, self.revision = source, pretrained, revision
        self._fingerprint: str | None = None
        self._legacy_fingerprints: dict[int, str] = {}  # thread count -> legacy_fingerprint

    def __repr__(self) -> str:
        return f"CLIPEncoder(name={self.name!r}, backend={self.backend!r}, embed_dim={self.embed_dim})"

    # ------------------------------------------------------------------ identity and placement
    @property
    def embed_dim(self) -> int:
        """Width of the joint embedding space."""
        if self.backend == "transformers":
            return int(self.model.config.projection_dim)
        return int(self.model.visual.output_dim)

    @property
    def logit_scale(self) -> float:
        """The model's learned inverse temperature (CLIP's ``logit_scale.exp()``), 100 if it has none.

        Stage 2 uses it to turn the NEW model's own image-caption similarities into probabilities
        at the sharpness the model was trained with.
        """
        scale = getattr(self.model, "logit_scale", None)
        if not isinstance(scale, torch.Tensor):
            return 100.0
        return float(scale.detach().float().exp().item())

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> CLIPEncoder:
        """Move the model to ``device``; returns self."""
        self.model.to(device)
        return self

    @property
    def fingerprint(self) -> str:
        """A stable hex id of the architecture and weights (cheap: shapes plus a strided sample).

        Computed once per wrapper; call ``refresh_fingerprint()`` after changing weights in place.
        """
        if self._fingerprint is None:
            self._fingerprint = self.refresh_fingerprint()
        return self._fingerprint

    def refresh_fingerprint(self) -> str:
        """Recompute ``fingerprint`` from the current weights (and forget the legacy ones)."""
        self._legacy_fingerprints = {}
        # float64, so the sum does not depend on how many threads reduced it
        self._fingerprint = self._weights_fingerprint(torch.float64)
        return self._fingerprint

    def legacy_fingerprint(self, threads: int) -> str:
        """The fingerprint xbt wrote before it summed in float64 (adapter folders of those versions record it).

        Each tensor's sum was taken in float32, whose rounding depends on how many threads reduced
        it, so the value is computed with torch running ``threads`` intra-op threads; the caller's
        thread count is restored afterwards. Cached per thread count until ``refresh_fingerprint()``.
        """
        threads = int(threads)
        if threads < 1:
            raise XBTError(f"threads must be >= 1, got {threads}")
        cache = self.__dict__.setdefault("_legacy_fingerprints", {})
        if threads not in cache:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                cache[threads] = self._weights_fingerprint(torch.float32)
            finally:
                torch.set_num_threads(before)
        return cache[threads]

    def _weights_fingerprint(self, sum_dtype: torch.dtype) -> str:
        """Hash of the class, each tensor's name, shape, dtype, a strided sample and its sum in ``sum_dtype``."""
        h = hashlib.sha256(f"{self.backend}/{type(self.model).__name__}".encode())
        with torch.no_grad():
            for key, tensor in sorted(self.model.state_dict().items()):
                flat = tensor.detach().reshape(-1)
                step = max(1, flat.numel() // 64)
                sample = flat[::step][:64].float().cpu()
                h.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                h.update(sample.numpy().tobytes())
                h.update(f"{flat.to(sum_dtype).sum().item():.6e}".encode())
        return h.hexdigest()[:24]

    # ------------------------------------------------------------------ inputs
    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token tensors for ``texts`` on the model's device, as a dict of tower inputs."""
        out = self.tokenizer(list(texts))
        if isinstance(out, torch.Tensor):
            out = {"input_ids": out}
        return {k: v.to(self.device) for k, v in dict(out).items() if k in ("input_ids", "attention_mask")}

    def preprocess_images(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """A pixel batch on the model's device: PIL images are preprocessed, tensors pass through."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise XBTError(f"an image tensor batch must be [n, 3, H, W], got shape {tuple(images.shape)}")
            return images.to(self.device)
        pixels = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise XBTError(
                    f"image {i} is a {type(im).__name__}, expected a PIL.Image; preprocess it yourself and pass a "
                    "tensor batch instead"
                )
            pixels.append(self._preprocess_one(im.convert("RGB")))
        return torch.stack(pixels).to(self.device)

    def _preprocess_one(self, image: Image.Image) -> torch.Tensor:
        out = self.preprocess(image)
        if isinstance(out, torch.Tensor):
            return out
        # transformers image processors return a BatchFeature holding a batch of one
        return out["pixel_values"][0]

    # ------------------------------------------------------------------ towers (gradients flow)
    def text_features(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unnormalised text embeddings [n, embed_dim]; gradients flow (used by stage 2)."""
        if self.backend == "transformers":
            out = self.model.get_text_features(**tokens)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        return self.model.encode_text(tokens["input_ids"])

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings [n, embed_dim]; gradients flow (used by stage 2)."""
        if self.backend == "transformers":
            out = self.model.get_image_features(pixel_values=pixels)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        return self.model.encode_image(pixels)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised float32 text embeddings [n, embed_dim] on the CPU, in one forward pass.

        For large inputs use ``xbt.embed.embed_texts`` (batches, progress, cache).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            return F.normalize(self.text_features(self.tokenize(texts)).float(), dim=-1).cpu()
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 image embeddings [n, embed_dim] on the CPU, in one forward pass."""
        was_training = self.model.training
        self.model.eval()
        try:
            feats = self.image_features(self.preprocess_images(images))
            return F.normalize(feats.float(), dim=-1).cpu()
        finally:
            self.model.train(was_training)


# ---------------------------------------------------------------------- construction


def _open_clip_defaults(model: torch.nn.Module) -> tuple[Callable, Callable]:
    """Tokenizer and eval preprocess for a bare open_clip model, read from the model itself."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    preprocess = open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(**cfg), is_train=False)
    tokenizer = open_clip.SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
    return tokenizer, preprocess


def _hf_defaults(model: torch.nn.Module) -> tuple[Callable, Callable]:
    """Tokenizer and preprocess for a bare transformers CLIPModel built without its processor.

    CLIP's tokenizer is the same BPE in both libraries, so open_clip's SimpleTokenizer (which ships
    its vocabulary) gives the ids a transformers CLIP expects, offline.
    """
    import open_clip
    from transformers import CLIPImageProcessor

    size = int(model.config.vision_config.image_size)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    simple = open_clip.SimpleTokenizer(context_length=int(model.config.text_config.max_position_embeddings))

    def tokenizer(texts: list[str]) -> dict[str, torch.Tensor]:
        ids = simple(texts)
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}

    def preprocess(image: Image.Image) -> torch.Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    tokenizer.source, preprocess.processor = simple, processor  # what they wrap, for the ONNX export
    return tokenizer, preprocess


def as_encoder(model: Any, name: str | None = None) -> CLIPEncoder:
    """Wrap ``model`` (a ``CLIPEncoder``, an open_clip CLIP or a transformers ``CLIPModel``)."""
    if isinstance(model, CLIPEncoder):
        return model
    if hasattr(model, "encode_text") and hasattr(model, "encode_image") and hasattr(model, "visual"):
        tokenizer, preprocess = _open_clip_defaults(model)
        enc = CLIPEncoder(model, tokenizer, preprocess, name or "", "open_clip")
    elif hasattr(model, "get_text_features") and hasattr(model, "get_image_features"):
        tokenizer, preprocess = _hf_defaults(model)
        enc = CLIPEncoder(model, tokenizer, preprocess, name or "", "transformers")
    else:
        raise XBTError(
            f"cannot use a {type(model).__name__} as a CLIP model: pass an xbt.load_clip(...) result, "
            "an open_clip CLIP model or a transformers CLIPModel"
        )
    if not enc.name:
        enc.name = f"{enc.backend}:{type(model).__name__}:{enc.fingerprint[:12]}"
    return enc


def load_clip(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    revision: str | None = None,
) -> CLIPEncoder:
    """Load a CLIP model by name into a ``CLIPEncoder``.

    Args:
        name: an open_clip architecture (``"ViT-B-32"``), ``"hf:<id or path>"`` for a transformers
            ``CLIPModel``, or ``"local-dir:<path>"`` for an open_clip folder.
        pretrained: the open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``...);
            ``None`` gives random weights. Ignored for ``hf:`` and ``local-dir:`` models.
        device: where to put the model; CUDA when present by default.
        revision: the Hub revision (branch, tag or commit) of an ``hf:`` model.
    """
    dev = best_device(device)
    if name.startswith(HF_PREFIX):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        model_id = name[len(HF_PREFIX) :]
        model = CLIPModel.from_pretrained(model_id, revision=revision, dtype=torch.float32).to(dev).eval()
        hf_tok = AutoTokenizer.from_pretrained(model_id, revision=revision)
        processor = CLIPImageProcessor.from_pretrained(model_id, revision=revision)

        def tokenizer(texts: list[str]) -> dict[str, torch.Tensor]:
            return hf_tok(texts, padding=True, truncation=True, return_tensors="pt")

        def preprocess(image: Image.Image) -> torch.Tensor:
            return processor(images=image, return_tensors="pt")["pixel_values"][0]

        tokenizer.source, preprocess.processor = hf_tok, processor  # what they wrap, for the ONNX export
        return CLIPEncoder(model, tokenizer, preprocess, name, "transformers", source=name, revision=revision)

    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=dev)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    label = name if pretrained is None else f"{name}/{pretrained}"
    return CLIPEncoder(model, tokenizer, preprocess, label, "open_clip", source=name, pretrained=pretrained)
