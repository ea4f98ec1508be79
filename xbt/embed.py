"""Batched embedding with progress bars and an on-disk cache.

Stage 1, the baselines and the evaluator all need the same embeddings again and again (every
caption through both text encoders, every gallery image through each image encoder). This module
computes them once per (model, data) and stores them as safetensors, keyed by the encoder's
``fingerprint`` and a hash of the inputs, so a second run costs a file read.

The cache lives in ``$XBT_CACHE_DIR`` if set, else ``~/.cache/xbt/embeddings``; pass
``cache=False`` to skip it or ``cache="<dir>"`` for another folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .encoders import CLIPEncoder, as_encoder, best_device
from .errors import XBTError

CacheSpec = bool | str | os.PathLike | None


def cache_dir(cache: CacheSpec = None) -> Path | None:
    """The folder embeddings are cached in, or ``None`` when caching is off."""
    if cache is False:
        return None
    if cache in (None, True):
        root = os.environ.get("XBT_CACHE_DIR") or Path.home() / ".cache" / "xbt" / "embeddings"
        return Path(root)
    return Path(cache)


def check_texts(texts: Iterable[str], what: str = "texts") -> list[str]:
    """``texts`` as a list of non-empty strings, or an ``XBTError`` naming the first bad item."""
    if isinstance(texts, str):
        raise XBTError(f"{what} must be a list of strings, got a single string; wrap it: [{texts[:40]!r}]")
    items = list(texts)
    if not items:
        raise XBTError(f"{what} is empty: pass at least one caption (stage 1 needs a few hundred or more)")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise XBTError(f"{what}[{i}] is a {type(t).__name__} ({t!r:.60}), not a string; convert or drop it")
    return items


def check_finite(emb: torch.Tensor, what: str) -> torch.Tensor:
    """Raise if ``emb`` holds NaN or infinite values (a broken model, fp16 overflow, bad pixels)."""
    bad = ~torch.isfinite(emb).all(dim=-1)
    if bad.any():
        rows = bad.nonzero().flatten()[:5].tolist()
        raise XBTError(
            f"{what}: {int(bad.sum())} of {len(emb)} embeddings contain NaN or inf (first rows {rows}); "
            "check the model weights and inputs, and run in float32 if you used half precision"
        )
    return emb


def _hash_texts(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _hash_images(images: Sequence[Image.Image] | torch.Tensor) -> str:
    h = hashlib.sha256()
    if isinstance(images, torch.Tensor):
        h.update(b"tensor")
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()
    for im in images:
        h.update(f"{im.mode}{im.size}".encode())
        h.update(im.tobytes())
    return h.hexdigest()


def _cache_path(cache: CacheSpec, encoder: CLIPEncoder, kind: str, data_hash: str) -> Path | None:
    root = cache_dir(cache)
    if root is None:
        return None
    key = hashlib.sha256(f"{encoder.fingerprint}/{kind}/{data_hash}".encode()).hexdigest()[:32]
    return root / f"{kind}-{key}.safetensors"


def _read_cache(path: Path | None, n: int) -> torch.Tensor | None:
    if path is None or not path.is_file():
        return None
    try:
        emb = load_file(str(path))["embeddings"]
    except (SafetensorError, KeyError, OSError):
        return None  # a corrupt or foreign file is recomputed and overwritten, never trusted
    return emb if emb.shape[0] == n else None


def save_tensor_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file via a temporary sibling and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _run_batches(encoder, items, batch_size, encode, desc, verbose) -> torch.Tensor:
    chunks = []
    starts = range(0, len(items), batch_size)
    for s in tqdm(starts, desc=desc, disable=not verbose or len(starts) < 2, leave=False):
        chunks.append(encode(items[s : s + batch_size]))
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.embed_dim)


def _cached_embed(enc: CLIPEncoder, kind: str, items, data_hash: str, encode, batch_size: int, device, cache: CacheSpec,
                  verbose: bool) -> torch.Tensor:
    """Read ``items``' embeddings from the cache, or compute them in batches, check and cache them."""
    path = _cache_path(cache, enc, kind, data_hash)
    cached = _read_cache(path, len(items))
    if cached is not None:
        return cached
    enc.to(best_device(device))
    emb = _run_batches(enc, items, batch_size, encode, f"embed {kind} ({enc.name})", verbose)
    check_finite(emb, f"{kind} embeddings from {enc.name}")
    if path is not None:
        save_tensor_atomic(path, {"embeddings": emb}, {"model": enc.name, "fingerprint": enc.fingerprint})
    return emb


def embed_texts(
    encoder,
    texts: Iterable[str],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> torch.Tensor:
    """Embed ``texts`` with ``encoder``: float32 [n, d] L2-normalised rows on the CPU.

    Runs under ``no_grad`` in batches on ``device`` (CUDA when present) with a progress bar;
    reads and writes the on-disk cache (see module docstring).
    """
    enc = as_encoder(encoder)
    items = check_texts(texts)
    return _cached_embed(enc, "text", items, _hash_texts(items), enc.encode_text, batch_size, device, cache, verbose)


def embed_images(
    encoder,
    images: Sequence[Image.Image] | torch.Tensor,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> torch.Tensor:
    """Embed PIL ``images`` (or a preprocessed [n, 3, H, W] batch): float32 [n, d], unit rows, CPU."""
    enc = as_encoder(encoder)
    if not isinstance(images, torch.Tensor):
        images = list(images)
    if len(images) == 0:
        raise XBTError("images is empty: pass at least one PIL image or a non-empty tensor batch")
    return _cached_embed(enc, "image", images, _hash_images(images), enc.encode_image, batch_size, device, cache, verbose)
