"""Caption streams: any source of texts read one at a time, repeats dropped by hash, cut into chunks.

Stage 1 must read caption stores far larger than memory (COCO's 590k captions, catalogues of tens
of millions), so texts are never gathered into one list:

- ``iter_texts`` reads a list, any iterable or generator, a ``datasets.Dataset`` or streaming
  ``datasets.IterableDataset`` (its caption column), or a text file given as a ``pathlib.Path``
  (one caption per line, read lazily), checking each item as it passes;
- ``HashSet`` remembers which texts were seen as 64-bit BLAKE2b hashes in one sorted ``uint64``
  array: 8 bytes per distinct text instead of the string (a collision, about 1 in 10^7 at 3M
  texts, would drop one caption);
- ``unique_chunks`` yields the distinct texts (first occurrence, stream order) in chunks of a fixed
  size, so chunk ``k`` is the same texts whoever reads the stream: the unit of the sharded
  embedding cache (``xbt.shards``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import XBTError
from ..core.hashing import text_keys
from ..core.names import CAPTION_COLUMNS


def pick_column(
    columns: list[str], wanted: tuple[str, ...], what: str, where: str, given: str | None, fallback: list[str] = ()
) -> str:
    """The ``what`` column of a table whose columns are ``columns``: ``given``, else the first of ``wanted`` present,
    else the only name in ``fallback``; an ``XBTError`` naming the columns otherwise. ``where`` names the table."""
    if given is not None:
        if given not in columns:
            raise XBTError(f"{where} have no {what} column {given!r}; columns are {columns}")
        return given
    for name in wanted:
        if name in columns:
            return name
    if len(fallback) == 1:
        return fallback[0]
    raise XBTError(
        f"cannot find the {what} column in {where} with columns {columns}; name it one of {list(wanted)} "
        f"or pass {what}_column=... (or select it first: dataset.select_columns([...]))"
    )


def _column(data: Any, column: str | None) -> str:
    """The caption column of a ``datasets`` table: ``column`` if given, else a usual name or the only string column."""
    names = list(data.column_names or [])
    features = getattr(data, "features", None) or {}
    strings = [n for n in names if getattr(features.get(n), "dtype", None) == "string"]
    return pick_column(names, CAPTION_COLUMNS, "caption", "texts", column, strings)


def _raw(texts: Any, column: str | None) -> Iterable[Any]:
    if isinstance(texts, (str, bytes)):
        raise XBTError(
            f"texts must be an iterable of strings, got a single string; wrap it in a list, or pass a text file "
            f"as pathlib.Path({str(texts[:40])!r})"
        )
    if isinstance(texts, os.PathLike):
        path = Path(texts)
        if not path.is_file():
            raise XBTError(f"text file {path} does not exist; pass a file with one caption per line")
        return _lines(path)
    if getattr(texts, "column_names", None) is not None and hasattr(texts, "iter"):
        col = _column(texts, column)
        return (t for batch in texts.iter(batch_size=1000) for t in batch[col])
    try:
        return iter(texts)
    except TypeError:
        raise XBTError(
            f"texts must be an iterable of strings (list, generator, datasets column, pathlib.Path of a "
            f"text file), got a {type(texts).__name__}"
        ) from None


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def iter_texts(texts: Any, what: str = "texts", column: str | None = None) -> Iterator[str]:
    """Yield the strings of ``texts`` one by one, raising ``XBTError`` at the first item that is not one.

    ``texts``: a list or any iterable of strings, a ``datasets.Dataset`` / ``IterableDataset``
    (``column``, or the column detected: ``CAPTION_COLUMNS`` or its only string column), or a
    ``pathlib.Path`` to a UTF-8 text file with one caption per line (stripped; blank lines skipped).
    """
    for i, t in enumerate(_raw(texts, column)):
        if not isinstance(t, str):
            raise XBTError(f"{what}[{i}] is a {type(t).__name__} ({t!r:.60}), not a string; convert or drop it")
        yield t


class HashSet:
    """An exact set of uint64 hashes held as one sorted array (8 bytes per member)."""

    def __init__(self) -> None:
        self._sorted = np.zeros(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, hashes: np.ndarray) -> np.ndarray:
        """Add ``hashes`` (uint64 [m]); returns bool [m]: True where a hash is new (its first occurrence in
        ``hashes`` too)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        _, first = np.unique(hashes, return_index=True)
        new = np.zeros(len(hashes), dtype=bool)
        new[first] = True
        pos = np.searchsorted(self._sorted, hashes)
        seen = pos < len(self._sorted)
        seen[seen] = self._sorted[pos[seen]] == hashes[seen]
        new &= ~seen
        fresh = np.sort(hashes[new])
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, fresh), fresh)
        return new


class TextStats:
    """Counts of one pass over a stream: ``read`` texts, of which ``distinct`` were kept."""

    def __init__(self) -> None:
        self.read = 0
        self.distinct = 0


def unique_chunks(
    texts: Any, chunk_size: int, stats: TextStats | None = None, what: str = "texts", read_size: int = 4096
) -> Iterator[list[str]]:
    """The distinct texts of the stream ``texts`` (first occurrence kept, in order), as lists of ``chunk_size``.

    Every chunk but the last holds exactly ``chunk_size`` texts. Repeats are dropped because they
    would be false negatives of each other inside an InfoNCE batch. Memory: one chunk, one read
    buffer and 8 bytes per distinct text. ``stats`` (optional) counts texts read and kept.
    """
    if chunk_size < 1:
        raise XBTError(f"chunk_size must be >= 1, got {chunk_size}")
    seen, stats = HashSet(), stats or TextStats()
    read_size = min(read_size, chunk_size)  # a chunk is handed on as soon as its texts are read
    chunk: list[str] = []
    buffer: list[str] = []

    def drain() -> Iterator[list[str]]:
        nonlocal chunk
        keep = seen.add(text_keys(buffer))
        stats.read += len(buffer)
        for t, k in zip(buffer, keep):
            if k:
                chunk.append(t)
                if len(chunk) == chunk_size:
                    stats.distinct += len(chunk)
                    yield chunk
                    chunk = []
        buffer.clear()

    for t in iter_texts(texts, what):
        buffer.append(t)
        if len(buffer) == read_size:
            yield from drain()
    yield from drain()
    if chunk:
        stats.distinct += len(chunk)
        yield chunk
