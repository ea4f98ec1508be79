"""Exact top-k in both directions from one matrix product per block: the evaluator's full-protocol search.

An image->text search and a text->image search over the same embeddings score the same pairs: the
image x caption matrix read by rows is the first, read by columns the second. ``scan`` computes it
once, a block of ``a`` x a block of ``b`` at a time (a BLAS product at the embeddings' float32), and
keeps a running top-``depth`` of every row and, where asked, every column:

- rows: ``torch.topk`` over the block's columns, merged into the row's running list;
- columns: the first block of rows is a full ``topk`` down each column; after it, only the entries at
  or above a column's current ``depth``-th score can enter its list, and they are few, so they are
  found with one comparison over the block and merged sparsely.

Those candidates are then scored exactly and ordered by the tie rule every search in xbt keeps
(``exact_scores``: float64 sums rounded to float32, equal scores by ascending index). A row whose
``depth``-th candidate's float32 score could still reach its k-th exact score (within ``SCORE_SLACK``,
e.g. duplicates tied past the list) is scanned again with twice the depth, so the result is the exact
search's whatever the BLAS kernel. Memory: a block of each side, the block's scores and the running
lists ([n, depth] per direction); both sides may be ``np.memmap`` arrays that never enter memory whole.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core.errors import XBTError

#: a bound on |a float32 BLAS inner product - the exact one| for unit rows (float32 accumulation over <= ~1k dims)
SCORE_SLACK = 1e-4
#: candidates kept per row beyond k, so near-ties past rank k rarely send a row back for a deeper scan
EXTRA_DEPTH = 6
#: columns ranked down at a time in a block's first pass (``topk`` along rows copies its input transposed)
COLUMN_SLICE = 4096


def read_rows(x: Any, start: int, size: int, what: str) -> np.ndarray:
    """Rows ``start:start+size`` of ``x`` (a tensor, array or ``np.memmap``) as a float32 array, checked finite."""
    rows = x[start : start + size]
    arr = (
        rows.detach().float().cpu().numpy()
        if isinstance(rows, torch.Tensor)
        else np.require(rows, np.float32, ["C", "W"])  # a memmap's rows are read into memory (torch needs W)
    )
    if not np.isfinite(arr).all():
        raise XBTError(
            f"{what} holds NaN or inf values (rows {start}..{start + len(arr) - 1}); check the model and its inputs"
        )
    return arr


def exact_scores(q: np.ndarray, g: Any, ids: np.ndarray) -> np.ndarray:
    """Each query's inner product with its candidate rows ``g[ids]``, summed in float64 and rounded to float32:
    [n, m]. The value depends on the two vectors only, never on where the row sits in a block or which BLAS
    kernel ran, so duplicates tie exactly."""
    out = np.empty(ids.shape, dtype=np.float32)
    for s in range(0, len(q), 1024):
        chunk = ids[s : s + 1024]
        cand = np.asarray(g[chunk.reshape(-1)], dtype=np.float64).reshape(*chunk.shape, -1)  # [b, m, d]
        out[s : s + 1024] = np.einsum("bd,bmd->bm", np.asarray(q[s : s + 1024], dtype=np.float64), cand)
    return out


def _merge(run_s: torch.Tensor, run_i: torch.Tensor, s: torch.Tensor, i: torch.Tensor, depth: int):
    """The top ``depth`` (by float32 score) of two candidate lists per row: ``(scores, ids)``."""
    both_s, both_i = torch.cat([run_s, s], 1), torch.cat([run_i, i], 1)
    top, pos = both_s.topk(min(depth, both_s.shape[1]), dim=1)
    return top, both_i.gather(1, pos)


def _merge_sparse(run_s, run_i, rows, cols, vals, offset):
    """Merge the block entries ``(rows, cols, vals)`` into the running column lists ``run_*`` [n_cols, depth]."""
    if not len(cols):
        return run_s, run_i
    depth = run_s.shape[1]
    order = torch.argsort(cols, stable=True)
    cols, rows, vals = cols[order], rows[order], vals[order]
    touched, counts = torch.unique_consecutive(cols, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(len(cols)) - torch.repeat_interleave(starts, counts)
    slot = torch.repeat_interleave(torch.arange(len(touched)), counts)
    width = int(counts.max())
    pad_s = torch.full((len(touched), width), -torch.inf)
    pad_i = torch.full((len(touched), width), -1, dtype=torch.long)
    pad_s[slot, pos], pad_i[slot, pos] = vals, rows + offset
    run_s[touched], run_i[touched] = _merge(run_s[touched], run_i[touched], pad_s, pad_i, depth)
    return run_s, run_i


def candidates(
    a: Any,
    b: Any,
    depth: int,
    cols: bool = True,
    a_block: int = 4096,
    b_block: int = 16_384,
    names: tuple[str, str] = ("queries", "gallery"),
    verbose: bool = False,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """The float32 top-``depth`` of every row of ``a @ b.T`` and (``cols``) of every column, from one product
    per block: ``((row scores, row ids into b) [len(a), d'], (column scores, column ids into a) or None)``."""
    na, nb = a.shape[0], b.shape[0]
    dr, dc = min(depth, nb), min(depth, na)
    row_s, row_i = torch.full((na, dr), -torch.inf), torch.full((na, dr), -1, dtype=torch.long)
    col_s, col_i = torch.full((nb, dc), -torch.inf), torch.full((nb, dc), -1, dtype=torch.long)
    blocks = -(-na // a_block) * -(-nb // b_block)
    bar = tqdm(total=blocks, desc="search (blocks)", disable=not verbose or blocks < 2, leave=False)
    for i0 in range(0, na, a_block):
        A = torch.from_numpy(read_rows(a, i0, a_block, names[0]))
        rs, ri = row_s[i0 : i0 + len(A)], row_i[i0 : i0 + len(A)]
        for j0 in range(0, nb, b_block):
            B = torch.from_numpy(read_rows(b, j0, b_block, names[1]))
            S = A @ B.T  # [len(A), len(B)] float32
            s, p = S.topk(min(dr, S.shape[1]), dim=1)
            rs, ri = _merge(rs, ri, s, p + j0, dr)
            if cols:
                cs, ci = col_s[j0 : j0 + len(B)], col_i[j0 : j0 + len(B)]
                floor = cs[:, -1]
                if not torch.isfinite(floor).all():  # a list not yet full: every entry may enter it
                    for c0 in range(0, len(B), COLUMN_SLICE):  # topk down columns copies its input transposed
                        s, p = S[:, c0 : c0 + COLUMN_SLICE].topk(min(dc, S.shape[0]), dim=0)
                        c1 = c0 + s.shape[1]
                        cs[c0:c1], ci[c0:c1] = _merge(cs[c0:c1], ci[c0:c1], s.T, p.T + i0, dc)
                else:
                    r, c = torch.nonzero(S >= floor[None, :], as_tuple=True)
                    cs, ci = _merge_sparse(cs, ci, r, c, S[r, c], i0)
                col_s[j0 : j0 + len(B)], col_i[j0 : j0 + len(B)] = cs, ci
            bar.update(1)
        row_s[i0 : i0 + len(A)], row_i[i0 : i0 + len(A)] = rs, ri
    bar.close()
    return (row_s, row_i), ((col_s, col_i) if cols else None)


def _finish(q: Any, g: Any, approx: torch.Tensor, ids: torch.Tensor, k: int, names, verbose, chunk: int = 16_384):
    """Exact top ``k`` of each row of ``q`` from its float32 candidates (``approx``, ``ids`` [n, depth]), read
    ``chunk`` rows at a time; rows whose list could hide a tie or a better row are scanned again deeper."""
    n, k = q.shape[0], min(k, g.shape[0])
    out_s, out_i = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.int64)
    for c0 in range(0, n, chunk):
        qc = read_rows(q, c0, chunk, names[0])
        rows = np.arange(len(qc))
        a, i = approx[c0 : c0 + chunk].numpy(), ids[c0 : c0 + chunk].numpy()
        while True:
            exact = exact_scores(qc[rows], g, i)
            order = np.lexsort((i, -exact), axis=-1)[:, :k]
            out_s[c0 + rows], out_i[c0 + rows] = np.take_along_axis(exact, order, -1), np.take_along_axis(i, order, -1)
            if i.shape[1] >= g.shape[0]:
                break
            again = a[:, -1] + SCORE_SLACK >= out_s[c0 + rows, -1]
            if not again.any():
                break
            rows = rows[again]
            (s, i), _ = candidates(qc[rows], g, 2 * i.shape[1], cols=False, names=names, verbose=verbose)
            a, i = s.numpy(), i.numpy()
    return out_s, out_i


def scan(
    a: Any,
    b: Any,
    k: int,
    cols: bool = True,
    a_block: int = 4096,
    b_block: int = 16_384,
    names: tuple[str, str] = ("queries", "gallery"),
    verbose: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Exact top-``k`` of ``a`` over ``b`` and (``cols``) of ``b`` over ``a``, by inner product, from one product
    per block.

    ``a``, ``b``: float32 [n, d] unit rows (tensors, arrays or ``np.memmap``). Returns ``((scores, ids), (scores,
    ids) or None)``, each [rows, min(k, other side)]: float32 exact scores (``exact_scores``) sorted descending,
    equal scores by ascending index, int64 ids; identical to ``xbt.evaluation.search.search``'s.
    """
    if k < 1:
        raise XBTError(f"k must be >= 1, got {k}")
    for x, what in ((a, names[0]), (b, names[1])):
        if len(x.shape) != 2 or x.shape[0] == 0:
            raise XBTError(f"{what} must be a non-empty 2-D [n, d] array of embeddings, got shape {tuple(x.shape)}")
    if a.shape[1] != b.shape[1]:
        raise XBTError(
            f"{names[0]} are {a.shape[1]}-d but the {names[1]} is {b.shape[1]}-d; embed both in the same space"
        )
    depth = int(k) + EXTRA_DEPTH
    (rs, ri), col = candidates(a, b, depth, cols, a_block, b_block, names, verbose)
    rows = _finish(a, b, rs, ri, k, names, verbose)
    if col is None:
        return rows, None
    return rows, _finish(b, a, col[0], col[1], k, names[::-1], verbose)
