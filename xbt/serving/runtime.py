"""Serve an exported adapter with onnxruntime alone: no torch, no xbt.

``adapter.export("onnx", folder)`` (or ``xbt export``) writes the merged query encoders of an
adapter as two ONNX graphs plus ``xbt_export.json`` (what they expect) and ``tokenizer.json``, and
copies this file into the folder as ``xbt_runtime.py``. A serving process then needs only numpy,
onnxruntime, tokenizers (and PIL for images)::

    import sys; sys.path.insert(0, "exported/")
    import xbt_runtime
    enc = xbt_runtime.load("exported/")
    q = enc.encode_text(["a dog on a beach"])     # float32 [n, d_old], unit rows, OLD space
    g = enc.encode_image([pil_image])             # float32 [n, d_old]

This module imports nothing from xbt (it must run where xbt is not installed); xbt's exporter uses
the same ``preprocess`` to check, at export time, that it reproduces the model's own preprocessing.

Loading refuses what would serve other vectors silently: a file name in the manifest that leads
outside the folder (``../``, an absolute path, a link out), and, when the manifest carries
``digests`` (exports since they were added), a changed manifest (its preprocessing, say) or a
changed file it names (the sha256 differs). An export without digests loads with one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: the description file of an exported folder
MANIFEST = "xbt_export.json"
#: the export format version this runtime reads
EXPORT_FORMAT = 1
_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0}  # PIL.Image.Resampling values
#: the manifest keys its own digest leaves out: the digests, and the report of the export-time check
UNSIGNED = ("digests", "check")


def named_files(manifest: dict) -> dict[str, str]:
    """The files a manifest names, by the key that names them (``text.model``, ...)."""
    return {
        "text.model": manifest["text"]["model"],
        "image.model": manifest["image"]["model"],
        "text.tokenizer": manifest["text"]["tokenizer"],
    }


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_sha256(manifest: dict) -> str:
    """The hex sha256 of a manifest's content (canonical JSON, less ``UNSIGNED`` keys)."""
    body = {k: v for k, v in manifest.items() if k not in UNSIGNED}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()


def digests(folder: str | os.PathLike, manifest: dict) -> dict:
    """What the exporter writes as ``manifest["digests"]``: the sha256 of each named file and of the manifest."""
    return {
        "files": {name: sha256_file(Path(folder) / name) for name in named_files(manifest).values()},
        "manifest": manifest_sha256(manifest),
    }


def preprocess(images: Sequence, spec: dict) -> np.ndarray:
    """PIL images -> float32 pixels [n, 3, size, size] as the model's own eval transform makes them.

    ``spec`` is the manifest's ``image.preprocess``: ``size`` (the output side), ``mean``, ``std``,
    ``interpolation`` and ``resize_mode`` (``"shortest"``: resize the short side to ``resize``,
    default ``size``, then centre-crop ``size``, the crop offset rounded (``crop: "round"``, torchvision)
    or floored (``"floor"``, transformers); ``"squash"``: resize both sides to ``size``).
    """
    size = int(spec["size"])
    short_side = int(spec.get("resize", size))
    halve = (lambda x: int(round(x / 2.0))) if spec.get("crop", "round") == "round" else (lambda x: x // 2)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    resample = _RESAMPLE[spec.get("interpolation", "bicubic")]
    out = np.empty((len(images), 3, size, size), dtype=np.float32)
    for i, image in enumerate(images):
        image = image.convert("RGB")
        w, h = image.size
        if spec.get("resize_mode", "shortest") == "squash":
            image = image.resize((size, size), resample)
        else:
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(short_side * long / short)
            new_w, new_h = (short_side, new_long) if w <= h else (new_long, short_side)
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample)
            top, left = halve(new_h - size), halve(new_w - size)
            image = image.crop((left, top, left + size, top + size))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        out[i] = (pixels - mean) / std
    return out


class ExportedEncoders:
    """The exported text and image query encoders of one adapter, run by onnxruntime.

    Args:
        folder: the exported folder (``xbt_export.json``, ``text.onnx``, ``image.onnx``, ``tokenizer.json``).
        threads: onnxruntime intra-op threads (``None``: onnxruntime's default).
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(
        self, folder: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        manifest = self.folder / MANIFEST
        if not manifest.is_file():
            raise ValueError(
                f"{self.folder} has no {MANIFEST}; export the adapter with adapter.export('onnx', folder) or `xbt "
                "export`"
            )
        self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        if self.manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(
                f"{manifest} is export format {self.manifest.get('format')!r}; this runtime reads format "
                f"{EXPORT_FORMAT}: use the xbt_runtime.py shipped in the same folder"
            )
        paths = {key: self._inside(key, name) for key, name in named_files(self.manifest).items()}
        self._verify(paths)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        providers = list(providers or ["CPUExecutionProvider"])
        self.sessions = {
            m: ort.InferenceSession(str(paths[f"{m}.model"]), options, providers=providers) for m in ("text", "image")
        }
        self.tokenizer = Tokenizer.from_file(str(paths["text.tokenizer"]))
        self.embed_dim = int(self.manifest["embed_dim"])

    def _inside(self, key: str, name: object) -> Path:
        """``name`` resolved within the folder; a path that leads outside it (``..``, absolute, a link) is refused."""
        root = self.folder.resolve()
        path = (root / str(name)).resolve()
        if not isinstance(name, str) or path == root or not path.is_relative_to(root):
            raise ValueError(
                f"{self.folder / MANIFEST} names {name!r} as its {key}, a path outside {self.folder}; an export "
                "loads only files inside its own folder: re-export the adapter, or restore the manifest"
            )
        return path

    def _verify(self, paths: dict[str, Path]) -> None:
        """Check the manifest and the files it names against the manifest's sha256 digests."""
        manifest, expected = self.folder / MANIFEST, self.manifest.get("digests")
        if expected is None:
            warnings.warn(
                f"{manifest} has no sha256 digests (exported before xbt wrote them), so its files and "
                "preprocessing were not checked; re-export the adapter to have them checked",
                UserWarning,
                stacklevel=3,
            )
            return
        if not isinstance(expected, dict) or expected.get("manifest") != manifest_sha256(self.manifest):
            raise ValueError(
                f"{manifest} was changed after export (its content no longer matches its sha256 digest); "
                "re-export the adapter, or restore the manifest"
            )
        files = expected.get("files") or {}
        for key, path in paths.items():
            name = named_files(self.manifest)[key]
            if not path.is_file() or files.get(name) != sha256_file(path):
                raise ValueError(
                    f"{path} (the {key} of {manifest}) is missing or was changed after export (its sha256 "
                    "differs from the manifest's); re-export the adapter, or restore the file"
                )

    def __repr__(self) -> str:
        return (
            f"ExportedEncoders({str(self.folder)!r}, method={self.manifest.get('method')!r}, "
            f"embed_dim={self.embed_dim})"
        )

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """int64 token arrays [n, context_length] for the inputs the text graph declares."""
        if isinstance(texts, str):
            raise TypeError("pass a list of strings, not one string")
        if len(texts) == 0:
            shape = (0, int(self.manifest["text"]["context_length"]))
            return {i.name: np.zeros(shape, dtype=np.int64) for i in self.sessions["text"].get_inputs()}
        encodings = self.tokenizer.encode_batch(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), -1),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(
                len(encodings), -1
            ),
        }
        return {i.name: arrays[i.name] for i in self.sessions["text"].get_inputs()}

    def preprocess(self, images: Sequence) -> np.ndarray:
        """PIL images -> float32 pixels [n, 3, size, size] (the exported model's preprocessing)."""
        return preprocess(images, self.manifest["image"]["preprocess"])

    def _run(self, modality: str, feeds: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        out = [
            self.sessions[modality].run(None, {k: v[i : i + batch_size] for k, v in feeds.items()})[0]
            for i in range(0, n, batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), dtype=np.float32)

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Text queries in the OLD space: float32 [n, d_old] unit rows ([0, d_old] for no texts)."""
        if not isinstance(texts, str) and len(texts) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return self._run("text", self.tokenize(texts), batch_size)

    def encode_image(self, images, batch_size: int = 64) -> np.ndarray:
        """Image queries (PIL images, or pixels [n, 3, H, W] already preprocessed) in the OLD space: float32 [n,
        d_old]."""
        if len(images) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        pixels = images if isinstance(images, np.ndarray) else self.preprocess(images)
        return self._run("image", {"pixel_values": pixels.astype(np.float32, copy=False)}, batch_size)


def load(
    folder: str | os.PathLike, threads: int | None = None, providers: Sequence[str] | None = None
) -> ExportedEncoders:
    """Load an exported folder (see ``ExportedEncoders``)."""
    return ExportedEncoders(folder, threads=threads, providers=providers)
