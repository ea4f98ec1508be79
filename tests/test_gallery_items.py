"""A gallery knows its items: a backfill, a batch file or a save made for other items is refused, never served."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import xbt
from xbt.adapters.config import ModelRef
from xbt.core.errors import XBTError
from xbt.gallery import backfill as bf
from xbt.gallery.mixed import MixedGallery
from xbt.models.embedding import embed_images, embed_texts

N = 24


@pytest.fixture(scope="module")
def world():
    old, new = xbt.toy.load_clips(device="cpu")
    images, caps = xbt.toy.test_split(2 * N)
    texts = [c[0] for c in caps[:N]]
    return {
        "old": old,
        "new": new,
        "images": images[:N],
        "others": images[N : 2 * N],
        "old_img": embed_images(old, images[:N], verbose=False).numpy(),
        "texts": texts,
        "old_txt": embed_texts(old, texts, verbose=False).numpy(),
    }


def gallery(w, modality="image", items=None):
    g = MixedGallery(ModelRef.of(w["old"]), w["new"].embed_dim, modality)
    vectors = w["old_img"] if modality == "image" else w["old_txt"]
    if items is None:
        items = w["images"] if modality == "image" else w["texts"]
    g.add_old(vectors, items=items)
    return g


def job(folder, w, items, batch_size=8):
    return bf.BackfillJob(folder, w["new"], items, order=np.arange(N), batch_size=batch_size)


def test_a_backfill_over_items_that_changed_since_the_build_is_refused_and_commits_nothing(world, tmp_path):
    folder = gallery(world).save(tmp_path / "g")
    assert job(folder, world, world["images"]).run(8, verbose=False)["done"] == 8
    changed = list(world["images"])
    changed[11] = Image.new("RGB", changed[11].size, "red")  # an image of batch 1 edited in place
    with pytest.raises(XBTError, match=r"item 11 has changed.*nothing was committed.*new folder"):
        job(folder, world, changed).run(16, verbose=False)
    assert [e["count"] for e in bf.read_manifest(folder)["batches"]] == [8]
    assert not (folder / "backfill" / bf.batch_name(1)).exists()
    assert bf.open_gallery(folder).in_new.sum() == 8


def test_a_caption_gallery_refuses_an_edited_caption(world, tmp_path):
    folder = gallery(world, "text").save(tmp_path / "g")
    edited = list(world["texts"])
    edited[3] = edited[3] + " (edited)"
    with pytest.raises(XBTError, match=r"item 3 has changed since.*caption text"):
        job(folder, world, edited).run(1.0, verbose=False)
    assert bf.read_manifest(folder)["batches"] == []


def test_a_gallery_whose_batch_file_was_made_for_other_items_is_refused_by_open_gallery(world, tmp_path):
    mine = gallery(world).save(tmp_path / "mine")
    others = MixedGallery(ModelRef.of(world["old"]), world["new"].embed_dim, "image")
    others.add_old(embed_images(world["old"], world["others"], verbose=False), items=world["others"])
    theirs = others.save(tmp_path / "theirs")
    job(mine, world, world["images"]).run(8, verbose=False)
    job(theirs, world, world["others"]).run(8, verbose=False)
    (mine / "backfill").rename(tmp_path / "mine-backfill")
    (theirs / "backfill").rename(mine / "backfill")  # their batch (and manifest) now sit in my gallery
    with pytest.raises(XBTError, match=r"batch .*batch-00000.safetensors was embedded from other items.*rollback"):
        bf.open_gallery(mine)


def test_save_over_a_started_backfill_with_other_items_is_refused(world, tmp_path):
    folder = gallery(world).save(tmp_path / "g")
    job(folder, world, world["images"]).run(8, verbose=False)
    other = MixedGallery(ModelRef.of(world["old"]), world["new"].embed_dim, "image")
    swapped = world["others"][:N]
    other.add_old(world["old_img"], items=swapped)  # the same vectors even: the items say what they are
    with pytest.raises(XBTError, match=r"backfill in progress \(8 items.*xbt gallery rollback.*new folder"):
        other.save(folder)
    shuffled = MixedGallery(ModelRef.of(world["old"]), world["new"].embed_dim, "image")
    shuffled.add_old(world["old_img"][::-1].copy())  # no items: the old vectors are compared
    with pytest.raises(XBTError, match="backfill in progress"):
        shuffled.save(folder)
    assert bf.open_gallery(folder).in_new.sum() == 8  # nothing was written
    assert other.save(tmp_path / "new-folder").is_dir()  # the named fix
    bf.rollback(folder)
    other.save(folder)  # the other named fix


def test_the_same_items_save_and_backfill_as_before(world, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder = gallery(world).save(tmp_path / "g")
        job(folder, world, world["images"]).run(8, verbose=False)
        gallery(world).save(folder)  # rebuilt from the same items: allowed, the backfill kept
        stats = job(folder, world, world["images"]).run(1.0, verbose=False)
        g = bf.open_gallery(folder)
    assert stats["done"] == N and g.in_new.all()
    np.testing.assert_array_equal(g.item_keys, gallery(world).item_keys)
    new = embed_images(world["new"], world["images"], verbose=False).numpy()
    np.testing.assert_allclose(g.store.vectors("new", np.arange(N)), new, atol=1e-5)
    keys = load_file(str(folder / "old.safetensors"))["item_keys"]
    assert keys.dtype == torch.uint8 and tuple(keys.shape) == (N, 12)


def test_a_gallery_folder_written_before_item_hashes_still_opens_with_one_warning(world, tmp_path):
    folder = gallery(world).save(tmp_path / "g")
    job(folder, world, world["images"]).run(8, verbose=False)
    old_file = folder / "old.safetensors"
    save_file({"vectors": load_file(str(old_file))["vectors"]}, str(old_file))  # as an old xbt wrote it
    with pytest.warns(UserWarning, match="could not be checked") as caught:
        g = bf.open_gallery(folder)
    assert len([w for w in caught if "could not be checked" in str(w.message)]) == 1
    assert g.item_keys is None and g.in_new.sum() == 8
    with pytest.warns(UserWarning):
        assert bf.open_gallery(folder).size == N
    stats = job(folder, world, world["images"]).run(16, verbose=False)  # unchecked, but it still runs
    assert stats["done"] == 16


def test_a_users_file_in_the_gallery_folder_survives_a_rebuild_with_the_same_items(world, tmp_path):
    folder = gallery(world).save(tmp_path / "g")
    job(folder, world, world["images"]).run(8, verbose=False)
    (folder / "NOTES.md").write_text("my notes\n")
    gallery(world).save(folder)
    assert (folder / "NOTES.md").read_text() == "my notes\n"
    assert bf.open_gallery(folder).in_new.sum() == 8


def test_add_old_refuses_items_that_do_not_match_the_vectors(world):
    g = MixedGallery(ModelRef.of(world["old"]), world["new"].embed_dim, "image")
    with pytest.raises(XBTError, match="give the items the vectors embed"):
        g.add_old(world["old_img"], items=world["images"][:3])
