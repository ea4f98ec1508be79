"""The out-of-core text embedding cache: a caption stream embedded shard by shard, resumable, in several processes.

``embed_text_shards`` reads the texts once (``xbt.stream.unique_chunks``: repeats dropped by hash,
distinct texts cut into chunks of ``shard_rows``) and stores each chunk's embeddings under each
encoder as one safetensors file, ``<cache>/shards/text-<model key>-<dtype>/<chunk key>.safetensors``.
The model key hashes the encoder's ``fingerprint``; the chunk key hashes the chunk's texts. So:

- memory holds one chunk, whatever the corpus size; the result (``TextShards``) is a list of files;
- a file is written atomically once its chunk is done, so an interrupted run resumes at the last
  complete shard: the next run finds the finished chunks on disk and embeds only the rest (the
  stream is read again, which is cheap next to embedding it);
- several processes (``accelerate launch`` / ``torchrun``, see ``xbt.distributed``) each embed the
  chunks ``k`` with ``k % processes == rank`` into the same folder and wait for each other; every
  chunk is embedded in the same batches whichever process does it, so the shards are the same
  bit for bit as a single process's.

Shards are float32 by default; ``dtype="float16"`` halves the disk space (readers get float32).
``TensorPairs`` puts in-memory tensors behind the same shard interface, for small corpora.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..core.checks import check_finite
from ..core.distributed import barrier, world
from ..core.errors import XBTError
from ..core.files import save_tensors
from ..core.hashing import hash_texts
from ..data.texts import TextStats, unique_chunks
from .embedding import CacheSpec, cache_dir
from .encoders import CLIPEncoder, as_encoder, best_device

#: distinct texts per shard (a float32 shard of 512-d embeddings is 16 MB)
SHARD_ROWS = 8192
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def shard_folder(root: Path, encoder: CLIPEncoder, dtype: str) -> Path:
    """Where ``encoder``'s text shards in ``dtype`` live under the cache ``root``."""
    key = hashlib.sha256(f"{encoder.fingerprint}/text".encode()).hexdigest()[:32]
    return root / "shards" / f"text-{key}-{dtype}"


def read_shard(path: Path, rows: int | None = None) -> torch.Tensor | None:
    """A shard's embeddings as float32 [rows, d], or ``None`` if it is missing, corrupt or of another size."""
    if not path.is_file():
        return None
    try:
        emb = load_file(str(path))["embeddings"]
    except (SafetensorError, KeyError, OSError):
        return None  # corrupt or foreign: recomputed, never trusted
    # a copy: the loaded tensor maps the file, and a file changed underneath a mapping crashes its reader
    return emb.to(torch.float32, copy=True) if rows is None or emb.shape[0] == rows else None


class PairShards:
    """Paired NEW / OLD text embeddings in shards: what stage 1 streams over.

    ``rows[i]`` is shard ``i``'s length; ``load(i)`` gives its ``(new [rows, d_new], old [rows, d_old])``
    float32 tensors.
    """

    rows: list[int]
    dims: tuple[int, int]

    def __len__(self) -> int:
        return sum(self.rows)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def head(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``min(n, len(self))`` rows of both sides, float32."""
        news, olds, got = [], [], 0
        for i in range(len(self.rows)):
            if got >= n:
                break
            new, old = self.load(i)
            news.append(new[: n - got])
            olds.append(old[: n - got])
            got += len(news[-1])
        return torch.cat(news), torch.cat(olds)


class TensorPairs(PairShards):
    """In-memory ``new`` [n, d_new] and ``old`` [n, d_old] behind the shard interface."""

    def __init__(self, new: torch.Tensor, old: torch.Tensor, shard_rows: int = SHARD_ROWS) -> None:
        if len(new) != len(old):
            raise XBTError(
                f"stage 1 needs the same texts under both models: got {len(new)} new and {len(old)} old embeddings"
            )
        self.new, self.old, self.shard_rows = new, old, shard_rows
        self.rows = [min(shard_rows, len(new) - s) for s in range(0, len(new), shard_rows)]
        self.dims = (new.shape[1], old.shape[1])

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = i * self.shard_rows
        return self.new[s : s + self.shard_rows].float(), self.old[s : s + self.shard_rows].float()


@dataclass
class TextShards(PairShards):
    """A corpus embedded by two encoders (NEW first, OLD second): shard files, their sizes and the stream's counts.

    ``texts`` holds the first ``keep_texts`` distinct texts (what stage 2 samples its caption bank
    from); ``read`` counts the texts the stream held, repeats included.
    """

    folders: tuple[Path, Path]
    keys: list[str]
    rows: list[int]
    dims: tuple[int, int]
    read: int = 0
    texts: list[str] = field(default_factory=list)

    def paths(self, i: int) -> tuple[Path, Path]:
        """Shard ``i``'s files under the NEW and the OLD encoder."""
        return tuple(folder / f"{self.keys[i]}.safetensors" for folder in self.folders)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = [read_shard(p, self.rows[i]) for p in self.paths(i)]
        if out[0] is None or out[1] is None:
            raise XBTError(
                f"embedding shard {self.keys[i]} is missing or damaged under {self.folders}; run again to re-embed it"
            )
        return out[0], out[1]


def _embed(enc: CLIPEncoder, texts: list[str], batch_size: int) -> torch.Tensor:
    return torch.cat([enc.encode_text(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)])


def embed_text_shards(
    new: Any,
    old: Any,
    texts: Any,
    root: str | os.PathLike,
    shard_rows: int = SHARD_ROWS,
    batch_size: int = 256,
    dtype: str = "float32",
    device: str | torch.device | None = None,
    keep_texts: int = 0,
    verbose: bool = True,
) -> TextShards:
    """Embed the distinct texts of the stream ``texts`` with ``new`` and ``old`` into shards under ``root``.

    Args:
        new, old: the two models (anything ``xbt.encoders.as_encoder`` takes).
        texts: any text stream ``xbt.stream.iter_texts`` reads (list, generator, ``datasets``
            table or streaming dataset, ``pathlib.Path`` of a text file).
        root: the cache folder (shared by all processes when several run).
        shard_rows: distinct texts per shard; the cache is keyed by it through the chunk keys.
        dtype: ``"float32"`` or ``"float16"`` on disk.
        keep_texts: how many of the first distinct texts to return in ``TextShards.texts``.

    Returns:
        ``TextShards`` over all shards, complete in every process. Memory stays at one chunk plus
        8 bytes per distinct text (the repeat check) plus ``keep_texts`` strings.
    """
    if dtype not in DTYPES:
        raise XBTError(f"unknown shard dtype {dtype!r}; choose one of {list(DTYPES)}")
    if shard_rows < 2:
        raise XBTError(f"shard_rows must be >= 2, got {shard_rows}")
    encoders = (as_encoder(new), as_encoder(old))
    rank, n_proc = world()
    if device is None and n_proc > 1 and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    folders = tuple(shard_folder(Path(root), e, dtype) for e in encoders)
    stats, keys, rows, kept, moved = TextStats(), [], [], [], False
    # counts texts read from the stream (repeats included), so a sized corpus shows n / total from the start
    total = len(texts) if isinstance(texts, Sized) and not isinstance(texts, (str, bytes, os.PathLike)) else None
    bar = tqdm(
        total=total,
        desc=f"embed texts ({encoders[0].name}, {encoders[1].name})",
        unit=" texts",
        disable=not verbose,
        leave=False,
    )
    for k, chunk in enumerate(unique_chunks(texts, shard_rows, stats)):
        key = hash_texts(chunk)[:32]
        keys.append(key)
        rows.append(len(chunk))
        if len(kept) < keep_texts:
            kept.extend(chunk[: keep_texts - len(kept)])
        if k % n_proc == rank:
            for enc, folder in zip(encoders, folders):
                path = folder / f"{key}.safetensors"
                if read_shard(path, len(chunk)) is not None:
                    continue  # finished by an earlier (perhaps interrupted) run
                if not moved:
                    for e in encoders:
                        e.to(best_device(device))
                    moved = True
                emb = check_finite(_embed(enc, chunk, batch_size), f"text embeddings from {enc.name}")
                save_tensors(
                    path, {"embeddings": emb.to(DTYPES[dtype])}, {"model": enc.name, "fingerprint": enc.fingerprint}
                )
        bar.update(stats.read - bar.n)
    bar.update(stats.read - bar.n)
    bar.close()
    if verbose and stats.read > stats.distinct:  # a corpus with repeats trains on fewer texts than it holds
        print(f"read {stats.read:,} texts, {stats.distinct:,} distinct: each is embedded and trained on once")
    if not keys:
        raise XBTError("texts is empty: pass at least one caption (stage 1 needs a few hundred or more)")
    barrier()  # every process's chunks are on disk past this point
    return TextShards(folders, keys, rows, (encoders[0].embed_dim, encoders[1].embed_dim), stats.read, kept)


@contextmanager
def corpus_shards(new: Any, old: Any, texts: Any, cache: CacheSpec = None, **options: Any) -> Iterator[TextShards]:
    """``embed_text_shards`` into the embedding cache folder; with ``cache=False`` into a temporary one, deleted
    after the block.

    Several processes need one folder they all see: ``cache=False`` is refused then.
    """
    root = cache_dir(cache)
    if root is not None:
        yield embed_text_shards(new, old, texts, root, **options)
        return
    if world()[1] > 1:
        raise XBTError(
            "several processes share their embedding shards through the cache folder: pass cache='<shared folder>', "
            "not cache=False"
        )
    with tempfile.TemporaryDirectory(prefix="xbt-shards-") as tmp:
        yield embed_text_shards(new, old, texts, tmp, **options)


def iter_shards(shards: PairShards, order: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Load the shards one at a time, in ``order`` (default: as stored)."""
    for i in order if order is not None else range(len(shards.rows)):
        yield shards.load(i)
