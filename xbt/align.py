"""Training-free maps from the new embedding space to the old one.

Pure tensor math, no models: these functions take paired embeddings ([n, d_new] and [n, d_old],
float32, L2-normalised rows) and return a map. Stage 1 starts its projection from
``orthogonal_procrustes``; the baselines behind ``xbt.fit(method=...)`` use them directly.
"""

from __future__ import annotations

import torch

from .errors import XBTError


def _check_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.ndim != 2 or target.ndim != 2:
        raise XBTError(f"embeddings must be 2-D [n, d]; got shapes {tuple(source.shape)} and {tuple(target.shape)}")
    if source.shape[0] != target.shape[0]:
        raise XBTError(
            f"paired embeddings need the same number of rows: new has {source.shape[0]}, old has {target.shape[0]}; "
            "embed the same items with both models"
        )
    if source.shape[0] == 0:
        raise XBTError("cannot fit a map on zero pairs: pass a non-empty support set")


def orthogonal_procrustes(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The (semi-)orthogonal ``W`` [d_target, d_source] minimising ||source @ W.T - target||_F.

    Works for unequal dims: it is the classic solution after zero-padding the smaller side, with
    the padded coordinates dropped. With d_target <= d_source the rows of ``W`` are orthonormal
    (W W^T = I); otherwise its columns are (W^T W = I).
    """
    _check_pair(source, target)
    m = target.double().T @ source.double()  # [d_t, d_s]
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return (u @ vh).float()
