"""Closed-form maps from the new embedding space to the old one (pure tensor math, no models).

They take paired embeddings ([n, d_new] and [n, d_old], float32, L2-normalised rows of the same
items under both models) and return a weight matrix ``W`` [d_old, d_new] with ``new @ W.T ~ old``:

- ``orthogonal_procrustes``: the rotation (semi-orthogonal for unequal widths); stage 1 starts
  its projection from it and the ``"procrustes"`` baseline is it;
- ``ridge_map``: an unconstrained linear map by ridge-regularised least squares (the
  ``"linear"`` baseline).

``xbt.stage1.Projection.from_linear`` turns a weight matrix into a projection head.
"""

from __future__ import annotations

import torch

from ..core.errors import XBTError

#: default relative ridge of the ``"linear"`` map (see ``ridge_map``): 10% of the mean
#: eigenvalue of X^T X. A map fitted on text alone must still carry *images* across, and images
#: differ from texts along directions the captions barely span; without shrinkage the map blows
#: those up (BENCHMARKS.md has the sweep that chose it).
DEFAULT_RIDGE = 0.1


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
    return procrustes_from_cross(target.double().T @ source.double())


def procrustes_from_cross(cross: torch.Tensor) -> torch.Tensor:
    """``orthogonal_procrustes`` from the cross-product ``target.T @ source`` [d_target, d_source] alone.

    The cross-product is a sum over rows, so a corpus too large for memory can accumulate it shard by shard.
    """
    u, _, vh = torch.linalg.svd(cross.double(), full_matrices=False)
    return (u @ vh).float()


def ridge_map(source: torch.Tensor, target: torch.Tensor, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """The ridge-regularised least-squares ``W`` [d_target, d_source]: ``source @ W.T ~ target``.

    Closed form ``W = Y^T X (X^T X + lambda I)^-1`` with ``X = source``, ``Y = target``, solved in
    float64. ``ridge`` is *relative*: ``lambda = ridge * trace(X^T X) / d_source``, i.e. a fraction
    of the mean eigenvalue of ``X^T X`` (``n / d`` for unit rows), so one value means the same
    shrinkage for any support size and width. It matters because CLIP embeddings of one modality
    fill a narrow cone: directions the support set barely varies along get near-zero eigenvalues,
    and an unregularised map blows noise up along exactly the directions in which the *other*
    modality (images, when fitted on texts) differs. ``ridge=0`` is plain least squares (needs
    ``n >= d_source`` and full rank); the default is ``DEFAULT_RIDGE``. There is no bias term:
    outputs are L2-normalised downstream, and an offset would be fitted to the support modality
    only.
    """
    _check_pair(source, target)
    if not ridge >= 0:  # also catches NaN
        raise XBTError(f"ridge must be >= 0, got {ridge}; use a small positive value such as 0.1")
    x, y = source.double(), target.double()
    gram = x.T @ x  # [d_s, d_s]
    lam = ridge * gram.diagonal().sum() / x.shape[1]
    a = gram + lam * torch.eye(x.shape[1], dtype=x.dtype)
    try:
        # W^T = (X^T X + lambda I)^-1 X^T Y; solve instead of inverting, for accuracy
        w_t = torch.linalg.solve(a, x.T @ y)
    except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
        raise XBTError(
            f"the least-squares system is singular ({x.shape[0]} support rows, {x.shape[1]} dims, ridge={ridge}); "
            "pass a positive ridge= (e.g. 0.1) or a larger support set"
        ) from exc
    return w_t.T.float()
