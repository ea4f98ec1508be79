"""What texts alone say about an upgrade: how faithfully the NEW text space carries the OLD one.

An adapter maps NEW queries into the OLD space; it can only be backward compatible if the new model
still tells apart what the old gallery tells apart. On texts alone (no image, no pair) that shows as:

- ``fidelity@1`` / ``fidelity@10``: a linear map NEW -> OLD (``baselines.maps.ridge_map``) is fitted on
  most of the distinct texts; each held-out text's mapped vector then searches the held-out texts'
  OLD vectors for its own (Recall@1 / @10, in [0, 1]). A new model that conflates what the old one
  separates sends many held-out texts to a neighbour.
- ``agreement@10``: the mean share of each held-out text's 10 nearest neighbours that the two raw spaces
  agree on, with no map at all (how alike the two spaces' structures are).
- ``old_spread``: the mean cosine between held-out OLD vectors' nearest neighbours (how crowded the old
  space is; a crowded space leaves a map less room).

Each signal is a float; ``text_signals`` takes float32 [n, d] unit rows of the same texts in both
spaces. ``advisor.advice`` turns them into a verdict with calibrated coefficients.
"""

from __future__ import annotations

import torch

from ..baselines.maps import ridge_map
from ..core.errors import XBTError

#: held-out texts the signals are measured on (the rest fit the map)
HELD_OUT = 5_000
#: at least this many distinct texts: below it the held-out search and the map are both too noisy
MIN_TEXTS = 500
SIGNALS = ("fidelity@1", "fidelity@10", "agreement@10", "old_spread")


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
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(old), generator=gen)
    n_held = min(HELD_OUT, len(old) // 5)
    held, fit = order[:n_held], order[n_held:]
    w = ridge_map(new[fit].float(), old[fit].float())
    mapped = torch.nn.functional.normalize(new[held].float() @ w.T, dim=1)
    o, n_ = old[held].float(), new[held].float()
    top = _topk(mapped, o, 10, exclude_self=False)
    own = torch.arange(n_held)[:, None]
    near_old, near_new = _topk(o, o, 10, True), _topk(n_, n_, 10, True)
    agree = (near_old[:, :, None] == near_new[:, None, :]).any(2).float().mean()
    return {
        "fidelity@1": float((top[:, :1] == own).any(1).float().mean()),
        "fidelity@10": float((top == own).any(1).float().mean()),
        "agreement@10": float(agree),
        "old_spread": float((o * o[near_old[:, 0]]).sum(1).mean()),
    }
