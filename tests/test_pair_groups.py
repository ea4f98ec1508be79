"""as_pairs expands list caption cells into rows; group_images recovers which rows share an image."""

from __future__ import annotations

import datasets
import pytest
import torch
from PIL import Image

import xbt.toy
from xbt.core.errors import XBTError
from xbt.data.pairs import as_pairs, group_images

N = 4
CPI = 5


def _expected_owner(n: int, per: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64).repeat_interleave(per)


def test_pair_list_groups_into_images_with_five_rows_each():
    images, captions = as_pairs(xbt.toy.pair_list(N, captions_per_image=CPI))
    assert len(images) == len(captions) == N * CPI
    groups = group_images(images)
    assert groups.n_images == N
    assert groups.first == [k * CPI for k in range(N)]
    assert groups.owner.dtype == torch.int64 and groups.owner.shape == (N * CPI,)
    assert torch.equal(groups.owner, _expected_owner(N, CPI))
    assert torch.equal(torch.bincount(groups.owner), torch.full((N,), CPI))


def test_dataset_rows_decode_to_new_objects_yet_group_by_content():
    ds = xbt.toy.pairs(N, captions_per_image=CPI)
    images, captions = as_pairs(ds)
    assert len(images) == N * CPI
    assert images[0] is not images[1]  # decoded afresh, so identity alone would not group them
    groups = group_images(images)
    assert groups.n_images == N
    assert groups.first == [k * CPI for k in range(N)]
    assert torch.equal(groups.owner, _expected_owner(N, CPI))
    # the same layout as the in-memory list, caption for caption
    _, list_captions = as_pairs(xbt.toy.pair_list(N, captions_per_image=CPI))
    assert captions == list_captions


def test_equal_content_copies_group_together_and_different_images_do_not():
    a = Image.new("RGB", (8, 8), (10, 20, 30))
    b = Image.new("RGB", (8, 8), (10, 20, 31))  # one channel differs by one
    c = Image.new("RGB", (4, 16), (10, 20, 30))  # same pixel count and bytes as a, other size
    d = a.convert("RGBA")  # same pixels, other mode
    groups = group_images([a, a.copy(), b, a, c, d, b.copy(), c])
    assert groups.first == [0, 2, 4, 5]
    assert groups.owner.tolist() == [0, 0, 1, 0, 2, 3, 1, 2]
    assert groups.n_images == 4


def test_group_images_of_nothing_is_empty():
    groups = group_images([])
    assert groups.n_images == 0 and groups.owner.shape == (0,) and groups.owner.dtype == torch.int64


def test_list_caption_cells_expand_into_one_row_per_caption():
    im1, im2 = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    images, captions = as_pairs([(im1, ["c1", "c2", "c3"]), (im2, ("d1", "d2")), (im1, "c4")])
    assert captions == ["c1", "c2", "c3", "d1", "d2", "c4"]
    assert [im is im1 for im in images] == [True, True, True, False, False, True]
    assert images[3] is im2 and images[4] is im2
    assert group_images(images).owner.tolist() == [0, 0, 0, 1, 1, 0]


def _sequence_dataset(caps: list) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    images = [im for im, _ in xbt.toy.pair_list(len(caps))]
    return datasets.Dataset.from_dict({"image": images, "caption": caps}, features=features)


def test_dataset_with_a_list_of_strings_caption_column_expands():
    ds = _sequence_dataset([["a cat", "a small cat"], ["a dog"], ["x", "y", "z"]])
    images, captions = as_pairs(ds)
    assert captions == ["a cat", "a small cat", "a dog", "x", "y", "z"]
    groups = group_images(images)
    assert groups.n_images == 3
    assert groups.first == [0, 2, 3]
    assert groups.owner.tolist() == [0, 0, 1, 2, 2, 2]


def test_an_empty_caption_list_is_refused_naming_its_index():
    im = Image.new("RGB", (8, 8))
    with pytest.raises(XBTError, match=r"pairs\[1\] caption is an empty list"):
        as_pairs([(im, ["ok"]), (im, [])])
    with pytest.raises(XBTError, match=r"pairs\[2\] caption is an empty list"):
        as_pairs(_sequence_dataset([["a"], ["b"], []]))


@pytest.mark.parametrize("bad", [None, 3, "", "   "])
def test_a_non_string_or_blank_caption_in_a_list_is_refused_naming_its_index(bad):
    im = Image.new("RGB", (8, 8))
    with pytest.raises(XBTError, match=r"pairs\[1\] caption\[1\] is .*expected a non-empty string"):
        as_pairs([(im, ["ok"]), (im, ("fine", bad))])


def test_a_plain_bad_caption_is_still_refused_naming_its_index():
    im = Image.new("RGB", (8, 8))
    with pytest.raises(XBTError, match=r"pairs\[0\] caption is 7, expected a non-empty string"):
        as_pairs([(im, 7)])
