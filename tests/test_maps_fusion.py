"""xbt.maps and xbt.fusion: Procrustes and ridge maps recover planted maps; SLERP/NLERP endpoints and midpoints;
alpha selection."""

import math

import pytest
import torch
import torch.nn.functional as F

from xbt import XBTError
from xbt.adapters.fusion import fuse_embeddings, nlerp, slerp
from xbt.baselines.alpha import ALPHA_GRID, select_alpha
from xbt.baselines.maps import orthogonal_procrustes, ridge_map


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _orthonormal_columns(rows, cols, seed):
    """A random [rows, cols] matrix with orthonormal columns (rows >= cols)."""
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


# ---------------------------------------------------------------------- Procrustes


def test_procrustes_recovers_a_planted_rotation():
    x = _unit(500, 24, seed=0)
    r = _orthonormal_columns(24, 24, seed=1)
    y = x @ r.T + 0.01 * torch.randn(500, 24, generator=torch.Generator().manual_seed(2))
    w = orthogonal_procrustes(x, y)
    assert w.shape == (24, 24)
    assert torch.allclose(w.T @ w, torch.eye(24), atol=1e-5)
    assert torch.allclose(w @ w.T, torch.eye(24), atol=1e-5)
    assert (w - r).abs().max() < 0.02, (w - r).abs().max()


def test_procrustes_new_wider_than_old_recovers_the_projection():
    # source (new, 40-d) is the target (old, 16-d) embedded in a bigger space by a semi-orthogonal Q
    y = _unit(400, 16, seed=3)
    q = _orthonormal_columns(40, 16, seed=4)  # Q^T Q = I
    x = y @ q.T
    w = orthogonal_procrustes(x, y)
    assert w.shape == (16, 40)
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)  # orthonormal rows
    assert torch.allclose(w, q.T, atol=1e-4)
    assert torch.allclose(x @ w.T, y, atol=1e-4)


def test_procrustes_new_narrower_than_old_recovers_the_embedding():
    # the reverse: the target (old, 40-d) is the source (new, 16-d) embedded in a bigger space
    x = _unit(400, 16, seed=5)
    q = _orthonormal_columns(40, 16, seed=6)
    y = x @ q.T
    w = orthogonal_procrustes(x, y)
    assert w.shape == (40, 16)
    assert torch.allclose(w.T @ w, torch.eye(16), atol=1e-5)  # orthonormal columns
    assert torch.allclose(w, q, atol=1e-4)


def test_procrustes_refuses_mismatched_rows():
    with pytest.raises(XBTError, match="same number of rows"):
        orthogonal_procrustes(torch.randn(5, 4), torch.randn(6, 4))


# ---------------------------------------------------------------------- ridge


def test_ridge_map_recovers_a_planted_linear_map():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(600, 20, generator=gen)
    a = torch.randn(12, 20, generator=gen)  # not orthogonal, not square
    y = x @ a.T + 1e-3 * torch.randn(600, 12, generator=gen)
    w = ridge_map(x, y, ridge=1e-8)
    assert w.shape == (12, 20)
    assert torch.allclose(w, a, atol=1e-3), (w - a).abs().max()


def test_ridge_matches_the_closed_form_and_shrinks():
    gen = torch.Generator().manual_seed(8)
    x, y = torch.randn(50, 10, generator=gen), torch.randn(50, 6, generator=gen)
    ridge = 0.5
    lam = ridge * (x * x).sum() / 10
    expected = (
        y.T.double()
        @ x.double()
        @ torch.linalg.inv(x.T.double() @ x.double() + lam * torch.eye(10, dtype=torch.float64))
    )
    w = ridge_map(x, y, ridge=ridge)
    assert torch.allclose(w.double(), expected, atol=1e-5)
    assert ridge_map(x, y, ridge=10.0).norm() < ridge_map(x, y, ridge=0.0).norm()


def test_ridge_solves_underdetermined_systems_and_refuses_bad_ridge():
    x, y = torch.randn(5, 30), torch.randn(5, 8)  # fewer rows than dims: needs the ridge
    assert torch.isfinite(ridge_map(x, y, ridge=1e-2)).all()
    with pytest.raises(XBTError, match="ridge must be >= 0"):
        ridge_map(x, y, ridge=-1.0)
    with pytest.raises(XBTError, match="singular.*positive ridge"):
        ridge_map(torch.zeros(5, 3), y, ridge=0.0)


# ---------------------------------------------------------------------- SLERP / NLERP


@pytest.mark.parametrize("fn", [slerp, nlerp])
def test_fusion_endpoints_are_exact(fn):
    a, b = _unit(9, 16, seed=10), _unit(9, 16, seed=11)
    assert torch.equal(fn(a, b, 0.0), a)
    assert torch.equal(fn(a, b, 1.0), b)
    for alpha in (0.3, 0.7):
        out = fn(a, b, alpha)
        assert out.shape == a.shape and out.dtype == torch.float32
        assert torch.allclose(out.norm(dim=-1), torch.ones(9), atol=1e-6)


def _angle(u, v):
    return torch.arccos((u * v).sum(-1).clamp(-1, 1))


@pytest.mark.parametrize("fn", [slerp, nlerp])
def test_midpoint_is_unit_and_equidistant(fn):
    a, b = _unit(20, 16, seed=12), _unit(20, 16, seed=13)
    m = fn(a, b, 0.5)
    assert torch.allclose(m.norm(dim=-1), torch.ones(20), atol=1e-6)
    assert torch.allclose(_angle(a, m), _angle(m, b), atol=1e-4)
    assert torch.allclose(_angle(a, m), _angle(a, b) / 2, atol=1e-4)  # on the great circle


def test_slerp_moves_at_constant_angular_speed_and_nlerp_does_not():
    a = torch.tensor([[1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0]])  # 90 degrees apart
    s = slerp(a, b, 0.25)
    assert torch.allclose(_angle(a, s), torch.tensor([math.pi / 8]), atol=1e-5)
    n = nlerp(a, b, 0.25)
    assert not torch.allclose(_angle(a, n), torch.tensor([math.pi / 8]), atol=1e-3)


def test_slerp_of_parallel_vectors_is_finite():
    a = _unit(4, 8, seed=14)
    b = F.normalize(a + 1e-7 * torch.randn(4, 8), dim=-1)
    out = slerp(a, b, 0.5)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, a, atol=1e-5)
    assert torch.allclose(slerp(a, a.clone(), 0.3), a, atol=1e-6)


def test_fusion_refuses_bad_inputs():
    a = _unit(3, 8, seed=15)
    with pytest.raises(XBTError, match=r"alpha must lie in \[0, 1\]"):
        slerp(a, a, 1.5)
    with pytest.raises(XBTError, match="same shape"):
        nlerp(a, _unit(3, 9, seed=16), 0.5)
    with pytest.raises(XBTError, match="unknown fusion kind"):
        fuse_embeddings(a, a, 0.5, kind="lerp")


# ---------------------------------------------------------------------- retrieval and alpha selection


def test_alpha_selection_scores_with_and_without_labels():
    # alpha=0 scores the old queries alone, so the curve's first point is plain retrieval on them
    gallery = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    _, curve = select_alpha(queries, queries, gallery, grid=(0.0,))  # query i should find row i
    assert curve["0.0"]["recall_at_1"] == 0.75  # query 1 finds row 2 first
    # ... then rows 0, 1 and 3 tie at score 0 and come in index order: its row 1 is third
    assert curve["0.0"]["mrr"] == pytest.approx((1 + 1 / 3 + 1 + 1) / 4)
    # with labels saying rows 1 and 2 are the same item, every query hits
    labels = torch.tensor([0, 1, 1, 3])
    _, curve = select_alpha(queries, queries, gallery, labels, labels, grid=(0.0,))
    assert curve["0.0"] == {"recall_at_1": 1.0, "mrr": 1.0}
    with pytest.raises(XBTError, match="query 0 has no correct item"):
        select_alpha(queries, queries, gallery, torch.tensor([9, 1, 1, 3]), labels)


def test_alpha_selection_uses_the_evaluators_tie_rule():
    # a query tied between a wrong row 0 and its right row 1: lower gallery index first, as in
    # xbt.evaluation.search.recall_at_k, so it misses at R@1 and finds its row second (MRR 1/2)
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    _, curve = select_alpha(query, query, gallery, torch.tensor([1]), torch.tensor([0, 1]), grid=(0.0,))
    assert curve["0.0"] == {"recall_at_1": 0.0, "mrr": 0.5}


def _planted_support(hit_windows, d_per=2):
    """Queries whose fused embedding hits its gallery item exactly for alphas in a known window.

    Each query lives in its own plane (so queries do not interfere): the old query sits at angle
    80 deg and the aligned new one at -40 deg from the correct item (angle 0); two distractors at
    +-``b`` deg make the correct item win exactly when the SLERP angle 80 - 120 alpha lies within
    +-b/2. ``hit_windows[i] = (lo, hi)`` (in alpha) is turned into the distractor angles.
    """
    n = len(hit_windows)
    d = d_per * n
    old_q, new_q, gallery, labels = [], [], [], []
    for i, (lo, hi) in enumerate(hit_windows):
        # SLERP angle at alpha: 80 - 120 alpha (degrees); the hit interval [80-120 hi, 80-120 lo]
        upper, lower = 80 - 120 * lo, 80 - 120 * hi
        centre, half = (upper + lower) / 2, (upper - lower) / 2 + 3  # 3 deg of slack around grid points

        def vec(deg, i=i):
            v = torch.zeros(d)
            v[2 * i], v[2 * i + 1] = math.cos(math.radians(deg)), math.sin(math.radians(deg))
            return v

        old_q.append(vec(80))
        new_q.append(vec(-40))
        for deg, label in ((centre, i), (centre + 2 * half, -1 - i), (centre - 2 * half, -1 - i)):
            gallery.append(vec(deg))
            labels.append(label)
    return torch.stack(old_q), torch.stack(new_q), torch.stack(gallery), torch.arange(n), torch.tensor(labels)


def test_select_alpha_finds_the_planted_optimum():
    # half the queries hit for alpha in [0.3, 0.6], the other half for [0.6, 0.9]: only 0.6 hits all
    old_q, new_q, gallery, q_labels, g_labels = _planted_support([(0.3, 0.6)] * 5 + [(0.6, 0.9)] * 5)
    alpha, curve = select_alpha(old_q, new_q, gallery, q_labels, g_labels, kind="slerp")
    assert alpha == 0.6
    assert curve["0.6"]["recall_at_1"] == 1.0
    assert curve["0.0"]["recall_at_1"] == 0.0 and curve["1.0"]["recall_at_1"] == 0.0
    assert curve["0.4"]["recall_at_1"] == 0.5 and curve["0.8"]["recall_at_1"] == 0.5
    assert list(curve) == [str(a) for a in ALPHA_GRID]


def test_select_alpha_endpoints_and_ties():
    gallery = _unit(30, 16, seed=17)
    wrong = torch.roll(gallery, 1, dims=0)  # query i sits exactly on gallery item i-1
    # the new query is the right gallery item: alpha=1 is perfect, alpha=0 always wrong
    alpha, curve = select_alpha(wrong, gallery, gallery, kind="nlerp")
    assert curve["1.0"] == {"recall_at_1": 1.0, "mrr": 1.0}
    assert curve["0.0"]["recall_at_1"] == 0.0
    # ties on Recall@1 and MRR go to the smallest alpha: the first perfect one
    perfect = [float(a) for a, v in curve.items() if v == {"recall_at_1": 1.0, "mrr": 1.0}]
    assert alpha == min(perfect) and alpha > 0.0
    # mirrored: the old query is right, so alpha=0 wins outright
    alpha, curve = select_alpha(gallery, wrong, gallery, kind="nlerp")
    assert alpha == 0.0 and curve["0.0"]["recall_at_1"] == 1.0 and curve["1.0"]["recall_at_1"] == 0.0


def test_select_alpha_refuses_bad_inputs():
    a = _unit(5, 8, seed=19)
    with pytest.raises(XBTError, match="differ in shape"):
        select_alpha(a, _unit(4, 8, seed=20), a)
    with pytest.raises(XBTError, match="grid is empty"):
        select_alpha(a, a, a, grid=())
