"""ONNX export of an adapter's query encoders, for serving with onnxruntime alone.

``export_onnx`` writes a folder that ``xbt.runtime`` (copied into it as ``xbt_runtime.py``) loads
with numpy, onnxruntime and tokenizers only:

- ``text.onnx``: int64 token ids [n, context_length] (and ``attention_mask`` for transformers
  models) -> float32 [n, d_old] unit rows: the query text tower, normalised, then the text head;
- ``image.onnx``: float32 pixels [n, 3, size, size] -> float32 [n, d_old] unit rows: the (merged)
  query image tower, normalised, then the image head;
- ``tokenizer.json``: a ``tokenizers`` tokenizer that gives the ids the model's own tokenizer gives
  (built from open_clip's CLIP BPE vocabulary, or copied from a Hugging Face fast tokenizer),
  padded and truncated to the context length;
- ``xbt_export.json``: the manifest: the graphs' inputs and outputs, the tokenizer, the image
  preprocessing (size, mean, std, interpolation, resize mode), both models, the check below, and
  the sha256 digests of itself and of the files it names (the runtime refuses a changed one).

Exporting again into an export folder keeps the files the export does not write (a user's server
script, say); replacing the export of another adapter (or writing into a folder that holds no
export) needs ``overwrite=True``.

Before the folder is moved into place, the exported graphs are run through the runtime on probe
captions and images (raw strings and PIL images, so tokenizer and preprocessing are checked too) and
compared with the torch path; a difference above ``tolerance`` refuses the export.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..core.errors import XBTError
from ..core.files import atomic_path, dumps_json, write_json
from ..models.encoders import CLIPEncoder
from ..models.lora import merged_copy
from . import runtime

#: formats ``Adapter.export`` writes
EXPORT_FORMATS = ("onnx",)
TEXT_MODEL, IMAGE_MODEL, TOKENIZER, RUNTIME = "text.onnx", "image.onnx", "tokenizer.json", "xbt_runtime.py"
#: the names an export owns in its folder; a re-export keeps every other file there
EXPORT_NAMES = (TEXT_MODEL, IMAGE_MODEL, TOKENIZER, RUNTIME, runtime.MANIFEST)
#: the probe captions the export is checked on (odd spacing, case, punctuation, a too-long one)
PROBE_TEXTS = ["a red circle", "Two BLUE squares,  left of a star!", "it's a dog's café 2", "word " * 80]
#: CLIP's own normalisation constants (transformers models without a preprocess config)
_OPENAI_MEAN, _OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class QueryGraph(nn.Module):
    """One query path as a module: a tower, L2 normalisation, then the adapter's head."""

    def __init__(self, encoder: CLIPEncoder, head: nn.Module, modality: str) -> None:
        super().__init__()
        self.model, self.head, self.modality, self.backend = encoder.model, head, modality, encoder.backend
        self._encoder = encoder

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.modality == "image":
            feats = self._encoder.image_features(x)
        else:
            tokens = {"input_ids": x} if attention_mask is None else {"input_ids": x, "attention_mask": attention_mask}
            feats = self._encoder.text_features(tokens)
        return self.head(F.normalize(feats.float(), dim=-1))


def clip_tokenizer(encoder: CLIPEncoder, context_length: int, pad_id: int):
    """A ``tokenizers.Tokenizer`` giving the ids ``encoder.tokenize`` gives, padded to ``context_length``.

    open_clip's ``SimpleTokenizer`` is rebuilt from its own vocabulary and merges (the CLIP BPE:
    whitespace cleaned, lower-cased, ``</w>`` word ends, start/end tokens); a Hugging Face fast
    tokenizer (open_clip's ``HFTokenizer`` or transformers') is copied. Anything else is refused.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = getattr(encoder.tokenizer, "source", encoder.tokenizer)  # xbt's transformers tokenizers wrap one
    hf = getattr(tok, "backend_tokenizer", None) or getattr(getattr(tok, "tokenizer", None), "backend_tokenizer", None)
    if hf is not None:
        out = Tokenizer.from_str(hf.to_str())
    elif hasattr(tok, "bpe_ranks") and hasattr(tok, "encoder"):
        merges = sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)
        sot, eot = tok.decoder[tok.sot_token_id], tok.decoder[tok.eot_token_id]
        out = Tokenizer(
            models.BPE(
                vocab=dict(tok.encoder),
                merges=[tuple(m) for m in merges],
                unk_token=eot,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
            )
        )
        out.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
        )
        words = Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
        out.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(words, behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        out.decoder = decoders.ByteLevel()
        out.post_processor = processors.TemplateProcessing(
            single=f"{sot} $A {eot}", special_tokens=[(sot, tok.sot_token_id), (eot, tok.eot_token_id)]
        )
    else:
        raise XBTError(
            f"cannot export the tokenizer of {encoder.name} (a {type(tok).__name__}): xbt exports open_clip's "
            "SimpleTokenizer and Hugging Face fast tokenizers; load the model with xbt.load_clip"
        )
    out.enable_truncation(context_length)
    out.enable_padding(pad_id=pad_id, pad_token=out.id_to_token(pad_id) or "", length=context_length)
    return out


def preprocess_spec(encoder: CLIPEncoder) -> dict[str, Any]:
    """The image preprocessing of ``encoder`` as the runtime's spec (size, mean, std, interpolation, resize mode)."""
    if encoder.backend == "open_clip":
        import open_clip

        cfg = dict(open_clip.get_model_preprocess_cfg(encoder.model))
        size = cfg.get("size")
        size = size[0] if isinstance(size, (tuple, list)) else size
        return {
            "size": int(size),
            "mean": list(cfg.get("mean", _OPENAI_MEAN)),
            "std": list(cfg.get("std", _OPENAI_STD)),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "resize_mode": cfg.get("resize_mode", "shortest"),
        }
    proc = getattr(encoder.preprocess, "processor", None)  # a transformers CLIPImageProcessor
    if proc is None:
        size = int(encoder.model.config.vision_config.image_size)
        return {
            "size": size,
            "mean": list(_OPENAI_MEAN),
            "std": list(_OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
    crop = proc.crop_size if proc.do_center_crop else {"height": proc.size["shortest_edge"]}
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(proc.resample), "bicubic")
    return {
        "size": int(crop["height"]),
        "resize": int(proc.size["shortest_edge"]),
        "mean": [float(x) for x in proc.image_mean],
        "std": [float(x) for x in proc.image_std],
        "interpolation": interpolation,
        "resize_mode": "shortest",
        "crop": "floor",
    }


#: the most intensity levels (of 255) the runtime's PIL preprocessing may differ from the model's own (``_check``)
PREPROCESS_LEVELS = 2.0


def probe_images() -> list[Image.Image]:
    """Three seeded random RGB images of different shapes (portrait, landscape, square)."""
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((70, 41), (37, 90), (64, 64))
    ]


def _export_graph(graph: QueryGraph, args: tuple, names: list[str], path: Path, opset: int) -> None:
    axes = {n: {0: "batch"} for n in [*names, "embeddings"]}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(
        False
    )  # the fused attention kernel has no ONNX form; the plain path is the same math
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph.eval(),
                args,
                str(path),
                input_names=names,
                output_names=["embeddings"],
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


@torch.no_grad()
def export_onnx(
    encoders: dict[str, CLIPEncoder],
    heads: dict[str, nn.Module],
    folder: str | Path,
    info: dict[str, Any],
    opset: int = 17,
    tolerance: float = 1e-4,
    overwrite: bool = False,
) -> Path:
    """Write the query encoders ``encoders[m]`` + ``heads[m]`` (m = text, image) as an ONNX folder.

    Args:
        encoders: the encoder each query modality runs (LoRA already merged in).
        heads: the projection head of each modality (new -> old space, unit rows out).
        folder: the target folder; written beside it and moved into place atomically.
        info: what the manifest records about the adapter (method, models, adapter id, ...).
        opset: the ONNX opset.
        tolerance: the largest |onnxruntime - torch| accepted on the probe inputs.
        overwrite: replace the export of another adapter in ``folder``, or export into a folder
            that holds other files but no export; the files the export does not write are kept
            either way.

    Returns:
        the folder. Raises ``XBTError`` when the exported path does not reproduce the torch one.
    """
    folder = Path(folder)
    if not overwrite:
        _refuse_to_replace(folder, info.get("adapter_id"))
    text_enc, image_enc = encoders["text"], encoders["image"]
    graphs = {m: QueryGraph(encoders[m], heads[m], m).eval() for m in ("text", "image")}
    tokens = text_enc.tokenize(PROBE_TEXTS[:1])
    context_length, pad_id = int(tokens["input_ids"].shape[1]), int(tokens["input_ids"][0, -1])
    if text_enc.backend == "transformers":  # padded to the batch's longest: take the model's length and the pad token
        context_length = int(text_enc.model.config.text_config.max_position_embeddings)
        pad_id = int(getattr(getattr(text_enc.tokenizer, "source", None), "pad_token_id", None) or 0)
    text_inputs = ["input_ids"] + (["attention_mask"] if text_enc.backend == "transformers" else [])
    spec = preprocess_spec(image_enc)
    devices = {m: encoders[m].device for m in graphs}
    with atomic_path(folder, folder=True, owned=EXPORT_NAMES) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        cpu = {m: g.cpu() for m, g in graphs.items()}  # exported and checked on the CPU, put back after
        ids = text_enc.tokenize(PROBE_TEXTS[:2])
        if text_enc.backend == "transformers":  # traced at the length the runtime pads to, not the probes' longest
            fill = {"input_ids": pad_id, "attention_mask": 0}
            ids = {n: F.pad(ids[n], (0, context_length - ids[n].shape[1]), value=fill[n]) for n in text_inputs}
        _export_graph(cpu["text"], tuple(ids[n].cpu() for n in text_inputs), text_inputs, tmp / TEXT_MODEL, opset)
        pixels = torch.zeros(2, 3, spec["size"], spec["size"])
        _export_graph(cpu["image"], (pixels,), ["pixel_values"], tmp / IMAGE_MODEL, opset)
        clip_tokenizer(text_enc, context_length, pad_id).save(str(tmp / TOKENIZER))
        shutil.copyfile(runtime.__file__, tmp / RUNTIME)
        manifest = {
            "format": runtime.EXPORT_FORMAT,
            **info,
            "embed_dim": int(heads["text"].d_old),
            "opset": opset,
            "text": {
                "model": TEXT_MODEL,
                "inputs": {n: ["batch", context_length] for n in text_inputs},
                "dtype": "int64",
                "tokenizer": TOKENIZER,
                "context_length": context_length,
                "pad_id": pad_id,
                "encoder": text_enc.name,
            },
            "image": {
                "model": IMAGE_MODEL,
                "inputs": {"pixel_values": ["batch", 3, spec["size"], spec["size"]]},
                "dtype": "float32",
                "preprocess": spec,
                "encoder": image_enc.name,
            },
            "output": {
                "name": "embeddings",
                "shape": ["batch", int(heads["text"].d_old)],
                "dtype": "float32",
                "space": "old model, unit rows",
            },
            "runtime": f"{RUNTIME}: needs numpy, onnxruntime, tokenizers and pillow",
        }
        manifest = json.loads(dumps_json(manifest))  # as the runtime reads it back, for its digest
        manifest["digests"] = runtime.digests(tmp, manifest)
        write_json(tmp / runtime.MANIFEST, manifest)
        manifest["check"] = _check(tmp, text_enc, image_enc, heads, tolerance)
        write_json(tmp / runtime.MANIFEST, manifest)
    for m, g in graphs.items():
        g.to(devices[m])
    return folder


def _refuse_to_replace(folder: Path, adapter_id: str | None) -> None:
    """Refuse (without ``overwrite``) a folder of other files but no export, or another adapter's export."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    manifest = folder / runtime.MANIFEST
    if not manifest.is_file():
        raise XBTError(
            f"{folder} exists and is not an xbt export; choose an empty or new folder, or pass overwrite=True "
            "to export into it (its files are kept)"
        )
    try:
        existing = json.loads(manifest.read_text(encoding="utf-8")).get("adapter_id")
    except (OSError, ValueError, AttributeError):
        existing = "unreadable"
    if existing != adapter_id:
        raise XBTError(
            f"{folder} already holds the export of another adapter (id {existing}, this one is {adapter_id}); "
            "pass overwrite=True to replace it (the files it does not write are kept), or export elsewhere"
        )


#: what the export imports beyond xbt's own needs: torch.onnx writes with onnx, the runtime check runs onnxruntime,
#: tokenizer.json is built with tokenizers (the ``export`` extra installs them)
EXPORT_NEEDS = ("onnx", "onnxruntime", "tokenizers")


def _missing_needs() -> list[str]:
    """The packages of ``EXPORT_NEEDS`` that do not import here."""
    missing = []
    for name in EXPORT_NEEDS:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def export_adapter(adapter: Any, format: str, folder: str | Path, **kwargs: Any) -> Path:
    """``Adapter.export``: the adapter's query path (LoRA merged; the adapter itself is unchanged) as ``format``."""
    if format not in EXPORT_FORMATS:
        raise XBTError(f"unknown export format {format!r}; choose one of {list(EXPORT_FORMATS)}")
    missing = _missing_needs()
    if missing:  # before any work: torch.onnx would fail deep inside with "Module onnx is not installed!"
        raise XBTError(
            f"ONNX export needs {', '.join(missing)}, not installed here; install the export extra: "
            "pip install 'xbt[export]' (in a checkout: pip install -e '.[export]')"
        )
    if adapter.requires_old_encoder:
        raise XBTError(
            f"the {adapter.method!r} adapter runs the OLD model on every query (fusion), so its query path is not "
            "one exportable encoder; export its base adapter (adapter.base.export(...)) instead"
        )
    encoders = dict(adapter.query_encoders)
    if adapter.lora is not None and not adapter.merged:
        merged = merged_copy(adapter.lora)
        encoders = {m: merged if m in adapter.lora_modalities else e for m, e in encoders.items()}
    info = {
        "method": adapter.method,
        "adapter_id": adapter.adapter_id(),
        "new_model": adapter.new_ref.label,
        "old_model": adapter.old_ref.label,
        "lora_merged": sorted(adapter.lora_modalities) if adapter.lora is not None else [],
    }
    return export_onnx(encoders, adapter.heads, folder, info, **kwargs)


def _check(
    folder: Path, text_enc: CLIPEncoder, image_enc: CLIPEncoder, heads: dict[str, nn.Module], tolerance: float
) -> dict:
    """Run the exported folder on the probes and compare with the torch path; refuse a mismatch.

    Text is compared end to end (strings in). Images are compared in two parts: the graph on the
    torch path's own pixels (within ``tolerance``), and the runtime's preprocessing against the
    model's, which must agree within ``PREPROCESS_LEVELS`` intensity levels per pixel: transformers'
    image processor resizes with torchvision's antialiased bicubic, which PIL's matches to 1 level at
    the toy sizes and to 2 on the random-noise probes at 224 px (a wrong resize mode, kernel or
    normalisation is 24 to 255 levels off there).
    """
    served = runtime.load(folder, threads=1)
    images = probe_images()
    pixels = image_enc.preprocess_images(images)
    torch_text = heads["text"](
        text_enc.encode_text(PROBE_TEXTS).to(next(heads["text"].parameters()).device).float()
    ).cpu()
    torch_image = heads["image"](
        image_enc.encode_image(pixels).to(next(heads["image"].parameters()).device).float()
    ).cpu()
    diff = {
        "text": float(np.abs(served.encode_text(PROBE_TEXTS) - torch_text.numpy()).max()),
        "image": float(np.abs(served.encode_image(pixels.cpu().numpy()) - torch_image.numpy()).max()),
    }
    for modality, d in diff.items():
        if not d <= tolerance:
            raise XBTError(
                f"the exported {modality} encoder differs from the torch one by {d:.2e} (> {tolerance:.0e}) on "
                f"probe inputs; the {'tokenizer or ' if modality == 'text' else ''}a layer is not reproduced by ONNX: "
                "report it with the model name"
            )
    std = np.asarray(served.manifest["image"]["preprocess"]["std"], dtype=np.float32).reshape(1, 3, 1, 1)
    levels = float((np.abs(served.preprocess(images) - pixels.cpu().numpy()) * std * 255).max())
    if not levels <= PREPROCESS_LEVELS + 1e-3:
        raise XBTError(
            f"the runtime's image preprocessing differs from {image_enc.name}'s by {levels:.1f} intensity levels; "
            "its resize/crop/normalisation is not one the runtime knows: report it with the model name"
        )
    return {
        "probe_texts": len(PROBE_TEXTS),
        "probe_images": len(images),
        "max_abs_diff": diff,
        "preprocess_max_levels": round(levels, 4),
        "tolerance": tolerance,
    }
