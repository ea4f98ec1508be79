"""Dataset loaders on tiny offline fixtures in each real format (Karpathy JSON, NoCaps JSON, webdataset tars)."""

import json

import numpy as np
import pytest

import xbt
import xbt.toy  # noqa: F401
from xbt.core.errors import XBTError
from xbt.data.retrieval import RetrievalDataset, load_dataset
from xbt.data.sources import LazyImages

from .fixtures_data import caption_of, color_of, make_karpathy, make_nocaps, make_wds


def assert_grouped(ds: RetrievalDataset, keys: list[str], n_caps: list[int] | int) -> None:
    """Image i has key keys[i]'s colour and exactly that key's captions, in order."""
    assert ds.n_images == len(keys)
    n_caps = [n_caps] * len(keys) if isinstance(n_caps, int) else n_caps
    for i, key in enumerate(keys):
        assert ds.images[i].getpixel((3, 3)) == color_of(key)
        assert ds.captions[i] == [caption_of(key, j) for j in range(n_caps[i])]


# ---------------------------------------------------------------------- the dataset type


def test_retrieval_dataset_flat_captions_and_owner():
    ds = RetrievalDataset(images=["a", "b", "c"], captions=[["a0", "a1"], ["b0"], ["c0", "c1", "c2"]], name="t")
    assert ds.flat_captions() == ["a0", "a1", "b0", "c0", "c1", "c2"]
    assert ds.caption_owner().tolist() == [0, 0, 1, 2, 2, 2]
    assert ds.caption_owner().dtype == np.int64
    assert (ds.n_images, ds.n_captions) == (3, 6)
    head = ds.head(2)
    assert head.flat_captions() == ["a0", "a1", "b0"] and head.n_images == 2


@pytest.mark.parametrize(
    "images, captions, needle",
    [
        (["a", "b"], [["x"]], "2 images but 1 caption lists"),
        (["a"], [[]], "has no captions"),
        (["a"], ["just a string"], "single string"),
        (["a"], [["ok", 3]], "is a int"),
        ([], [], "has no images"),
    ],
)
def test_retrieval_dataset_rejects_bad_input(images, captions, needle):
    with pytest.raises(XBTError, match=needle):
        RetrievalDataset(images, captions, name="t")


def test_toy_loader_matches_the_toy_world():
    ds = load_dataset("toy", limit=4)
    images, captions = xbt.toy.test_split(4)
    assert ds.name == "toy" and ds.split == "test"
    assert ds.captions == captions
    assert [im.tobytes() for im in ds.images] == [im.tobytes() for im in images]
    with pytest.raises(XBTError, match="one evaluation split"):
        load_dataset("toy", split="train")


def test_unknown_dataset_and_source():
    with pytest.raises(XBTError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(XBTError, match="unknown source"):
        load_dataset("flickr30k", source="s3")
    with pytest.raises(XBTError, match="local files only"):
        load_dataset("nocaps", source="hf")


# ---------------------------------------------------------------------- Karpathy: Flickr30k


def test_flickr30k_karpathy_splits(tmp_path):
    make_karpathy(tmp_path, "flickr30k", {"train": 4, "val": 2, "test": 3})
    test = load_dataset("flickr30k", split="test", root=tmp_path)
    assert isinstance(test.images, LazyImages)
    assert_grouped(test, ["test0", "test1", "test2"], 5)
    assert load_dataset("flickr", split="1k", root=tmp_path).flat_captions() == test.flat_captions()
    full = load_dataset("flickr30k", split="full", root=tmp_path)
    assert_grouped(full, [f"train{i}" for i in range(4)] + ["val0", "val1"] + [f"test{i}" for i in range(3)], 5)
    assert full.n_captions == 45
    assert load_dataset("flickr30k", split="full", root=tmp_path, limit=2).n_images == 2
    assert load_dataset("flickr30k", root=tmp_path, max_captions=2).n_captions == 6


def test_flickr30k_explicit_paths(tmp_path):
    make_karpathy(tmp_path / "data", "flickr30k", {"test": 2})
    (tmp_path / "data" / "flickr30k-images").rename(tmp_path / "pics")
    ds = load_dataset(
        "flickr30k", annotations=tmp_path / "data" / "dataset_flickr30k.json", image_dir=tmp_path / "pics"
    )
    assert_grouped(ds, ["test0", "test1"], 5)


def test_flickr30k_missing_json_says_where(tmp_path):
    with pytest.raises(XBTError, match=r"expected Karpathy's flickr30k split file .* at .*dataset_flickr30k\.json"):
        load_dataset("flickr30k", root=tmp_path)
    with pytest.raises(XBTError, match="needs root"):
        load_dataset("flickr30k")


def test_flickr30k_missing_image_says_where(tmp_path):
    make_karpathy(tmp_path, "flickr30k", {"test": 3})
    (tmp_path / "flickr30k-images" / "test1.png").unlink()
    with pytest.raises(
        XBTError, match=r"1 of 3 flickr30k images are missing, e.g. expected .*flickr30k-images/test1\.png"
    ):
        load_dataset("flickr30k", root=tmp_path)


def test_flickr30k_no_image_folder_says_where(tmp_path):
    make_karpathy(tmp_path, "flickr30k", {"test": 2}, write_images=False)
    with pytest.raises(XBTError, match=r"expected the first one at one of .*flickr30k-images/test0\.png"):
        load_dataset("flickr30k", root=tmp_path)


def test_karpathy_wrong_layout(tmp_path):
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(XBTError, match=r"wrong layout: expected a JSON object \{\"images\""):
        load_dataset("flickr30k", root=tmp_path)
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": [{"filename": "a.png", "split": "test"}]}))
    with pytest.raises(XBTError, match=r"images\[0\] has the wrong layout \(missing 'sentences'\)"):
        load_dataset("flickr30k", root=tmp_path)
    (tmp_path / "dataset_flickr30k.json").write_text("{not json")
    with pytest.raises(XBTError, match="not readable JSON"):
        load_dataset("flickr30k", root=tmp_path)


def test_karpathy_wrong_dataset_file_and_split(tmp_path):
    make_karpathy(tmp_path, "coco", {"test": 1})
    (tmp_path / "dataset_coco.json").rename(tmp_path / "dataset_flickr30k.json")
    with pytest.raises(XBTError, match="is Karpathy's 'coco' file, not 'flickr30k'"):
        load_dataset("flickr30k", root=tmp_path)
    with pytest.raises(XBTError, match=r"unknown flickr30k split 'restval'; choose one of"):
        load_dataset("flickr30k", split="restval", root=tmp_path)


# ---------------------------------------------------------------------- Karpathy: COCO


def test_coco_karpathy_splits(tmp_path):
    make_karpathy(tmp_path, "coco", {"train": 2, "restval": 3, "val": 2, "test": 2})
    test = load_dataset("coco", split="test", root=tmp_path)
    assert_grouped(test, ["test0", "test1"], [5, 6])
    assert load_dataset("mscoco", split="5k", root=tmp_path).captions == test.captions
    full = load_dataset("coco", split="full", root=tmp_path)  # val + restval, in file order
    assert_grouped(full, ["restval0", "restval1", "restval2", "val0", "val1"], [5, 6, 7, 5, 6])
    assert load_dataset("coco", split="full", root=tmp_path, max_captions=5).n_captions == 25


def test_coco_missing_image_names_the_filepath(tmp_path):
    make_karpathy(tmp_path, "coco", {"val": 2})
    (tmp_path / "val2014" / "COCO_val2014_val1.png").unlink()
    with pytest.raises(XBTError, match=r"expected .*val2014/COCO_val2014_val1\.png"):
        load_dataset("coco", split="val", root=tmp_path)


# ---------------------------------------------------------------------- NoCaps


def test_nocaps_val_and_domains(tmp_path):
    make_nocaps(tmp_path, {"in-domain": 2, "near-domain": 1, "out-domain": 2})
    ds = load_dataset("nocaps", root=tmp_path)
    keys = ["in-domain-0", "in-domain-1", "near-domain-0", "out-domain-0", "out-domain-1"]
    assert ds.split == "val"
    assert_grouped(ds, keys, 10)
    out = load_dataset("nocaps", split="out-domain", root=tmp_path)
    assert_grouped(out, ["out-domain-0", "out-domain-1"], 10)


def test_nocaps_errors(tmp_path):
    with pytest.raises(
        XBTError, match=r"expected the NoCaps validation captions .* at .*nocaps_val_4500_captions\.json"
    ):
        load_dataset("nocaps", root=tmp_path)
    make_nocaps(tmp_path, {"in-domain": 2})
    (tmp_path / "val" / "in-domain-1.png").unlink()
    with pytest.raises(XBTError, match=r"expected .*val/in-domain-1\.png"):
        load_dataset("nocaps", root=tmp_path)
    (tmp_path / "nocaps_val_4500_captions.json").write_text(
        json.dumps({"images": [{"id": 1, "file_name": "x"}], "annotations": [{"id": 1}]})
    )
    with pytest.raises(XBTError, match=r"annotations\[0\] has the wrong layout \(missing 'image_id'\)"):
        load_dataset("nocaps", root=tmp_path)
    with pytest.raises(XBTError, match="unknown nocaps split"):
        load_dataset("nocaps", split="test", root=tmp_path)


# ---------------------------------------------------------------------- Hugging Face webdataset


@pytest.mark.parametrize("ext", ["webp", "jpg"])
def test_webdataset_shards_through_datasets(tmp_path, ext):
    keys = make_wds(tmp_path / "wds", "test", n=5, shards=2, ext=ext, captions=3)
    ds = load_dataset("flickr30k", split="test", source="hf", root=tmp_path / "wds", cache_dir=tmp_path / "hf-cache")
    assert ds.n_images == 5 and ds.source.startswith("hf:")
    assert ds.captions == [[caption_of(k, j) for j in range(3)] for k in keys]
    for i, key in enumerate(keys):
        got = np.array(ds.images[i].getpixel((3, 3)))
        tol = 0 if ext == "webp" else 8  # JPEG is lossy
        assert np.abs(got - np.array(color_of(key))).max() <= tol
    chunk = list(ds.images[1:3])  # lazy slices decode only what is asked
    assert len(chunk) == 2 and chunk[0].mode == "RGB"


def test_webdataset_errors(tmp_path):
    with pytest.raises(XBTError, match=r"expected webdataset shards at .*wds/test/\*\.tar"):
        load_dataset("coco", source="hf", root=tmp_path / "wds")
    with pytest.raises(XBTError, match="'full' needs Karpathy's val/restval images"):
        load_dataset("coco", split="full", source="hf", root=tmp_path / "wds")
    make_wds(tmp_path / "wds", "test", n=2, shards=1, with_txt=False)
    with pytest.raises(XBTError, match=r"expected <key>\.txt"):
        load_dataset("coco", source="hf", root=tmp_path / "wds", cache_dir=tmp_path / "hf-cache")
