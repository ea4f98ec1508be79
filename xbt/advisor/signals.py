"""What texts alone say about an upgrade: does the NEW text space keep apart what the OLD one separates?

An adapter maps NEW queries into the OLD space; it can only be backward compatible if the new model
still tells apart what the old gallery tells apart. On texts alone (no image, no pair) that shows as:

- ``separation``: a linear map NEW -> OLD (``baselines.maps.ridge_map``) is fitted on most of the distinct
  texts; for each held-out text, is its mapped vector closer to its own OLD vector than to the OLD vector
  of its nearest held-out neighbour in the old space? The share of texts where it is, in [0, 1]: how much
  of what the old space separates most finely the new model still carries. The advisor's lines read it.
- ``fidelity@1`` / ``fidelity@10``: each held-out mapped vector searches the held-out OLD vectors for its
  own (Recall@1 / @10).
- ``agreement@10``: the mean share of each held-out text's 10 nearest neighbours that the two raw spaces
  agree on, with no map at all (how alike the two spaces' structures are).

Each is a float, the mean over ``DRAWS`` random held-out sets of ``HELD_OUT`` texts (a fixed size, so
worlds and corpora compare: a search among more texts is harder). ``text_signals`` takes float32
[n, d] unit rows of the same distinct texts in both spaces. ``advisor.advice`` turns them into a
verdict with calibrated coefficients.
"""

from __future__ import annotations

import torch

from ..baselines.maps import ridge_map
from ..core.errors import XBTError

#: held-out texts per draw (the rest, up to ``FIT_TEXTS``, fit the map), and draws averaged
HELD_OUT, FIT_TEXTS, DRAWS = 2_000, 20_000, 3
#: at least this many distinct texts (a held-out set of 200 then): fewer give signals too noisy to read
MIN_TEXTS = 1_000
SIGNALS = ("separation", "fidelity@1", "fidelity@10", "agreement@10")


def _topk(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude_self: bool) -> torch.Tensor:
    """int64 [n_q, k]: each query's ``k`` best gallery rows by cosine, in 1,024-row blocks."""
    out = []
    for i in range(0, len(queries), 1024):
        scores = queries[i : i + 1024] @ gallery.T
        if exclude_self:
            scores[torch.arange(len(scores)), torch.arange(i, i + len(scores))] = -torch.inf
        out.append(scores.topk(k, dim=1).indices)
    return torch.cat(out)


def text_signals(old: torch.Tensor, new: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """The signals above for distinct texts embedded by both models (old [n, d_old], new [n, d_new])."""
    if old.ndim != 2 or new.ndim != 2 or len(old) != len(new):
        raise XBTError(f"old and new text vectors must be [n, d] with the same n, got {old.shape} and {new.shape}")
    if len(old) < MIN_TEXTS:
        raise XBTError(f"the advisor needs at least {MIN_TEXTS} distinct texts, got {len(old)}; give more captions")
    draws = [_one_draw(old.float(), new.float(), torch.Generator().manual_seed(seed + i)) for i in range(DRAWS)]
    return {k: sum(d[k] for d in draws) / DRAWS for k in SIGNALS}


def _one_draw(old: torch.Tensor, new: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
    order = torch.randperm(len(old), generator=gen)
    n_held = min(HELD_OUT, len(old) // 5)
    held, fit = order[:n_held], order[n_held : n_held + FIT_TEXTS]
    w = ridge_map(new[fit], old[fit])
    mapped = torch.nn.functional.normalize(new[held] @ w.T, dim=1)
    o, n_ = old[held], new[held]
    top = _topk(mapped, o, 10, exclude_self=False)
    own = torch.arange(n_held)[:, None]
    near_old, near_new = _topk(o, o, 10, True), _topk(n_, n_, 10, True)
    nearest = o[near_old[:, 0]]  # each held-out text's closest other text in the old space
    return {
        "separation": float(((mapped * o).sum(1) > (mapped * nearest).sum(1)).float().mean()),
        "fidelity@1": float((top[:, :1] == own).any(1).float().mean()),
        "fidelity@10": float((top == own).any(1).float().mean()),
        "agreement@10": float((near_old[:, :, None] == near_new[:, None, :]).any(2).float().mean()),
    }
