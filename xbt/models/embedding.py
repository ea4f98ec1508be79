"""Batched embedding with progress bars and an on-disk cache.

Stage 1, the baselines and the evaluator all need the same embeddings again and again (every
caption through both text encoders, every gallery image through each image encoder). This module
computes them once per (model, data) and stores them as safetensors, keyed by the encoder's
``fingerprint`` and a hash of the inputs, so a second run costs a file read. With the cache off
the inputs are not hashed at all.

The cache lives in ``$XBT_CACHE_DIR`` if set, else ``~/.cache/xbt/embeddings``; pass
``cache=False`` to skip it or ``cache="<dir>"`` for another folder.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..core.checks import check_finite, check_images, check_texts
from ..core.files import save_tensors
from ..core.hashing import hash_images, hash_texts
from .encoders import CLIPEncoder, as_encoder, best_device

CacheSpec = bool | str | os.PathLike | None


def cache_dir(cache: CacheSpec = None) -> Path | None:
    """The folder embeddings are cached in, or ``None`` when caching is off."""
    if cache is False:
        return None
    if cache in (None, True):
        root = os.environ.get("XBT_CACHE_DIR") or Path.home() / ".cache" / "xbt" / "embeddings"
        return Path(root)
    return Path(cache)


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


def _run_batches(encoder, items, batch_size, encode, desc, verbose) -> torch.Tensor:
    chunks = []
    starts = range(0, len(items), batch_size)
    for s in tqdm(starts, desc=desc, disable=not verbose or len(starts) < 2, leave=False):
        chunks.append(encode(items[s : s + batch_size]))
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.embed_dim)


def _cached_embed(
    enc: CLIPEncoder,
    kind: str,
    items,
    hash_fn: Callable[[], str],
    encode,
    batch_size: int,
    device,
    cache: CacheSpec,
    verbose: bool,
) -> torch.Tensor:
    """Read ``items``' embeddings from the cache, or compute them in batches, check and cache them.

    ``hash_fn`` is called only when the cache is on: hashing large inputs is not free.
    """
    if len(items) == 0:
        return torch.zeros(0, enc.embed_dim)
    path = _cache_path(cache, enc, kind, hash_fn()) if cache_dir(cache) is not None else None
    cached = _read_cache(path, len(items))
    if cached is not None:
        return cached
    enc.to(best_device(device))
    emb = _run_batches(enc, items, batch_size, encode, f"embed {kind} ({enc.name})", verbose)
    check_finite(emb, f"{kind} embeddings from {enc.name}")
    if path is not None:
        save_tensors(path, {"embeddings": emb}, {"model": enc.name, "fingerprint": enc.fingerprint})
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
    reads and writes the on-disk cache (see module docstring). No texts give a [0, d] tensor.
    """
    enc = as_encoder(encoder)
    items = check_texts(texts, allow_empty=True)
    return _cached_embed(
        enc, "text", items, lambda: hash_texts(items), enc.encode_text, batch_size, device, cache, verbose
    )


def embed_images(
    encoder,
    images: Sequence[Image.Image] | torch.Tensor,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    cache: CacheSpec = None,
    verbose: bool = True,
) -> torch.Tensor:
    """Embed PIL ``images`` (or a preprocessed [n, 3, H, W] batch): float32 [n, d], unit rows, CPU.

    No images give a [0, d] tensor; anything that is not a PIL image raises an ``XBTError``.
    """
    enc = as_encoder(encoder)
    items = check_images(images)
    return _cached_embed(
        enc, "image", items, lambda: hash_images(items), enc.encode_image, batch_size, device, cache, verbose
    )
