"""Exact search in blocks: the same ids, order and recall as the FAISS flat search, in bounded memory, and both
directions of one gallery from one product per block."""

import numpy as np
import pytest
import torch

from xbt.core.errors import XBTError
from xbt.evaluation.scan import scan
from xbt.evaluation.search import block_search, cross_recall, recall_at_k, search

from .test_evaluate import random_gallery, reference_hits


def _with_duplicates(seed: int):
    """A random gallery where a third of the captions repeat an earlier one (exact score ties)."""
    img, cap, owner = random_gallery(seed)
    rng = np.random.default_rng(seed)
    dup = rng.choice(len(cap), len(cap) // 3, replace=False)
    src = rng.integers(0, len(cap), len(dup))
    cap[dup] = cap[src]
    return img, cap, owner


@pytest.mark.parametrize("seed", [0, 1])
def test_block_search_returns_the_flat_search_ids_in_order(seed):
    img, cap, _ = _with_duplicates(seed)
    for q, g in ((img, cap), (cap, img)):
        for k in (1, 10, 37):
            s_flat, i_flat = search(q, g, k)
            s_blk, i_blk = block_search(q, g, k, query_block=24, gallery_block=13)  # k spans several gallery blocks
            np.testing.assert_array_equal(i_blk, i_flat)
            np.testing.assert_allclose(s_blk, s_flat, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_scan_gives_both_directions_of_the_flat_search(seed):
    img, cap, _ = _with_duplicates(seed)
    if seed == 2:
        img[::3] = img[1]  # tied images too: the column lists meet ties
    rng = np.random.default_rng(seed)
    for k in (1, 10, 37):
        blocks = {"a_block": int(rng.integers(1, 40)), "b_block": int(rng.integers(1, 60))}
        (s_rows, i_rows), (s_cols, i_cols) = scan(img, cap, k, **blocks)
        for (s, i), (q, g) in (((s_rows, i_rows), (img, cap)), ((s_cols, i_cols), (cap, img))):
            s_flat, i_flat = search(q, g, k)
            np.testing.assert_array_equal(i, i_flat)
            np.testing.assert_array_equal(s, s_flat)  # the same exact float64-summed scores


def test_block_recall_matches_the_brute_force_reference_and_memmaps(tmp_path):
    img, cap, cap_owner = _with_duplicates(2)
    img_owner = np.arange(len(img))
    path = tmp_path / "captions.npy"
    np.save(path, cap)
    gallery = np.load(path, mmap_mode="r")  # never read whole
    ks = (1, 5, 10, 10_000)
    i2t = recall_at_k(torch.from_numpy(img), gallery, img_owner, cap_owner, ks, index="block")
    ref = reference_hits(img, cap, img_owner, cap_owner, ks)
    for k in ks:
        np.testing.assert_array_equal(i2t.hits[k], ref[k])
    assert 0.05 < i2t.recall[1] < 0.95


def test_block_search_on_the_toy_test_set_gives_the_evaluators_recall():
    import xbt.toy
    from xbt.data.retrieval import load_dataset
    from xbt.models.embedding import embed_images, embed_texts

    old, _ = xbt.toy.load_clips()
    ds = load_dataset("toy")
    img = embed_images(old, ds.images, verbose=False)
    cap = embed_texts(old, ds.flat_captions(), verbose=False)
    owner, ids = ds.caption_owner(), np.arange(ds.n_images)
    for q, g, qo, go in ((img, cap, ids, owner), (cap, img, owner, ids)):
        flat = recall_at_k(q, g, qo, go, (1, 5, 10))
        block = recall_at_k(q, g, qo, go, (1, 5, 10), index="block")
        np.testing.assert_array_equal(block.first_hit, flat.first_hit)
        assert block.recall == flat.recall
    both = cross_recall(img, cap, ids, owner, (1, 5, 10))
    for one, (q, g, qo, go) in zip(both, ((img, cap, ids, owner), (cap, img, owner, ids))):
        np.testing.assert_array_equal(one.first_hit, recall_at_k(q, g, qo, go, (1, 5, 10)).first_hit)


def test_block_search_refuses_bad_inputs():
    g = np.ones((5, 4), dtype=np.float32)
    with pytest.raises(XBTError, match="4-d"):
        block_search(np.ones((2, 3), dtype=np.float32), g, 1)
    bad = g.copy()
    bad[3, 1] = np.nan
    with pytest.raises(XBTError, match="NaN"):
        block_search(np.ones((2, 4), dtype=np.float32), bad, 2, gallery_block=2)
    with pytest.raises(XBTError, match="k must be"):
        block_search(g, g, 0)
